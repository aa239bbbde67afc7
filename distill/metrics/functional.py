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
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from distill.cam.functional import minmax_normalize, resize_maps, select_targets

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

Size = int | tuple[int, int]

_EPS = 1e-7  # the span below which a map counts as constant (same as minmax_normalize)


# --------------------------------------------------------------------------------------------
# Input checks and shared helpers
# --------------------------------------------------------------------------------------------


def _shape(t: Tensor) -> tuple[int, ...]:
    return tuple(t.shape)


def _check_confidences(validate_args: bool, **named: Tensor) -> list[Tensor]:
    """Same-shape, floating confidences, flattened to ``[N]``; optionally non-negative."""
    names = list(named)
    tensors = list(named.values())
    for name, t in named.items():
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a tensor, got {type(t).__name__}")
        if not t.dtype.is_floating_point:
            raise TypeError(f"{name} must hold floating-point confidences, got dtype {t.dtype}")
    first = tensors[0]
    for name, t in zip(names[1:], tensors[1:], strict=True):
        if t.shape != first.shape:
            raise ValueError(
                f"{names[0]} and {name} must have the same shape, got {_shape(first)} and "
                f"{_shape(t)}"
            )
    if validate_args:
        for name, t in named.items():
            if bool((t < 0).any()):
                raise ValueError(
                    f"{name} holds negative values: confidences must be softmax probabilities "
                    "(did you pass logits?)"
                )
    return [t.reshape(-1) for t in tensors]


def _check_maps(maps: Tensor, name: str = "maps") -> Tensor:
    """``[B, h, w]`` maps as a floating tensor (bool/int masks become float32)."""
    if not isinstance(maps, Tensor):
        raise TypeError(f"{name} must be a tensor, got {type(maps).__name__}")
    if maps.ndim != 3:
        raise ValueError(f"{name} must be [B, H, W], got shape {_shape(maps)}")
    if maps.shape[1] == 0 or maps.shape[2] == 0:
        raise ValueError(f"{name} must have a non-empty spatial size, got shape {_shape(maps)}")
    return maps if maps.dtype.is_floating_point else maps.float()


def _pair(size: Size) -> tuple[int, int]:
    if isinstance(size, int):
        size = (size, size)
    if len(size) != 2 or any(int(s) <= 0 for s in size):
        raise ValueError(f"image_size must be a positive int or (H, W), got {size}")
    return int(size[0]), int(size[1])


def _upsample(maps: Tensor, image_size: Size | None) -> Tensor:
    """Maps at the image resolution (``None``: they already are)."""
    return maps if image_size is None else resize_maps(maps, _pair(image_size))


def _normalize(maps: Tensor) -> Tensor:
    """Min-max normalisation; constant maps become ones if positive, else zeros."""
    flat = maps.flatten(1)
    span = flat.amax(1) - flat.amin(1)
    constant = (span <= _EPS)[:, None, None]
    return torch.where(constant, (maps > 0).to(maps.dtype), minmax_normalize(maps, _EPS))


def _box_masks(boxes: Tensor, height: int, width: int, validate_args: bool) -> Tensor:
    """Bool ``[B, H, W]`` masks of ``(x0, y0, x1, y1)`` boxes (exclusive max)."""
    if not isinstance(boxes, Tensor):
        raise TypeError(f"boxes must be a tensor, got {type(boxes).__name__}")
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes must be [B, 4] (x0, y0, x1, y1), got shape {_shape(boxes)}")
    if boxes.dtype == torch.bool or boxes.is_complex():
        raise TypeError(f"boxes must hold pixel coordinates, got dtype {boxes.dtype}")
    x0, y0, x1, y1 = boxes.unbind(1)
    if validate_args:
        bad = (x0 < 0) | (y0 < 0) | (x1 > width) | (y1 > height) | (x1 <= x0) | (y1 <= y0)
        if bool(bad.any()):
            i = int(bad.nonzero()[0, 0])
            raise ValueError(
                f"box {i} = {boxes[i].tolist()} is empty or outside the {height}x{width} image: "
                "boxes must satisfy 0 <= x0 < x1 <= W and 0 <= y0 < y1 <= H (x1, y1 exclusive)"
            )
    xs = torch.arange(width, device=boxes.device)
    ys = torch.arange(height, device=boxes.device)
    in_x = (xs >= x0[:, None]) & (xs < x1[:, None])  # [B, W]
    in_y = (ys >= y0[:, None]) & (ys < y1[:, None])  # [B, H]
    return in_y[:, :, None] & in_x[:, None, :]


def _maps_and_boxes(
    maps: Tensor, boxes: Tensor, image_size: Size | None, validate_args: bool
) -> tuple[Tensor, Tensor]:
    """Upsampled maps ``[B, H, W]`` and the boxes' masks on the same grid."""
    maps = _check_maps(maps)
    if not isinstance(boxes, Tensor):
        raise TypeError(f"boxes must be a tensor, got {type(boxes).__name__}")
    if boxes.ndim >= 1 and boxes.shape[0] != maps.shape[0]:
        raise ValueError(
            f"maps and boxes have different batch sizes: {maps.shape[0]} vs {boxes.shape[0]}"
        )
    maps = _upsample(maps, image_size)
    height, width = maps.shape[-2:]
    return maps, _box_masks(boxes.to(maps.device), height, width, validate_args)


