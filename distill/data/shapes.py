"""Procedural "shapes" dataset: a tiny, offline, CIFAR-sized task with ground-truth localisation.

Why: explanation maps (Grad-CAM++) can only be scored against where the object *is*; CIFAR has no
boxes or masks. Each shapes image holds exactly one class object on a cluttered background, so a
saliency map can be checked against its box/mask, and the whole set is generated in memory from a
seed in well under a second (no download, usable in tests and CI).

Design choices that keep the task learnable but not trivial:

* Class = geometry only. Object colour, size, position and a small rotation are drawn
  independently of the class, so colour or size never gives the label away.
* The background is low-frequency colour noise whose base colour is pushed away from the object
  colour (so the object is always visible), plus pixel noise and a few thin random line segments
  that are not any class shape.
* Everything is drawn vectorised for a chunk of images at once: coordinate grids, per-image
  parameters broadcast over them, boolean masks composited with ``torch.where``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from distill.data.base import ImageDataModule
from distill.data.sampling import mix_seed
from distill.data.storage import FileSplit, TensorImageDataset, TensorSplit

__all__ = [
    "SHAPES_CLASSES",
    "SHAPES_MEAN",
    "SHAPES_STD",
    "ShapesData",
    "ShapesDataModule",
    "make_shapes",
]

SHAPES_CLASSES: tuple[str, ...] = ("circle", "square", "triangle", "cross", "ring", "diamond")
"""Class names, index = label."""

# Per-channel statistics of ``make_shapes(20000, seed=0)`` (they barely depend on the seed).
SHAPES_MEAN: tuple[float, float, float] = (0.4977, 0.5021, 0.4982)
SHAPES_STD: tuple[float, float, float] = (0.2953, 0.2959, 0.2973)

_CHUNK = 512  # images drawn at once: bounds peak memory (~ a few x CHUNK*H*W floats)
_NUM_LINES = 3  # maximum number of distractor line segments per image


@dataclass
class ShapesData:
    """A generated split, all tensors on CPU.

    Attributes:
        images: uint8 ``[N, 3, H, W]``.
        labels: int64 ``[N]``, index into :data:`SHAPES_CLASSES`.
        boxes: int64 ``[N, 4]`` tight object box ``(x0, y0, x1, y1)`` in pixels, ``x1``/``y1``
            exclusive, so ``mask[y0:y1, x0:x1]`` holds every object pixel.
        masks: bool ``[N, H, W]`` object pixels (exactly the pixels painted with the object).
    """

    images: Tensor
    labels: Tensor
    boxes: Tensor
    masks: Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def _shape_mask(label: Tensor, u: Tensor, v: Tensor) -> Tensor:
    """Inside-test of every class shape in normalised object coordinates.

    Args:
        label: ``[B, 1, 1]`` class index per image.
        u: ``[B, H, W]`` horizontal coordinate, object spans roughly ``[-1, 1]``.
        v: ``[B, H, W]`` vertical coordinate (pointing down), same scale.

    Returns:
        bool ``[B, H, W]`` mask of the shape selected by ``label``.
    """
    au, av = u.abs(), v.abs()
    r2 = u * u + v * v
    arm = 0.34
    shapes = (
        r2 <= 1.0,  # circle
        torch.maximum(au, av) <= 0.85,  # square (area close to the circle's)
        (v <= 0.75) & (au <= (v + 1.0) * 0.62),  # triangle, apex up
        ((au <= arm) & (av <= 1.0)) | ((av <= arm) & (au <= 1.0)),  # cross (plus sign)
        (r2 <= 1.0) & (r2 >= 0.52**2),  # ring
        (au + av) <= 1.15,  # diamond (square turned 45 deg)
    )
    out = torch.zeros_like(u, dtype=torch.bool)
    for k, m in enumerate(shapes):
        out |= m & (label == k)
    return out


def _draw_chunk(labels: Tensor, size: int, g: torch.Generator) -> tuple[Tensor, Tensor]:
    """Draw one chunk of images; returns float images in [0,1] ``[B,3,H,W]`` and masks ``[B,H,W]``."""
    b = labels.shape[0]

    def rand(*shape: int) -> Tensor:
        return torch.rand(*shape, generator=g)

    # Object colour: uniform RGB, independent of the class.
    obj_col = rand(b, 3)
    # Background base colour: roughly complementary per channel, so contrast is always there
    # but its value carries no class information either.
    bg_col = (obj_col + 0.5 + (rand(b, 3) - 0.5) * 0.3) % 1.0
    # Low-frequency colour noise: a 4x4 random field upsampled bilinearly.
    low = (rand(b, 3, 4, 4) - 0.5) * 0.45
    low = F.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)
    img = bg_col[:, :, None, None] + low

    ys = torch.arange(size, dtype=torch.float32).view(1, size, 1) + 0.5
    xs = torch.arange(size, dtype=torch.float32).view(1, 1, size) + 0.5

    # Distractors: thin line segments with random end points and colours (may be absent).
    # Both the position along the segment (t) and the signed distance to its supporting line are
    # affine in (x, y), so each is one broadcast add of a [B,1,W] and a [B,H,1] term.
    for _ in range(_NUM_LINES):
        p0 = rand(b, 2) * size
        d = rand(b, 2) * size - p0
        length = d.norm(dim=1).clamp_min(1.0)
        dx, dy = (d[:, 0] / length)[:, None, None], (d[:, 1] / length)[:, None, None]
        x0, y0 = p0[:, 0, None, None], p0[:, 1, None, None]
        along = (xs - x0) * dx + (ys - y0) * dy  # distance along the segment, in px
        across = (xs - x0) * dy - (ys - y0) * dx  # signed distance to the line, in px
        on = (rand(b) < 0.8)[:, None, None]
        line = (across.abs() <= 0.6) & (along >= 0) & (along <= length[:, None, None]) & on
        img = torch.where(line[:, None], rand(b, 3)[:, :, None, None], img)

    # Object: half-size, centre (fully inside the image), small rotation.
    s = size / 32.0
    half = (4.0 + rand(b) * 5.0) * s  # 4..9 px at 32x32 -> 8..18 px wide
    margin = half + 0.5
    cx = margin + rand(b) * (size - 2 * margin)
    cy = margin + rand(b) * (size - 2 * margin)
    ang = (rand(b) - 0.5) * math.radians(30.0)
    ca, sa = ang.cos()[:, None, None], ang.sin()[:, None, None]
    x = (xs - cx[:, None, None]) / half[:, None, None]
    y = (ys - cy[:, None, None]) / half[:, None, None]
    u = ca * x + sa * y
    v = -sa * x + ca * y
    mask = _shape_mask(labels.view(b, 1, 1), u, v)
    # Slight shading across the object so it is not a flat colour patch.
    shade = 1.0 + 0.15 * (u * (rand(b) - 0.5)[:, None, None] * 2)
    obj = (obj_col[:, :, None, None] * shade[:, None]).clamp(0, 1)
    img = torch.where(mask[:, None], obj, img)

    img = img + torch.randn(img.shape, generator=g) * 0.03
    return img.clamp(0, 1), mask


def _boxes_from_masks(masks: Tensor) -> Tensor:
    """Tight ``(x0, y0, x1, y1)`` boxes (exclusive max) of non-empty boolean masks ``[N,H,W]``."""
    n, h, w = masks.shape
    cols = masks.any(1)  # [N, W]
    rows = masks.any(2)  # [N, H]
    xr = torch.arange(w)
    yr = torch.arange(h)
    x0 = torch.where(cols, xr, w).amin(1)
    x1 = torch.where(cols, xr, -1).amax(1) + 1
    y0 = torch.where(rows, yr, h).amin(1)
    y1 = torch.where(rows, yr, -1).amax(1) + 1
    return torch.stack([x0, y0, x1, y1], 1).long()


def make_shapes(num_samples: int, seed: int, image_size: int = 32) -> ShapesData:
    """Generate a deterministic shapes split.

    The same ``(num_samples, seed, image_size)`` always gives bit-identical tensors (CPU RNG
    with a private generator; global RNG state is untouched). Labels are balanced: a seeded
    permutation of ``arange(N) % num_classes``, so every class appears once ``N >= 6``.

    Args:
        num_samples: Number of images ``N``.
        seed: Seed of the private ``torch.Generator``.
        image_size: Height = width in pixels (object sizes scale with it).

    Returns:
        A :class:`ShapesData` with images, labels, boxes and masks.
    """
    if num_samples < 0:
        raise ValueError(f"num_samples must be >= 0, got {num_samples}")
    if image_size < 16:
        raise ValueError(f"image_size must be >= 16, got {image_size}")
    g = torch.Generator().manual_seed(int(seed))
    nc = len(SHAPES_CLASSES)
    labels = (torch.arange(num_samples) % nc)[torch.randperm(num_samples, generator=g)]
    images = torch.empty(num_samples, 3, image_size, image_size, dtype=torch.uint8)
    masks = torch.empty(num_samples, image_size, image_size, dtype=torch.bool)
    for start in range(0, num_samples, _CHUNK):
        sl = slice(start, min(start + _CHUNK, num_samples))
        img, m = _draw_chunk(labels[sl], image_size, g)
        images[sl] = (img * 255.0 + 0.5).to(torch.uint8)
        masks[sl] = m
    return ShapesData(
        images=images, labels=labels.long(), boxes=_boxes_from_masks(masks), masks=masks
    )


class ShapesDataModule(ImageDataModule):
    """The procedural shapes set (:func:`distill.data.shapes.make_shapes`), with boxes/masks.

    The data depends only on ``data_seed`` (train) and a seed derived from it (test), so runs
    with different ``seed`` (shuffling/augmentation) train on the same images. Validation is
    the test set, or with ``val_fraction > 0`` a holdout of the training set.

    Args:
        num_train: Training images.
        num_val: Test images (also the validation images when there is no holdout).
        data_seed: Seed of the generated images.
        image_size: Generated image size (square); ``None``: 32.
        return_boxes: Val/test batches are ``(images, labels, boxes, masks)`` instead of
            ``(images, labels)``; ``val_boxes`` / ``val_masks`` are available either way.
        **kwargs: Options of :class:`ImageDataModule` (``seed``, ``batch_size``, ...).
    """

    default_mean = SHAPES_MEAN
    default_std = SHAPES_STD
    has_boxes = True

    def __init__(
        self,
        num_train: int = 10000,
        num_val: int = 2000,
        data_seed: int = 0,
        image_size: int | None = 32,
        return_boxes: bool = False,
        **kwargs: Any,
    ) -> None:
        if kwargs.get("crop", "pad") != "pad":
            raise ValueError(
                "shapes supports crop='pad' only: its boxes and masks are in the pixels of the "
                "generated images, which the evaluation must not resize or crop"
            )
        super().__init__(**kwargs)
        self.num_train = int(num_train)
        self.num_val = int(num_val)
        self.data_seed = int(data_seed)
        self.shape_size = 32 if image_size is None else int(image_size)
        self.return_boxes = bool(return_boxes)
        self._generated: dict[str, Any] = {}

    @property
    def num_classes(self) -> int:
        """Number of shape classes."""
        return len(SHAPES_CLASSES)

    def _find_classes(self) -> list[str]:
        return list(SHAPES_CLASSES)

    def _generate(self, key: str) -> ShapesData:
        if key not in self._generated:
            if key == "train":
                self._generated[key] = make_shapes(self.num_train, self.data_seed, self.shape_size)
            else:
                seed = mix_seed(self.data_seed, 0x5EED)
                self._generated[key] = make_shapes(self.num_val, seed, self.shape_size)
        return self._generated[key]

    def _extras(self, split: str) -> int:
        return 2 if (self.return_boxes and split != "train") else 0

    def _tensor_split(self, key: str) -> TensorSplit:
        d = self._generate(key)
        return TensorSplit(d.images, d.labels, d.boxes, d.masks)

    def _file_split(self, key: str) -> FileSplit:
        d = self._generate(key)
        extras = (d.boxes, d.masks) if self.return_boxes else ()  # the holdout needs them too
        dataset = TensorImageDataset(d.images, d.labels, *extras)
        return FileSplit(dataset, d.labels, (self.shape_size, self.shape_size))

    def split_extras(self, split: str) -> tuple[Tensor, Tensor]:
        """int64 ``[N, 4]`` boxes ``(x0, y0, x1, y1)`` and bool ``[N, H, W]`` object masks of an
        evaluation split (``"val"`` or ``"test"``), in loader order."""
        if split == "val" and self.has_holdout:
            d = self._generate("train")
            holdout = self.holdout_indices()[1]
            return d.boxes[holdout], d.masks[holdout]
        if split not in ("val", "test"):
            raise ValueError(f"boxes exist for the evaluation splits val and test, not {split!r}")
        d = self._generate("test")
        return d.boxes, d.masks

    @property
    def val_boxes(self) -> Tensor:
        """int64 ``[N, 4]`` boxes ``(x0, y0, x1, y1)`` of the validation split, in loader order."""
        return self.split_extras("val")[0]

    @property
    def val_masks(self) -> Tensor:
        """bool ``[N, H, W]`` object masks of the validation split, in loader order."""
        return self.split_extras("val")[1]
