"""torchvision and timm vision transformers behind the distill model contract (token edition).

Names :func:`distill.models.build_model` resolves here:

- torchvision ``vit_*`` (``vit_b_16``, ``vit_b_32``, ...) -> :class:`TorchvisionViT`;
- torchvision ``swin_*`` (``swin_t``, ``swin_s``, ``swin_v2_t``, ...) -> :class:`TorchvisionSwin`;
- ``timm/<name>`` for timm's ViT, DeiT (also distilled) and Swin -> :class:`TimmTransformer`
  (needs ``pip install timm``; other timm names are not handled here).

What each wrapper adds to the network (kept as ``self.net``, parameter names unchanged under
``net.``): ``forward_features`` (``[B, N, D]`` tokens, or ``[B, h, w, C]`` for Swin),
``forward_head``, ``get_classifier``, ``cam_layer``, ``has_pooled_linear_head``,
``num_features``, ``default_cfg`` and ``token_layout(image_size)``: the prefix tokens (class,
distillation, register: from the model, e.g. timm's ``num_prefix_tokens``) and the patch grid
at that input size, from which the map code lays tokens out as a grid.

Default explanation layer (``cam_layer``):

- class-token heads (torchvision ViT, timm ViT/DeiT with ``global_pool="token"``): the input of
  the last block, i.e. of its first norm (``blocks[-1].norm1``), named as the output of the
  block before it (``net.blocks.<L-2>``; ``net.encoder.layers.encoder_layer_<L-2>``). The last
  block's own patch outputs get no gradient from a class-token score (only the class token
  reaches the head), so maps there would be empty; its input reaches the class token through
  attention. Maps come from autograd (a backward through the last block only).
- token-average heads (timm ``global_pool="avg"``): ``net.norm``, whose output feeds the mean
  of the patch tokens, timm's ``fc_norm`` (or none) and the classifier: closed-form maps, one
  vector-Jacobian product through ``fc_norm`` and no backward pass (DESIGN section 5).
- Swin (torchvision, timm): the input of the last block of the last stage (7x7 at 224),
  NHWC; autograd. Its head averages the final norm's output, so ``net.norm`` has closed-form
  maps too (pass it as the layer).

Input sizes: timm models are created with ``dynamic_img_size=True`` (position embedding resampled,
Swin masks rebuilt per input size); torchvision ViT's forward is re-run here with its position
embedding resized bicubically to the token grid (torchvision itself accepts only its
``image_size``); torchvision Swin accepts any size. Use sides that are multiples of the patch
size (ViT) or of 32 (Swin).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

from distill.cam.tokens import TokenLayout

from ._cfg import IMAGENET_MEAN, IMAGENET_STD, TIMM_PREFIX, ModelCfg
from ._registry import ModelFamily, register_family
from .torchvision_models import _load_pretrained, _resolve_weights

__all__ = [
    "TIMM_PREFIX",
    "TimmTransformer",
    "TorchvisionSwin",
    "TorchvisionViT",
    "build_transformer",
    "torchvision_transformer_names",
]

_TIMM_MODULES = ("vision_transformer", "deit", "swin_transformer")


def _num_params_with_10_classes(model: nn.Module, classifiers: Sequence[nn.Linear]) -> int:
    """Parameter count with every classifier resized to 10 outputs (ModelCfg.num_params)."""
    total = sum(p.numel() for p in model.parameters())
    for clf in classifiers:
        total += (10 - clf.out_features) * (clf.in_features + (clf.bias is not None))
    return total


def _previous_block(prefix: str, blocks: int, before_first: str) -> str:
    """The module whose output is the input of the last of ``blocks`` blocks under ``prefix``."""
    return f"{prefix}.{blocks - 2}" if blocks > 1 else before_first


def _new_linear(old: nn.Linear, num_classes: int) -> nn.Linear:
    new = nn.Linear(old.in_features, num_classes, bias=old.bias is not None)
    nn.init.normal_(new.weight, 0.0, 0.01)
    if new.bias is not None:
        nn.init.zeros_(new.bias)
    return new


class _TokenClassifier(nn.Module):
    """What the wrappers share: ``forward`` chains features and head; the head's norm."""

    net: nn.Module
    num_classes: int
    cam_layer: str
    has_pooled_linear_head: bool
    default_cfg: ModelCfg

    def forward_features(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    def get_head_norm(self) -> nn.Module | None:
        """The norm between pooling and the classifier (None: none)."""
        return None


# ----------------------------------------------------------------------------- torchvision


@functools.lru_cache(maxsize=1)
def torchvision_transformer_names() -> tuple[str, ...]:
    """torchvision ViT and Swin classification names (``vit_b_16``, ``swin_t``, ...)."""
    names = torchvision.models.list_models(module=torchvision.models)
    return tuple(n for n in names if n.startswith(("vit_", "swin_")))


def _torchvision_net(name: str, num_classes: int, weights, model_kwargs: dict) -> nn.Module:
    resolved = _resolve_weights(name, weights)
    if resolved is None:
        return torchvision.models.get_model(name, num_classes=num_classes, **model_kwargs)
    return _load_pretrained(name, resolved, **model_kwargs)


class TorchvisionViT(_TokenClassifier):
    """A torchvision ``VisionTransformer`` at any input size (multiples of the patch size).

    Args:
        name: ``vit_b_16``, ``vit_b_32``, ``vit_l_16``, ``vit_l_32`` or ``vit_h_14``.
        num_classes: classifier outputs (a pretrained head is replaced when it differs).
        weights: None (random init, never downloads), a weights name or enum.
        **model_kwargs: forwarded to torchvision (``image_size`` sets the size the position
            embedding is made for; other sizes resize it).
    """

    def __init__(self, name: str, num_classes: int = 1000, weights=None, **model_kwargs) -> None:
        super().__init__()
        self.model_name = name
        self.num_classes = num_classes
        self.net = _torchvision_net(name, num_classes, weights, model_kwargs)
        self.head_replaced = self.get_classifier().out_features != num_classes
        if self.head_replaced:
            self.net.heads.head = _new_linear(self.get_classifier(), num_classes)
        net = self.net
        self.patch_size = net.patch_size
        self.grid_size = (net.image_size // net.patch_size,) * 2
        self.num_prefix_tokens = 1
        self.num_features = net.hidden_dim
        self.head_hidden_size = self.get_classifier().in_features
        depth = len(net.encoder.layers)
        self.cam_layer = (
            f"net.encoder.layers.encoder_layer_{depth - 2}" if depth > 1 else "net.encoder.dropout"
        )
        self.has_pooled_linear_head = False
        self.default_cfg = ModelCfg(
            input_size=(3, net.image_size, net.image_size),
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            pool_size=self.grid_size,
            num_params=_num_params_with_10_classes(self, [self.get_classifier()]),
        )

    def token_layout(self, image_size: tuple[int, int]) -> TokenLayout:
        """One class token, then the patch grid of this input size."""
        grid = (image_size[0] // self.patch_size, image_size[1] // self.patch_size)
        return TokenLayout(self.num_prefix_tokens, grid)

    def get_classifier(self) -> nn.Linear:
        return self.net.heads.head

    def _pos_embedding(self, grid: tuple[int, int]) -> Tensor:
        table = self.net.encoder.pos_embedding
        if grid == self.grid_size:
            return table
        cls, patches = table[:, :1], table[:, 1:]
        patches = patches.reshape(1, *self.grid_size, -1).permute(0, 3, 1, 2)
        patches = F.interpolate(patches, size=grid, mode="bicubic", align_corners=False)
        return torch.cat([cls, patches.flatten(2).transpose(1, 2)], dim=1)

    def forward_features(self, x: Tensor) -> Tensor:
        """torchvision's forward up to the encoder's final norm, without its size check."""
        net = self.net
        x = net.conv_proj(x)
        grid = (x.shape[-2], x.shape[-1])
        x = x.flatten(2).transpose(1, 2)
        x = torch.cat([net.class_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = x + self._pos_embedding(grid)
        encoder = net.encoder
        return encoder.ln(encoder.layers(encoder.dropout(x)))

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """The class token through torchvision's ``heads``."""
        x = self.net.heads[:-1](x[:, 0])
        return x if pre_logits else self.get_classifier()(x)


class TorchvisionSwin(_TokenClassifier):
    """A torchvision ``SwinTransformer`` (v1 or v2); its stages are NHWC grids.

    Args:
        name: ``swin_t``, ``swin_s``, ``swin_b``, ``swin_v2_t``, ``swin_v2_s`` or ``swin_v2_b``.
        num_classes: classifier outputs.
        weights: None (random init, never downloads), a weights name or enum.
        **model_kwargs: forwarded to torchvision.
    """

    def __init__(self, name: str, num_classes: int = 1000, weights=None, **model_kwargs) -> None:
        super().__init__()
        self.model_name = name
        self.num_classes = num_classes
        self.net = _torchvision_net(name, num_classes, weights, model_kwargs)
        self.head_replaced = self.net.head.out_features != num_classes
        if self.head_replaced:
            self.net.head = _new_linear(self.net.head, num_classes)
        last = len(self.net.features) - 1
        self.cam_layer = _previous_block(
            f"net.features.{last}", len(self.net.features[last]), f"net.features.{last - 1}"
        )
        self.pooled_head_layer = "net.norm"
        self.has_pooled_linear_head = True  # at net.norm: average pooling, then net.head
        self.num_features = self.head_hidden_size = self.net.head.in_features
        self.default_cfg = ModelCfg(
            input_size=(3, 224, 224),
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            pool_size=(7, 7),
            num_params=_num_params_with_10_classes(self, [self.net.head]),
        )

    def token_layout(self, image_size: tuple[int, int]) -> TokenLayout:
        """Every stage is an NHWC grid; there are no prefix tokens."""
        return TokenLayout(channels_last=True)

    def get_classifier(self) -> nn.Linear:
        return self.net.head

    def forward_features(self, x: Tensor) -> Tensor:
        """``[B, h, w, C]`` after the last stage and the final norm."""
        return self.net.norm(self.net.features(x))

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = x.mean(dim=(1, 2))
        return x if pre_logits else self.net.head(x)


# ----------------------------------------------------------------------------------- timm


def _timm():
    try:
        import timm
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "timm models need the timm package: pip install timm (or the project's [timm] extra)"
        ) from exc
    return timm


def is_timm_transformer(name: str) -> bool:
    """Whether ``name`` (without ``timm/``) is a timm ViT, DeiT or Swin architecture."""
    return _timm().models.is_model_in_modules(name, _TIMM_MODULES)


class TimmTransformer(_TokenClassifier):
    """A timm ViT, DeiT (also with its distillation token) or Swin.

    Args:
        name: timm model name, e.g. ``vit_tiny_patch16_224``,
            ``deit_tiny_distilled_patch16_224``, ``swin_tiny_patch4_window7_224``.
        num_classes: classifier outputs.
        pretrained: load timm's pretrained weights (downloads unless cached); default False.
        **kwargs: forwarded to ``timm.create_model`` (``global_pool``, ``depth``, ``img_size``,
            ...); ``dynamic_img_size`` defaults to True so that any input size works.
    """

    def __init__(
        self, name: str, num_classes: int = 1000, pretrained: bool = False, **kwargs
    ) -> None:
        super().__init__()
        timm = _timm()
        from timm.models.swin_transformer import SwinTransformer
        from timm.models.vision_transformer import VisionTransformer

        kwargs.setdefault("dynamic_img_size", True)
        self.model_name = name
        self.num_classes = num_classes
        self.net = timm.create_model(name, pretrained=pretrained, num_classes=num_classes, **kwargs)
        net = self.net
        cfg = net.pretrained_cfg
        self.head_replaced = pretrained and cfg.get("num_classes", num_classes) != num_classes
        input_size = (3, *net.patch_embed.img_size)  # the size it was built for (img_size=...)
        if isinstance(net, SwinTransformer):
            self._swin = True
            self.num_prefix_tokens = 0
            stages = len(net.layers)
            self.cam_layer = _previous_block(
                f"net.layers.{stages - 1}.blocks",
                len(net.layers[-1].blocks),
                f"net.layers.{stages - 1}.downsample",
            )
            stride = net.patch_embed.patch_size[0] * 2 ** (stages - 1)
            pool_size = (input_size[1] // stride, input_size[2] // stride)
            self.pooled_head_layer = "net.norm"
            self.has_pooled_linear_head = (
                net.head.global_pool.pool_type == "avg" and net.head.drop.p == 0.0
            )
        elif isinstance(net, VisionTransformer):
            self._swin = False
            self.num_prefix_tokens = net.num_prefix_tokens
            pool = net.global_pool
            token_head = pool == "token"
            if token_head:
                self.cam_layer = _previous_block("net.blocks", len(net.blocks), "net.norm_pre")
            else:
                self.cam_layer = "net.norm"
            self.has_pooled_linear_head = (
                pool == "avg"
                and net.attn_pool is None
                and not getattr(net, "pool_include_prefix", False)
                and net.head_drop.p == 0.0
            )
            pool_size = self.token_layout(input_size[1:]).grid
        else:
            raise ValueError(
                f"timm model {name!r} is a {type(net).__name__}, not a ViT, DeiT or Swin"
            )
        self.num_features = net.num_features
        self.head_hidden_size = self.get_classifier().in_features
        classifiers = [m for m in (getattr(net, "head_dist", None),) if isinstance(m, nn.Linear)]
        self.default_cfg = ModelCfg(
            input_size=input_size,
            mean=tuple(cfg.get("mean", IMAGENET_MEAN)),
            std=tuple(cfg.get("std", IMAGENET_STD)),
            pool_size=pool_size,
            num_params=_num_params_with_10_classes(self, [self.get_classifier(), *classifiers]),
        )

    def token_layout(self, image_size: tuple[int, int]) -> TokenLayout:
        """Swin: NHWC grids. ViT/DeiT: the model's prefix tokens, then its patch grid."""
        if self._swin:
            return TokenLayout(channels_last=True)
        embed = self.net.patch_embed
        size = (int(image_size[0]), int(image_size[1]))
        grid = embed.dynamic_feat_size(size) if self.net.dynamic_img_size else embed.grid_size
        return TokenLayout(self.num_prefix_tokens, tuple(grid))

    def get_classifier(self) -> nn.Linear:
        """The final Linear (DeiT-distilled: the class-token head; ``net.head_dist`` is the
        other)."""
        head = self.net.head
        return head.fc if self._swin else head

    def get_head_norm(self) -> nn.Module | None:
        norm = getattr(self.net, "fc_norm", None)
        return None if norm is None or isinstance(norm, nn.Identity) else norm

    def forward_features(self, x: Tensor) -> Tensor:
        return self.net.forward_features(x)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        return self.net.forward_head(x, pre_logits=pre_logits)


def build_transformer(
    name: str, num_classes: int, weights: str | None = None, **kwargs
) -> nn.Module | None:
    """The transformer wrapper for ``name``, or None when the name is not one of them.

    ``timm/<name>`` builds timm ViT/DeiT/Swin; torchvision ``vit_*``/``swin_*`` names build
    the torchvision wrappers.
    """
    if name.lower().startswith(TIMM_PREFIX):
        timm_name = name[len(TIMM_PREFIX) :]
        if not is_timm_transformer(timm_name):
            return None
        pretrained = weights is not None  # "DEFAULT": the tag's weights (checked by the config)
        return TimmTransformer(timm_name, num_classes=num_classes, pretrained=pretrained, **kwargs)
    if name.lower() in torchvision_transformer_names():
        key = name.lower()
        cls = TorchvisionViT if key.startswith("vit_") else TorchvisionSwin
        return cls(key, num_classes=num_classes, weights=weights, **kwargs)
    return None


def _build_transformer(name: str, num_classes: int, weights: str | None, kwargs: dict):
    return build_transformer(name.strip(), num_classes=num_classes, weights=weights, **kwargs)


# No weights check of its own: its names are torchvision's or timm's, checked by those families.
register_family(
    ModelFamily("transformers", 20, _build_transformer, listed=torchvision_transformer_names)
)
