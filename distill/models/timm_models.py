"""timm classifiers behind the distill model contract (optional: ``pip install 'distill[timm]'``).

``build_model("timm/<name>", num_classes)`` wraps ``timm.create_model(name, ...)`` as ``self.net``.
timm already splits every model into ``forward_features`` / ``forward_head`` /
``get_classifier``, so the wrapper only adds what the toolkit needs on top:

- ``cam_layer``: the submodule whose output *is* ``forward_features``'s output (found once per
  architecture by a forward pass on the meta device, which costs no memory and no compute, so
  names are timm's own, e.g. ``net.layer4`` for a ResNet or ``net.bn2`` for an EfficientNet).
  When ``forward_features`` ends in a functional op instead of a module, the wrapper applies a
  parameter-free ``features_out`` identity to that output and names it.
- ``has_pooled_linear_head``: whether ``forward_head`` is exactly global average pooling then
  ``get_classifier()``, checked numerically on the model's own head (train and eval mode, so a
  head dropout or norm makes it False). Closed-form Grad-CAM++ needs it; meta-device models
  (the config check) report False, as they hold no values to check.

Only models whose ``forward_features`` returns a ``[B, C, H, W]`` map are supported: token
outputs (ViT, DeiT) and channels-last maps (Swin) are refused with a clear error.
"""

from __future__ import annotations

import difflib
import os
from typing import Any
from urllib.parse import urlparse

import torch
from torch import Tensor, nn

from ._cfg import IMAGENET_MEAN, IMAGENET_STD, TIMM_PREFIX, ModelCfg
from ._registry import ModelFamily, register_family
from .weights import WeightsError

__all__ = ["PRETRAINED", "TimmClassifier", "import_timm"]

PRETRAINED = "DEFAULT"
"""The only ``weights`` name timm models take: the pretrained tag of the name (or timm's
default tag). Pick other weights through the tag: ``timm/resnet50.a1_in1k``."""

_FEATURES_OUT = "features_out"


def import_timm() -> Any:
    """The ``timm`` module, or an ImportError saying how to install it."""
    try:
        import timm
    except ImportError:
        raise ImportError(
            "timm models need the timm package: pip install 'distill[timm]' (or pip install timm)"
        ) from None
    return timm


def _check_name(timm: Any, name: str) -> None:
    if timm.is_model(name):
        return
    base = name.split(".", 1)[0]
    close = difflib.get_close_matches(base, timm.list_models(), n=5, cutoff=0.6)
    hint = f" Did you mean: {', '.join(TIMM_PREFIX + c for c in close)}?" if close else ""
    raise ValueError(f"{name!r} is not a timm model.{hint} See timm.list_models().")


_PROBES: dict[str, tuple[str | None, tuple[int, ...]]] = {}


def _probe(name: str, kwargs: dict[str, Any]) -> tuple[str | None, tuple[int, ...]]:
    """``(cam layer name or None, forward_features shape)`` of a meta-device instance, cached.

    The outermost module whose output is the very tensor ``forward_features`` returns is the
    CAM layer (hooks fire innermost first, so the last hit is the outermost).
    """
    key = f"{name}|{sorted(kwargs.items())!r}"
    if key not in _PROBES:
        _PROBES[key] = _run_probe(name, kwargs)
    return _PROBES[key]


def _run_probe(name: str, kwargs: dict[str, Any]) -> tuple[str | None, tuple[int, ...]]:
    timm = import_timm()
    with torch.device("meta"):
        net = timm.create_model(name, pretrained=False, **kwargs)
    hits: list[tuple[str, Tensor]] = []
    handles = [
        module.register_forward_hook(lambda _m, _i, out, n=n: hits.append((n, out)))
        for n, module in net.named_modules()
        if n
    ]
    try:
        size = net.pretrained_cfg.get("input_size", (3, 224, 224))
        with torch.no_grad():
            out = net.forward_features(torch.empty(1, *size, device="meta"))
    finally:
        for handle in handles:
            handle.remove()
    if not isinstance(out, Tensor) or out.dim() != 4 or out.shape[1] != net.num_features:
        shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(
            f"timm model {name!r} is not supported: its forward_features returns {shape}, not a "
            f"[B, {net.num_features}, H, W] map (token outputs such as ViT's, or channels-last "
            "maps such as Swin's, have no CNN map for Grad-CAM++ here); pick a convolutional "
            "timm model (resnet, efficientnet, convnext, regnet, mobilenetv3, ...)"
        )
    layer = next((n for n, hit in reversed(hits) if hit is out), None)
    return layer, tuple(out.shape)


