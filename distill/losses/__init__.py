"""Distillation losses: functionals, their module wrappers and the importable distiller."""

from distill.losses.cat import (
    ClassActivationTransferLoss,
    cat_loss,
    class_activation_maps,
    pooled_class_maps,
)
from distill.losses.distiller import ExplanationDistiller
from distill.losses.dkd import DKDLoss, dkd_loss, dkd_warmup
from distill.losses.e2kd import E2KD_MAP_OPTIONS, e2kd_options
from distill.losses.functional import (
    attention_map,
    attention_transfer,
    explanation_matching,
    kd_loss,
    match_map_sizes,
    normalize_maps,
    standardize_logits,
)
from distill.losses.modules import AttentionTransferLoss, ExplanationMatchingLoss, KDLoss
from distill.losses.outputs import DistillOutput, LayerPair, TeacherOutputs

__all__ = [
    "AttentionTransferLoss",
    "ClassActivationTransferLoss",
    "DKDLoss",
    "DistillOutput",
    "E2KD_MAP_OPTIONS",
    "TeacherOutputs",
    "ExplanationDistiller",
    "ExplanationMatchingLoss",
    "KDLoss",
    "LayerPair",
    "attention_map",
    "attention_transfer",
    "cat_loss",
    "class_activation_maps",
    "dkd_loss",
    "dkd_warmup",
    "e2kd_options",
    "explanation_matching",
    "kd_loss",
    "match_map_sizes",
    "normalize_maps",
    "pooled_class_maps",
    "standardize_logits",
]
