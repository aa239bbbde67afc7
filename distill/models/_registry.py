"""Name -> builder registry shared by every model family.

Training configs refer to models by string (``"wrn_40_2"``, ``"resnet18"``), so one
entry point, :func:`build_model`, resolves three kinds of names:

1. names registered with :func:`register_model` (the CIFAR families);
2. any ``wrn_<depth>_<width>`` name, parsed on the fly, so sweeps over WRN variants
   need no new code;
3. vision transformers: torchvision ``vit_*``/``swin_*`` and ``timm/<ViT, DeiT or Swin name>``
   (:mod:`distill.models.transformers`);
4. torchvision classification model names, wrapped in
   :class:`~distill.models.torchvision_models.TorchvisionClassifier`.

Every model built here honours the same contract (``forward_features``,
``forward_head``, ``cam_layer``, ``has_pooled_linear_head``, ``default_cfg``...), which
is what the Grad-CAM++ code relies on.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

__all__ = [
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ModelCfg",
    "build_model",
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


def build_model(name: str, num_classes: int, **kwargs) -> nn.Module:
    """Build any supported model by name; the single entry point for configs.

    Resolution order: registered name, then ``wrn_<depth>_<width>``, then vision
    transformers (torchvision ``vit_*``/``swin_*``, ``timm/<ViT, DeiT, Swin>``), then
    torchvision classification model name.

    Args:
        name: Model name (case-insensitive).
        num_classes: Size of the classifier output.
        **kwargs: Family-specific options, e.g. ``dropout`` for WRNs or ``weights``
            for torchvision models.

    Returns:
        A model honouring the distill model contract.

    Raises:
        ValueError: For unknown names, invalid WRN depths, or unsupported
            torchvision families.
    """
    key = name.strip().lower()
    if key in _MODEL_REGISTRY:
        return _MODEL_REGISTRY[key](num_classes=num_classes, **kwargs)

    match = _WRN_NAME.match(key)
    if match:
        from .wide_resnet import _wide_resnet

        depth, width = int(match.group(1)), int(match.group(2))
        return _wide_resnet(depth, width, num_classes=num_classes, **kwargs)

    from .transformers import build_transformer

    transformer = build_transformer(key, num_classes=num_classes, **kwargs)
    if transformer is not None:
        return transformer

    from .torchvision_models import TorchvisionClassifier, torchvision_model_names

    if key in torchvision_model_names():
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
