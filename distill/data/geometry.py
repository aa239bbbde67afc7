"""Resizing and cropping whole batches of images: storage sizes, center crops, random-resized crops.

Why batched: the in-memory path keeps every image at one decode size and makes the model-input
crops on the device after the transfer. One ``roi_align`` call crops and resizes a whole batch,
each sample with its own box, so there is no Python loop over samples.

Sizes follow torchvision's conventions so that both storages agree: a resize of the shorter side
to ``n`` gives the longer side ``int(n * long / short)``; a center crop starts at
``round((size - crop) / 2)``; the evaluation resize is ``round(image_size / EVAL_CROP_FRACTION)``
(256 for 224, ImageNet's convention).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from distill.data.transforms import SeededModule, make_generator

__all__ = [
    "EVAL_CROP_FRACTION",
    "BatchRandomResizedCrop",
    "center_crop",
    "eval_resize_size",
    "resize_uint8",
]

EVAL_CROP_FRACTION = 0.875
"""Share of the resized image's shorter side that the evaluation center crop keeps (224/256)."""


def eval_resize_size(image_size: int) -> int:
    """Shorter side that evaluation resizes to before its center crop: 256 for 224."""
    return int(round(image_size / EVAL_CROP_FRACTION))


def center_crop(images: Tensor, size: int) -> Tensor:
    """The central ``size x size`` window of ``[..., H, W]`` (a view, no copy)."""
    h, w = images.shape[-2:]
    if size > h or size > w:
        raise ValueError(f"cannot center-crop {size}x{size} from {h}x{w} images")
    top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
    return images[..., top : top + size, left : left + size]


def _resize_chunk(images: Tensor, hw: tuple[int, int]) -> Tensor:
    out = F.interpolate(images.float(), size=hw, mode="bilinear", antialias=True)
    return out.round_().clamp_(0, 255).to(torch.uint8)


def resize_uint8(images: Tensor, size: int, fit: str = "stretch") -> Tensor:
    """Antialiased bilinear resize of a uint8 batch ``[N, C, h, w]`` to ``size x size``.

    Args:
        images: uint8 images, all of one size.
        size: Output side.
        fit: ``"stretch"``: resize to ``size x size`` (the aspect ratio changes);
            ``"center"``: resize the shorter side to ``size``, then center-crop a square.

    Works in chunks of 4096 images so that the float copy stays small.
    """
    if fit not in ("stretch", "center"):
        raise ValueError(f"fit must be 'stretch' or 'center', got {fit!r}")
    h, w = int(images.shape[-2]), int(images.shape[-1])
    if (h, w) == (size, size):
        return images
    hw = (size, size)
    if fit == "center":
        hw = (size, int(size * w / h)) if h <= w else (int(size * h / w), size)
    out = torch.empty(images.shape[0], images.shape[1], size, size, dtype=torch.uint8)
    for s in range(0, images.shape[0], 4096):
        out[s : s + 4096] = center_crop(_resize_chunk(images[s : s + 4096], hw), size)
    return out