def _count(t: Tensor) -> int:
    return int(t.shape[0])


def _relative_drop(y: Tensor, o: Tensor) -> Tensor:
    """Per-sample ``max(0, y - o) / y``; 0 where ``y == 0`` (nothing can drop)."""
    positive = y > 0
    safe_y = torch.where(positive, y, torch.ones_like(y))
    return torch.where(positive, torch.relu(y - o) / safe_y, torch.zeros_like(y))


# --------------------------------------------------------------------------------------------
# Explanation maps and confidences
# --------------------------------------------------------------------------------------------


def _channel_stats(
    stats: Sequence[float] | Tensor, images: Tensor, name: str
) -> Tensor:  # [1, C, 1, 1]
    t = torch.as_tensor(stats, dtype=images.dtype, device=images.device).reshape(1, -1, 1, 1)
    if t.shape[1] not in (1, images.shape[1]):
        raise ValueError(
            f"{name} has {t.shape[1]} values but the images have {images.shape[1]} channels"
        )
    return t


def explanation_maps(
    images: Tensor,
    maps: Tensor,
    mean: Sequence[float] | Tensor | None = None,
    std: Sequence[float] | Tensor | None = None,
) -> Tensor:
    """Explanation images ``E = L ∘ I`` of the Grad-CAM++ paper, batched.

    ``L`` is the map upsampled to the image size and min-max normalised (see the module notes
    for constant maps). With ``mean``/``std`` the images are taken as normalised
    ``(x - mean) / std``: the product is formed in pixel space and normalised again,
    ``E = ((I * std + mean) * L - mean) / std``. Without them ``E = I * L``.

    Args:
        images: ``[B, C, H, W]`` images as the model sees them.
        maps: ``[B, h, w]`` saliency maps, any resolution.
        mean: Per-channel mean of the images' normalisation, or None.
        std: Per-channel std of the images' normalisation, or None.

    Returns:
        ``[B, C, H, W]`` explanation images, normalised like ``images``.

    Example:
        >>> import torch
        >>> images = torch.ones(1, 3, 4, 4)
        >>> maps = torch.tensor([[[0.0, 2.0], [2.0, 2.0]]])
        >>> explanation_maps(images, maps)[0, 0]
        tensor([[0.0000, 0.2500, 0.7500, 1.0000],
                [0.2500, 0.4375, 0.8125, 1.0000],
                [0.7500, 0.8125, 0.9375, 1.0000],
                [1.0000, 1.0000, 1.0000, 1.0000]])
    """
    if not isinstance(images, Tensor) or images.ndim != 4:
        shape = _shape(images) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"images must be [B, C, H, W], got {shape}")
    maps = _check_maps(maps)
    if maps.shape[0] != images.shape[0]:
        raise ValueError(
            f"images and maps have different batch sizes: {images.shape[0]} vs {maps.shape[0]}"
        )
    if (mean is None) != (std is None):
        raise ValueError("pass both mean and std (normalised images) or neither")
    if not images.dtype.is_floating_point:
        images = images.float()
    weights = _normalize(_upsample(maps.to(images.device), images.shape[-2:]))
    weights = weights.to(images.dtype)[:, None]  # [B, 1, H, W]
    if mean is None:
        return images * weights
    mean_t = _channel_stats(mean, images, "mean")
    std_t = _channel_stats(std, images, "std")
    return ((images * std_t + mean_t) * weights - mean_t) / std_t


def explanation_confidences(
    model: nn.Module,
    images: Tensor,
    maps: Tensor,
    targets: Tensor | None = None,
    mean: Sequence[float] | Tensor | None = None,
    std: Sequence[float] | Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Confidences ``Y`` on the images and ``O`` on their explanation maps ``E``.

    Two batched forward passes under ``torch.no_grad()``: ``Y_i = softmax(model(I))_i[c_i]``
    and ``O_i = softmax(model(E))_i[c_i]`` with ``E`` from :func:`explanation_maps`. The
    model's train/eval mode is left as it is (call ``model.eval()`` first for batch norm).

    Args:
        model: Classifier returning ``[B, num_classes]`` logits.
        images: ``[B, C, H, W]`` images as the model sees them (normalised with mean/std).
        maps: ``[B, h, w]`` saliency maps for ``targets``, any resolution.
        targets: ``[B]`` explained class per sample; None uses the prediction on ``images``.
        mean: Per-channel normalisation mean of ``images`` (None: multiply ``images`` as is).
        std: Per-channel normalisation std of ``images``.

    Returns:
        ``(y, o)``: float32 ``[B]`` confidences, inputs of :func:`average_drop` and friends.

    Example:
        >>> import torch
        >>> _ = torch.manual_seed(0)
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 5))
        >>> images = torch.randn(2, 3, 4, 4)
        >>> y, o = explanation_confidences(model, images, torch.ones(2, 4, 4))
        >>> torch.equal(y, o)  # a uniform map keeps the whole image
        True
    """
    with torch.no_grad():
        explained = explanation_maps(images, maps, mean, std)
        logits = model(images)
        if logits.ndim != 2:
            raise ValueError(f"model must return [B, C] logits, got shape {_shape(logits)}")
        targets = select_targets(logits, targets)[:, None]
        y = logits.float().softmax(dim=1).gather(1, targets)[:, 0]
        o = model(explained).float().softmax(dim=1).gather(1, targets)[:, 0]
    return y, o


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
