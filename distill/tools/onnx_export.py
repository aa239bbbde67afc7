"""ONNX graphs of a network, and of the network together with its Grad-CAM++ maps.

``model.onnx`` takes ``images`` ``[batch, 3, H, W]`` (normalised as ``model.json`` says; the
batch is dynamic) and returns ``logits`` ``[batch, C]``; exported with maps it also returns
``maps`` ``[batch, h, w]``, the Grad-CAM++ map of each image's predicted class at the CAM
layer's resolution, not normalised (what :class:`distill.cam.GradCAMPlusPlus` returns)::

    import onnxruntime
    session = onnxruntime.InferenceSession("export/model.onnx")
    logits, maps = session.run(None, {"images": images})  # numpy float32

Maps need no backward pass in the graph only where the CAM layer feeds a pooled-linear head
(:func:`distill.cam.pooled_head`): the toolkit's closed form then runs as ordinary operations.
A norm between pooling and classifier (a token-average ViT's ``fc_norm``) enters that form as a
vector-Jacobian product, which the exporter cannot trace through autograd; for ``LayerNorm`` it
is written out below. Other heads need autograd, which an ONNX graph cannot hold.

``onnx`` and ``onnxscript`` (the exporter) and ``onnxruntime`` (to run the graph) are the
optional ``onnx`` extra; nothing here imports them at module import time.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import torch
from torch import Tensor, nn

from distill.cam import (
    capture_activations,
    gradcam_pp,
    pooled_head,
    select_targets,
    token_layout,
    tokens_to_grid,
)

__all__ = ["ONNX_FILE", "LogitsAndMaps", "maps_unsupported", "missing_onnx_packages", "save_onnx"]

ONNX_FILE = "model.onnx"
_EXPORTER_PACKAGES = ("onnx", "onnxscript")


def missing_onnx_packages() -> list[str]:
    """The packages ``torch.onnx.export(..., dynamo=True)`` needs that cannot be imported."""
    missing = []
    for name in _EXPORTER_PACKAGES:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    return missing


def maps_unsupported(model: nn.Module) -> str | None:
    """Why ``model``'s Grad-CAM++ maps cannot go into an ONNX graph; None when they can."""
    layer = getattr(model, "cam_layer", None)
    head = pooled_head(model, layer) if layer else None
    name = getattr(model, "model_name", type(model).__name__)
    if head is None:
        return (
            f"{name}: maps in the ONNX graph need a pooled-linear head at the CAM layer "
            f"{layer!r} (global average pooling, then a linear classifier); this model's maps "
            "need autograd, which an ONNX graph cannot run: export without maps"
        )
    if head.norm is not None and not _plain_layer_norm(head.norm):
        return (
            f"{name}: maps in the ONNX graph support a LayerNorm over the last dimension "
            f"between pooling and classifier, not {type(head.norm).__name__}: export without maps"
        )
    return None


def _plain_layer_norm(norm: nn.Module) -> bool:
    return isinstance(norm, nn.LayerNorm) and len(norm.normalized_shape) == 1


def layer_norm_vjp(norm: nn.LayerNorm, z: Tensor, rows: Tensor) -> Tensor:
    """``J_norm(z)^T rows`` per sample: ``[B, D]`` inputs and rows, without autograd.

    With ``x = (z - mean) / s``, ``s = sqrt(var + eps)`` (biased variance) and ``g = rows *
    weight``, the product is ``(g - mean(g) - x mean(g x)) / s``: the layer norm's own backward.

    Example:
        >>> import torch
        >>> norm, z, rows = torch.nn.LayerNorm(5), torch.randn(3, 5), torch.randn(3, 5)
        >>> _, vjp = torch.func.vjp(norm, z)
        >>> torch.allclose(layer_norm_vjp(norm, z, rows), vjp(rows)[0], atol=1e-6)
        True
    """
    scale = torch.rsqrt(z.var(dim=-1, unbiased=False, keepdim=True) + norm.eps)
    x = (z - z.mean(dim=-1, keepdim=True)) * scale
    g = rows if norm.weight is None else rows * norm.weight.to(rows.dtype)
    return (g - g.mean(dim=-1, keepdim=True) - x * (g * x).mean(dim=-1, keepdim=True)) * scale


class LogitsAndMaps(nn.Module):
    """``images -> (logits, maps)``: one forward pass, maps of the predicted classes in closed
    form (:func:`distill.cam.gradcam_pp`), so an exporter sees no backward pass.

    Args:
        model: a network whose head :func:`maps_unsupported` accepts, in eval mode.
        image_size: ``(H, W)`` of the inputs (fixes a transformer's token grid).
    """

    def __init__(self, model: nn.Module, image_size: tuple[int, int]) -> None:
        super().__init__()
        reason = maps_unsupported(model)
        if reason:
            raise ValueError(reason)
        self.model = model
        self.layer: str = model.cam_layer
        head = pooled_head(model, self.layer)
        self.classifier: nn.Linear = head.classifier
        self.norm: nn.Module | None = head.norm
        self.layout = token_layout(model, image_size)

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        with capture_activations(self.model, [self.layer]) as captured:
            logits = self.model(images)
        activations = captured[self.layer]
        targets = select_targets(logits, None)
        weight = self.classifier.weight
        if self.norm is not None:
            # The closed form with a per-sample classifier row: J_norm(mean token)^T W[c].
            mean_token = tokens_to_grid(activations, self.layout).float().mean(dim=(2, 3))
            weight = layer_norm_vjp(self.norm, mean_token, weight[targets].float())
            targets = torch.arange(weight.shape[0], device=weight.device)
        maps = gradcam_pp(
            activations, logits, targets, classifier_weight=weight, layout=self.layout
        )
        return logits, maps


def save_onnx(model: nn.Module, image_size: tuple[int, int], path: Path, *, maps: bool) -> Path:
    """Export ``model`` (eval mode, CPU) with the dynamo exporter and a dynamic batch axis.

    Args:
        model: the network; with ``maps`` one that :func:`maps_unsupported` accepts.
        image_size: ``(H, W)`` of the inputs.
        path: the ``.onnx`` file to write (weights inside, unless over protobuf's 2 GB).
        maps: also return the Grad-CAM++ maps of the predicted classes.
    """
    graph = LogitsAndMaps(model, image_size) if maps else model
    outputs = ["logits", "maps"] if maps else ["logits"]
    # Batch 2, not 1: the exporter would take a size-1 example axis for a constant.
    example = torch.zeros(2, 3, *image_size)
    program = torch.onnx.export(
        graph.eval(),
        (example,),
        dynamo=True,
        dynamic_shapes=({0: torch.export.Dim("batch")},),
        input_names=["images"],
        output_names=outputs,
        verbose=False,
    )
    program.save(path)
    return path
