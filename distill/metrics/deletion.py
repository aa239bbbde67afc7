"""Deletion and insertion (Petsiuk et al., RISE, BMVC 2018), batched on the device.

The pixels of each image are ranked by its saliency map, most salient first (the map bilinearly
upsampled to the image, half-pixel centres; ties keep raster order, a stable sort). *Deletion*
replaces the ``k`` top-ranked pixels by a baseline and records the explained class's score for
``k = 0, s, 2s, ..., P`` (``P = H * W``, ``s = ceil(P / steps)``); *insertion* starts from the
baseline and puts the top-ranked pixels back. Each curve is integrated with the trapezoid rule
against the perturbed fraction ``k / P``. A faithful map makes deletion fall fast (low AUC,
lower is better) and insertion rise fast (high AUC, higher is better). All channels of a pixel
move together.

Peer agreement: with ``baseline=0.0`` (the default) and ``softmax=True`` the AUCs equal
torchcam 0.5's ``DeletionInsertionMetric(extractor, partial(torch.softmax, dim=-1))`` on the
same maps (same steps, ranks, zero baseline, trapezoid on the actual fractions); with
``softmax=False`` they equal its ``logits_fn=None`` (raw logits). RISE's own code counts
``n = ceil(P / s)`` uniform steps and integrates on ``i / n``: identical whenever ``s``
divides ``P`` (32x32 images with 16, 32 or 64 steps, 224x224 with 224 steps). RISE's insertion
starts from a blurred image (``baseline="blur"``: its Gaussian of 11 taps spanning ±5 sigma),
its deletion from zeros.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import Metric

from distill.cam.functional import resize_maps, select_targets

__all__ = [
    "DeletionAUC",
    "InsertionAUC",
    "deletion_auc",
    "insertion_auc",
    "perturbation_curves",
]

Baseline = float | str | Tensor
_MODES = ("deletion", "insertion")


def _check_inputs(images: Tensor, maps: Tensor) -> tuple[Tensor, Tensor]:
    if not isinstance(images, Tensor) or images.ndim != 4:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"images must be [B, C, H, W], got {shape}")
    if not isinstance(maps, Tensor) or maps.ndim != 3:
        shape = tuple(maps.shape) if isinstance(maps, Tensor) else type(maps).__name__
        raise ValueError(f"maps must be [B, h, w], got {shape}")
    if maps.shape[0] != images.shape[0]:
        raise ValueError(
            f"images and maps have different batch sizes: {images.shape[0]} vs {maps.shape[0]}"
        )
    if not images.dtype.is_floating_point:
        images = images.float()
    maps = maps.to(device=images.device, dtype=torch.float32)
    return images, resize_maps(maps, tuple(images.shape[-2:]))


def select_scores(logits: Tensor, targets: Tensor, softmax: bool) -> Tensor:  # [N] float32
    """The explained class's softmax probability (or logit) in each row of ``logits``."""
    if logits.ndim != 2:
        raise ValueError(f"model must return [B, C] logits, got shape {tuple(logits.shape)}")
    logits = logits.float()
    scores = logits.softmax(dim=1) if softmax else logits
    return scores.gather(1, targets[:, None])[:, 0]


