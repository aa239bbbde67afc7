"""Explanation-matching knowledge distillation.

A student learns from a teacher through labels, soft logits (Hinton KD) and the teacher's
Grad-CAM++ explanation maps, computed by a batched, differentiable layer.
"""

from distill import cam
from distill.cam import GradCAM, GradCAMPlusPlus, capture_activations, gradcam, gradcam_pp
from distill.checkpoints import CheckpointError, load_model, weights_sha256
from distill.errors import UserError
from distill.losses import (
    AttentionTransferLoss,
    DistillOutput,
    ExplanationDistiller,
    ExplanationMatchingLoss,
    KDLoss,
    LayerPair,
    TeacherOutputs,
    attention_transfer,
    explanation_matching,
    kd_loss,
)
from distill.models import WeightsError, build_model, list_models
from distill.teacher_cache import TeacherCache, TeacherCacheError

__version__ = "0.1.0"


def __getattr__(name: str):
    # Imported on first use: ``python -m distill.export`` must find the module not yet imported.
    if name == "export_model":
        from distill.export import export_model

        return export_model
    raise AttributeError(f"module 'distill' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), "export_model"})


__all__ = [
    "AttentionTransferLoss",
    "CheckpointError",
    "DistillOutput",
    "ExplanationDistiller",
    "ExplanationMatchingLoss",
    "GradCAM",
    "GradCAMPlusPlus",
    "KDLoss",
    "LayerPair",
    "TeacherCache",
    "TeacherCacheError",
    "TeacherOutputs",
    "UserError",
    "WeightsError",
    "attention_transfer",
    "build_model",
    "cam",
    "capture_activations",
    "explanation_matching",
    "export_model",
    "gradcam",
    "gradcam_pp",
    "kd_loss",
    "list_models",
    "load_model",
    "weights_sha256",
]
