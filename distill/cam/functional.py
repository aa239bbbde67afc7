"""Batched, differentiable class activation maps: the shared core, Grad-CAM and Grad-CAM++.

Every method shares one core (:func:`_class_activation_map`): pick the target class per sample,
get the gradient of its score with respect to the layer's activations (one autograd call for the
whole batch, or a closed form when the layer feeds straight into global-average-pooling and a
linear classifier), combine activations and gradients into a map, and return its relu. The
methods differ only in their :class:`MapRule`: how they combine (most through one weight per
channel, ``relu(sum_k w_k A_k)``) and which gradient they need (the score's, only the
classifier's rows, or none). The rest of the family is in :mod:`distill.cam.methods`. Token
layers of vision transformers go through the same core once a
:class:`~distill.cam.tokens.TokenLayout` says how their tokens form a grid; a token-average head (mean of the patch tokens, an optional
norm, a linear classifier) has its own closed form: one vector-Jacobian product through the norm.

Everything stays in torch, on the activations' device; alphas and weights are computed in
float32 whatever the activations' dtype.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn
from torch.func import functional_call

from distill.cam.tokens import TokenLayout, tokens_to_grid

__all__ = [
    "MapRule",
    "channel_weighted",
    "gradcam",
    "gradcam_pp",
    "gradcam_weights",
    "gradcam_pp_weights",
    "select_targets",
    "minmax_normalize",
    "resize_maps",
]

ChannelWeights = Callable[[Tensor, Tensor], Tensor]
"""``(activations [B, K, H, W], grads [B, K, H, W] or [B, K, 1, 1]) -> [B, K]`` weights."""
MapCombination = Callable[[Tensor, Tensor | None], Tensor]
"""``(activations, grads or None) -> [B, H, W]`` maps before the final relu (float32 or more)."""

Gradient = Literal["score", "classifier", "none"]


@dataclass(frozen=True)
class MapRule:
    """What one method of the family is, for the shared core.

    Attributes:
        combine: activations and gradients to a ``[B, H, W]`` map before the final relu.
        gradient: ``"score"``: the gradient of the target score (closed form at a pooled head,
            else autograd); ``"classifier"``: only the pooled head's closed form (CAM: no
            gradient exists to fall back on); ``"none"``: no gradient, no target (Eigen-CAM).
    """

    combine: MapCombination
    gradient: Gradient = "score"


def channel_weighted(weights: ChannelWeights) -> MapCombination:
    """The combination ``sum_k w_k A_k`` of a method defined by its channel weights."""

    def combine(activations: Tensor, grads: Tensor | None) -> Tensor:
        return torch.einsum("bk,bkhw->bhw", weights(activations, grads), activations)

    combine.__doc__ = f"``sum_k w_k A_k`` with ``w`` = :func:`{weights.__name__}`."
    return combine


def _upcast(tensor: Tensor) -> Tensor:
    """At least float32: half-precision activations would overflow in ``(sum A) * g``."""
    return tensor.to(torch.promote_types(tensor.dtype, torch.float32))


# eq. 19 is evaluated where |2 + S g| exceeds this many float epsilons of its own magnitude
# bound 2 + |g| sum|A| (its rounding error is of that order); closer to zero its sign is noise.
_DENOMINATOR_ULPS = 64.0


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
    because of ``relu(g)``.

    The guard: after a ReLU (CNNs) ``sum A >= 0`` and the denominator is at least 2. Signed
    activations (transformer tokens, pre-activation layers) can bring ``2 + (sum A) g`` to zero
    or below. A negative denominator is kept, as eq. 19 defines it; where it lies within its
    rounding error of zero (``64 eps (2 + |g| sum|A|)``, whose sign is then unknown) the term is
    set to zero instead of dividing by noise. The denominator is scale-free (scaling ``A`` by
    ``s`` scales ``g`` by ``1/s``), so the guard does not depend on the units of the layer.

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
    with torch.no_grad():
        magnitude = 2.0 + acts.abs().sum(dim=(2, 3), keepdim=True) * g.abs()
        tolerance = _DENOMINATOR_ULPS * torch.finfo(denominator.dtype).eps * magnitude
    valid = (g > 0) & (denominator.abs() > tolerance)
    alpha = torch.where(valid, 1.0 / torch.where(valid, denominator, torch.ones_like(g)), 0.0)
    weights = (alpha * torch.relu(g)).sum(dim=(2, 3))
    # A spatially constant gradient given as [B, K, 1, 1] stands for H*W equal terms.
    spatial_repeat = (acts.shape[2] * acts.shape[3]) // (g.shape[2] * g.shape[3])
    return weights * spatial_repeat


GRADCAM = MapRule(channel_weighted(gradcam_weights))
GRADCAM_PP = MapRule(channel_weighted(gradcam_pp_weights))


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


def _head_norm_vjp(norm: nn.Module, grid: Tensor, rows: Tensor, create_graph: bool) -> Tensor:
    """``J_f(z)^T w_c`` at ``z`` = each sample's mean token, for ``y_c = w_c . f(z) + b``.

    One vector-Jacobian product on ``[B, D]`` (DESIGN section 5): no backward through the
    network. Computed in at least float32, outside autocast, like the weights.
    """
    with torch.autocast(grid.device.type, enabled=False):
        mean_token = _upcast(grid).mean(dim=(2, 3))
        if not create_graph:
            mean_token = mean_token.detach()
        if not mean_token.requires_grad:
            mean_token = mean_token.detach().requires_grad_()
        dtype = mean_token.dtype
        state = {n: t.to(dtype) for n, t in [*norm.named_parameters(), *norm.named_buffers()]}
        if not create_graph:
            state = {n: t.detach() for n, t in state.items()}
        normed = functional_call(norm, state, (mean_token,))
        (vjp,) = torch.autograd.grad(
            (normed * rows.to(dtype)).sum(), mean_token, create_graph=create_graph
        )
    return vjp


def _closed_form_grads(
    grid: Tensor,
    classifier_weight: Tensor,
    targets: Tensor,
    head_norm: nn.Module | None,
    create_graph: bool,
) -> Tensor:
    """``[B, K, 1, 1]`` gradients of a pooled head: the same vector at every position.

    Pooled-linear head: ``dS_c/dA_kij = W[c, k] / (H W)``; with a norm ``f`` between pooling
    and the classifier: ``(J_f(z)^T W[c])_k / (H W)``.
    """
    weight = classifier_weight if create_graph else classifier_weight.detach()
    rows = weight[targets]
    if head_norm is not None:
        rows = _head_norm_vjp(head_norm, grid, rows, create_graph)
    spatial = grid.shape[2] * grid.shape[3]
    return (rows / spatial)[:, :, None, None]


def _autograd_grads(
    activations: Tensor, scores: Tensor, targets: Tensor, create_graph: bool
) -> Tensor:
    """Gradient of each sample's target score with respect to its activations."""
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
    rule: MapRule,
    activations: Tensor,
    scores: Tensor,
    targets: Tensor | None,
    classifier_weight: Tensor | None,
    create_graph: bool,
    layout: TokenLayout | None = None,
    head_norm: nn.Module | None = None,
) -> Tensor:
    if layout is None and activations.ndim != 4:
        raise ValueError(
            f"activations must be [B, K, H, W], got shape {tuple(activations.shape)}; for token "
            "layers pass layout=distill.cam.token_layout(model, image_size) (a model built by "
            "distill.models.build_model declares it)"
        )
    if head_norm is not None and classifier_weight is None:
        raise ValueError("head_norm belongs to the closed form: pass classifier_weight too")
    if rule.gradient == "classifier" and classifier_weight is None:
        raise ValueError(
            "CAM needs classifier_weight: it is defined only at a layer that feeds global "
            "average pooling and a linear classifier (the model's pooled head)"
        )
    if activations.shape[0] != scores.shape[0]:
        raise ValueError(
            f"activations ({activations.shape[0]}) and scores ({scores.shape[0]}) "
            "have different batch sizes"
        )
    targets = select_targets(scores, targets)
    with torch.enable_grad():
        grid = tokens_to_grid(activations, layout)
        grads = None
        if rule.gradient != "none" and classifier_weight is not None:
            grads = _closed_form_grads(grid, classifier_weight, targets, head_norm, create_graph)
        elif rule.gradient != "none":
            raw = _autograd_grads(activations, scores, targets, create_graph)
            grads = tokens_to_grid(raw, layout)
        if grads is not None:
            grads = _upcast(grads)
        # The combination stays in float32 even inside an autocast region.
        with torch.autocast(grid.device.type, enabled=False):
            maps = rule.combine(_upcast(grid), grads)
        return torch.relu(maps)


