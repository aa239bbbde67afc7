"""The explanation layer: batched, differentiable Grad-CAM and Grad-CAM++ maps."""

from distill.cam.capture import (
    PooledHead,
    capture_activations,
    pooled_head,
    pooled_linear_classifier,
    resolve_layer,
)
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
from distill.cam.tokens import (
    TokenLayout,
    map_grid,
    token_layout,
    tokens_to_grid,
    twice_differentiable,
)

CAM_METHODS = {"gradcam": gradcam, "gradcam_pp": gradcam_pp}
"""Map functions by the names configs use."""

__all__ = [
    "CAM_METHODS",
    "BaseCAM",
    "GradCAM",
    "GradCAMPlusPlus",
    "PooledHead",
    "TokenLayout",
    "capture_activations",
    "gradcam",
    "gradcam_pp",
    "gradcam_pp_weights",
    "gradcam_weights",
    "map_grid",
    "minmax_normalize",
    "pooled_head",
    "pooled_linear_classifier",
    "resize_maps",
    "resolve_layer",
    "select_targets",
    "token_layout",
    "tokens_to_grid",
    "twice_differentiable",
]
