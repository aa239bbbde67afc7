"""The rest of the CAM family: XGrad-CAM, LayerCAM, HiResCAM, Grad-CAM element-wise, CAM and
Eigen-CAM, as rules for the shared core of :mod:`distill.cam.functional`.

Each method is one combination of the layer's activations ``A`` (``[B, K, H, W]``, or a token
grid) and the gradient ``g = dS_c / dA`` of the target score, plus the final relu. None of them
has its own pipeline: batching, per-sample targets, the closed form at pooled heads, token
layouts, ``create_graph`` and float32 accumulation all come from the core.

Closed forms. At a layer that feeds global average pooling over ``Z = H W`` positions (or the
mean of ``Z`` patch tokens) and a linear classifier ``W``, ``S_c = sum_k W[c, k] mean_ij A_kij
+ b_c``, so ``g_kij = W[c, k] / Z`` at every position; with a norm ``f`` between the pooling and
the classifier (timm's ``fc_norm``), ``g_kij = (J_f(z)^T W[c])_k / Z`` with ``z`` the mean token.
Either way ``g`` is one vector ``g_k`` per sample, the same at every position. The core then
passes it as ``[B, K, 1, 1]`` and each combination below evaluates its formula with it, which
is the closed form derived in its docstring: no backward pass through the network. There:

- Grad-CAM = HiResCAM = XGrad-CAM: ``sum_k g_k A_k`` (exactly equal, not only up to scale);
- CAM = ``Z`` x Grad-CAM;
- LayerCAM = Grad-CAM element-wise = ``sum_k relu(g_k) A_k`` when ``A >= 0`` (after a ReLU);
  for signed activations (transformer tokens) element-wise is ``sum_k relu(g_k A_k)``.

At earlier layers (and class-token transformers) the gradient varies over positions and the
methods differ (``benchmarks/cam_similarity.py`` measures by how much).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from distill.cam.functional import (
    GRADCAM,
    GRADCAM_PP,
    MapRule,
    _class_activation_map,
    channel_weighted,
    gradcam,
    gradcam_pp,
)
from distill.cam.tokens import TokenLayout

__all__ = [
    "CAM_METHODS",
    "CAM_RULES",
    "cam",
    "cam_weights",
    "eigencam",
    "eigencam_projection",
    "gradcam_elementwise",
    "hirescam",
    "layercam",
    "xgradcam",
    "xgradcam_weights",
]

# A ratio or an eigen-gap is used where it exceeds this many float epsilons of its own scale;
# below that its value is rounding noise (the same rule as Grad-CAM++'s denominator guard).
_ULPS = 64.0


def _spatially_constant(grads: Tensor, activations: Tensor) -> bool:
    return grads.shape[2] * grads.shape[3] == 1 < activations.shape[2] * activations.shape[3]


def xgradcam_weights(activations: Tensor, grads: Tensor) -> Tensor:
    """XGrad-CAM channel weights (Fu et al., BMVC 2020, eq. 9).

    ``w_k = sum_ij (A_kij / sum_ab A_kab) g_kij``: the activation-weighted mean gradient.

    Closed form: with ``g_kij = g_k`` the sum is ``g_k (sum_ij A_kij) / (sum_ab A_kab) = g_k``,
    Grad-CAM's weight, so XGrad-CAM = Grad-CAM at a pooled head.

    Guard: the paper assumes ``A >= 0``, where ``sum A = 0`` means a dead channel
    (``A_k = 0``, which adds nothing to the map). With signed activations ``sum A`` can cancel
    to rounding noise (``|sum A| <= 64 eps sum|A|``); that channel's weight is set to 0 instead
    of dividing by noise, on both paths.

    Returns:
        ``[B, K]`` weights (at least float32).
    """
    act_sum = activations.sum(dim=(2, 3))
    with torch.no_grad():
        tolerance = _ULPS * torch.finfo(act_sum.dtype).eps * activations.abs().sum(dim=(2, 3))
    valid = act_sum.abs() > tolerance
    if _spatially_constant(grads, activations):
        ratio = grads[:, :, 0, 0]
    else:
        ratio = (grads * activations).sum(dim=(2, 3)) / torch.where(valid, act_sum, 1.0)
    return torch.where(valid, ratio, 0.0)


def cam_weights(activations: Tensor, grads: Tensor) -> Tensor:
    """CAM channel weights (Zhou et al., CVPR 2016, eq. 2): the classifier's row ``W[c]``.

    The core gives CAM only the closed-form gradient ``W[c] / Z`` (``[B, K, 1, 1]``), so the
    row is that times ``Z``; with a head norm it is ``J_f(z)^T W[c]``, the classifier's weights
    as the pooled layer sees them (the norm linearised at the sample's mean token).
    """
    spatial = activations.shape[2] * activations.shape[3]
    return grads.mean(dim=(2, 3)) * spatial


def _hirescam(activations: Tensor, grads: Tensor) -> Tensor:
    return (grads * activations).sum(dim=1)


def _elementwise(activations: Tensor, grads: Tensor) -> Tensor:
    return torch.relu(grads * activations).sum(dim=1)


def _layercam(activations: Tensor, grads: Tensor) -> Tensor:
    return (torch.relu(grads) * activations).sum(dim=1)


# Repeated squarings of the (trace-normalised) matrix in the first-component search: after m of
# them the other directions are damped by (lambda_2 / lambda_1)^(2^m); 10 reach 1e-9 at a ratio
# of 0.98. Samples whose residual is still larger fall back to a full eigendecomposition.
_SQUARINGS = 10


def _top_eigenvector(matrix: Tensor) -> Tensor:
    """``[B, n]`` unit eigenvector of the largest eigenvalue of symmetric PSD ``[B, n, n]``.

    Why not ``torch.linalg.eigh``: its full decomposition is slow on CPUs (75 ms for one 192 x
    192 matrix here, 10 s for a batch of 128) while only one vector is needed. Repeated
    squaring is a few batched matmuls; a residual check (1024 float epsilons of the
    eigenvalue) sends any sample that has not converged (nearly equal top eigenvalues) to
    ``eigh``. A zero matrix gives a zero vector.
    """
    tiny = torch.finfo(matrix.dtype).tiny
    power = matrix
    for _ in range(_SQUARINGS):
        trace = power.diagonal(dim1=-2, dim2=-1).sum(-1).clamp_min(tiny)
        power = power / trace[:, None, None]
        power = power @ power
    column = power.diagonal(dim1=-2, dim2=-1).argmax(-1)
    vector = power.gather(2, column[:, None, None].expand(-1, power.shape[1], 1))[..., 0]
    for _ in range(2):  # refine: power steps on the matrix itself
        vector = matrix @ vector[..., None]
        vector = vector[..., 0] / vector.norm(dim=1).clamp_min(tiny)
    image = (matrix @ vector[..., None])[..., 0]
    value = (vector * image).sum(-1)
    residual = (image - value[:, None] * vector).norm(dim=-1)
    stuck = residual > 1024 * torch.finfo(matrix.dtype).eps * value.abs().clamp_min(tiny)
    if bool(stuck.any()):
        vector = vector.clone()
        vector[stuck] = torch.linalg.eigh(matrix[stuck]).eigenvectors[..., -1]
    return vector


def _first_component(centred: Tensor) -> Tensor:
    """``[B, K]`` unit first principal direction of ``[B, N, K]`` centred rows, sign fixed.

    The sign: ``v`` is chosen with ``sum_k v_k >= 0``. Since ``C v = s^2 v`` for ``C = X^T X``,
    ``sum_n p_n t_n = s^2 sum_k v_k`` for the projection ``p = X v`` and the channel total
    ``t = X 1``: the map correlates positively with the layer's total activation (where the
    features are stronger than average, the map is higher). Exactly 0 (measure zero) keeps +.

    The value comes from the smaller of ``X^T X`` (K x K) and ``X X^T`` (N x N): the latter's
    top eigenvector ``u`` gives ``v = X^T u / |X^T u|``.

    The derivative: ``dv = (s^2 I - C)^+ dC v`` (first-order perturbation of a simple
    eigenvector). It involves only the gaps to the first eigenvalue, so repeated lower
    eigenvalues (dead channels, rank lost to centring) are harmless, whereas
    ``torch.linalg.svd``'s backward divides by every pairwise gap and gives NaN there. The
    pseudo-inverse is applied as a solve with ``s^2 I - C + s^2 v v^T`` (nonsingular when the
    first eigenvalue is simple) and attached as ``v + solve((I - v v^T)(C - stop_grad(C)) v)``,
    whose value is ``v`` and whose first derivative is exact. Nearly equal first eigenvalues
    leave the direction, and so its derivative, ill-conditioned: inherent to Eigen-CAM.
    """
    tiny = torch.finfo(centred.dtype).tiny
    with torch.no_grad():
        # The search runs in float64: with nearly equal top eigenvalues (gap 0.3% of the first
        # for uniform noise) float32 rounding would move the direction by percents.
        rows = centred.detach().double()
        if rows.shape[1] < rows.shape[2]:
            u = _top_eigenvector(rows @ rows.transpose(1, 2))
            top = (rows.transpose(1, 2) @ u[..., None])[..., 0]
            top = top / top.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(top.dtype).tiny)
        else:
            top = _top_eigenvector(rows.transpose(1, 2) @ rows)
        top = torch.where(top.sum(dim=-1, keepdim=True) < 0, -top, top).to(centred.dtype)
    if not centred.requires_grad:
        return top
    cov = centred.transpose(1, 2) @ centred
    with torch.no_grad():
        eye = torch.eye(cov.shape[-1], dtype=cov.dtype, device=cov.device)
        value = top[:, None, :] @ cov @ top[..., None]  # [B, 1, 1]
        outer = top[..., None] * top[:, None, :]
        system = value * (eye + outer) - cov
        system = torch.where(value > tiny, system, eye)  # X = 0: a zero map, no direction
    shift = ((cov - cov.detach()) @ top[..., None])[..., 0]
    shift = shift - (shift * top).sum(-1, keepdim=True) * top
    return top + torch.linalg.solve(system, shift)


def eigencam_projection(activations: Tensor, grads: Tensor | None = None) -> Tensor:
    """Eigen-CAM (Muhammad and Yeasin, IJCNN 2020): the projection on the first principal
    component.

    Per sample, the ``Z x K`` matrix of positions by channels is centred over positions and
    projected on its first right-singular vector ``v``: ``map_ij = sum_k (A_kij - mean A_k)
    v_k``. No gradient and no class: the same map for every target. ``v`` is only defined up to
    sign; see :func:`_first_component` for the rule that makes maps deterministic.
    """
    batch, _, height, width = activations.shape
    rows = activations.flatten(2).transpose(1, 2)
    centred = rows - rows.mean(dim=1, keepdim=True)
    direction = _first_component(centred)
    return (centred @ direction[..., None]).view(batch, height, width)


XGRADCAM = MapRule(channel_weighted(xgradcam_weights))
HIRESCAM = MapRule(_hirescam)
ELEMENTWISE = MapRule(_elementwise)
LAYERCAM = MapRule(_layercam)
CAM = MapRule(channel_weighted(cam_weights), gradient="classifier")
EIGENCAM = MapRule(eigencam_projection, gradient="none")


def _run(
    rule: MapRule,
    activations: Tensor,
    scores: Tensor,
    targets: Tensor | None,
    create_graph: bool,
    classifier_weight: Tensor | None,
    head_norm: nn.Module | None,
    layout: TokenLayout | None,
) -> Tensor:
    return _class_activation_map(
        rule, activations, scores, targets, classifier_weight, create_graph, layout, head_norm
    )


def xgradcam(
    activations: Tensor,
    scores: Tensor,
    targets: Tensor | None = None,
    *,
    create_graph: bool = False,
    classifier_weight: Tensor | None = None,
    head_norm: nn.Module | None = None,
    layout: TokenLayout | None = None,
) -> Tensor:
    """XGrad-CAM maps ``relu(sum_k w_k A_k)``, weights from :func:`xgradcam_weights`.

    Same arguments and output as :func:`distill.cam.gradcam_pp`. At a pooled head the closed
    form is Grad-CAM's map.
    """
    return _run(
        XGRADCAM, activations, scores, targets, create_graph, classifier_weight, head_norm, layout
    )


def hirescam(
    activations: Tensor,
    scores: Tensor,
    targets: Tensor | None = None,
    *,
    create_graph: bool = False,
    classifier_weight: Tensor | None = None,
    head_norm: nn.Module | None = None,
    layout: TokenLayout | None = None,
) -> Tensor:
    """HiResCAM maps (Draelos and Carin, 2020): ``relu(sum_k g_kij A_kij)``.

    The gradient multiplies the activations position by position instead of being averaged
    first. Closed form: ``g_kij = g_k`` gives ``sum_k g_k A_kij`` = Grad-CAM's map.
    Same arguments and output as :func:`distill.cam.gradcam_pp`.
    """
    return _run(
        HIRESCAM, activations, scores, targets, create_graph, classifier_weight, head_norm, layout
    )


def gradcam_elementwise(
    activations: Tensor,
    scores: Tensor,
    targets: Tensor | None = None,
    *,
    create_graph: bool = False,
    classifier_weight: Tensor | None = None,
    head_norm: nn.Module | None = None,
    layout: TokenLayout | None = None,
) -> Tensor:
    """Grad-CAM element-wise maps (pytorch-grad-cam's ``GradCAMElementWise``):
    ``sum_k relu(g_kij A_kij)``.

    HiResCAM with each product clipped at zero before the channel sum. Closed form:
    ``sum_k relu(g_k A_kij)``, which for ``A >= 0`` is ``sum_k relu(g_k) A_kij`` = LayerCAM's.
    Same arguments and output as :func:`distill.cam.gradcam_pp`.
    """
    return _run(
        ELEMENTWISE,
        activations,
        scores,
        targets,
        create_graph,
        classifier_weight,
        head_norm,
        layout,
    )


def layercam(
    activations: Tensor,
    scores: Tensor,
    targets: Tensor | None = None,
    *,
    create_graph: bool = False,
    classifier_weight: Tensor | None = None,
    head_norm: nn.Module | None = None,
    layout: TokenLayout | None = None,
) -> Tensor:
    """LayerCAM maps (Jiang et al., TIP 2021, eq. 5-6) of one layer:
    ``relu(sum_k relu(g_kij) A_kij)``.

    Closed form: ``sum_k relu(g_k) A_kij``: Grad-CAM without its negative channel weights.
    (The paper's fusion of several layers is not part of a one-layer map.)
    Same arguments and output as :func:`distill.cam.gradcam_pp`.
    """
    return _run(
        LAYERCAM, activations, scores, targets, create_graph, classifier_weight, head_norm, layout
    )


def cam(
    activations: Tensor,
    scores: Tensor,
    targets: Tensor | None = None,
    *,
    create_graph: bool = False,
    classifier_weight: Tensor | None = None,
    head_norm: nn.Module | None = None,
    layout: TokenLayout | None = None,
) -> Tensor:
    """CAM maps (Zhou et al., CVPR 2016): ``relu(sum_k W[c, k] A_k)``, no gradient.

    Defined only at the layer that feeds the pooled head, so ``classifier_weight`` is required
    (ValueError without it). Equals ``Z`` x Grad-CAM there. The paper's map has no relu; the
    relu keeps the family's convention (evidence for the class, as a distillation target).
    Same arguments and output as :func:`distill.cam.gradcam_pp`.
    """
    return _run(
        CAM, activations, scores, targets, create_graph, classifier_weight, head_norm, layout
    )


def eigencam(
    activations: Tensor,
    scores: Tensor,
    targets: Tensor | None = None,
    *,
    create_graph: bool = False,
    classifier_weight: Tensor | None = None,
    head_norm: nn.Module | None = None,
    layout: TokenLayout | None = None,
) -> Tensor:
    """Eigen-CAM maps: ``relu`` of :func:`eigencam_projection`; class-agnostic.

    ``targets``, ``classifier_weight`` and ``head_norm`` are accepted for the common signature
    (targets are still validated) and do not change the map. The map is differentiable with
    respect to the activations whatever ``create_graph`` says (there is no gradient to keep).
    Same output as :func:`distill.cam.gradcam_pp`.
    """
    return _run(
        EIGENCAM, activations, scores, targets, create_graph, classifier_weight, head_norm, layout
    )


CAM_RULES: dict[str, MapRule] = {
    "gradcam": GRADCAM,
    "gradcam_pp": GRADCAM_PP,
    "xgradcam": XGRADCAM,
    "layercam": LAYERCAM,
    "hirescam": HIRESCAM,
    "gradcam_elementwise": ELEMENTWISE,
    "cam": CAM,
    "eigencam": EIGENCAM,
}
"""Each method's rule by the name configs use (what it combines, which gradient it needs)."""

CAM_METHODS = {
    "gradcam": gradcam,
    "gradcam_pp": gradcam_pp,
    "xgradcam": xgradcam,
    "layercam": layercam,
    "hirescam": hirescam,
    "gradcam_elementwise": gradcam_elementwise,
    "cam": cam,
    "eigencam": eigencam,
}
"""Map functions by the names configs use."""
