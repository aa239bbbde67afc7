"""What a run prints: Lightning's advertising and deprecation noise filtered, and the one warning
a user needs when explanation maps cannot localise anything."""

from __future__ import annotations

import logging
import warnings

import torch
from torch import nn

from distill.cam import capture_activations, map_grid, token_layout

__all__ = ["quiet_lightning", "warn_small_cam_layers", "MIN_CAM_SIZE"]

MIN_CAM_SIZE = 4
"""A CAM layer smaller than this (in either dimension) gives maps that cannot localise."""

_NOISE = (
    "💡 Tip:",  # advertisements for other Lightning products
    "was configured so 100% of the batches",  # limit_*_batches=1.0, the default
    "Seed set to",  # the seed is in config.yaml; an error at start-up stays one line
)


class _DropNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(noise in message for noise in _NOISE)


def quiet_lightning() -> None:
    """Drop Lightning's start-up tips and the deprecation warning its pytree helper triggers in
    newer torch; errors, warnings about the run and the progress bar stay. Idempotent."""
    for name in (
        "lightning.pytorch.utilities.rank_zero",
        "lightning.fabric.utilities.rank_zero",
        "lightning.fabric.utilities.seed",
    ):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropNoise) for f in logger.filters):
            logger.addFilter(_DropNoise())
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")


@torch.no_grad()
def warn_small_cam_layers(models: dict[str, nn.Module], image_shape: tuple[int, int, int]) -> None:
    """Warn once per model whose CAM layer is smaller than 4x4 at the data's image size.

    Why: a 1x1 map (an ImageNet network on 32x32 images) has one value per image; its
    Grad-CAM++ map cannot point anywhere and map similarity is trivially 1.
    """
    for role, model in models.items():
        layer = getattr(model, "cam_layer", None)
        if not isinstance(layer, str):
            continue
        parameter = next(model.parameters(), None)
        device = parameter.device if parameter is not None else torch.device("cpu")
        was_training = model.training
        model.eval()
        try:
            with capture_activations(model, [layer]) as acts:
                model(torch.zeros(1, *image_shape, device=device))
        finally:
            model.train(was_training)
        layout = token_layout(model, image_shape[1:])
        height, width = map_grid(acts[layer], layout)
        if min(height, width) < MIN_CAM_SIZE:
            warnings.warn(
                f"the {role}'s CAM layer {layer!r} is {height}x{width} at "
                f"{image_shape[1]}x{image_shape[2]} inputs: its maps cannot localise and map "
                "similarity means little; use larger input images or a model built for this "
                "resolution",
                UserWarning,
                stacklevel=2,
            )
