"""Inference wrappers: ``cam(images, targets=None) -> [B, H, W]`` maps for a model and a layer.

They share the functional core of :mod:`distill.cam.functional`; a subclass only names its
:class:`~distill.cam.functional.MapRule`. The model's train/eval mode is left as it was and no
hook outlives a call.
Vision transformers built by :func:`distill.models.build_model` work the same way: their token
layout (prefix tokens, patch grid at the input's size) comes from the model, and the maps have
the token grid's size.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from distill.cam import methods
from distill.cam.capture import capture_activations, pooled_head, resolve_layer
from distill.cam.functional import GRADCAM, GRADCAM_PP, MapRule, _class_activation_map
from distill.cam.tokens import token_layout

__all__ = [
    "CAM",
    "EXPLAINERS",
    "BaseCAM",
    "EigenCAM",
    "GradCAM",
    "GradCAMElementWise",
    "GradCAMPlusPlus",
    "HiResCAM",
    "LayerCAM",
    "XGradCAM",
]


class BaseCAM:
    """Maps of ``model`` at ``target_layer`` (default: the model's ``cam_layer``).

    Args:
        model: the network; its mode (train/eval) is not changed. Call ``model.eval()`` yourself
            for deterministic maps of a network with batch norm or dropout.
        target_layer: submodule name as in ``model.named_modules()``.
    """

    rule: MapRule
    """The method (a subclass sets it)."""

    def __init__(self, model: nn.Module, target_layer: str | None = None) -> None:
        target_layer = target_layer or getattr(model, "cam_layer", None)
        if target_layer is None:
            raise ValueError(
                f"{type(model).__name__} has no cam_layer attribute: pass target_layer"
            )
        resolve_layer(model, target_layer)
        if self.rule.gradient == "classifier" and pooled_head(model, target_layer) is None:
            raise ValueError(
                f"{type(self).__name__} needs the layer that feeds the pooled linear head; "
                f"{type(model).__name__} has none at {target_layer!r}"
            )
        self.model = model
        self.target_layer = target_layer

    def __call__(self, images: Tensor, targets: Tensor | None = None) -> Tensor:
        """Return detached ``[B, H, W]`` maps for ``targets`` (default: the predicted class)."""
        return self.maps_and_scores(images, targets)[0]

    def maps_and_scores(
        self, images: Tensor, targets: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Detached maps and the ``[B, C]`` scores of the same forward pass, for callers that
        also need the prediction (no second forward)."""
        head = pooled_head(self.model, self.target_layer)
        autograd = self.rule.gradient == "score" and head is None
        # Closed form or no gradient: no graph at all. Autograd path: cut the graph at the
        # layer, since only the part after it is needed for the gradient.
        grad_mode = torch.enable_grad() if autograd else torch.no_grad()
        capture = capture_activations(self.model, [self.target_layer], detach=autograd)
        with capture as acts, grad_mode:
            scores = self.model(images)
        maps = _class_activation_map(
            self.rule,
            acts[self.target_layer],
            scores,
            targets,
            head.classifier.weight if head is not None else None,
            create_graph=False,
            layout=token_layout(self.model, images.shape[-2:]),
            head_norm=head.norm if head is not None else None,
        )
        return maps.detach(), scores.detach()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(model={type(self.model).__name__}, target_layer={self.target_layer!r})"


class GradCAM(BaseCAM):
    """Grad-CAM (Selvaraju et al.): channel weights are the mean gradient."""

    rule = GRADCAM


class GradCAMPlusPlus(BaseCAM):
    """Grad-CAM++ (Chattopadhay et al., eq. 19): gradient-weighted alphas per position.

    Example:
        >>> import torch
        >>> from distill.models import build_model
        >>> model = build_model("wrn_16_1", num_classes=10).eval()
        >>> GradCAMPlusPlus(model)(torch.randn(2, 3, 32, 32)).shape
        torch.Size([2, 8, 8])
    """

    rule = GRADCAM_PP


class XGradCAM(BaseCAM):
    """XGrad-CAM (Fu et al.): activation-weighted mean gradient per channel."""

    rule = methods.XGRADCAM


class HiResCAM(BaseCAM):
    """HiResCAM (Draelos and Carin): gradient times activation, summed over channels."""

    rule = methods.HIRESCAM


class GradCAMElementWise(BaseCAM):
    """Grad-CAM element-wise: relu of gradient times activation, summed over channels."""

    rule = methods.ELEMENTWISE


class LayerCAM(BaseCAM):
    """LayerCAM (Jiang et al.), one layer: positive gradient times activation."""

    rule = methods.LAYERCAM


class CAM(BaseCAM):
    """CAM (Zhou et al.): the classifier's weights; only at the layer feeding the pooled head.

    Example:
        >>> import torch
        >>> from distill.models import build_model
        >>> model = build_model("wrn_16_1", num_classes=10).eval()
        >>> CAM(model)(torch.randn(2, 3, 32, 32)).shape
        torch.Size([2, 8, 8])
    """

    rule = methods.CAM


class EigenCAM(BaseCAM):
    """Eigen-CAM: first principal component of the activations; no gradient, no class."""

    rule = methods.EIGENCAM


EXPLAINERS: dict[str, type[BaseCAM]] = {
    "gradcam": GradCAM,
    "gradcam_pp": GradCAMPlusPlus,
    "xgradcam": XGradCAM,
    "layercam": LayerCAM,
    "hirescam": HiResCAM,
    "gradcam_elementwise": GradCAMElementWise,
    "cam": CAM,
    "eigencam": EigenCAM,
}
"""Inference wrappers by the names configs and tools use (those of ``CAM_METHODS``)."""
