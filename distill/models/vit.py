"""A small Vision Transformer for 32x32 images (patch 4: an 8x8 token grid), in plain torch.

Why its own file and not timm: CIFAR and shapes runs, tests and the CNN -> ViT recipes need a
ViT that builds without optional packages and is small enough for a CPU. Module names follow
timm's (``patch_embed.proj``, ``blocks.<i>.norm1``, ``attn.qkv``, ``norm``, ``fc_norm``,
``head``), so maps, layer names and hooks read the same as for ``timm/...`` models.

Head: by default the mean of the patch tokens, a LayerNorm (``fc_norm``) and a linear layer
(timm's ``global_pool="avg"``). Grad-CAM(++) at ``cam_layer`` (``norm``, whose output is the
last block's output) then has a closed form: the gradient of a score is the same vector for
every token, ``J_fc_norm(mean token)^T W[c] / N`` (DESIGN section 5), so maps need no backward
pass. ``global_pool="token"`` gives a class-token head instead; its maps then come from
autograd at the input of the last block (see :mod:`distill.models.transformers`).

Other input sizes work: the position embedding is resized (bicubic) to the token grid.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from distill.cam.tokens import TokenLayout

from ._cfg import CIFAR10_MEAN, CIFAR10_STD, ModelCfg
from ._registry import register_model

__all__ = ["SmallViT", "vit_tiny_p4_32"]

GLOBAL_POOLS: tuple[str, ...] = ("avg", "token")


class DropPath(nn.Module):
    """Stochastic depth: drop a residual branch per sample while training."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(1.0 - self.p)
        return x * keep / (1.0 - self.p)


class Attention(nn.Module):
    """Multi-head self-attention through ``scaled_dot_product_attention``."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed_dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        batch, tokens, dim = x.shape
        qkv = self.qkv(x).view(batch, tokens, 3, self.num_heads, dim // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, dim))


class Mlp(nn.Sequential):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, drop_path: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class SmallViT(nn.Module):
    """A ViT with the distill model contract (token edition).

    ``forward_features`` returns the ``[B, N, D]`` tokens (prefix first, as timm);
    ``forward_head`` pools them and classifies; ``token_layout(image_size)`` tells the map code
    how the tokens form the patch grid.

    Args:
        num_classes: classifier outputs.
        img_size: input side the position embedding is made for.
        patch_size: side of a patch (and the stride of the patch embedding).
        embed_dim: token width.
        depth: number of blocks.
        num_heads: attention heads.
        mlp_ratio: hidden width of the MLPs over ``embed_dim``.
        global_pool: ``avg`` (mean of patch tokens, then ``fc_norm``: closed-form maps) or
            ``token`` (class token after the final norm: autograd maps).
        drop_path_rate: stochastic depth, rising linearly to this over the blocks.
    """

    def __init__(
        self,
        num_classes: int = 10,
        img_size: int = 32,
        patch_size: int = 4,
        embed_dim: int = 192,
        depth: int = 6,
        num_heads: int = 3,
        mlp_ratio: float = 4.0,
        global_pool: str = "avg",
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if global_pool not in GLOBAL_POOLS:
            raise ValueError(f"global_pool must be one of {GLOBAL_POOLS}, got {global_pool!r}")
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        self.num_classes = num_classes
        self.patch_size = patch_size
        self.global_pool = global_pool
        self.num_features = self.head_hidden_size = embed_dim
        self.num_prefix_tokens = 1 if global_pool == "token" else 0
        self.grid_size = (img_size // patch_size, img_size // patch_size)

        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(3, embed_dim, patch_size, stride=patch_size)
        self.cls_token = (
            nn.Parameter(torch.zeros(1, 1, embed_dim)) if self.num_prefix_tokens else None
        )
        self.pos_embed = nn.Parameter(torch.zeros(1, math.prod(self.grid_size), embed_dim))
        rates = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]  # meta-safe
        self.blocks = nn.Sequential(*(Block(embed_dim, num_heads, mlp_ratio, r) for r in rates))
        avg = global_pool == "avg"
        self.norm = nn.Identity() if avg else nn.LayerNorm(embed_dim)
        self.fc_norm = nn.LayerNorm(embed_dim) if avg else nn.Identity()
        self.head = nn.Linear(embed_dim, num_classes)

        # Token-average head: closed form at `norm` (the last block's output). Class token: the
        # last block's patch outputs get no gradient, so explain its input (the output of the
        # block before it, or of the patch embedding in a one-block model).
        self.has_pooled_linear_head = avg
        self.cam_layer = "norm" if avg else (f"blocks.{depth - 2}" if depth > 1 else "pos_drop")
        self.pos_drop = nn.Identity()  # names the input of the first block
        self._init_weights()
        self.default_cfg = ModelCfg(
            input_size=(3, img_size, img_size),
            mean=CIFAR10_MEAN,
            std=CIFAR10_STD,
            pool_size=self.grid_size,
            num_params=sum(p.numel() for p in self.parameters())
            + (10 - num_classes) * (embed_dim + 1),
        )

    def _init_weights(self) -> None:
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        if self.cls_token is not None:
            nn.init.trunc_normal_(self.cls_token, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)
        proj = self.patch_embed.proj
        nn.init.trunc_normal_(proj.weight.view(proj.weight.shape[0], -1), std=0.02)
        nn.init.zeros_(proj.bias)

    def token_grid(self, image_size: tuple[int, int]) -> tuple[int, int]:
        """The patch grid at an input of ``image_size`` ``(H, W)``."""
        return image_size[0] // self.patch_size, image_size[1] // self.patch_size

    def token_layout(self, image_size: tuple[int, int]) -> TokenLayout:
        """Prefix tokens and patch grid of every block's output at this input size."""
        return TokenLayout(self.num_prefix_tokens, self.token_grid(image_size))

    def get_classifier(self) -> nn.Linear:
        return self.head

    def get_head_norm(self) -> nn.Module | None:
        """The norm between the token average and the classifier (None: class-token head)."""
        return self.fc_norm if self.global_pool == "avg" else None

    def _pos_embed(self, grid: tuple[int, int]) -> Tensor:
        if grid == self.grid_size:
            return self.pos_embed
        table = self.pos_embed.reshape(1, *self.grid_size, -1).permute(0, 3, 1, 2)
        table = F.interpolate(table, size=grid, mode="bicubic", align_corners=False)
        return table.flatten(2).transpose(1, 2)

    def forward_features(self, x: Tensor) -> Tensor:
        """``[B, N, D]`` tokens after the blocks (and the final norm of a class-token head)."""
        x = self.patch_embed.proj(x)
        grid = (x.shape[-2], x.shape[-1])
        x = x.flatten(2).transpose(1, 2) + self._pos_embed(grid)
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        return self.norm(self.blocks(self.pos_drop(x)))

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Pool (patch-token mean or class token), normalise, classify."""
        x = x[:, self.num_prefix_tokens :].mean(dim=1) if self.global_pool == "avg" else x[:, 0]
        x = self.fc_norm(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


@register_model
def vit_tiny_p4_32(*, num_classes: int = 10, **kwargs) -> SmallViT:
    """ViT-Tiny width (192, 3 heads) at half depth (6 blocks), patch 4 on 32x32: 8x8 tokens,
    token-average head (closed-form maps). ``depth``, ``global_pool`` etc. can be overridden."""
    return SmallViT(num_classes=num_classes, **kwargs)
