"""Distillation losses as plain functions; :mod:`distill.losses.modules` wraps them."""

from __future__ import annotations

from typing import Literal

import torch.nn.functional as F
from torch import Tensor

from distill.cam.functional import minmax_normalize

__all__ = [
    "MAP_DISTANCES",
    "MAP_NORMALIZATIONS",
    "AT_FORMS",
    "kd_loss",
    "standardize_logits",
    "normalize_maps",
    "match_map_sizes",
    "explanation_matching",
    "attention_map",
    "attention_transfer",
]

MapNormalization = Literal["none", "l2", "minmax"]
MapDistance = Literal["squared_l2", "mse", "l1", "cosine"]
ATForm = Literal["paper", "code"]
MAP_NORMALIZATIONS: tuple[str, ...] = ("none", "l2", "minmax")
MAP_DISTANCES: tuple[str, ...] = ("squared_l2", "mse", "l1", "cosine")
AT_FORMS: tuple[str, ...] = ("paper", "code")


def standardize_logits(logits: Tensor, eps: float = 1e-7) -> Tensor:
    """Each sample's logits minus their mean, over their standard deviation (+ ``eps``).

    Logit standardisation (Sun et al., "Logit Standardization in Knowledge Distillation",
    CVPR 2024, eq. 9): the softmax then depends on the logits' shape, not on their range, so a
    student need not match the teacher's logit scale. The standard deviation is the sample
    one (``n - 1``), as in the authors' code and torchdistill's ``LogitStdKDLoss``.
    """
    mean = logits.mean(dim=1, keepdim=True)
    return (logits - mean) / (logits.std(dim=1, keepdim=True) + eps)


def kd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    temperature: float = 4.0,
    standardize: bool = False,
) -> Tensor:
    """Hinton KD: ``T^2 * KL(softmax(t / T) || softmax(s / T))``, averaged over the batch.

    The ``T^2`` keeps the gradient scale independent of ``T`` (Hinton et al., 2015).
    ``standardize`` z-scores both models' logits per sample first (:func:`standardize_logits`;
    ``T`` is then the paper's base temperature, 2 in the authors' KD runs).

    Example:
        >>> import torch
        >>> s = torch.tensor([[1.0, 0.0]]); t = torch.tensor([[0.0, 1.0]])
        >>> round(kd_loss(s, t, temperature=1.0).item(), 4)
        0.4621
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    student_logits, teacher_logits = student_logits.float(), teacher_logits.float()
    if standardize:
        student_logits = standardize_logits(student_logits)
        teacher_logits = standardize_logits(teacher_logits)
    log_p_student = F.log_softmax(student_logits / temperature, dim=1)
    log_p_teacher = F.log_softmax(teacher_logits / temperature, dim=1)
    kl = F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)
    return kl * temperature**2


def normalize_maps(maps: Tensor, mode: MapNormalization = "none", eps: float = 1e-12) -> Tensor:
    """Per-sample normalisation of ``[B, H, W]`` maps: ``none``, ``l2`` (unit norm) or ``minmax``.

    All-zero maps stay all zero (no NaN).
    """
    if mode == "none":
        return maps
    if mode == "l2":
        flat = maps.flatten(1)
        return (flat / flat.norm(dim=1, keepdim=True).clamp_min(eps)).view_as(maps)
    if mode == "minmax":
        return minmax_normalize(maps)
    raise ValueError(f"unknown map normalisation {mode!r}; choose one of {MAP_NORMALIZATIONS}")


def match_map_sizes(student: Tensor, teacher: Tensor) -> tuple[Tensor, Tensor]:
    """Bilinearly upsample the smaller of two ``[B, H, W]`` maps to the larger one's size."""
    if student.shape[-2:] == teacher.shape[-2:]:
        return student, teacher
    size = (
        max(student.shape[-2], teacher.shape[-2]),
        max(student.shape[-1], teacher.shape[-1]),
    )

    def up(maps: Tensor) -> Tensor:
        if maps.shape[-2:] == size:
            return maps
        return F.interpolate(maps[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]

    return up(student), up(teacher)


def explanation_matching(
    student_maps: Tensor,
    teacher_maps: Tensor,
    *,
    normalize: MapNormalization = "none",
    distance: MapDistance = "squared_l2",
) -> Tensor:
    """Distance between student and teacher explanation maps, averaged over the batch.

    The default is the paper's ``||L_s - L_t||_2^2`` per image (sum of squares over pixels) on
    raw maps. ``mse`` averages over pixels instead, ``l1`` is the mean absolute difference,
    ``cosine`` is ``1 - cos(L_s, L_t)``. Maps of different sizes are resized to the larger.

    Example:
        >>> import torch
        >>> explanation_matching(torch.ones(2, 2, 2), torch.zeros(2, 2, 2)).item()
        4.0
    """
    student_maps, teacher_maps = match_map_sizes(student_maps, teacher_maps)
    student_flat = normalize_maps(student_maps, normalize).flatten(1)
    teacher_flat = normalize_maps(teacher_maps, normalize).flatten(1).to(student_flat.dtype)
    if distance == "squared_l2":
        return (student_flat - teacher_flat).pow(2).sum(dim=1).mean()
    if distance == "mse":
        return (student_flat - teacher_flat).pow(2).mean()
    if distance == "l1":
        return (student_flat - teacher_flat).abs().mean()
    if distance == "cosine":
        return (1.0 - F.cosine_similarity(student_flat, teacher_flat, dim=1, eps=1e-8)).mean()
    raise ValueError(f"unknown map distance {distance!r}; choose one of {MAP_DISTANCES}")


def attention_map(features: Tensor, p: float = 2.0) -> Tensor:
    """Spatial attention of Zagoruyko & Komodakis: ``sum_c |A_c|^p``, L2-normalised, flattened.

    The reference code averages over channels instead of summing; after the L2 normalisation the
    two are identical.
    """
    attention = features.float().abs().pow(p).mean(dim=1).flatten(1)
    return F.normalize(attention, dim=1)


def attention_transfer(
    student_features: Tensor, teacher_features: Tensor, p: float = 2.0, form: ATForm = "code"
) -> Tensor:
    """Attention-transfer loss between two ``[B, C, H, W]`` feature maps (channels may differ).

    ``paper``: ``|| Q_s/||Q_s|| - Q_t/||Q_t|| ||_2`` per image, averaged over the batch (the AT
    paper's eq. 2 without its beta/2, which is the loss weight). ``code``: the mean over batch
    and positions of the squared difference, as the authors' reference code computes it.
    Spatial sizes must match after adaptive average pooling of the larger map.
    """
    if student_features.shape[-2:] != teacher_features.shape[-2:]:
        size = (
            min(student_features.shape[-2], teacher_features.shape[-2]),
            min(student_features.shape[-1], teacher_features.shape[-1]),
        )
        student_features = F.adaptive_avg_pool2d(student_features, size)
        teacher_features = F.adaptive_avg_pool2d(teacher_features, size)
    diff = attention_map(student_features, p) - attention_map(teacher_features, p)
    if form == "paper":
        return diff.norm(dim=1).mean()
    if form == "code":
        return diff.pow(2).mean()
    raise ValueError(f"unknown attention-transfer form {form!r}; choose one of {AT_FORMS}")
