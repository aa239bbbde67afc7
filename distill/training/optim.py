"""Optimizer and learning-rate schedule from the ``optim`` config section."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

__all__ = ["OPTIMIZERS", "SCHEDULES", "build_optimizer", "build_scheduler", "param_groups"]

OPTIMIZERS: tuple[str, ...] = ("sgd", "adamw")
SCHEDULES: tuple[str, ...] = ("multistep", "cosine", "constant")


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Parameters that require grad, with no weight decay on biases and norm weights (1-d)."""
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (no_decay if param.ndim <= 1 else decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(params: Iterable[Any], cfg: Any) -> torch.optim.Optimizer:
    """SGD (momentum, optional Nesterov) or AdamW, as ``cfg.name`` says."""
    params = list(params)
    if cfg.name == "sgd":
        return torch.optim.SGD(
            params,
            lr=cfg.lr,
            momentum=cfg.momentum,
            nesterov=bool(cfg.nesterov and cfg.momentum > 0),
            weight_decay=cfg.weight_decay,
        )
    if cfg.name == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    raise ValueError(f"unknown optimizer {cfg.name!r}; choose one of {', '.join(OPTIMIZERS)}")


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: Any, epochs: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """A per-epoch schedule: multistep at fractions of ``epochs``, cosine, or constant,
    with an optional linear warm-up of ``cfg.warmup_epochs``."""
    warmup = min(int(cfg.warmup_epochs), max(epochs - 1, 0))
    if cfg.schedule == "multistep":
        milestones = sorted({max(1, round(f * epochs)) for f in cfg.milestones})
        main = torch.optim.lr_scheduler.MultiStepLR(
            optimizer, milestones=[m - warmup for m in milestones if m > warmup], gamma=cfg.gamma
        )
    elif cfg.schedule == "cosine":
        main = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(epochs - warmup, 1))
    elif cfg.schedule == "constant":
        main = torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)
    else:
        raise ValueError(f"unknown schedule {cfg.schedule!r}; choose one of {', '.join(SCHEDULES)}")
    if warmup == 0:
        return main
    ramp = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=0.1, total_iters=warmup)
    return torch.optim.lr_scheduler.SequentialLR(optimizer, [ramp, main], milestones=[warmup])