def _hf_download_hint(net_cfg: dict[str, Any]) -> str:
    """Where timm looks for the weights of ``net_cfg`` and how to provide them offline."""
    hub_id = net_cfg.get("hf_hub_id")
    if hub_id:
        try:
            from huggingface_hub.constants import HF_HUB_CACHE
        except ImportError:  # pragma: no cover - timm depends on huggingface_hub
            HF_HUB_CACHE = "~/.cache/huggingface/hub"
        return (
            f"download https://huggingface.co/{hub_id}/resolve/main/model.safetensors on a "
            f"machine with internet access and either pass that file as weights "
            f"(teacher.weights=/path/to/model.safetensors) or copy the whole repo into the "
            f"Hugging Face cache {HF_HUB_CACHE} (huggingface-cli download {hub_id}; "
            "then set HF_HUB_OFFLINE=1)"
        )
    url = net_cfg.get("url")
    hub_dir = torch.hub.get_dir()
    return (
        f"download {url} on a machine with internet access and either pass that file as weights "
        f"(teacher.weights=/path/to/file) or place it in {hub_dir}/checkpoints"
    )


def _cached(net_cfg: dict[str, Any]) -> bool:
    """Whether the weights of ``net_cfg`` are already in the Hugging Face or torch hub cache."""
    hub_id = net_cfg.get("hf_hub_id")
    if hub_id:
        from huggingface_hub import try_to_load_from_cache

        names = (net_cfg.get("hf_hub_filename"), "model.safetensors", "pytorch_model.bin")
        return any(
            isinstance(try_to_load_from_cache(hub_id, n), str) for n in names if n is not None
        )
    url = net_cfg.get("url")
    return bool(url) and os.path.exists(
        os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(urlparse(url).path))
    )


def _create(name: str, pretrained: bool, num_classes: int, kwargs: dict[str, Any]) -> nn.Module:
    """``timm.create_model``, with a download failure turned into one actionable message."""
    timm = import_timm()
    if not pretrained:
        return timm.create_model(name, pretrained=False, num_classes=num_classes, **kwargs)
    try:
        return timm.create_model(name, pretrained=True, num_classes=num_classes, **kwargs)
    except (OSError, RuntimeError, ValueError) as exc:
        with torch.device("meta"):  # resolves the default tag's config; no memory, no download
            cfg = dict(timm.create_model(name, pretrained=False).pretrained_cfg)
        if _cached(cfg):
            raise  # the weights are here: the failure is not the download's
        message = " ".join(str(exc).split())[:300]
        raise WeightsError(
            f"Could not load pretrained weights for timm model {name!r} "
            f"({type(exc).__name__}: {message}). To use them offline, {_hf_download_hint(cfg)}; "
            "or leave weights unset for random initialisation."
        ) from exc


def _is_pooled_linear(net: nn.Module, feats_shape: tuple[int, ...]) -> bool:
    """Whether ``net.forward_head`` equals ``get_classifier()`` after global average pooling."""
    clf = net.get_classifier()
    if not isinstance(clf, nn.Linear) or clf.weight.is_meta:
        return False
    if clf.in_features != feats_shape[1]:
        return False
    generator = torch.Generator().manual_seed(0)
    feats = torch.randn(2, feats_shape[1], 3, 2, generator=generator)
    feats = feats.to(device=clf.weight.device, dtype=clf.weight.dtype)
    was_training = net.training
    try:
        with torch.no_grad():
            for mode in (False, True):
                net.train(mode)
                expected = clf(feats.mean(dim=(2, 3)))
                if not torch.allclose(net.forward_head(feats), expected, rtol=1e-4, atol=1e-5):
                    return False
    finally:
        net.train(was_training)
    return True


