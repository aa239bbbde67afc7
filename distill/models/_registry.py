"""Name -> builder registry shared by every model family.

Training configs refer to models by string (``"wrn_40_2"``, ``"resnet18"``), so one
entry point, :func:`build_model`, resolves four kinds of names:

1. names registered with :func:`register_model` (the CIFAR families);
2. any ``wrn_<depth>_<width>`` name, parsed on the fly, so sweeps over WRN variants
   need no new code;
3. vision transformers: torchvision ``vit_*``/``swin_*`` and ``timm/<ViT, DeiT or Swin name>``
   (:mod:`distill.models.transformers`);
4. other ``timm/<name>`` models (optional extra), wrapped in
   :class:`~distill.models.timm_models.TimmClassifier`;
5. torchvision classification model names, wrapped in
   :class:`~distill.models.torchvision_models.TorchvisionClassifier`.

Every model built here honours the same contract (``forward_features``,
``forward_head``, ``cam_layer``, ``has_pooled_linear_head``, ``default_cfg``...), which
is what the Grad-CAM++ code relies on.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from .weights import is_weights_file, load_weights, read_state_dict

__all__ = [
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ModelCfg",
    "TIMM_PREFIX",
    "build_model",
    "check_weights",
    "get_model",
    "list_models",
    "register_model",
]

ModelBuilder = Callable[..., nn.Module]

# Per-channel statistics of the CIFAR-10 training set (std over pixels, not the
# often-copied 0.2023/0.1994/0.2010 values).
CIFAR10_MEAN: tuple[float, float, float] = (0.4914, 0.4822, 0.4465)
CIFAR10_STD: tuple[float, float, float] = (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ModelCfg:
    """Static metadata of one model variant, kept next to its builder.

    Attributes:
        input_size: ``(C, H, W)`` the variant is meant to be fed.
        mean: Per-channel normalisation mean expected by the variant.
        std: Per-channel normalisation std expected by the variant.
        pool_size: ``(h, w)`` of ``forward_features`` at ``input_size``; CAM
            resolution, needed to size upsampling buffers ahead of time.
        num_params: Expected parameter count with a 10-class head (a regression
            check against silently changed architectures).
    """

    input_size: tuple[int, int, int] = (3, 32, 32)
    mean: tuple[float, ...] = CIFAR10_MEAN
    std: tuple[float, ...] = CIFAR10_STD
    pool_size: tuple[int, int] = (8, 8)
    num_params: int = 0


_MODEL_REGISTRY: dict[str, ModelBuilder] = {}

TIMM_PREFIX = "timm/"
"""``build_model`` names starting with this are timm models (``timm/resnet50.a1_in1k``)."""

_WRN_NAME = re.compile(r"^wrn_(\d+)_(\d+)$")


def register_model(
    fn: ModelBuilder | None = None, *, name: str | None = None
) -> ModelBuilder | Callable[[ModelBuilder], ModelBuilder]:
    """Register a model builder under ``name`` (default: the function's name).

    Usable bare (``@register_model``) or with a name (``@register_model(name="x")``).
    Duplicate names raise instead of overwriting, so two families can never shadow
    each other depending on import order.

    Args:
        fn: The builder, when used as a bare decorator.
        name: Registry key; defaults to ``fn.__name__``.

    Returns:
        The builder unchanged (or a decorator when ``fn`` is None).

    Raises:
        ValueError: If the name is already registered.
    """

    def decorator(builder: ModelBuilder) -> ModelBuilder:
        key = name or builder.__name__
        if key in _MODEL_REGISTRY:
            raise ValueError(
                f"Model name {key!r} is already registered (by "
                f"{_MODEL_REGISTRY[key].__module__}.{_MODEL_REGISTRY[key].__qualname__})."
            )
        _MODEL_REGISTRY[key] = builder
        return builder

    if fn is not None:
        return decorator(fn)
    return decorator


def list_models(include_torchvision: bool = False) -> list[str]:
    """Return the sorted registered model names.

    Args:
        include_torchvision: Also list the torchvision names ``build_model`` can wrap.
            ``wrn_<depth>_<width>`` names are accepted too but, being unbounded, are
            never listed beyond the registered ones.

    Returns:
        Sorted list of names.
    """
    names = set(_MODEL_REGISTRY)
    if include_torchvision:
        from .torchvision_models import list_torchvision_models
        from .transformers import torchvision_transformer_names

        names.update(list_torchvision_models())
        names.update(torchvision_transformer_names())
    return sorted(names)


def get_model(name: str, **kwargs) -> nn.Module:
    """Call the registered builder ``name`` with ``kwargs``.

    Args:
        name: A registered name (see :func:`list_models`).
        **kwargs: Forwarded to the builder (e.g. ``num_classes``, ``dropout``).

    Returns:
        The built model.

    Raises:
        ValueError: If ``name`` is not registered (with close matches).
    """
    if name not in _MODEL_REGISTRY:
        raise _unknown_name_error(name, list(_MODEL_REGISTRY))
    return _MODEL_REGISTRY[name](**kwargs)


def build_model(
    name: str,
    num_classes: int,
    *,
    weights: str | None = None,
    key_map: Sequence[str] | None = None,
    cam_layer: str | None = None,
    role: str | None = None,
    **kwargs,
) -> nn.Module:
    """Build any supported model by name; the single entry point for configs.

    Resolution order: registered name, then ``wrn_<depth>_<width>``, then vision transformers (torchvision
    ``vit_*``/``swin_*``, ``timm/<ViT, DeiT, Swin>``), then other ``timm/<name>`` (timm's ``create_model``; needs ``pip install 'distill[timm]'``), then torchvision
    classification model name. A name ``package.module:callable`` builds any importable
    ``nn.Module``: ``callable(num_classes=..., **kwargs)`` (:mod:`distill.models.imported`).

    Weights, when given, are either a file or a name:

    - a path (any value with a ``/`` or a ``.pt``/``.pth``/``.bin``/``.safetensors``/``.ckpt``
      ending): a plain ``state_dict`` saved by any code, for every family;
    - a pretrained-weights name: torchvision's (``DEFAULT``, ``IMAGENET1K_V1``, ...) or, for
      timm models, ``DEFAULT`` (the weights of the name's tag).

    The rule for another class count: the pretrained backbone is kept and the classifier is
    replaced by a freshly initialised one with ``num_classes`` outputs, to be fine-tuned
    (``stage=teacher``). ``model.pretrained_head`` says whether the classifier came with the
    weights.

    Args:
        name: Model name (case-insensitive, except a timm name's tag).
        num_classes: Size of the classifier output.
        weights: ``None`` (random initialisation; nothing is downloaded), a file or a name.
        key_map: rename rules for a weights file's keys (:mod:`distill.models.key_map`).
        cam_layer: the layer whose map Grad-CAM++ explains, instead of the model's own choice.
        role: ``teacher`` or ``student``: the config section that messages name.
        **kwargs: Family-specific options, e.g. ``dropout`` for WRNs.

    Returns:
        A model honouring the distill model contract.

    Raises:
        ValueError: For unknown names, invalid WRN depths, unsupported families, or weights
            names a family does not have.
        WeightsError: A weights file that is missing, unsafe or does not fit, or pretrained
            weights that cannot be downloaded (the message says what to download, and where).

    Example:
        >>> model = build_model("resnet18", num_classes=10)  # random init, no download
        >>> model.cam_layer
        'net.layer4'
    """
    if weights is not None and is_weights_file(weights):
        model = _build(name, num_classes, None, kwargs, cam_layer)
        state = read_state_dict(weights)
        model.pretrained_head = load_weights(
            model,
            state,
            source=str(weights),
            adapt_head=True,
            name=name,
            key_map=key_map,
            role=role,
        )
        return model
    model = _build(name, num_classes, weights, kwargs, cam_layer)
    if weights is not None:
        model.pretrained_head = not getattr(model, "head_replaced", False)
    return model


def _set_cam_layer(model: nn.Module, layer: str) -> nn.Module:
    """``model`` explained at ``layer`` (its own name, or, for a wrapped model, the name inside
    the wrapper's ``net``)."""
    names = dict(model.named_modules())
    chosen = layer if layer in names else f"net.{layer}"
    if chosen not in names:
        close = difflib.get_close_matches(layer, [n for n in names if n], n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ValueError(f"cam_layer {layer!r} is not a layer of the model{hint}")
    if getattr(model, "has_pooled_linear_head", False) and not getattr(
        model, "pooled_head_layer", None
    ):
        model.pooled_head_layer = model.cam_layer  # the pooled head is still fed from there
    model.cam_layer = chosen
    return model


def check_weights(name: str, weights: str | None) -> None:
    """Fail fast (no download, no build) on weights ``build_model(name, ...)`` cannot use.

    Raises:
        ValueError: a weights file that does not exist, or a name the family does not have.
    """
    if weights is None:
        return
    if is_weights_file(weights):
        if not Path(weights).is_file():
            raise ValueError(f"weights file {weights} does not exist")
        return
    key = name.strip().lower()
    if key.startswith(TIMM_PREFIX):
        from .timm_models import PRETRAINED

        if weights != PRETRAINED:
            raise ValueError(
                f"timm models take weights={PRETRAINED} (choose the weights with the name's "
                f"tag, e.g. timm/resnet50.a1_in1k) or a state_dict file, not {weights!r}"
            )
        return
    from .torchvision_models import _resolve_weights, torchvision_model_names

    if key in _MODEL_REGISTRY or _WRN_NAME.match(key) or key not in torchvision_model_names():
        raise ValueError(
            f"{name!r} has no named pretrained weights ({weights!r}); give a state_dict file "
            "instead (weights=path/to/file.pth or .safetensors)"
        )
    _resolve_weights(key, weights)


def _build(
    name: str, num_classes: int, weights: str | None, kwargs: dict, cam_layer: str | None
) -> nn.Module:
    if ":" in name and not name.strip().lower().startswith(TIMM_PREFIX):
        from .imported import build_imported

        if weights is not None:
            raise ValueError(
                f"{name!r} has no named pretrained weights ({weights!r}); give a state_dict file "
                "instead (weights=path/to/file.pth or .safetensors)"
            )
        return build_imported(name.strip(), num_classes, kwargs, cam_layer)
    model = _build_named(name, num_classes, weights, kwargs)
    return _set_cam_layer(model, cam_layer) if cam_layer else model


def _build_named(name: str, num_classes: int, weights: str | None, kwargs: dict) -> nn.Module:
    key = name.strip().lower()
    named = key in _MODEL_REGISTRY or _WRN_NAME.match(key)
    if named and weights is not None:
        raise ValueError(
            f"{name!r} has no named pretrained weights ({weights!r}); give a state_dict file "
            "instead (weights=path/to/file.pth or .safetensors)"
        )
    if key in _MODEL_REGISTRY:
        return _MODEL_REGISTRY[key](num_classes=num_classes, **kwargs)

    match = _WRN_NAME.match(key)
    if match:
        from .wide_resnet import _wide_resnet

        depth, width = int(match.group(1)), int(match.group(2))
        return _wide_resnet(depth, width, num_classes=num_classes, **kwargs)

    from .transformers import build_transformer

    transformer = build_transformer(
        name.strip(), num_classes=num_classes, weights=weights, **kwargs
    )
    if transformer is not None:
        return transformer

    if key.startswith(TIMM_PREFIX):
        from .timm_models import TimmClassifier

        timm_name = name.strip()[len(TIMM_PREFIX) :]
        return TimmClassifier(timm_name, num_classes=num_classes, weights=weights, **kwargs)

    from .torchvision_models import TorchvisionClassifier, torchvision_model_names

    if key in torchvision_model_names():
        if weights is not None:
            kwargs = {**kwargs, "weights": weights}
        return TorchvisionClassifier(key, num_classes=num_classes, **kwargs)

    raise _unknown_name_error(name, list(_MODEL_REGISTRY) + torchvision_model_names())


def _unknown_name_error(name: str, candidates: list[str]) -> ValueError:
    close = difflib.get_close_matches(name.strip().lower(), candidates, n=5, cutoff=0.6)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    return ValueError(
        f"Unknown model name {name!r}.{hint} Call distill.models.list_models("
        "include_torchvision=True) for all names; any 'wrn_<depth>_<width>' with "
        "(depth - 4) % 6 == 0 is also accepted."
    )
