"""Faithfulness of explanations (Grad-CAM++ paper, section 4) as ``torchmetrics`` metrics.

Every metric takes the confidences that :func:`distill.metrics.explanation_confidences`
returns: ``Y`` on the full images and ``O`` on the explanation maps ``E = L ∘ I``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric

from distill.metrics.functional import (
    _average_drop_compute,
    _average_drop_update,
    _increase_in_confidence_compute,
    _increase_in_confidence_update,
    _win_percentage_compute,
    _win_percentage_update,
)

__all__ = ["AverageDrop", "IncreaseInConfidence", "WinPercentage"]


class AverageDrop(Metric):
    """Average Drop %: ``100 / N * sum_i max(0, Y_i - O_i) / Y_i`` (lower is better).

    ``update(y, o)`` takes ``[N]`` confidences of the explained class on the images (``y``)
    and on their explanation maps (``o``); see :func:`distill.metrics.average_drop`.

    Args:
        validate_args: Check that the confidences are non-negative (costs a device sync).
        kwargs: Forwarded to :class:`torchmetrics.Metric`.

    Example:
        >>> import torch
        >>> metric = AverageDrop()
        >>> metric.update(torch.tensor([0.5]), torch.tensor([0.25]))
        >>> metric.update(torch.tensor([0.8]), torch.tensor([0.9]))
        >>> metric.compute()
        tensor(25.)
    """

    is_differentiable = True
    higher_is_better = False
    full_state_update = False
    plot_lower_bound: float = 0.0
    plot_upper_bound: float = 100.0

    drop_sum: Tensor
    total: Tensor

    def __init__(self, validate_args: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.validate_args = validate_args
        self.add_state("drop_sum", default=torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("total", default=torch.tensor(0.0), dist_reduce_fx="sum")

    def update(self, y: Tensor, o: Tensor) -> None:
        """Add a batch of confidences ``y`` (full images) and ``o`` (explanations)."""
        drop_sum, total = _average_drop_update(y, o, self.validate_args)
        self.drop_sum += drop_sum
        self.total += total

    def compute(self) -> Tensor:
        """Average Drop % over every sample seen."""
        return _average_drop_compute(self.drop_sum, self.total)


class IncreaseInConfidence(Metric):
    """% Increase in Confidence: ``100 / N * sum_i 1[Y_i < O_i]`` (higher is better).

    ``update(y, o)`` as in :class:`AverageDrop`; see
    :func:`distill.metrics.increase_in_confidence`.

    Args:
        validate_args: Check that the confidences are non-negative (costs a device sync).
        kwargs: Forwarded to :class:`torchmetrics.Metric`.

    Example:
        >>> import torch
        >>> metric = IncreaseInConfidence()
        >>> metric(torch.tensor([0.5, 0.8]), torch.tensor([0.25, 0.9]))
        tensor(50.)
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False
    plot_lower_bound: float = 0.0
    plot_upper_bound: float = 100.0

    increases: Tensor
    total: Tensor

    def __init__(self, validate_args: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.validate_args = validate_args
        self.add_state("increases", default=torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("total", default=torch.tensor(0.0), dist_reduce_fx="sum")

    def update(self, y: Tensor, o: Tensor) -> None:
        """Add a batch of confidences ``y`` (full images) and ``o`` (explanations)."""
        increases, total = _increase_in_confidence_update(y, o, self.validate_args)
        self.increases += increases
        self.total += total

    def compute(self) -> Tensor:
        """% of samples whose explanation raised the confidence."""
        return _increase_in_confidence_compute(self.increases, self.total)


class WinPercentage(Metric):
    """Win %: share of images where method A's confidence drop is strictly below B's.

    ``update(y, o_a, o_b)`` takes the confidences on the images and on the two methods'
    explanation maps of the same images; see :func:`distill.metrics.win_percentage`. Ties
    (equal drops) count as a win for neither method.

    Args:
        validate_args: Check that the confidences are non-negative (costs a device sync).
        kwargs: Forwarded to :class:`torchmetrics.Metric`.

    Example:
        >>> import torch
        >>> metric = WinPercentage()
        >>> y = torch.tensor([0.8, 0.8, 0.8, 0.8])
        >>> metric(y, torch.tensor([0.6, 0.2, 0.9, 0.75]), torch.tensor([0.4, 0.3, 0.9, 0.7]))
        tensor(50.)
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False
    plot_lower_bound: float = 0.0
    plot_upper_bound: float = 100.0

    wins: Tensor
    total: Tensor

    def __init__(self, validate_args: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.validate_args = validate_args
        self.add_state("wins", default=torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("total", default=torch.tensor(0.0), dist_reduce_fx="sum")

    def update(self, y: Tensor, o_a: Tensor, o_b: Tensor) -> None:
        """Add confidences on the images (``y``) and on methods A's and B's explanations."""
        wins, total = _win_percentage_update(y, o_a, o_b, self.validate_args)
        self.wins += wins
        self.total += total

    def compute(self) -> Tensor:
        """% of samples where A's explanation keeps more confidence than B's."""
        return _win_percentage_compute(self.wins, self.total)
