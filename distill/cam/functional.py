"""Batched, differentiable Grad-CAM and Grad-CAM++ maps.

Both methods share one core (:func:`_class_activation_map`): pick the target class per sample,
get the gradient of its score with respect to the layer's activations (one autograd call for the
whole batch, or a closed form when the layer feeds straight into global-average-pooling and a
linear classifier), turn activations and gradients into one weight per channel, and return
``relu(sum_k w_k A_k)``. The methods differ only in their channel weights.

Everything stays in torch, on the activations' device; alphas and weights are computed in
float32 whatever the activations' dtype.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

__all__ = [
    "gradcam",
    "gradcam_pp",
    "gradcam_weights",
    "gradcam_pp_weights",
    "select_targets",
    "minmax_normalize",
    "resize_maps",
]

ChannelWeights = Callable[[Tensor, Tensor], Tensor]


def _upcast(tensor: Tensor) -> Tensor:
    """At least float32: half-precision activations would overflow in ``(sum A) * g``."""
    return tensor.to(torch.promote_types(tensor.dtype, torch.float32))


# Smallest |denominator| that eq. 19 is evaluated at; below it alpha is set to 0 (see below).
_MIN_DENOMINATOR = 1e-12


def gradcam_weights(activations: Tensor, grads: Tensor) -> Tensor:
    """Grad-CAM channel weights: the spatial mean of the gradients.

    Args:
        activations: ``[B, K, H, W]`` activations (unused; kept for a common signature).
        grads: ``[B, K, H, W]`` gradients, or ``[B, K, 1, 1]`` when constant over space.

    Returns:
        ``[B, K]`` weights (at least float32) ``w_k = mean_ij g_kij``.
    """
    return _upcast(grads).mean(dim=(2, 3))


def gradcam_pp_weights(activations: Tensor, grads: Tensor) -> Tensor:
    """Grad-CAM++ channel weights, eq. 19 of Chattopadhay et al. (WACV 2018).

    ``alpha_kij = g^2 / (2 g^2 + (sum_ab A_kab) g^3)`` and ``w_k = sum_ij alpha_kij relu(g_kij)``.
    Where ``g > 0`` alpha simplifies to ``1 / (2 + (sum_ab A_kab) g)``, which is what is
    evaluated: it does not square tiny gradients (a pooled head over an 8x8 map gives
    ``g ~ 1e-3``, whose square an additive eps would swamp). Where ``g <= 0`` the term is zero
    because of ``relu(g)``. Where the denominator vanishes (possible only for negative
    activations) the term is set to zero instead of dividing by zero.

    Args:
        activations: ``[B, K, H, W]`` activations of the target layer.
        grads: ``[B, K, H, W]`` gradients of the target score, or ``[B, K, 1, 1]`` when they are
            constant over space (pooled-linear head); the result is the same as for the
            expanded tensor.

    Returns:
        ``[B, K]`` weights (at least float32).
    """
    acts = _upcast(activations)
    g = _upcast(grads)
    act_sum = acts.sum(dim=(2, 3), keepdim=True)
    denominator = 2.0 + act_sum * g
    valid = (g > 0) & (denominator.abs() > _MIN_DENOMINATOR)
    alpha = torch.where(valid, 1.0 / torch.where(valid, denominator, torch.ones_like(g)), 0.0)
    weights = (alpha * torch.relu(g)).sum(dim=(2, 3))
    # A spatially constant gradient given as [B, K, 1, 1] stands for H*W equal terms.
    spatial_repeat = (acts.shape[2] * acts.shape[3]) // (g.shape[2] * g.shape[3])
    return weights * spatial_repeat


def select_targets(scores: Tensor, targets: Tensor | None) -> Tensor:
    """Validate per-sample target classes, defaulting to each sample's argmax.

    Args:
        scores: ``[B, C]`` logits.
        targets: ``[B]`` integer class ids, or None for ``scores.argmax(1)``.

    Returns:
        ``[B]`` int64 class ids on the scores' device.
    """
    if scores.ndim != 2:
        raise ValueError(f"scores must be [B, C] logits, got shape {tuple(scores.shape)}")
    if targets is None:
        return scores.detach().argmax(dim=1)
    if targets.dtype.is_floating_point or targets.dtype == torch.bool:
        raise TypeError(f"targets must be integer class ids, got dtype {targets.dtype}")
    if targets.shape != scores.shape[:1]:
        raise ValueError(
            f"targets must have shape [B]={tuple(scores.shape[:1])}, got {tuple(targets.shape)}"
        )
    return targets.to(device=scores.device, dtype=torch.long)


def _target_grads(
    activations: Tensor,
    scores: Tensor,
    targets: Tensor,
    classifier_weight: Tensor | None,
    create_graph: bool,
) -> Tensor:
    """Gradient of each sample's target score with respect to its activations."""
    if classifier_weight is not None:
        # Pooled-linear head: dS_c/dA_kij = W[c, k] / (H W), constant over space.
        weight = classifier_weight if create_graph else classifier_weight.detach()
        spatial = activations.shape[2] * activations.shape[3]
        return (weight[targets] / spatial)[:, :, None, None]
    if not activations.requires_grad:
        raise RuntimeError(
            "the activations are not part of an autograd graph, so the gradient of the scores "
            "cannot be taken: run the forward pass under torch.enable_grad() (Lightning "
            "validation: Trainer(inference_mode=False)), or pass classifier_weight for a "
            "pooled-linear head"
        )
    if not scores.requires_grad:
        raise RuntimeError("the scores do not require grad: they must come from the same forward")
    selected = scores.gather(1, targets[:, None]).sum()
    (grads,) = torch.autograd.grad(
        selected, activations, create_graph=create_graph, retain_graph=True
    )
    return grads


