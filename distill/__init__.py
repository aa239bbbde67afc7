"""Explanation-matching knowledge distillation.

A student learns from a teacher through labels, soft logits (Hinton KD) and the teacher's
Grad-CAM++ explanation maps, computed by a batched, differentiable layer.
"""

from distill import cam  # the subpackage; its CAM function is distill.cam.cam
from distill.cam import (
    CAM,
    EigenCAM,
    GradCAM,
    GradCAMElementWise,
    GradCAMPlusPlus,
    HiResCAM,
    LayerCAM,
    XGradCAM,
    capture_activations,
    eigencam,
    gradcam,
    gradcam_elementwise,
    gradcam_pp,
    hirescam,
    layercam,
    xgradcam,
)
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
from distill.training.checkpoints import CheckpointError, load_model, weights_sha256
from distill.training.teacher_cache import TeacherCache, TeacherCacheError

__version__ = "0.1.0"


def __getattr__(name: str):
    # Imported on first use: ``import distill`` stays free of the export tool's imports, and
    # ``python -m distill.export`` finds that module not yet imported.
    if name == "export_model":
        from distill.tools.export import export_model

        return export_model
    raise AttributeError(f"module 'distill' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), "export_model"})


__all__ = [
    "CAM",
    "AttentionTransferLoss",
    "CheckpointError",
    "DistillOutput",
    "EigenCAM",
    "ExplanationDistiller",
    "ExplanationMatchingLoss",
    "GradCAM",
    "GradCAMElementWise",
    "GradCAMPlusPlus",
    "HiResCAM",
    "KDLoss",
    "LayerCAM",
    "LayerPair",
    "TeacherCache",
    "TeacherCacheError",
    "TeacherOutputs",
    "UserError",
    "WeightsError",
    "XGradCAM",
    "attention_transfer",
    "build_model",
    "cam",
    "capture_activations",
    "eigencam",
    "explanation_matching",
    "export_model",
    "gradcam",
    "gradcam_elementwise",
    "gradcam_pp",
    "hirescam",
    "kd_loss",
    "layercam",
    "list_models",
    "load_model",
    "weights_sha256",
    "xgradcam",
]
