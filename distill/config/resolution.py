"""The grid of each model's explanation maps at the run's image size, checked before training.

A CAM layer's grid is the input size divided by the network's stride at that layer: an ImageNet
network (stride 32) fed 32x32 images explains each image with a 1x1 map, one number that points
nowhere. Matching such maps teaches the student nothing about where to look, so a run with a
map loss on a 1x1 grid is refused, and every run reports its grids. Grids are computed by a
forward pass on the meta device: shapes only, no memory and no arithmetic.
"""

from __future__ import annotations

import torch
from omegaconf import DictConfig
from torch import nn

from distill.cam import capture_activations
from distill.errors import ConfigError
from distill.models import build_model
from distill.training.console import MIN_CAM_SIZE

__all__ = ["cam_grid", "check_map_grids", "map_layers", "size_for_grid"]


def cam_grid(model: nn.Module, layer: str, image_shape: tuple[int, int, int]) -> tuple[int, int]:
    """``(h, w)`` of ``layer``'s output for one ``image_shape`` input, from a meta forward.

    Args:
        model: a model built on the meta device (a real one is fine too, but computes).
        layer: a submodule name, e.g. ``model.cam_layer``.
        image_shape: ``(C, H, W)`` of the input.

    Example:
        >>> with torch.device("meta"):
        ...     model = build_model("resnet18", num_classes=10)
        >>> cam_grid(model, model.cam_layer, (3, 224, 224))
        (7, 7)
    """
    device = next(model.parameters(), torch.empty(0, device="meta")).device
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), capture_activations(model, [layer]) as acts:
            model(torch.empty(1, *image_shape, device=device))
    finally:
        model.train(was_training)
    height, width = acts[layer].shape[-2:]
    return int(height), int(width)


def map_layers(cfg: DictConfig, role: str, model: nn.Module) -> list[str]:
    """The layers of ``role`` whose maps the map loss compares (``loss.map_layers``, else the
    model's ``cam_layer``)."""
    pairs = cfg.loss.map_layers
    return [pair[role] for pair in pairs] if pairs else [model.cam_layer]


def size_for_grid(model: nn.Module, layer: str, minimum: int = MIN_CAM_SIZE) -> int | None:
    """The smallest multiple of ``layer``'s stride whose square input gives a map grid of at
    least ``minimum`` on each side; ``None`` when the model takes no other input size.

    Why not ``input size / grid``: at inputs smaller than the stride, padding rounds the grid up
    to 1x1, so that ratio understates the stride (a 1-pixel input would suggest 4 pixels). The
    stride is read at a probe large enough for that rounding not to matter, and the answer is
    checked by a forward at that size.
    """
    probe = 64 * minimum
    try:
        stride = max(1, round(probe / max(min(cam_grid(model, layer, (3, probe, probe))), 1)))
        for size in range(stride * minimum, stride * (minimum + 8), stride):
            if min(cam_grid(model, layer, (3, size, size))) >= minimum:
                return size
    except (RuntimeError, ValueError, AssertionError, TypeError):
        return None  # a model built for one input size
    return None


def _fix(role: str, model: nn.Module, layer: str) -> str:
    """What to change so the map at ``layer`` reaches MIN_CAM_SIZE on its short side."""
    size = size_for_grid(model, layer)
    larger = (
        f"data.image_size={size} gives {MIN_CAM_SIZE}x{MIN_CAM_SIZE}"
        if size is not None
        else f"a data.image_size whose grid is at least {MIN_CAM_SIZE}x{MIN_CAM_SIZE}"
    )
    return (
        f"use larger images ({larger}), "
        f"an earlier layer with a finer grid (loss.map_layers, {role}: ...), a {role} model "
        "built for this resolution (e.g. resnet20 or wrn_16_2 at 32x32), or turn the map "
        "loss off (loss.map_weight=0)"
    )


def check_map_grids(cfg: DictConfig, image_shape: tuple[int, int, int]) -> list[str]:
    """Report each model's map grid at ``image_shape``; refuse a 1x1 grid under a map loss.

    Args:
        cfg: a run config (``teacher``, ``student`` and ``loss`` sections are read).
        image_shape: ``(C, H, W)`` of the model input.

    Returns:
        One report line per model, e.g. ``"teacher resnet18: net.layer4 1x1 at 32x32"``.

    Raises:
        ConfigError: the map loss is on (``loss.map_weight > 0``, a student stage runs) and a
            layer it compares is 1x1; the message says what to change.
    """
    map_loss = cfg.loss.map_weight > 0 and cfg.stage != "teacher"
    lines = []
    for role in ("teacher", "student"):
        section = cfg[role]
        with torch.device("meta"):
            model = build_model(
                section.name, num_classes=10, cam_layer=section.cam_layer, **section.kwargs
            )
        layers = map_layers(cfg, role, model)
        grids = {layer: cam_grid(model, layer, image_shape) for layer in layers}
        described = ", ".join(f"{layer} {h}x{w}" for layer, (h, w) in grids.items())
        lines.append(f"{role} {section.name}: {described} at {image_shape[1]}x{image_shape[2]}")
        for layer, grid in grids.items():
            if map_loss and max(grid) <= 1:
                raise ConfigError(
                    f"the {role}'s map layer {layer!r} ({section.name}) is {grid[0]}x{grid[1]} "
                    f"at {image_shape[1]}x{image_shape[2]} inputs: a map of one value cannot "
                    f"point anywhere, so loss.map_weight={cfg.loss.map_weight} would teach "
                    f"nothing; {_fix(role, model, layer)}"
                )
    return lines
