"""Token layers as spatial grids: what Grad-CAM(++) needs to explain a vision transformer.

A ViT layer outputs a sequence ``[B, N, D]``: ``P`` prefix tokens (class, distillation,
register) followed by ``h * w`` patch tokens in row-major order. A Swin stage outputs a grid in
NHWC order ``[B, h, w, C]``. Grad-CAM(++) works on ``[B, K, H, W]``; a :class:`TokenLayout`
tells the map code how to get there. It comes from the model's own metadata
(``model.token_layout(image_size)``: prefix count, patch grid at that input size), never from a
guess such as "one class token and a square grid".

The gradient of a score must be taken with respect to the tensor the forward pass produced, so
activations and gradients are converted together, after the backward pass
(:func:`distill.cam.functional` does it). Prefix tokens get no map: their gradients are dropped,
and the sums of eq. 19 run over the patch tokens only.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

__all__ = ["TokenLayout", "tokens_to_grid", "token_layout", "map_grid", "twice_differentiable"]


@dataclass(frozen=True)
class TokenLayout:
    """How one model's token activations map onto a ``[B, K, h, w]`` grid.

    Attributes:
        prefix_tokens: leading non-patch tokens of ``[B, N, D]`` sequences (1 for a class
            token, 2 for DeiT's class and distillation tokens, 1 + R with R register tokens).
        grid: ``(h, w)`` patch grid of ``[B, N, D]`` sequences at the current input size.
        channels_last: activations are ``[B, h, w, C]`` grids (Swin): only permuted.
    """

    prefix_tokens: int = 0
    grid: tuple[int, int] | None = None
    channels_last: bool = False


def tokens_to_grid(x: Tensor, layout: TokenLayout | None) -> Tensor:
    """``[B, N, D]`` tokens or ``[B, h, w, C]`` grids as ``[B, D, h, w]`` (a view when possible).

    Four-dimensional activations of a sequence model (e.g. its patch-embedding convolution)
    are already ``[B, K, H, W]`` and pass through, as does anything when ``layout`` is None.

    Example:
        >>> import torch
        >>> tokens = torch.arange(2 * 7 * 3.0).view(2, 7, 3)  # 1 class token + a 2x3 grid
        >>> grid = tokens_to_grid(tokens, TokenLayout(prefix_tokens=1, grid=(2, 3)))
        >>> grid.shape, bool(grid[0, :, 0, 1].eq(tokens[0, 2]).all())
        (torch.Size([2, 3, 2, 3]), True)
    """
    if layout is None:
        return x
    if x.ndim == 4:
        return x.permute(0, 3, 1, 2) if layout.channels_last else x
    if x.ndim != 3:
        raise ValueError(
            f"token activations must be [B, N, D] or [B, h, w, C], got {tuple(x.shape)}"
        )
    if layout.grid is None:
        raise ValueError("a [B, N, D] token layer needs the patch grid: TokenLayout(grid=(h, w))")
    height, width = layout.grid
    patches = x.shape[1] - layout.prefix_tokens
    if patches != height * width:
        raise ValueError(
            f"{x.shape[1]} tokens minus {layout.prefix_tokens} prefix tokens is {patches}, "
            f"not the {height}x{width} patch grid of this input size; is this a token layer "
            "of the model that gave the layout?"
        )
    return x[:, layout.prefix_tokens :].transpose(1, 2).reshape(x.shape[0], -1, height, width)


def token_layout(model: nn.Module, image_size: Sequence[int]) -> TokenLayout | None:
    """The layout ``model`` declares for inputs of ``image_size`` ``(H, W)``; None for CNNs."""
    declare = getattr(model, "token_layout", None)
    if not callable(declare):
        return None
    return declare((int(image_size[-2]), int(image_size[-1])))


def map_grid(activations: Tensor, layout: TokenLayout | None) -> tuple[int, int]:
    """``(h, w)`` of the maps that a layer's activations give."""
    grid = tokens_to_grid(activations, layout)
    return int(grid.shape[-2]), int(grid.shape[-1])


def twice_differentiable(enabled: bool = True) -> AbstractContextManager[None]:
    """Run attention through the math kernel of ``scaled_dot_product_attention``.

    Why: the fused CPU and CUDA attention kernels have no derivative of their backward, so a
    map built with ``create_graph=True`` by autograd through an attention layer (a class-token
    student) could not be trained on. The math kernel is plain differentiable operations.
    """
    return sdpa_kernel([SDPBackend.MATH]) if enabled else nullcontext()
