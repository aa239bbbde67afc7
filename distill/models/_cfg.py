"""What every model family shares: the per-variant metadata record and the constants in it.

Why a leaf: the registry, :func:`~distill.models.build_model` and every family file use these,
and none of them may be imported by it; keeping them here (not in the registry) is what lets
the families import the registry without the registry importing the families back.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ModelCfg",
    "TIMM_PREFIX",
]

# Per-channel statistics of the CIFAR-10 training set (std over pixels, not the
# often-copied 0.2023/0.1994/0.2010 values).
CIFAR10_MEAN: tuple[float, float, float] = (0.4914, 0.4822, 0.4465)
CIFAR10_STD: tuple[float, float, float] = (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

TIMM_PREFIX = "timm/"
"""``build_model`` names starting with this are timm models (``timm/resnet50.a1_in1k``)."""


@dataclass(frozen=True)
class ModelCfg:
    """Static metadata of one model variant, kept next to its builder.

    Attributes:
        input_size: ``(C, H, W)`` the variant is meant to be fed.
        mean: Per-channel normalisation mean expected by the variant.
        std: Per-channel normalisation std expected by the variant.
        pool_size: ``(h, w)`` of ``forward_features`` at ``input_size``; CAM
            resolution, needed to size upsampling buffers ahead of time.
        num_params: Expected parameter count with a 10-class head (a regression
            check against silently changed architectures).
    """

    input_size: tuple[int, int, int] = (3, 32, 32)
    mean: tuple[float, ...] = CIFAR10_MEAN
    std: tuple[float, ...] = CIFAR10_STD
    pool_size: tuple[int, int] = (8, 8)
    num_params: int = 0
