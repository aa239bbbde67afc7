"""The train and eval transforms of a datamodule, for both storages.

Why one object: the tensor storage runs them batched on the device after the transfer, the file
storage per sample in loader workers; both must give the same geometry and normalisation. The
storage asks this object for its part and the datamodule never branches on the storage.

Two crops (``crop``):

* ``pad`` (CIFAR's): train on a zero-padded random crop of the image at its own size, evaluate
  on the whole image; with ``image_size`` every image is first resized (stretched) to
  ``image_size x image_size``. The tensor storage keeps images at that size.
* ``random_resized`` (ImageNet's): train on a random-resized crop (area share 0.08-1, aspect
  ratio 3/4-4/3) resized to ``image_size``; evaluate on a resize of the shorter side to
  ``round(image_size / 0.875)`` then a center crop of ``image_size`` (256/224). The tensor storage
  keeps every image at that evaluation resize, center-cropped to a square (``D x D``): evaluation
  is then a center crop of it, and training crops are taken from it on the device. So the tensor
  storage never crops from the strips outside that square, while the file storage crops from
  the whole image.

Both train crops are followed by a random horizontal flip.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from torch import Tensor

from distill.data.geometry import (
    BatchRandomResizedCrop,
    center_crop,
    eval_resize_size,
    resize_uint8,
)
from distill.data.transforms import BatchAugment, Normalize

__all__ = ["CROPS", "ImageTransforms", "eval_geometry"]

CROPS: tuple[str, ...] = ("pad", "random_resized")
"""Training crops: CIFAR's pad-and-crop, ImageNet's random-resized crop."""


class ImageTransforms:
    """Geometry, augmentation and normalisation of one datamodule (see the module docstring).

    Args:
        image_size: Square size of the model input; ``None`` keeps the native size
            (``crop="pad"`` only).
        crop: ``"pad"`` or ``"random_resized"``.
        augment: Augment training batches (else they get the evaluation transform).
        padding: Zero padding of the ``pad`` crop.
        mean: Per-channel normalisation mean (``[0, 1]`` scale).
        std: Per-channel normalisation std.
        seed: Seed of the batched augmentation stream (re-seeded per batch by the datamodule).
    """

    def __init__(
        self,
        *,
        image_size: int | None,
        crop: str = "pad",
        augment: bool,
        padding: int,
        mean: Sequence[float],
        std: Sequence[float],
        seed: int,
    ) -> None:
        if crop not in CROPS:
            raise ValueError(f"crop must be one of {', '.join(CROPS)}; got {crop!r}")
        if crop == "random_resized" and image_size is None:
            raise ValueError("crop='random_resized' needs image_size (its output size, e.g. 224)")
        if image_size is not None and image_size < 1:
            raise ValueError(f"image_size must be >= 1, got {image_size}")
        self.image_size = image_size
        self.crop = crop
        self.augment = bool(augment)
        self.padding = int(padding)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.normalize = Normalize(self.mean, self.std)
        self.batch_augment = BatchAugment(self.padding, flip=True, generator=seed)
        self.resized_crop = (
            BatchRandomResizedCrop(image_size, flip=True, generator=seed)
            if crop == "random_resized" and image_size is not None
            else None
        )

    # ---- geometry ----------------------------------------------------------------------------

    @property
    def decode_size(self) -> int | None:
        """Square side the tensor storage keeps images at (``None``: their native size)."""
        if self.crop == "random_resized":
            return eval_resize_size(self.image_size)  # type: ignore[arg-type]
        return self.image_size

    @property
    def fit(self) -> str:
        """How images are brought to ``decode_size``: ``"stretch"`` or ``"center"`` (crop)."""
        return "center" if self.crop == "random_resized" else "stretch"

    def output_hw(self, native_hw: tuple[int, int]) -> tuple[int, int]:
        """``(H, W)`` of the model input for images of ``native_hw``."""
        if self.image_size is not None:
            return (self.image_size, self.image_size)
        return native_hw

    def store(self, images: Tensor) -> Tensor:
        """Bring a decoded uint8 batch to the size the tensor storage keeps."""
        size = self.decode_size
        return images if size is None else resize_uint8(images, size, self.fit)

    # ---- tensor storage: batched, on the batch's device --------------------------------------

    def manual_seed(self, seed: int) -> None:
        """Reset the batched augmentation stream (per batch, for resumable runs)."""
        self.batch_augment.manual_seed(seed)
        if self.resized_crop is not None:
            self.resized_crop.manual_seed(seed)

    def batch(self, batch: Any, train: bool) -> Any:
        """Transform the images of a ``(images, labels, *extras)`` batch of the tensor storage;
        float images (the file storage's, already transformed) pass unchanged."""
        images = batch[0]
        if images.is_floating_point():
            return batch
        images = self.train_batch(images) if train else self.eval_batch(images)
        return (images, *batch[1:])

    def train_batch(self, images: Tensor) -> Tensor:
        """Augment (if enabled) and normalise a stored uint8 training batch."""
        if not self.augment:
            return self.eval_batch(images)
        if self.resized_crop is not None:
            return self.normalize(self.resized_crop(images))
        return self.normalize(self.batch_augment(images))

    def eval_batch(self, images: Tensor) -> Tensor:
        """Crop (``random_resized``: the center) and normalise a stored uint8 evaluation batch."""
        if self.crop == "random_resized":
            images = center_crop(images, self.image_size)  # type: ignore[arg-type]
        return self.normalize(images)

    # ---- file storage: per sample, in loader workers -----------------------------------------

    def sample(self, train: bool, native_hw: tuple[int, int]) -> Callable[[Any], Tensor]:
        """The per-sample torchvision transform from a PIL image to a normalised tensor."""
        from torchvision import transforms as T

        size = self.image_size
        augment = train and self.augment
        steps: list[Any]
        if self.crop == "random_resized" and augment:
            steps = [T.RandomResizedCrop(size, antialias=True), T.RandomHorizontalFlip()]
        else:
            steps = eval_geometry(self.crop, size)
            if augment:
                out = self.output_hw(native_hw)
                steps += [T.RandomCrop(out, padding=self.padding), T.RandomHorizontalFlip()]
        steps += [T.ToTensor(), T.Normalize(self.mean, self.std)]
        return T.Compose(steps)


def eval_geometry(crop: str, image_size: int | tuple[int, int] | None) -> list[Any]:
    """The evaluation resize (and crop) of one PIL image, as torchvision transforms: the file
    storage's evaluation transform, and what :mod:`distill.tools.explain` shows a trained model.

    ``random_resized``: the shorter side to ``round(size / 0.875)``, then the central
    ``size x size``; ``pad``: stretched to ``image_size`` (nothing when it is ``None``).

    Example:
        >>> [type(step).__name__ for step in eval_geometry("random_resized", 224)]
        ['Resize', 'CenterCrop']
        >>> eval_geometry("random_resized", 224)[0].size
        256
    """
    from torchvision import transforms as T

    if crop not in CROPS:
        raise ValueError(f"crop must be one of {', '.join(CROPS)}; got {crop!r}")
    if image_size is None:
        if crop == "random_resized":
            raise ValueError("crop='random_resized' needs image_size")
        return []
    hw = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if crop == "random_resized":
        if hw[0] != hw[1]:
            raise ValueError(f"crop='random_resized' makes square inputs, got {hw[0]}x{hw[1]}")
        return [T.Resize(eval_resize_size(hw[0]), antialias=True), T.CenterCrop(hw[0])]
    return [T.Resize(hw, antialias=True)]
