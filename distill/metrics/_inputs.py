"""Input checks and the map operations every explanation metric shares: shapes and dtypes of
confidences, maps and boxes, upsampling to the image, min-max normalisation with constant maps
kept meaningful, box masks (conventions in :mod:`distill.metrics.functional`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from distill.cam.functional import minmax_normalize, resize_maps

Size = int | tuple[int, int]

_EPS = 1e-7  # the span below which a map counts as constant (same as minmax_normalize)


def _shape(t: Tensor) -> tuple[int, ...]:
    return tuple(t.shape)


def _check_confidences(validate_args: bool, **named: Tensor) -> list[Tensor]:
    """Same-shape, floating confidences, flattened to ``[N]``; optionally non-negative."""
    names = list(named)
    tensors = list(named.values())
    for name, t in named.items():
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a tensor, got {type(t).__name__}")
        if not t.dtype.is_floating_point:
            raise TypeError(f"{name} must hold floating-point confidences, got dtype {t.dtype}")
    first = tensors[0]
    for name, t in zip(names[1:], tensors[1:], strict=True):
        if t.shape != first.shape:
            raise ValueError(
                f"{names[0]} and {name} must have the same shape, got {_shape(first)} and "
                f"{_shape(t)}"
            )
    if validate_args:
        for name, t in named.items():
            if bool((t < 0).any()):
                raise ValueError(
                    f"{name} holds negative values: confidences must be softmax probabilities "
                    "(did you pass logits?)"
                )
    return [t.reshape(-1) for t in tensors]


def _check_maps(maps: Tensor, name: str = "maps") -> Tensor:
    """``[B, h, w]`` maps as a floating tensor (bool/int masks become float32)."""
    if not isinstance(maps, Tensor):
        raise TypeError(f"{name} must be a tensor, got {type(maps).__name__}")
    if maps.ndim != 3:
        raise ValueError(f"{name} must be [B, H, W], got shape {_shape(maps)}")
    if maps.shape[1] == 0 or maps.shape[2] == 0:
        raise ValueError(f"{name} must have a non-empty spatial size, got shape {_shape(maps)}")
    return maps if maps.dtype.is_floating_point else maps.float()


def _pair(size: Size) -> tuple[int, int]:
    if isinstance(size, int):
        size = (size, size)
    if len(size) != 2 or any(int(s) <= 0 for s in size):
        raise ValueError(f"image_size must be a positive int or (H, W), got {size}")
    return int(size[0]), int(size[1])


def _upsample(maps: Tensor, image_size: Size | None) -> Tensor:
    """Maps at the image resolution (``None``: they already are)."""
    return maps if image_size is None else resize_maps(maps, _pair(image_size))


def _normalize(maps: Tensor) -> Tensor:
    """Min-max normalisation; constant maps become ones if positive, else zeros."""
    flat = maps.flatten(1)
    span = flat.amax(1) - flat.amin(1)
    constant = (span <= _EPS)[:, None, None]
    return torch.where(constant, (maps > 0).to(maps.dtype), minmax_normalize(maps, _EPS))


def _box_masks(boxes: Tensor, height: int, width: int, validate_args: bool) -> Tensor:
    """Bool ``[B, H, W]`` masks of ``(x0, y0, x1, y1)`` boxes (exclusive max)."""
    if not isinstance(boxes, Tensor):
        raise TypeError(f"boxes must be a tensor, got {type(boxes).__name__}")
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes must be [B, 4] (x0, y0, x1, y1), got shape {_shape(boxes)}")
    if boxes.dtype == torch.bool or boxes.is_complex():
        raise TypeError(f"boxes must hold pixel coordinates, got dtype {boxes.dtype}")
    x0, y0, x1, y1 = boxes.unbind(1)
    if validate_args:
        bad = (x0 < 0) | (y0 < 0) | (x1 > width) | (y1 > height) | (x1 <= x0) | (y1 <= y0)
        if bool(bad.any()):
            i = int(bad.nonzero()[0, 0])
            raise ValueError(
                f"box {i} = {boxes[i].tolist()} is empty or outside the {height}x{width} image: "
                "boxes must satisfy 0 <= x0 < x1 <= W and 0 <= y0 < y1 <= H (x1, y1 exclusive)"
            )
    xs = torch.arange(width, device=boxes.device)
    ys = torch.arange(height, device=boxes.device)
    in_x = (xs >= x0[:, None]) & (xs < x1[:, None])  # [B, W]
    in_y = (ys >= y0[:, None]) & (ys < y1[:, None])  # [B, H]
    return in_y[:, :, None] & in_x[:, None, :]


def _maps_and_boxes(
    maps: Tensor, boxes: Tensor, image_size: Size | None, validate_args: bool
) -> tuple[Tensor, Tensor]:
    """Upsampled maps ``[B, H, W]`` and the boxes' masks on the same grid."""
    maps = _check_maps(maps)
    if not isinstance(boxes, Tensor):
        raise TypeError(f"boxes must be a tensor, got {type(boxes).__name__}")
    if boxes.ndim >= 1 and boxes.shape[0] != maps.shape[0]:
        raise ValueError(
            f"maps and boxes have different batch sizes: {maps.shape[0]} vs {boxes.shape[0]}"
        )
    maps = _upsample(maps, image_size)
    height, width = maps.shape[-2:]
    return maps, _box_masks(boxes.to(maps.device), height, width, validate_args)


def _count(t: Tensor) -> int:
    return int(t.shape[0])


def _relative_drop(y: Tensor, o: Tensor) -> Tensor:
    """Per-sample ``max(0, y - o) / y``; 0 where ``y == 0`` (nothing can drop)."""
    positive = y > 0
    safe_y = torch.where(positive, y, torch.ones_like(y))
    return torch.where(positive, torch.relu(y - o) / safe_y, torch.zeros_like(y))