def _gaussian_blur(images: Tensor, taps: int = 11, sigma_span: float = 5.0) -> Tensor:
    """RISE's blur: a separable Gaussian of ``taps`` taps covering ``±sigma_span`` sigmas,
    zero padding."""
    edges = torch.linspace(-sigma_span, sigma_span, taps + 1, dtype=torch.float64)
    kernel1d = torch.special.ndtr(edges).diff()
    kernel = torch.outer(kernel1d, kernel1d)
    kernel = (kernel / kernel.sum()).to(images)
    channels = images.shape[1]
    weight = kernel.expand(channels, 1, taps, taps)
    return F.conv2d(images, weight, padding=taps // 2, groups=channels)


def make_baseline(images: Tensor, baseline: Baseline) -> Tensor:
    """The image that replaces removed pixels: a constant, ``"mean"`` (each image's channel
    means), ``"blur"`` (RISE's Gaussian blur) or a tensor broadcastable to ``images``."""
    if isinstance(baseline, str):
        if baseline == "blur":
            return _gaussian_blur(images)
        if baseline == "mean":
            return images.mean(dim=(2, 3), keepdim=True).expand_as(images)
        raise ValueError(f"baseline must be a number, 'blur', 'mean' or a tensor, got {baseline!r}")
    if isinstance(baseline, Tensor):
        try:
            return torch.broadcast_to(baseline.to(images), images.shape)
        except RuntimeError as err:
            raise ValueError(
                f"baseline of shape {tuple(baseline.shape)} does not broadcast to the images' "
                f"{tuple(images.shape)}"
            ) from err
    if isinstance(baseline, bool) or not isinstance(baseline, int | float):
        raise TypeError(f"baseline must be a number, 'blur', 'mean' or a tensor, got {baseline!r}")
    return torch.full_like(images, float(baseline))


def _step_counts(pixels: int, steps: int) -> list[int]:
    """``0, s, 2s, ..., P`` with ``s = ceil(P / steps)`` (torchcam's and RISE's grid)."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps <= 0:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    size = -(-pixels // steps)
    return [*range(0, pixels, size), pixels]


@torch.no_grad()
def perturbation_curves(
    model: nn.Module,
    images: Tensor,
    maps: Tensor,
    targets: Tensor | None = None,
    *,
    mode: str = "deletion",
    steps: int = 20,
    baseline: Baseline = 0.0,
    softmax: bool = True,
    chunk_steps: int = 1,
    logits: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Deletion or insertion curves of a batch: the explained class's score per step.

    One batched forward per step (``chunk_steps`` steps share a forward of ``chunk_steps * B``
    images: more speed, more memory); the model's train/eval mode is left as it is.

    Args:
        model: Classifier returning ``[B, num_classes]`` logits.
        images: ``[B, C, H, W]`` images as the model sees them.
        maps: ``[B, h, w]`` saliency maps, any resolution (only their order matters).
        targets: ``[B]`` explained classes; None: the prediction on ``images``.
        mode: ``"deletion"`` (remove the most salient pixels first) or ``"insertion"``.
        steps: Number of perturbation intervals (at most; see the module notes).
        baseline: What removed pixels become (:func:`make_baseline`), in the images' space.
        softmax: Score the softmax probability (True) or the raw logit.
        chunk_steps: Steps per forward.
        logits: The model's logits on ``images`` if already computed (saves one forward).

    Returns:
        ``(fractions [K], curves [B, K])``, float32: the perturbed fraction of pixels and the
        score after each step (deletion starts, insertion ends, at the unperturbed image).
    """
    if mode not in _MODES:
        raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")
    if isinstance(chunk_steps, bool) or not isinstance(chunk_steps, int) or chunk_steps <= 0:
        raise ValueError(f"chunk_steps must be a positive integer, got {chunk_steps!r}")
    images, maps = _check_inputs(images, maps)
    batch, pixels = images.shape[0], maps.shape[1] * maps.shape[2]
    counts = _step_counts(pixels, steps)
    if logits is None:
        logits = model(images)
    targets = select_targets(logits, targets)
    full = select_scores(logits, targets, softmax)
    fill = make_baseline(images, baseline)
    order = maps.flatten(1).argsort(dim=1, descending=True, stable=True)
    ranks = order.argsort(dim=1).view(batch, 1, *maps.shape[1:])  # [B, 1, H, W]
    inner = counts[1:] if mode == "deletion" else counts[:-1]  # the unperturbed end is `full`
    scores = []
    for start in range(0, len(inner), chunk_steps):
        chunk = torch.tensor(inner[start : start + chunk_steps], device=images.device)
        top = ranks[None] < chunk.view(-1, 1, 1, 1, 1)  # [S, B, 1, H, W]: the first k pixels
        keep = ~top if mode == "deletion" else top
        perturbed = torch.where(keep, images[None], fill[None]).flatten(0, 1)
        scores.append(select_scores(model(perturbed), targets.repeat(len(chunk)), softmax))
    moved = torch.cat(scores).view(len(inner), batch).T if scores else full[:, :0]
    curves = torch.cat([full[:, None], moved] if mode == "deletion" else [moved, full[:, None]], 1)
    fractions = torch.tensor(counts, device=images.device, dtype=torch.float32) / pixels
    return fractions, curves


def _auc_update(fractions: Tensor, curves: Tensor) -> tuple[Tensor, int]:
    return torch.trapezoid(curves, fractions, dim=1).sum(), int(curves.shape[0])


def _auc_compute(auc_sum: Tensor, total: Tensor | int) -> Tensor:
    return auc_sum / total if total else torch.tensor(float("nan"))


def deletion_auc(
    model: nn.Module, images: Tensor, maps: Tensor, targets: Tensor | None = None, **options: Any
) -> Tensor:
    """Mean deletion AUC of a batch (lower is better); ``options`` as in
    :func:`perturbation_curves`.

    Example:
        >>> import torch
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
        >>> with torch.no_grad():
        ...     _ = model[1].weight.copy_(torch.tensor([[1.0, 0, 0, 0], [0, 0, 0, 0]]))
        ...     _ = model[1].bias.zero_()
        >>> images = torch.tensor([[[[4.0, 0.0], [0.0, 0.0]]]])
        >>> good = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]])  # the one pixel that matters
        >>> bad = torch.tensor([[[0.0, 1.0], [1.0, 1.0]]])  # it last
        >>> deletion_auc(model, images, good, steps=4, softmax=False)
        tensor(0.5000)
        >>> deletion_auc(model, images, bad, steps=4, softmax=False)
        tensor(3.5000)
    """
    return _auc_compute(*_auc_update(*perturbation_curves(model, images, maps, targets, **options)))


def insertion_auc(
    model: nn.Module, images: Tensor, maps: Tensor, targets: Tensor | None = None, **options: Any
) -> Tensor:
    """Mean insertion AUC of a batch (higher is better); ``options`` as in
    :func:`perturbation_curves` (``mode`` is set here)."""
    curves = perturbation_curves(model, images, maps, targets, mode="insertion", **options)
    return _auc_compute(*_auc_update(*curves))


class DeletionAUC(Metric):
    """Mean deletion AUC over every image seen (lower is better).

    ``update(model, images, maps, targets=None, logits=None)`` runs the perturbations of
    :func:`perturbation_curves` (``steps + 1`` batched forwards at most, under ``no_grad``).

    Args:
        steps: As in :func:`perturbation_curves`.
        baseline: As in :func:`perturbation_curves`.
        softmax: As in :func:`perturbation_curves`.
        chunk_steps: As in :func:`perturbation_curves`.
        kwargs: Forwarded to :class:`torchmetrics.Metric`.
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False
    mode = "deletion"

    auc_sum: Tensor
    total: Tensor

    def __init__(
        self,
        steps: int = 20,
        baseline: Baseline = 0.0,
        softmax: bool = True,
        chunk_steps: int = 1,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        _step_counts(1, steps)  # refuse a bad ``steps`` now, not at the first update
        self.options = {
            "steps": steps,
            "baseline": baseline,
            "softmax": softmax,
            "chunk_steps": chunk_steps,
        }
        self.add_state("auc_sum", default=torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("total", default=torch.tensor(0.0), dist_reduce_fx="sum")

    def update(
        self,
        model: nn.Module,
        images: Tensor,
        maps: Tensor,
        targets: Tensor | None = None,
        logits: Tensor | None = None,
    ) -> None:
        """Add a batch: the model, its images, their maps and the explained classes."""
        curves = perturbation_curves(
            model, images, maps, targets, mode=self.mode, logits=logits, **self.options
        )
        auc_sum, total = _auc_update(*curves)
        self.auc_sum += auc_sum.to(self.auc_sum)
        self.total += total

    def compute(self) -> Tensor:
        """Mean AUC (``nan`` before any update)."""
        return _auc_compute(self.auc_sum, self.total)


class InsertionAUC(DeletionAUC):
    """Mean insertion AUC over every image seen (higher is better); as :class:`DeletionAUC`."""

    higher_is_better = True
    mode = "insertion"
