"""The explanation images ``E = L ∘ I`` of the Grad-CAM++ paper and the model's confidences on
them and on the images: the inputs of the faithfulness metrics (Average Drop, Increase in
Confidence, Win %; conventions in :mod:`distill.metrics.functional`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from distill.cam.functional import select_targets
from distill.metrics._inputs import _check_maps, _normalize, _shape, _upsample

__all__ = ["explanation_confidences", "explanation_maps"]


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
