"""The explanation layer: batched, differentiable Grad-CAM and Grad-CAM++ maps."""

from distill.cam.capture import capture_activations, pooled_linear_classifier, resolve_layer
from distill.cam.explainers import BaseCAM, GradCAM, GradCAMPlusPlus
from distill.cam.functional import (
    gradcam,
    gradcam_pp,
    gradcam_pp_weights,
    gradcam_weights,
    minmax_normalize,
    resize_maps,
    select_targets,
)

CAM_METHODS = {"gradcam": gradcam, "gradcam_pp": gradcam_pp}
"""Map functions by the names configs use."""

__all__ = [
    "CAM_METHODS",
    "BaseCAM",
    "GradCAM",
    "GradCAMPlusPlus",
    "capture_activations",
    "gradcam",
    "gradcam_pp",
    "gradcam_pp_weights",
    "gradcam_weights",
    "minmax_normalize",
    "pooled_linear_classifier",
    "resize_maps",
    "resolve_layer",
    "select_targets",
]