def _class_activation_map(
    weight_fn: ChannelWeights,
    activations: Tensor,
    scores: Tensor,
    targets: Tensor | None,
    classifier_weight: Tensor | None,
    create_graph: bool,
) -> Tensor:
    if activations.ndim != 4:
        raise ValueError(
            f"activations must be [B, K, H, W], got shape {tuple(activations.shape)}; "
            "for token/sequence layers reshape them to a spatial grid first"
        )
    if activations.shape[0] != scores.shape[0]:
        raise ValueError(
            f"activations ({activations.shape[0]}) and scores ({scores.shape[0]}) "
            "have different batch sizes"
        )
    targets = select_targets(scores, targets)
    with torch.enable_grad():
        grads = _target_grads(activations, scores, targets, classifier_weight, create_graph)
        # Weights and the weighted sum stay in float32 even inside an autocast region.
        with torch.autocast(activations.device.type, enabled=False):
            weights = weight_fn(activations, grads)
            maps = torch.einsum("bk,bkhw->bhw", weights, _upcast(activations))
        return torch.relu(maps)


def gradcam_pp(
    activations: Tensor,
    scores: Tensor,
    targets: Tensor | None = None,
    *,
    create_graph: bool = False,
    classifier_weight: Tensor | None = None,
) -> Tensor:
    """Grad-CAM++ maps (eq. 19-20) for a whole batch.

    Args:
        activations: ``[B, K, H, W]`` activations captured in the same forward pass that
            produced ``scores`` (see :class:`distill.cam.capture_activations`).
        scores: ``[B, C]`` pre-softmax logits.
        targets: ``[B]`` class id per sample; None uses each sample's argmax.
        create_graph: make the map differentiable with respect to the model's parameters
            (for a loss on the map). Without it the gradients are treated as constants.
        classifier_weight: ``[C, K]`` weight of a linear classifier that the layer feeds through
            global average pooling only. Enables the closed form (no backward pass); the result
            equals the autograd path.

    Returns:
        ``[B, H, W]`` maps (float32, or float64 for float64 inputs) after the final relu, at the layer's resolution, not
        normalised.

    Example:
        >>> import torch
        >>> from distill.cam import capture_activations, gradcam_pp
        >>> model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(),
        ...                             torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
        ...                             torch.nn.Linear(4, 5))
        >>> with capture_activations(model, ["1"]) as acts:
        ...     logits = model(torch.randn(2, 3, 8, 8))
        >>> gradcam_pp(acts["1"], logits, torch.tensor([0, 3])).shape
        torch.Size([2, 6, 6])
    """
    return _class_activation_map(
        gradcam_pp_weights, activations, scores, targets, classifier_weight, create_graph
    )


def gradcam(
    activations: Tensor,
    scores: Tensor,
    targets: Tensor | None = None,
    *,
    create_graph: bool = False,
    classifier_weight: Tensor | None = None,
) -> Tensor:
    """Grad-CAM maps for a whole batch; same arguments and output as :func:`gradcam_pp`.

    Example:
        >>> import torch
        >>> acts = torch.rand(2, 4, 3, 3, requires_grad=True)
        >>> logits = torch.nn.Linear(4, 5)(acts.mean((2, 3)))
        >>> gradcam(acts, logits).shape
        torch.Size([2, 3, 3])
    """
    return _class_activation_map(
        gradcam_weights, activations, scores, targets, classifier_weight, create_graph
    )


def minmax_normalize(maps: Tensor, eps: float = 1e-7) -> Tensor:
    """Per-sample min-max normalisation of ``[B, H, W]`` maps to [0, 1].

    A constant map (e.g. all zeros) becomes all zeros instead of NaN.
    """
    flat = maps.flatten(1)
    low = flat.min(dim=1, keepdim=True).values
    span = flat.max(dim=1, keepdim=True).values - low
    scaled = (flat - low) / span.clamp_min(eps)
    return torch.where(span > eps, scaled, torch.zeros_like(scaled)).view_as(maps)


def resize_maps(maps: Tensor, size: tuple[int, int] | int) -> Tensor:
    """Bilinear resize of ``[B, H, W]`` maps (half-pixel centres, as cv2 and PIL)."""
    if isinstance(size, int):
        size = (size, size)
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    return torch.nn.functional.interpolate(
        maps[:, None], size=size, mode="bilinear", align_corners=False
    )[:, 0]