class BatchRandomResizedCrop(SeededModule):
    """Random-resized crop (+ horizontal flip) of a whole batch, each sample with its own box.

    The boxes follow torchvision's ``RandomResizedCrop``: an area share drawn from ``scale`` and
    an aspect ratio drawn log-uniformly from ``ratio``, up to 10 tries per sample (all drawn at
    once), else the central crop with the ratio clamped. Parameters come from the module's own
    CPU generator, so results depend only on its seed, not on the device. One
    ``torchvision.ops.roi_align`` call (``aligned=True``, adaptive sampling, so large boxes are
    averaged rather than aliased) then crops and resizes every sample to ``size``.

    Args:
        size: Output side (square).
        scale: Range of the crop's share of the image area.
        ratio: Range of the crop's aspect ratio (width / height).
        flip: Flip horizontally with probability 0.5.
        generator: A CPU ``torch.Generator``, an int seed, or ``None`` (non-deterministic).
    """

    attempts = 10

    def __init__(
        self,
        size: int,
        scale: tuple[float, float] = (0.08, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        flip: bool = True,
        generator: torch.Generator | int | None = None,
    ) -> None:
        super().__init__()
        if not 0 < scale[0] <= scale[1] <= 1 or not 0 < ratio[0] <= ratio[1]:
            raise ValueError(f"need 0 < scale <= 1 and 0 < ratio, ordered; got {scale}, {ratio}")
        self.size = int(size)
        self.scale = (float(scale[0]), float(scale[1]))
        self.ratio = (float(ratio[0]), float(ratio[1]))
        self.flip = bool(flip)
        self.generator = make_generator(generator)

    def sample_params(self, batch_size: int, height: int, width: int) -> tuple[Tensor, Tensor]:
        """Draw per-sample boxes ``[B, 4]`` (``x0, y0, x1, y1`` in pixels, float) and flips ``[B]``."""
        g, b, n = self.generator, batch_size, self.attempts
        area = torch.rand(b, n, generator=g, dtype=torch.float64)
        area = height * width * (self.scale[0] + area * (self.scale[1] - self.scale[0]))
        lo, hi = math.log(self.ratio[0]), math.log(self.ratio[1])
        aspect = torch.exp(lo + torch.rand(b, n, generator=g, dtype=torch.float64) * (hi - lo))
        w = torch.sqrt(area * aspect).round().long()
        h = torch.sqrt(area / aspect).round().long()
        ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)
        first = ok.long().argmax(1, keepdim=True)  # the first try that fits
        w, h = w.gather(1, first)[:, 0], h.gather(1, first)[:, 0]
        top = (torch.rand(b, generator=g, dtype=torch.float64) * (height - h + 1)).long()
        left = (torch.rand(b, generator=g, dtype=torch.float64) * (width - w + 1)).long()
        fw, fh = self._fallback(height, width)
        found = ok.any(1)
        w, h = torch.where(found, w, fw), torch.where(found, h, fh)
        top = torch.where(found, top, (height - fh) // 2)
        left = torch.where(found, left, (width - fw) // 2)
        boxes = torch.stack([left, top, left + w, top + h], 1).float()
        flips = torch.rand(b, generator=g) < 0.5
        return boxes, flips & self.flip

    def _fallback(self, height: int, width: int) -> tuple[int, int]:
        """``(w, h)`` of the central crop used when no try fits (torchvision's rule)."""
        in_ratio = width / height
        if in_ratio < self.ratio[0]:
            return width, int(round(width / self.ratio[0]))
        if in_ratio > self.ratio[1]:
            return int(round(height * self.ratio[1])), height
        return width, height

    @staticmethod
    def apply(x: Tensor, size: int, boxes: Tensor, flip: Tensor) -> Tensor:
        """Crop ``boxes`` out of ``x`` ``[B, C, H, W]``, resize each to ``size``, flip ``flip``.

        Returns the input's dtype (uint8 is rounded back).
        """
        from torchvision.ops import roi_align

        dev = x.device
        index = torch.arange(x.shape[0], device=dev, dtype=torch.float32)[:, None]
        rois = torch.cat([index, boxes.to(dev, torch.float32)], 1)
        out = roi_align(x.float(), rois, (size, size), 1.0, sampling_ratio=-1, aligned=True)
        out = torch.where(flip.to(dev)[:, None, None, None], out.flip(-1), out)
        if x.is_floating_point():
            return out.to(x.dtype)
        return out.round_().clamp_(0, 255).to(x.dtype)

    def forward(self, x: Tensor) -> Tensor:
        """Crop, resize and flip a ``[B, C, H, W]`` batch (each sample independently)."""
        if x.ndim != 4:
            raise ValueError(f"expected a [B, C, H, W] batch, got shape {tuple(x.shape)}")
        boxes, flips = self.sample_params(x.shape[0], int(x.shape[2]), int(x.shape[3]))
        return self.apply(x, self.size, boxes, flips)

    def extra_repr(self) -> str:
        return f"size={self.size}, scale={self.scale}, ratio={self.ratio}, flip={self.flip}"
