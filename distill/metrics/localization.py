"""Localisation of explanations against ground-truth boxes as ``torchmetrics`` metrics.

Maps of any resolution are bilinearly upsampled to ``image_size``, the size of the images the
``(x0, y0, x1, y1)`` boxes (``x1``/``y1`` exclusive) refer to.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric

from distill.metrics._inputs import Size, _pair
from distill.metrics.functional import (
    _check_delta,
    _energy_pointing_game_compute,
    _energy_pointing_game_update,
    _localization_compute,
    _localization_update,
)

__all__ = ["EnergyPointingGame", "Localization"]


def _image_size(image_size: Size | None) -> tuple[int, int] | None:
    return None if image_size is None else _pair(image_size)


class Localization(Metric):
    """Loc(δ) of the Grad-CAM++ paper: ``kept_in / (box_area + kept_out)``, batch mean.

    A pixel is kept when the upsampled, min-max normalised map is ``>= delta`` there.
    ``update(maps, boxes)`` takes ``[B, h, w]`` maps and ``[B, 4]`` boxes; see
    :func:`distill.metrics.localization`. Higher is better, in ``[0, 1]``.

    Args:
        delta: Threshold in ``[0, 1]`` on the normalised map.
        image_size: ``H`` or ``(H, W)`` of the images (default 32, CIFAR); None: the maps are
            already at image resolution.
        validate_args: Check that every box is non-empty and inside the image.
        kwargs: Forwarded to :class:`torchmetrics.Metric`.

    Example:
        >>> import torch
        >>> metric = Localization(delta=0.5, image_size=4)
        >>> maps = torch.tensor([[[0.0, 0.0], [1.0, 0.0]]])  # 2x2 map, upsampled to 4x4
        >>> # kept (>= 0.5 after upsampling): the bottom-left 2x2 corner; 2 in / (2 + 2 out)
        >>> metric(maps, torch.tensor([[0, 2, 1, 4]]))
        tensor(0.5000)
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False
    plot_lower_bound: float = 0.0
    plot_upper_bound: float = 1.0

    loc_sum: Tensor
    total: Tensor

    def __init__(
        self,
        delta: float = 0.5,
        image_size: Size | None = 32,
        validate_args: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.delta = _check_delta(delta)
        self.image_size = _image_size(image_size)
        self.validate_args = validate_args
        self.add_state("loc_sum", default=torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("total", default=torch.tensor(0.0), dist_reduce_fx="sum")

    def update(self, maps: Tensor, boxes: Tensor) -> None:
        """Add ``[B, h, w]`` maps and their ``[B, 4]`` ground-truth boxes."""
        loc_sum, total = _localization_update(
            maps, boxes, self.delta, self.image_size, self.validate_args
        )
        self.loc_sum += loc_sum
        self.total += total

    def compute(self) -> Tensor:
        """Mean Loc(δ) over every sample seen."""
        return _localization_compute(self.loc_sum, self.total)


class EnergyPointingGame(Metric):
    """Energy-based pointing game (Score-CAM): share of the map's energy inside the box.

    ``update(maps, boxes)`` takes non-negative ``[B, h, w]`` maps and ``[B, 4]`` boxes; see
    :func:`distill.metrics.energy_pointing_game`. Higher is better, in ``[0, 1]``.

    Args:
        image_size: ``H`` or ``(H, W)`` of the images (default 32, CIFAR); None: the maps are
            already at image resolution.
        validate_args: Check the boxes and that the maps are non-negative.
        kwargs: Forwarded to :class:`torchmetrics.Metric`.

    Example:
        >>> import torch
        >>> metric = EnergyPointingGame(image_size=2)
        >>> metric(torch.tensor([[[3.0, 1.0], [0.0, 0.0]]]), torch.tensor([[0, 0, 1, 1]]))
        tensor(0.7500)
    """

    is_differentiable = True
    higher_is_better = True
    full_state_update = False
    plot_lower_bound: float = 0.0
    plot_upper_bound: float = 1.0

    score_sum: Tensor
    total: Tensor

    def __init__(
        self, image_size: Size | None = 32, validate_args: bool = True, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.image_size = _image_size(image_size)
        self.validate_args = validate_args
        self.add_state("score_sum", default=torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("total", default=torch.tensor(0.0), dist_reduce_fx="sum")

    def update(self, maps: Tensor, boxes: Tensor) -> None:
        """Add ``[B, h, w]`` non-negative maps and their ``[B, 4]`` ground-truth boxes."""
        score_sum, total = _energy_pointing_game_update(
            maps, boxes, self.image_size, self.validate_args
        )
        self.score_sum += score_sum
        self.total += total

    def compute(self) -> Tensor:
        """Mean energy share inside the boxes over every sample seen."""
        return _energy_pointing_game_compute(self.score_sum, self.total)
