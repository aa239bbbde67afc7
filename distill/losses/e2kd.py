"""e2KD with standard (non-B-cos) networks (Parchami-Araghi et al., "Good Teachers Explain:
Explanation-Enhanced Knowledge Distillation", ECCV 2024).

Both models explain the teacher's top-1 class with a positive Grad-CAM map (channel weights =
the spatial mean of the score's gradient, weighted sum of the features, ReLU); the loss is
``CE + KD_tau + lambda * (1 - cos(M_s, M_t))`` with KD's KL at temperature ``tau`` scaled by
``tau^2`` and the cosine taken between the flattened maps. The authors' criterion defaults
(``DEFAULT_TE_CRITERION`` in their repository): CE 1, KD 1, tau 1, lambda 1; their sweeps use
lambda in {0.2, 1, 5, 10} and tau in {1, 5}.

It is a setting of :class:`distill.ExplanationDistiller`, not a separate loss: Grad-CAM maps
(``map_method="gradcam"``, differentiable for the student, closed form at a pooled head), of
the teacher's prediction (``map_target="teacher"``), compared with ``map_distance="cosine"``
on raw maps. One difference: the authors resize both maps to the image before the cosine;
here maps of different grids are resized to the larger grid and maps of one grid are compared
as they are (bilinear upsampling changes the cosine only slightly).
"""

from __future__ import annotations

from typing import Any

__all__ = ["E2KD_MAP_OPTIONS", "e2kd_options"]

E2KD_MAP_OPTIONS: dict[str, Any] = {
    "map_method": "gradcam",
    "map_target": "teacher",
    "map_distance": "cosine",
    "map_normalize": "none",
}
"""The map settings that make the distiller's map term e2KD's explanation term."""


def e2kd_options(
    explanation_weight: float = 1.0,
    temperature: float = 1.0,
    kd_weight: float = 1.0,
    ce_weight: float = 1.0,
) -> dict[str, Any]:
    """:class:`distill.ExplanationDistiller` keyword arguments for e2KD (authors' defaults).

    Example:
        >>> import torch
        >>> from distill import ExplanationDistiller, build_model
        >>> net = lambda: build_model("wrn_16_1", 10)
        >>> d = ExplanationDistiller(net(), net(), **e2kd_options(explanation_weight=5.0))
        >>> d.loss_terms, d.map_method, d.map_target
        (('ce', 'kd', 'map'), 'gradcam', 'teacher')
    """
    return {
        **E2KD_MAP_OPTIONS,
        "ce_weight": ce_weight,
        "kd_weight": kd_weight,
        "temperature": temperature,
        "map_weight": explanation_weight,
    }
