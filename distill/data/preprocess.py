"""The train and eval transforms of a datamodule, for both storages.

Why one object: the tensor storage runs them batched on the device after the transfer, the file
storage per sample in loader workers; both must give the same geometry and normalisation. The
storage asks this object for its part and the datamodule never branches on the storage.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from torch import Tensor

from distill.data.transforms import BatchAugment, Normalize, resize_uint8

__all__ = ["ImageTransforms"]


class ImageTransforms:
    """Geometry, augmentation and normalisation of one datamodule.

    Training: zero-pad by ``padding``, random crop back to the image size, random horizontal flip
    (CIFAR's augmentation). Evaluation: the image as stored. With ``image_size`` every image is
    first resized to ``image_size x image_size``.

    Args:
        image_size: Square size of the model input; ``None`` keeps the stored size.
        augment: Augment training batches (else they are only normalised).
        padding: Zero padding of the random crop.
        mean: Per-channel normalisation mean (``[0, 1]`` scale).
        std: Per-channel normalisation std.
        seed: Seed of the batched augmentation stream (re-seeded per batch by the datamodule).
    """

    def __init__(
        self,
        *,
        image_size: int | None,
        augment: bool,
        padding: int,
        mean: Sequence[float],
        std: Sequence[float],
        seed: int,
    ) -> None:
        self.image_size = image_size
        self.augment = bool(augment)
        self.padding = int(padding)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.normalize = Normalize(self.mean, self.std)
        self.batch_augment = BatchAugment(self.padding, flip=True, generator=seed)

    # ---- geometry ----------------------------------------------------------------------------

    def output_hw(self, stored_hw: tuple[int, int]) -> tuple[int, int]:
        """``(H, W)`` of the model input for images decoded at ``stored_hw``."""
        if self.image_size is not None:
            return (self.image_size, self.image_size)
        return stored_hw

    def store(self, images: Tensor) -> Tensor:
        """Bring a decoded uint8 batch to the size the tensor storage keeps."""
        if self.image_size is None:
            return images
        return resize_uint8(images, self.image_size)

    # ---- tensor storage: batched, on the batch's device --------------------------------------

    def manual_seed(self, seed: int) -> None:
        """Reset the batched augmentation stream (per batch, for resumable runs)."""
        self.batch_augment.manual_seed(seed)

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
        if self.augment:
            images = self.batch_augment(images)
        return self.normalize(images)

    def eval_batch(self, images: Tensor) -> Tensor:
        """Normalise a stored uint8 evaluation batch."""
        return self.normalize(images)

    # ---- file storage: per sample, in loader workers -----------------------------------------

    def sample(self, train: bool, stored_hw: tuple[int, int]) -> Callable[[Any], Tensor]:
        """The per-sample torchvision transform from a PIL image to a normalised tensor."""
        from torchvision import transforms as T

        steps: list[Any] = []
        if self.image_size is not None:
            steps.append(T.Resize((self.image_size, self.image_size), antialias=True))
        if train and self.augment:
            size = self.output_hw(stored_hw)
            steps += [T.RandomCrop(size, padding=self.padding), T.RandomHorizontalFlip()]
        steps += [T.ToTensor(), T.Normalize(self.mean, self.std)]
        return T.Compose(steps)
