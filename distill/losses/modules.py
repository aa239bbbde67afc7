"""``nn.Module`` wrappers that hold the hyperparameters of the functional losses."""

from __future__ import annotations

from torch import Tensor, nn

from distill.losses.functional import (
    AT_FORMS,
    MAP_DISTANCES,
    MAP_NORMALIZATIONS,
    ATForm,
    MapDistance,
    MapNormalization,
    attention_transfer,
    explanation_matching,
    kd_loss,
)

__all__ = ["KDLoss", "ExplanationMatchingLoss", "AttentionTransferLoss"]


class KDLoss(nn.Module):
    """Hinton KD at temperature ``temperature``, on standardised logits with ``standardize``
    (see :func:`distill.losses.kd_loss`)."""

    def __init__(self, temperature: float = 4.0, standardize: bool = False) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)
        self.standardize = bool(standardize)

    def forward(self, student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
        return kd_loss(student_logits, teacher_logits, self.temperature, self.standardize)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, standardize={self.standardize}"


class ExplanationMatchingLoss(nn.Module):
    """Distance between explanation maps (see :func:`distill.losses.explanation_matching`)."""

    def __init__(
        self, normalize: MapNormalization = "none", distance: MapDistance = "squared_l2"
    ) -> None:
        super().__init__()
        if normalize not in MAP_NORMALIZATIONS:
            raise ValueError(f"normalize must be one of {MAP_NORMALIZATIONS}, got {normalize!r}")
        if distance not in MAP_DISTANCES:
            raise ValueError(f"distance must be one of {MAP_DISTANCES}, got {distance!r}")
        self.normalize = normalize
        self.distance = distance

    def forward(self, student_maps: Tensor, teacher_maps: Tensor) -> Tensor:
        return explanation_matching(
            student_maps, teacher_maps, normalize=self.normalize, distance=self.distance
        )

    def extra_repr(self) -> str:
        return f"normalize={self.normalize!r}, distance={self.distance!r}"


class AttentionTransferLoss(nn.Module):
    """Attention transfer (see :func:`distill.losses.attention_transfer`)."""

    def __init__(self, p: float = 2.0, form: ATForm = "code") -> None:
        super().__init__()
        if form not in AT_FORMS:
            raise ValueError(f"form must be one of {AT_FORMS}, got {form!r}")
        self.p = float(p)
        self.form = form

    def forward(self, student_features: Tensor, teacher_features: Tensor) -> Tensor:
        return attention_transfer(student_features, teacher_features, self.p, self.form)

    def extra_repr(self) -> str:
        return f"p={self.p}, form={self.form!r}"
