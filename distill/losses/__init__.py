"""Distillation losses: functionals, their module wrappers and the importable distiller."""

from distill.losses.distiller import (
    DistillOutput,
    ExplanationDistiller,
    LayerPair,
    TeacherOutputs,
)
from distill.losses.functional import (
    attention_map,
    attention_transfer,
    explanation_matching,
    kd_loss,
    match_map_sizes,
    normalize_maps,
)
from distill.losses.modules import AttentionTransferLoss, ExplanationMatchingLoss, KDLoss

__all__ = [
    "AttentionTransferLoss",
    "DistillOutput",
    "TeacherOutputs",
    "ExplanationDistiller",
    "ExplanationMatchingLoss",
    "KDLoss",
    "LayerPair",
    "attention_map",
    "attention_transfer",
    "explanation_matching",
    "kd_loss",
    "match_map_sizes",
    "normalize_maps",
]