def gradcam_pp(
    activations: Tensor,
    scores: Tensor,
    targets: Tensor | None = None,
    *,
    create_graph: bool = False,
    classifier_weight: Tensor | None = None,
    head_norm: nn.Module | None = None,
    layout: TokenLayout | None = None,
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
        head_norm: the norm between the pooling and the classifier of a token-average head
            (timm's ``fc_norm``), for the closed form; None: no norm.
        layout: how token activations (``[B, N, D]`` or ``[B, h, w, C]``) form a grid; None for
            ``[B, K, H, W]`` activations. See :func:`distill.cam.token_layout`.

    Returns:
        ``[B, H, W]`` maps (float32, or float64 for float64 inputs) after the final relu, at the
        layer's (or token grid's) resolution, not normalised.

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
        GRADCAM_PP,
        activations,
        scores,
        targets,
        classifier_weight,
        create_graph,
        layout,
        head_norm,
    )


def gradcam(
    activations: Tensor,
    scores: Tensor,
    targets: Tensor | None = None,
    *,
    create_graph: bool = False,
    classifier_weight: Tensor | None = None,
    head_norm: nn.Module | None = None,
    layout: TokenLayout | None = None,
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
        GRADCAM,
        activations,
        scores,
        targets,
        classifier_weight,
        create_graph,
        layout,
        head_norm,
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