class TimmClassifier(nn.Module):
    """A timm model exposing the distill model contract.

    Args:
        name: timm model name, with or without a pretrained tag (``"resnet50.a1_in1k"``).
        num_classes: Classifier outputs; with pretrained weights and another count than the
            weights', timm keeps the backbone and initialises a new classifier.
        weights: ``None`` (random init, never downloads) or ``"DEFAULT"`` (timm's pretrained
            weights for the name's tag, from the Hugging Face hub or timm's URL).
        **model_kwargs: Forwarded to ``timm.create_model`` (e.g. ``drop_rate``).

    Raises:
        ImportError: timm is not installed.
        ValueError: Unknown name, a model without a ``[B, C, H, W]`` feature map, or an
            unknown weights name.
        WeightsError: Pretrained weights were requested but could not be downloaded.
    """

    def __init__(
        self, name: str, num_classes: int = 1000, weights: str | None = None, **model_kwargs
    ):
        super().__init__()
        timm = import_timm()
        _check_name(timm, name)
        if weights is not None and weights != PRETRAINED:
            raise ValueError(
                f"Unknown weights {weights!r} for timm model {name!r}: use weights={PRETRAINED} "
                f"(pick the weights with the name's tag, e.g. {TIMM_PREFIX}resnet50.a1_in1k), "
                "or a state_dict file path"
            )
        self.model_name = TIMM_PREFIX + name
        self.num_classes = num_classes
        layer, feats_shape = _probe(name, {"num_classes": num_classes, **model_kwargs})
        self.net = _create(name, weights is not None, num_classes, model_kwargs)
        pretrained_classes = self.net.pretrained_cfg.get("num_classes", num_classes)
        self.head_replaced = weights is not None and num_classes != pretrained_classes
        self.features_out = nn.Identity() if layer is None else None
        self.cam_layer = _FEATURES_OUT if layer is None else f"net.{layer}"
        self.num_features = int(feats_shape[1])
        self.head_hidden_size = int(getattr(self.net, "head_hidden_size", self.num_features))
        self.has_pooled_linear_head = _is_pooled_linear(self.net, feats_shape)

        cfg = self.net.pretrained_cfg
        clf = self.get_classifier()
        clf_params = sum(p.numel() for p in clf.parameters())
        n_params = sum(p.numel() for p in self.parameters())
        self.default_cfg = ModelCfg(
            input_size=tuple(cfg.get("input_size", (3, 224, 224))),
            mean=tuple(cfg.get("mean", IMAGENET_MEAN)),
            std=tuple(cfg.get("std", IMAGENET_STD)),
            pool_size=tuple(feats_shape[2:]),
            num_params=n_params
            - clf_params
            + clf.in_features * 10
            + (10 if getattr(clf, "bias", None) is not None else 0),
        )

    def get_classifier(self) -> nn.Module:
        """timm's classifier module (an ``nn.Linear`` for the usual heads)."""
        return self.net.get_classifier()

    def forward_features(self, x: Tensor) -> Tensor:
        """timm's ``forward_features``: the unpooled ``[B, C, h, w]`` last-stage map."""
        x = self.net.forward_features(x)
        return x if self.features_out is None else self.features_out(x)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """timm's ``forward_head`` (its pooling, dropout, norm and classifier)."""
        return self.net.forward_head(x, pre_logits=pre_logits)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


def _build_timm(
    name: str, num_classes: int, weights: str | None, kwargs: dict
) -> TimmClassifier | None:
    """``timm/<name>`` (the transformers among them are resolved before, by their family)."""
    if not name.strip().lower().startswith(TIMM_PREFIX):
        return None
    timm_name = name.strip()[len(TIMM_PREFIX) :]
    return TimmClassifier(timm_name, num_classes=num_classes, weights=weights, **kwargs)


def _check_timm_weights(name: str, weights: str) -> bool:
    if not name.strip().lower().startswith(TIMM_PREFIX):
        return False
    if weights != PRETRAINED:
        raise ValueError(
            f"timm models take weights={PRETRAINED} (choose the weights with the name's "
            f"tag, e.g. timm/resnet50.a1_in1k) or a state_dict file, not {weights!r}"
        )
    return True


register_family(ModelFamily("timm", order=30, build=_build_timm, check_weights=_check_timm_weights))
