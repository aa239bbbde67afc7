"""Explanation-quality metrics as batched, pure-torch functions.

Faithfulness (Chattopadhay et al., Grad-CAM++, WACV 2018, section 4): the *explanation map*
``E = L ∘ I`` keeps each pixel of the image ``I`` in proportion to the (upsampled, min-max
normalised) saliency map ``L``. With ``Y_i`` the softmax confidence of the explained class on the
full image and ``O_i`` on ``E``:

* Average Drop % ``= mean_i max(0, Y_i - O_i) / Y_i * 100`` (lower is better);
* % Increase in Confidence ``= mean_i 1[Y_i < O_i] * 100`` (higher is better);
* Win % of method A over method B: the share of images where A's drop is strictly smaller.

Localisation: ``Loc(δ)`` of the Grad-CAM++ paper and the energy-based pointing game of
Score-CAM (Wang et al., CVPRW 2020). Agreement: per-sample cosine similarity of two maps and
top-1 agreement of two classifiers.

Conventions shared by every function:

* Maps are ``[B, h, w]`` at any resolution; they are bilinearly upsampled (half-pixel centres,
  :func:`distill.cam.resize_maps`) to the image size *before* min-max normalisation.
* A map that is constant over the image has no min-max normalisation: a constant positive map
  becomes all ones (every pixel equally important, the whole image is kept) and a constant zero
  map all zeros (nothing is important). Other maps use :func:`distill.cam.minmax_normalize`.
* Boxes are ``[B, 4]`` ``(x0, y0, x1, y1)`` pixel coordinates with ``x1``/``y1`` exclusive, so
  the box covers ``maps[:, y0:y1, x0:x1]``.
* Each metric is a pair ``_x_update(...) -> (sum, count)`` / ``_x_compute(sum, count)`` (the
  torchmetrics pattern) that the :mod:`distill.metrics` classes accumulate, plus a public
  function computing both at once. An empty accumulation computes to ``nan``.
* ``validate_args=False`` skips the checks that read tensor *values* (negative confidences,
  boxes outside the image, negative maps), which each cost a device synchronisation. Shape
  checks always run.

This module holds the metrics' update/compute pairs; the explanation images and confidences
they take are made in :mod:`distill.metrics.explanations` (re-exported here), and the input
checks they share are in :mod:`distill.metrics._inputs`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from distill.cam.functional import resize_maps
from distill.metrics._inputs import (
    Size,
    _check_confidences,
    _check_maps,
    _count,
    _maps_and_boxes,
    _normalize,
    _relative_drop,
    _shape,
)
from distill.metrics.explanations import explanation_confidences, explanation_maps

__all__ = [
    "average_drop",
    "energy_pointing_game",
    "explanation_confidences",
    "explanation_maps",
    "increase_in_confidence",
    "localization",
    "map_agreement",
    "top1_agreement",
    "win_percentage",
]


# --------------------------------------------------------------------------------------------
# Faithfulness: Average Drop, Increase in Confidence, Win
# --------------------------------------------------------------------------------------------


def _average_drop_update(y: Tensor, o: Tensor, validate_args: bool = True) -> tuple[Tensor, int]:
    y, o = _check_confidences(validate_args, y=y, o=o)
    return _relative_drop(y, o).sum(), _count(y)


def _average_drop_compute(drop_sum: Tensor, total: Tensor | int) -> Tensor:
    return drop_sum / total * 100.0


def average_drop(y: Tensor, o: Tensor, *, validate_args: bool = True) -> Tensor:
    """Average Drop %: relative loss of confidence when only the explanation is shown.

    ``AD = 100 / N * sum_i max(0, Y_i - O_i) / Y_i``; lower is better, in ``[0, 100]``.
    A sample with ``Y_i = 0`` contributes 0.

    Args:
        y: ``[N]`` confidences of the explained class on the full images.
        o: ``[N]`` confidences of the same class on the explanation maps.
        validate_args: Check that the confidences are non-negative.

    Example:
        >>> import torch
        >>> average_drop(torch.tensor([0.5, 0.8]), torch.tensor([0.25, 0.9]))
        tensor(25.)
    """
    return _average_drop_compute(*_average_drop_update(y, o, validate_args))


def _increase_in_confidence_update(
    y: Tensor, o: Tensor, validate_args: bool = True
) -> tuple[Tensor, int]:
    y, o = _check_confidences(validate_args, y=y, o=o)
    return (y < o).sum().to(torch.float32), _count(y)


def _increase_in_confidence_compute(increases: Tensor, total: Tensor | int) -> Tensor:
    return increases / total * 100.0


def increase_in_confidence(y: Tensor, o: Tensor, *, validate_args: bool = True) -> Tensor:
    """% Increase in Confidence: how often the explanation alone is *more* convincing.

    ``IC = 100 / N * sum_i 1[Y_i < O_i]``; higher is better, in ``[0, 100]``.

    Args:
        y: ``[N]`` confidences of the explained class on the full images.
        o: ``[N]`` confidences of the same class on the explanation maps.
        validate_args: Check that the confidences are non-negative.

    Example:
        >>> import torch
        >>> increase_in_confidence(torch.tensor([0.5, 0.8]), torch.tensor([0.25, 0.9]))
        tensor(50.)
    """
    return _increase_in_confidence_compute(*_increase_in_confidence_update(y, o, validate_args))


def _win_percentage_update(
    y: Tensor, o_a: Tensor, o_b: Tensor, validate_args: bool = True
) -> tuple[Tensor, int]:
    y, o_a, o_b = _check_confidences(validate_args, y=y, o_a=o_a, o_b=o_b)
    wins = _relative_drop(y, o_a) < _relative_drop(y, o_b)
    return wins.sum().to(torch.float32), _count(y)


def _win_percentage_compute(wins: Tensor, total: Tensor | int) -> Tensor:
    return wins / total * 100.0


def win_percentage(y: Tensor, o_a: Tensor, o_b: Tensor, *, validate_args: bool = True) -> Tensor:
    """Win %: how often method A's explanation loses less confidence than method B's.

    ``Win = 100 / N * sum_i 1[d_i^A < d_i^B]`` with ``d_i = max(0, Y_i - O_i) / Y_i``. Ties
    (equal drops, e.g. both explanations raise the confidence) count as a win for neither, so
    ``win_percentage(y, a, b) + win_percentage(y, b, a) <= 100``, the rest being ties.

    Args:
        y: ``[N]`` confidences of the explained class on the full images.
        o_a: ``[N]`` confidences on method A's explanation maps.
        o_b: ``[N]`` confidences on method B's explanation maps.
        validate_args: Check that the confidences are non-negative.

    Example:
        >>> import torch
        >>> y = torch.tensor([0.8, 0.8, 0.8, 0.8])
        >>> win_percentage(y, torch.tensor([0.6, 0.2, 0.9, 0.75]), torch.tensor([0.4, 0.3, 0.9, 0.7]))
        tensor(50.)
    """
    return _win_percentage_compute(*_win_percentage_update(y, o_a, o_b, validate_args))


# --------------------------------------------------------------------------------------------
# Localisation: Loc(delta), energy-based pointing game
# --------------------------------------------------------------------------------------------


def _check_delta(delta: float) -> float:
    if not 0.0 <= float(delta) <= 1.0:
        raise ValueError(f"delta must be a threshold in [0, 1], got {delta}")
    return float(delta)


def _localization_update(
    maps: Tensor,
    boxes: Tensor,
    delta: float = 0.5,
    image_size: Size | None = None,
    validate_args: bool = True,
) -> tuple[Tensor, int]:
    delta = _check_delta(delta)
    maps, box = _maps_and_boxes(maps, boxes, image_size, validate_args)
    kept = _normalize(maps) >= delta
    inside = (kept & box).sum(dim=(1, 2))
    outside = (kept & ~box).sum(dim=(1, 2))
    area = box.sum(dim=(1, 2))  # > 0 for valid boxes
    loc = inside.float() / (area + outside).clamp_min(1).float()
    return loc.sum(), _count(loc)


def _localization_compute(loc_sum: Tensor, total: Tensor | int) -> Tensor:
    return loc_sum / total


def localization(
    maps: Tensor,
    boxes: Tensor,
    delta: float = 0.5,
    *,
    image_size: Size | None = None,
    validate_args: bool = True,
) -> Tensor:
    """Loc(δ) of the Grad-CAM++ paper, averaged over the batch.

    The map is upsampled to the image size, min-max normalised, and its pixels with value
    ``>= δ`` are kept: ``Loc = kept_in / (box_area + kept_out)`` with ``kept_in``/``kept_out``
    the numbers of kept pixels inside/outside the box. Higher is better, in ``[0, 1]``; 1 only
    when exactly the box is kept.

    Args:
        maps: ``[B, h, w]`` saliency maps.
        boxes: ``[B, 4]`` ``(x0, y0, x1, y1)`` boxes, ``x1``/``y1`` exclusive, in image pixels.
        delta: Threshold in ``[0, 1]`` on the normalised map.
        image_size: ``H`` or ``(H, W)`` of the images the boxes refer to; None: the maps'
            own size (maps already at image resolution).
        validate_args: Check that every box is non-empty and inside the image.

    Example:
        >>> import torch
        >>> maps = torch.tensor([[[0.0, 1.0, 1.0, 0.0],
        ...                       [0.0, 1.0, 1.0, 0.0],
        ...                       [0.0, 1.0, 0.0, 0.0],
        ...                       [0.0, 0.0, 0.0, 0.0]]])
        >>> localization(maps, torch.tensor([[0, 0, 2, 2]]))  # 2 in / (4 + 3 out)
        tensor(0.2857)
    """
    return _localization_compute(
        *_localization_update(maps, boxes, delta, image_size, validate_args)
    )


def _energy_pointing_game_update(
    maps: Tensor, boxes: Tensor, image_size: Size | None = None, validate_args: bool = True
) -> tuple[Tensor, int]:
    maps, box = _maps_and_boxes(maps, boxes, image_size, validate_args)
    if validate_args and bool((maps < 0).any()):
        raise ValueError("maps must be non-negative for the energy pointing game (apply relu)")
    total_energy = maps.sum(dim=(1, 2))
    inside = (maps * box).sum(dim=(1, 2))
    has_energy = total_energy > 0
    safe = torch.where(has_energy, total_energy, torch.ones_like(total_energy))
    score = torch.where(has_energy, inside / safe, torch.zeros_like(inside))
    return score.sum(), _count(score)


def _energy_pointing_game_compute(score_sum: Tensor, total: Tensor | int) -> Tensor:
    return score_sum / total


def energy_pointing_game(
    maps: Tensor,
    boxes: Tensor,
    *,
    image_size: Size | None = None,
    validate_args: bool = True,
) -> Tensor:
    """Energy-based pointing game (Score-CAM): the share of the map's energy inside the box.

    ``EPG_i = sum_{(x,y) in box} L_i(x,y) / sum_{(x,y)} L_i(x,y)`` on the upsampled,
    non-negative map (not normalised; the ratio is scale-invariant), 0 for an all-zero map,
    averaged over the batch. Higher is better, in ``[0, 1]``.

    Args:
        maps: ``[B, h, w]`` non-negative saliency maps.
        boxes: ``[B, 4]`` ``(x0, y0, x1, y1)`` boxes, ``x1``/``y1`` exclusive, in image pixels.
        image_size: ``H`` or ``(H, W)`` of the images the boxes refer to; None: the maps'
            own size.
        validate_args: Check the boxes and that the maps are non-negative.

    Example:
        >>> import torch
        >>> maps = torch.tensor([[[1.0, 1.0], [1.0, 1.0]]])
        >>> energy_pointing_game(maps, torch.tensor([[0, 0, 1, 2]]))  # left half
        tensor(0.5000)
    """
    return _energy_pointing_game_compute(
        *_energy_pointing_game_update(maps, boxes, image_size, validate_args)
    )


# --------------------------------------------------------------------------------------------
# Teacher-student agreement
# --------------------------------------------------------------------------------------------


def _map_agreement_update(maps_a: Tensor, maps_b: Tensor) -> tuple[Tensor, int]:
    maps_a = _check_maps(maps_a, "maps_a")
    maps_b = _check_maps(maps_b, "maps_b")
    if maps_a.shape[0] != maps_b.shape[0]:
        raise ValueError(
            f"maps_a and maps_b have different batch sizes: {maps_a.shape[0]} vs {maps_b.shape[0]}"
        )
    size = (max(maps_a.shape[1], maps_b.shape[1]), max(maps_a.shape[2], maps_b.shape[2]))
    dtype = torch.promote_types(maps_a.dtype, maps_b.dtype)
    flat_a = resize_maps(maps_a.to(dtype), size).flatten(1)
    flat_b = resize_maps(maps_b.to(dtype), size).flatten(1)
    cosine = F.cosine_similarity(flat_a, flat_b, dim=1, eps=1e-8)
    return cosine.sum(), _count(cosine)


def _map_agreement_compute(cosine_sum: Tensor, total: Tensor | int) -> Tensor:
    return cosine_sum / total


def map_agreement(maps_a: Tensor, maps_b: Tensor) -> Tensor:
    """Mean per-sample cosine similarity of two sets of maps (e.g. teacher vs student).

    ``MA = 1/B * sum_i <a_i, b_i> / (||a_i|| ||b_i||)`` over the flattened maps. Maps of
    different sizes are both bilinearly resized to ``(max h, max w)`` first. In ``[-1, 1]``
    (``[0, 1]`` for non-negative maps), higher is better; a sample with an all-zero map
    scores 0.

    Args:
        maps_a: ``[B, h1, w1]`` maps.
        maps_b: ``[B, h2, w2]`` maps.

    Example:
        >>> import torch
        >>> a = torch.tensor([[[1.0, 0.0], [0.0, 0.0]], [[1.0, 1.0], [0.0, 0.0]]])
        >>> b = torch.tensor([[[2.0, 0.0], [0.0, 0.0]], [[0.0, 1.0], [0.0, 0.0]]])
        >>> map_agreement(a, b)  # (1 + 1/sqrt(2)) / 2
        tensor(0.8536)
    """
    return _map_agreement_compute(*_map_agreement_update(maps_a, maps_b))


def _top1_agreement_update(logits_a: Tensor, logits_b: Tensor) -> tuple[Tensor, int]:
    for name, t in (("logits_a", logits_a), ("logits_b", logits_b)):
        if not isinstance(t, Tensor) or t.ndim != 2:
            shape = _shape(t) if isinstance(t, Tensor) else type(t).__name__
            raise ValueError(f"{name} must be [B, C] logits, got {shape}")
    if logits_a.shape != logits_b.shape:
        raise ValueError(
            f"logits_a and logits_b must have the same shape, got {_shape(logits_a)} and "
            f"{_shape(logits_b)}"
        )
    same = logits_a.argmax(dim=1) == logits_b.argmax(dim=1)
    return same.sum().to(torch.float32), _count(same)


def _top1_agreement_compute(agree: Tensor, total: Tensor | int) -> Tensor:
    return agree / total


def top1_agreement(logits_a: Tensor, logits_b: Tensor) -> Tensor:
    """Top-1 agreement: the fraction of samples whose two predictions (argmax) are equal.

    ``T1 = 1/B * sum_i 1[argmax a_i = argmax b_i]``; in ``[0, 1]``, higher is better.

    Args:
        logits_a: ``[B, C]`` logits (or probabilities) of model A.
        logits_b: ``[B, C]`` logits (or probabilities) of model B.

    Example:
        >>> import torch
        >>> a = torch.tensor([[2.0, 1.0], [0.0, 3.0], [1.0, 0.0]])
        >>> b = torch.tensor([[5.0, 1.0], [4.0, 3.0], [1.0, 0.5]])
        >>> top1_agreement(a, b)
        tensor(0.6667)
    """
    return _top1_agreement_compute(*_top1_agreement_update(logits_a, logits_b))
