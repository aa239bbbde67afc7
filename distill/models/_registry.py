"""Name -> builder registry that every model family fills by registering itself.

Two kinds of entries:

- :func:`register_model`: one builder per fixed name (``wrn_40_2``, ``resnet8x4``,
  ``vit_tiny_p4_32``), the CIFAR families' way;
- :func:`register_family`: a :class:`ModelFamily` whose names follow a rule rather than a list
  (any ``wrn_<depth>_<width>``, torchvision's names, ``timm/<name>``), tried in ``order`` after
  the fixed names.

Why registration: this module imports no family, so the families can import it (and
:mod:`distill.models._cfg`) without an import circle; :mod:`distill.models` imports every
family file, which is what fills the registry. :func:`distill.models.build_model`
(:mod:`distill.models._build`) resolves a name through both kinds.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from torch import nn

__all__ = [
    "ModelFamily",
    "families",
    "get_model",
    "list_models",
    "no_named_weights",
    "register_family",
    "register_model",
    "registered",
    "unknown_name_error",
]

ModelBuilder = Callable[..., nn.Module]


def _no_names() -> Iterable[str]:
    return ()


@dataclass(frozen=True)
class ModelFamily:
    """Names resolved by a rule instead of one registration each.

    Attributes:
        name: The family in messages (``wrn_<depth>_<width>``, ``torchvision``).
        order: Its place in :func:`~distill.models.build_model`'s resolution, lower first
            (so the result does not depend on the order the family files were imported in).
        build: ``build(name, num_classes, weights, kwargs)``: the model, or None when ``name``
            is not one of the family's.
        check_weights: ``check_weights(name, weights)`` for a pretrained-weights name (not a
            file): True when ``name`` is the family's and ``weights`` fits it, False when
            ``name`` is not the family's; raises ``ValueError`` when ``weights`` does not fit.
            None: the family has no names of its own to check (they go to the next family).
        listed: Names ``list_models(include_torchvision=True)`` adds.
        known: Names an unknown-name error may suggest.
    """

    name: str
    order: int
    build: Callable[[str, int, str | None, dict], nn.Module | None]
    check_weights: Callable[[str, str], bool] | None = None
    listed: Callable[[], Iterable[str]] = _no_names
    known: Callable[[], Iterable[str]] = _no_names


_MODEL_REGISTRY: dict[str, ModelBuilder] = {}
_FAMILIES: dict[str, ModelFamily] = {}


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


def register_family(family: ModelFamily) -> ModelFamily:
    """Register a family of rule-named models; a second family of the same name raises.

    Raises:
        ValueError: If a family of that name is already registered.
    """
    if family.name in _FAMILIES:
        raise ValueError(f"Model family {family.name!r} is already registered.")
    _FAMILIES[family.name] = family
    return family


def families() -> list[ModelFamily]:
    """The registered families in resolution order."""
    return sorted(_FAMILIES.values(), key=lambda family: family.order)


def registered(name: str) -> bool:
    """Whether ``name`` is a fixed name given to :func:`register_model`."""
    return name in _MODEL_REGISTRY


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
        for family in families():
            names.update(family.listed())
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
        raise unknown_name_error(name, list(_MODEL_REGISTRY))
    return _MODEL_REGISTRY[name](**kwargs)


def no_named_weights(name: str, weights: str) -> ValueError:
    """The error for a pretrained-weights name given to a model that has none."""
    return ValueError(
        f"{name!r} has no named pretrained weights ({weights!r}); give a state_dict file "
        "instead (weights=path/to/file.pth or .safetensors)"
    )


def unknown_name_error(name: str, candidates: list[str]) -> ValueError:
    """The error for a name nothing builds, with the closest of ``candidates``."""
    close = difflib.get_close_matches(name.strip().lower(), candidates, n=5, cutoff=0.6)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    return ValueError(
        f"Unknown model name {name!r}.{hint} Call distill.models.list_models("
        "include_torchvision=True) for all names; any 'wrn_<depth>_<width>' with "
        "(depth - 4) % 6 == 0 is also accepted."
    )
