"""Teacher-student agreement (explanations and predictions) as ``torchmetrics`` metrics."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric

from distill.metrics.functional import (
    _map_agreement_compute,
    _map_agreement_update,
    _top1_agreement_compute,
    _top1_agreement_update,
)

__all__ = ["MapAgreement", "TopOneAgreement"]


class MapAgreement(Metric):
    """Mean per-sample cosine similarity of two sets of maps (e.g. teacher vs student).

    ``update(maps_a, maps_b)`` takes ``[B, h1, w1]`` and ``[B, h2, w2]`` maps; maps of
    different sizes are both resized to ``(max h, max w)``. See
    :func:`distill.metrics.map_agreement`. Higher is better, 1 for proportional maps.

    Example:
        >>> import torch
        >>> metric = MapAgreement()
        >>> maps = torch.rand(3, 8, 8)
        >>> torch.isclose(metric(maps, 2 * maps), torch.tensor(1.0)).item()
        True
    """

    is_differentiable = True
    higher_is_better = True
    full_state_update = False
    plot_lower_bound: float = -1.0
    plot_upper_bound: float = 1.0

    cosine_sum: Tensor
    total: Tensor

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("cosine_sum", default=torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("total", default=torch.tensor(0.0), dist_reduce_fx="sum")

    def update(self, maps_a: Tensor, maps_b: Tensor) -> None:
        """Add a batch of paired maps."""
        cosine_sum, total = _map_agreement_update(maps_a, maps_b)
        self.cosine_sum += cosine_sum
        self.total += total

    def compute(self) -> Tensor:
        """Mean cosine similarity over every pair seen."""
        return _map_agreement_compute(self.cosine_sum, self.total)


class TopOneAgreement(Metric):
    """Top-1 agreement: fraction of samples where two models predict the same class.

    ``update(logits_a, logits_b)`` takes two ``[B, C]`` logits tensors; see
    :func:`distill.metrics.top1_agreement`. Higher is better, in ``[0, 1]``.

    Example:
        >>> import torch
        >>> metric = TopOneAgreement()
        >>> metric(torch.tensor([[2.0, 1.0], [0.0, 3.0]]), torch.tensor([[5.0, 1.0], [4.0, 3.0]]))
        tensor(0.5000)
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False
    plot_lower_bound: float = 0.0
    plot_upper_bound: float = 1.0

    agree: Tensor
    total: Tensor

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("agree", default=torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("total", default=torch.tensor(0.0), dist_reduce_fx="sum")

    def update(self, logits_a: Tensor, logits_b: Tensor) -> None:
        """Add a batch of paired logits."""
        agree, total = _top1_agreement_update(logits_a, logits_b)
        self.agree += agree
        self.total += total

    def compute(self) -> Tensor:
        """Fraction of samples with equal argmax over every pair seen."""
        return _top1_agreement_compute(self.agree, self.total)
