"""Class activation transfer (Guo et al., "Class Attention Transfer Based Knowledge
Distillation", CVPR 2023; CAT-KD).

A pooled-linear head ``y = W mean_ij(A_ij) + b`` applied position by position, i.e. the
classifier as a 1x1 convolution on the last feature map, gives every class's activation map
``CAM_k = sum_c W[k, c] A_c`` (Zhou et al.'s CAM, no bias) at once. CAT-KD average-pools both
models' ``[B, K, H, W]`` maps to a small grid (2x2 on CIFAR, 4x4 on ImageNet) and matches them
with the mean squared error; the authors run it beside CE with no logit KD, with loss weight
beta 12 (WRN-40-2 -> WRN-16-2), 15 (ResNet-32x4 -> ResNet-8x4) or 0.5 (ImageNet), and without
normalising the maps (``configs/cifar100/CAT_KD`` of their repository).

Token-average transformer heads (``y = W f(mean_i t_i) + b``, ``f`` a norm or the identity)
give the same maps from the patch tokens: ``CAM_k(i) = W[k] . f(t_i)``, the head applied to
each token, which for ``f`` the identity is exactly the CNN case.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from distill.cam import PooledHead, pooled_head, token_layout, tokens_to_grid

__all__ = [
    "ClassActivationTransferLoss",
    "cat_head",
    "cat_loss",
    "class_activation_maps",
    "pooled_class_maps",
]


def class_activation_maps(
    features: Tensor, classifier_weight: Tensor, norm: nn.Module | None = None
) -> Tensor:
    """``[B, K, H, W]`` class activation maps of ``[B, C, H, W]`` features for a ``[K, C]``
    classifier, with the head's ``norm`` (over channels) applied at every position first."""
    if norm is not None:
        features = norm(features.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
    return _class_products(classifier_weight.to(features.dtype), features)


def _class_products(weight: Tensor, features: Tensor) -> Tensor:
    """``sum_c W[k, c] A[b, c, h, w]`` as one batched matrix product."""
    batch, channels, height, width = features.shape
    maps = weight @ features.reshape(batch, channels, height * width)
    return maps.view(batch, -1, height, width)


def cat_head(model: nn.Module) -> tuple[str, PooledHead]:
    """The layer that feeds ``model``'s pooled head, and the head.

    Raises:
        ValueError: the model declares no pooled-linear (or token-average) head.
    """
    layer = getattr(model, "pooled_head_layer", None) or getattr(model, "cam_layer", None)
    head = pooled_head(model, layer) if isinstance(layer, str) else None
    if head is None:
        raise ValueError(
            f"{type(model).__name__} declares no pooled-linear head, so its class activation "
            "maps are not defined: CAT-KD needs a model whose classifier follows global "
            "average pooling (the CIFAR families, torchvision CNNs, token-average ViTs)"
        )
    return layer, head


def pooled_class_maps(
    model: nn.Module, activations: Tensor, image_size: Sequence[int], size: int
) -> Tensor:
    """``[B, K, size, size]``: ``model``'s class activation maps, average-pooled.

    ``activations`` are the output of :func:`cat_head`'s layer (tokens are laid out as the
    patch grid). Without a norm the map is linear in the features, so they are pooled first
    (the same result for a fraction of the work).
    """
    _, head = cat_head(model)
    grid = tokens_to_grid(activations, token_layout(model, image_size))
    if head.norm is None:
        return class_activation_maps(F.adaptive_avg_pool2d(grid, size), head.classifier.weight)
    maps = class_activation_maps(grid, head.classifier.weight, head.norm)
    return F.adaptive_avg_pool2d(maps, size)


def cat_loss(student_maps: Tensor, teacher_maps: Tensor, size: int = 2) -> Tensor:
    """Mean squared error of the two models' class maps after average pooling to
    ``size x size`` (maps already at that size pass unchanged), averaged over every element."""
    student = F.adaptive_avg_pool2d(student_maps.float(), size)
    teacher = F.adaptive_avg_pool2d(teacher_maps.float(), size)
    return F.mse_loss(student, teacher)


class ClassActivationTransferLoss(nn.Module):
    """CAT-KD's transfer term at pooled size ``size`` (see :func:`cat_loss`)."""

    def __init__(self, size: int = 2) -> None:
        super().__init__()
        if size < 1:
            raise ValueError(f"the pooled CAM size must be >= 1, got {size}")
        self.size = int(size)

    def forward(self, student_maps: Tensor, teacher_maps: Tensor) -> Tensor:
        return cat_loss(student_maps, teacher_maps, self.size)

    def extra_repr(self) -> str:
        return f"size={self.size}"
