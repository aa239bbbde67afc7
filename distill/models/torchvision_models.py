"""torchvision classifiers behind the distill model contract.

:class:`TorchvisionClassifier` wraps ``torchvision.models.get_model(name, ...)`` as
``self.net`` and re-implements its forward as ``forward_head(forward_features(x))``
so that the last-stage map, the CAM layer and the classifier are uniformly exposed.
The wrapped module's parameters keep their torchvision names under ``net.``.

Supported families and their CAM layer (``cam_layer``, output == ``forward_features``):

=================================  ==================  =======================
family                             ``cam_layer``       ``has_pooled_linear_head``
=================================  ==================  =======================
resnet / resnext / wide_resnet     ``net.layer4``      True
regnet                             ``net.trunk_output``  True
shufflenet_v2                      ``net.conv5``       True
densenet                           ``net.features``    True (see below)
mobilenet_v2 / mobilenet_v3        ``net.features``    False (dropout / MLP head)
efficientnet (v1, v2)              ``net.features``    False (dropout)
mnasnet                            ``net.layers``      False (dropout)
convnext                           ``net.features``    False (LayerNorm in head)
vgg                                ``net.features``    False (7x7 pool + MLP)
=================================  ==================  =======================

For the False families ``forward_head`` runs the model's own head (pooling, dropout,
norm, hidden layers) and ``get_classifier()`` is its *last* Linear; closed-form
Grad-CAM++ must not be used for them. DenseNet applies its final ReLU functionally;
the wrapper appends it to ``net.features`` as a parameter-free ``relu5`` module so the
CAM layer's output is the post-activation map and the head is exactly GAP + Linear
(state dicts are unaffected).

All ``inplace`` flags (ReLU, Hardswish, Dropout, ...) are switched off so hooked
activations are not overwritten. Residual additions inside torchvision blocks
(``out += identity``) are still in place; hook block outputs, not their inner BNs.

``num_features`` is the channel count of ``forward_features``; ``head_hidden_size`` is
the width returned by ``forward_head(x, pre_logits=True)`` (the input of
``get_classifier()``), equal to ``num_features`` for the pooled-linear families.
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass
from urllib.parse import urlparse

import torch
import torchvision
from torch import Tensor, nn

from ._cfg import IMAGENET_MEAN, IMAGENET_STD, ModelCfg
from ._registry import ModelFamily, register_family
from .weights import WeightsError

__all__ = [
    "SUPPORTED_FAMILIES",
    "TorchvisionClassifier",
    "list_torchvision_models",
    "torchvision_model_names",
]

# Every supported family downsamples by 32 (224 -> 7x7).
_OUTPUT_STRIDE = 32
_IMAGENET_CLASSES = 1000


@dataclass(frozen=True)
class _Family:
    """How to split one torchvision family into features / head.

    Attributes:
        prefixes: Model-name prefixes belonging to the family.
        features: Attributes of ``net`` applied in order to get the last-stage map;
            the last one is the CAM layer.
        classifier: Attribute of ``net`` holding the head (a Linear or a Sequential
            whose last module is the Linear classifier).
        pooled_linear: Whether the head is exactly GAP + ``get_classifier()``.
        pool: ``None`` for global average pooling, else the attribute of ``net``
            holding the model's own pooling module (VGG's 7x7 adaptive pool).
        flatten: Flatten after pooling (ConvNeXt's head flattens after its norm).
        append_relu: Move a functional final ReLU into ``features`` (DenseNet).
    """

    prefixes: tuple[str, ...]
    features: tuple[str, ...]
    classifier: str
    pooled_linear: bool
    pool: str | None = None
    flatten: bool = True
    append_relu: bool = False


_RESNET_STEM = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")

_FAMILIES: dict[str, _Family] = {
    "resnet": _Family(("resnet", "resnext", "wide_resnet"), _RESNET_STEM, "fc", True),
    "regnet": _Family(("regnet_",), ("stem", "trunk_output"), "fc", True),
    "shufflenet_v2": _Family(
        ("shufflenet_v2",),
        ("conv1", "maxpool", "stage2", "stage3", "stage4", "conv5"),
        "fc",
        True,
    ),
    "densenet": _Family(("densenet",), ("features",), "classifier", True, append_relu=True),
    "mobilenet": _Family(("mobilenet_v2", "mobilenet_v3"), ("features",), "classifier", False),
    "efficientnet": _Family(("efficientnet",), ("features",), "classifier", False),
    "mnasnet": _Family(("mnasnet",), ("layers",), "classifier", False),
    "convnext": _Family(("convnext",), ("features",), "classifier", False, flatten=False),
    "vgg": _Family(("vgg",), ("features",), "classifier", False, pool="avgpool"),
}

SUPPORTED_FAMILIES: tuple[str, ...] = tuple(_FAMILIES)


def _family_of(name: str) -> _Family | None:
    for family in _FAMILIES.values():
        if name.startswith(family.prefixes):
            return family
    return None


@functools.lru_cache(maxsize=1)
def _all_names() -> tuple[str, ...]:
    return tuple(torchvision.models.list_models(module=torchvision.models))


def torchvision_model_names() -> list[str]:
    """All torchvision classification model names (supported or not)."""
    return list(_all_names())


def list_torchvision_models() -> list[str]:
    """Sorted torchvision classification names whose family the wrapper supports."""
    return sorted(n for n in _all_names() if _family_of(n) is not None)


class TorchvisionClassifier(nn.Module):
    """A torchvision classifier exposing the distill model contract.

    Args:
        name: torchvision model name, e.g. ``"resnet18"``.
        num_classes: Classifier outputs.
        weights: ``None`` (random init, never downloads), a weights name such as
            ``"DEFAULT"`` / ``"IMAGENET1K_V1"``, or a torchvision ``WeightsEnum``.
            With weights and ``num_classes != 1000`` the pretrained model is loaded
            and its final Linear replaced by a freshly initialised one.
        **model_kwargs: Forwarded to the torchvision builder (e.g. ``dropout``).

    Raises:
        ValueError: Unknown name, unsupported family, or unknown weights name.
        WeightsError: Pretrained weights were requested but could not be downloaded (the
            message names the URL and the file to place in the torch hub cache).
    """

    def __init__(
        self,
        name: str,
        num_classes: int = 1000,
        weights: str | torchvision.models.WeightsEnum | None = None,
        **model_kwargs,
    ):
        super().__init__()
        family = _family_of(name)
        if name not in _all_names():
            raise ValueError(
                f"{name!r} is not a torchvision classification model; see "
                "torchvision.models.list_models(module=torchvision.models)."
            )
        if family is None:
            raise ValueError(
                f"torchvision model {name!r} is not supported (no CNN last-stage map to "
                f"explain, or non-standard head). Supported families: "
                f"{', '.join(SUPPORTED_FAMILIES)}."
            )
        self.model_name = name
        self.num_classes = num_classes
        self._family = family

        resolved = _resolve_weights(name, weights)
        if resolved is None:
            self.net = torchvision.models.get_model(name, num_classes=num_classes, **model_kwargs)
        else:
            self.net = _load_pretrained(name, resolved, **model_kwargs)

        for module in self.net.modules():
            if isinstance(getattr(module, "inplace", None), bool):
                module.inplace = False
        if family.append_relu:
            self.net.features.add_module("relu5", nn.ReLU())

        self.head_replaced = (
            resolved is not None and num_classes != self.get_classifier().out_features
        )
        if self.head_replaced:
            old = self.get_classifier()
            new = nn.Linear(old.in_features, num_classes, bias=old.bias is not None)
            nn.init.normal_(new.weight, 0.0, 0.01)
            if new.bias is not None:
                nn.init.zeros_(new.bias)
            self._set_classifier(new)

        self.cam_layer = f"net.{family.features[-1]}"
        self.has_pooled_linear_head = family.pooled_linear
        clf = self.get_classifier()
        self.head_hidden_size = clf.in_features
        first_linear = next(m for m in self._head_container().modules() if isinstance(m, nn.Linear))
        pool_area = 1
        if family.pool is not None:
            out = getattr(self.net, family.pool).output_size
            pool_area = math.prod(out) if isinstance(out, tuple) else out * out
        self.num_features = first_linear.in_features // pool_area

        n_params = sum(p.numel() for p in self.parameters())
        clf_params = sum(p.numel() for p in clf.parameters())
        side = 224 // _OUTPUT_STRIDE
        self.default_cfg = ModelCfg(
            input_size=(3, 224, 224),
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            pool_size=(side, side),
            num_params=n_params
            - clf_params
            + clf.in_features * 10
            + (10 if clf.bias is not None else 0),
        )

    def _head_container(self) -> nn.Module:
        return getattr(self.net, self._family.classifier)

    def get_classifier(self) -> nn.Linear:
        """The final Linear layer (the last module of the head)."""
        head = self._head_container()
        return head[-1] if isinstance(head, nn.Sequential) else head

    def _set_classifier(self, linear: nn.Linear) -> None:
        head = self._head_container()
        if isinstance(head, nn.Sequential):
            head[-1] = linear
        else:
            setattr(self.net, self._family.classifier, linear)

    def forward_features(self, x: Tensor) -> Tensor:
        """Run the backbone up to and including ``cam_layer``; ``[B, C, H/32, W/32]``."""
        for attr in self._family.features:
            x = getattr(self.net, attr)(x)
        return x

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Apply the model's own head; with ``pre_logits`` stop before the last Linear."""
        family = self._family
        if family.pool is None:
            x = x.mean(dim=(2, 3), keepdim=not family.flatten)
        else:
            x = getattr(self.net, family.pool)(x)
            if family.flatten:
                x = torch.flatten(x, 1)
        head = self._head_container()
        if isinstance(head, nn.Sequential):
            x = head[:-1](x)
        return x if pre_logits else self.get_classifier()(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


def _resolve_weights(name: str, weights):
    """Map a weights name/enum to torchvision's WeightsEnum member (None passes)."""
    if weights is None:
        return None
    enum_cls = torchvision.models.get_model_weights(name)
    try:
        return enum_cls.verify(weights)
    except (KeyError, TypeError) as exc:
        raise ValueError(
            f"Unknown weights {weights!r} for {name!r}; available: "
            f"{', '.join(enum_cls.__members__)}."
        ) from exc


def _load_pretrained(name: str, weights, **model_kwargs) -> nn.Module:
    """Build ``name`` with its pretrained ``weights``, explaining download failures.

    torchvision downloads into a temporary file and only then moves it to the cache,
    so a failure that leaves no cached file is a download failure.
    """
    cache_dir = os.path.join(torch.hub.get_dir(), "checkpoints")
    cached = os.path.join(cache_dir, os.path.basename(urlparse(weights.url).path))
    try:
        return torchvision.models.get_model(name, weights=weights, **model_kwargs)
    except Exception as exc:
        if os.path.exists(cached):
            raise
        raise WeightsError(
            f"Could not download pretrained weights {weights!r} for {name!r} from "
            f"{weights.url} ({type(exc).__name__}: {exc}). On a machine with internet "
            f"access download that file and place it at {cached} (torch hub cache dir "
            f"{torch.hub.get_dir()}; change it with TORCH_HOME or torch.hub.set_dir) or pass "
            "the file itself as weights (teacher.weights=/path/to/file.pth); or leave weights "
            "unset for random initialisation."
        ) from exc


def _build_torchvision(
    name: str, num_classes: int, weights: str | None, kwargs: dict
) -> TorchvisionClassifier | None:
    key = name.strip().lower()
    if key not in torchvision_model_names():
        return None
    if weights is not None:
        kwargs = {**kwargs, "weights": weights}
    return TorchvisionClassifier(key, num_classes=num_classes, **kwargs)


def _check_torchvision_weights(name: str, weights: str) -> bool:
    key = name.strip().lower()
    if key not in torchvision_model_names():
        return False
    _resolve_weights(key, weights)
    return True


register_family(
    ModelFamily(
        "torchvision",
        order=40,
        build=_build_torchvision,
        check_weights=_check_torchvision_weights,
        listed=list_torchvision_models,
        known=torchvision_model_names,
    )
)
