"""Decoupled knowledge distillation (Zhao et al., "Decoupled Knowledge Distillation", CVPR 2022).

KD's KL divergence splits into a target-class part (TCKD: the binary distribution ``[p_t,
1 - p_t]`` of the ground-truth class against the rest) and a non-target part (NCKD: the
distribution among the other classes, renormalised), which DKD weights separately:
``DKD = alpha * TCKD + beta * NCKD`` (paper eq. 7), both at temperature ``T`` and scaled by
``T^2`` as in KD. The authors' CIFAR-100 defaults (mdistiller ``configs/cifar100/dkd``): CE 1,
alpha 1, beta 8 (6 for WRN-40-2 -> WRN-16-2), T 4, and the DKD term ramped up linearly over the
first 20 epochs.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from distill.losses.functional import standardize_logits

__all__ = ["DKDLoss", "dkd_loss", "dkd_warmup"]


def dkd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    labels: Tensor,
    *,
    alpha: float = 1.0,
    beta: float = 8.0,
    temperature: float = 4.0,
    standardize: bool = False,
) -> Tensor:
    """``T^2 * (alpha * TCKD + beta * NCKD)``, averaged over the batch.

    TCKD is ``KL([p_t^T, 1 - p_t^T] || [p_t^S, 1 - p_t^S])`` with ``p_t`` the softmax
    probability of the label at temperature ``T``; NCKD is ``KL(p_hat^T || p_hat^S)`` over the
    non-target classes, ``p_hat`` being the softmax of the non-target logits alone. Both are
    computed from log-sum-exps (``log(1 - p_t)`` = logsumexp of the other logits minus that of
    all), so no probability is subtracted from 1. ``standardize`` z-scores each sample's logits
    first (Sun et al., CVPR 2024; :func:`distill.losses.standardize_logits`).

    Example:
        >>> import torch
        >>> s = torch.tensor([[2.0, 0.0, 0.0]]); t = torch.tensor([[2.0, 1.0, 0.0]])
        >>> round(dkd_loss(s, t, torch.tensor([0]), temperature=1.0).item(), 4)
        0.9271
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if student_logits.shape[1] < 3:
        raise ValueError("DKD needs at least 3 classes (NCKD compares the non-target classes)")
    s, t = student_logits.float(), teacher_logits.float()
    if standardize:
        s, t = standardize_logits(s), standardize_logits(t)
    s, t = s / temperature, t / temperature
    batch, classes = s.shape
    target = torch.zeros_like(s, dtype=torch.bool).scatter_(1, labels[:, None], True)
    s_other = s[~target].view(batch, classes - 1)
    t_other = t[~target].view(batch, classes - 1)

    def binary_log_probs(all_logits: Tensor, other: Tensor) -> Tensor:
        """``[log p_t, log(1 - p_t)]`` per sample."""
        total = all_logits.logsumexp(dim=1, keepdim=True)
        log_pt = all_logits.gather(1, labels[:, None]) - total
        log_rest = other.logsumexp(dim=1, keepdim=True) - total
        return torch.cat([log_pt, log_rest], dim=1)

    log_b_s, log_b_t = binary_log_probs(s, s_other), binary_log_probs(t, t_other)
    tckd = (log_b_t.exp() * (log_b_t - log_b_s)).sum(dim=1)
    log_q_s, log_q_t = s_other.log_softmax(dim=1), t_other.log_softmax(dim=1)
    nckd = (log_q_t.exp() * (log_q_t - log_q_s)).sum(dim=1)
    return (alpha * tckd + beta * nckd).mean() * temperature**2


def dkd_warmup(epoch: int | None, warmup_epochs: int) -> float:
    """The DKD term's factor at 0-based ``epoch``: ``min((epoch + 1) / warmup_epochs, 1)``.

    mdistiller counts epochs from 1 and uses ``min(epoch / warmup, 1)``: the first epoch gets
    1/20 of the term and epoch 20 (1-based) the whole of it. ``None`` (no epoch known, e.g.
    evaluation outside a training loop) and ``warmup_epochs=0`` give 1.
    """
    if warmup_epochs <= 0 or epoch is None:
        return 1.0
    return min((int(epoch) + 1) / warmup_epochs, 1.0)


class DKDLoss(nn.Module):
    """DKD with fixed hyperparameters (see :func:`dkd_loss`); the warm-up is the caller's."""

    def __init__(
        self,
        alpha: float = 1.0,
        beta: float = 8.0,
        temperature: float = 4.0,
        standardize: bool = False,
    ) -> None:
        super().__init__()
        if alpha < 0 or beta < 0:
            raise ValueError(f"DKD alpha and beta must be >= 0, got {alpha} and {beta}")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.alpha, self.beta = float(alpha), float(beta)
        self.temperature = float(temperature)
        self.standardize = bool(standardize)

    def forward(self, student_logits: Tensor, teacher_logits: Tensor, labels: Tensor) -> Tensor:
        return dkd_loss(
            student_logits,
            teacher_logits,
            labels,
            alpha=self.alpha,
            beta=self.beta,
            temperature=self.temperature,
            standardize=self.standardize,
        )

    def extra_repr(self) -> str:
        return (
            f"alpha={self.alpha}, beta={self.beta}, temperature={self.temperature}, "
            f"standardize={self.standardize}"
        )
