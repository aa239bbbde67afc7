"""``build_model``: the one entry point that turns a config's model name into a model.

It resolves five kinds of names:

1. names registered with :func:`~distill.models.register_model` (the CIFAR families);
2. any ``wrn_<depth>_<width>`` name, parsed on the fly, so sweeps over WRN variants
   need no new code;
3. vision transformers: torchvision ``vit_*``/``swin_*`` and ``timm/<ViT, DeiT or Swin name>``
   (:mod:`distill.models.transformers`);
4. other ``timm/<name>`` models (optional extra), wrapped in
   :class:`~distill.models.timm_models.TimmClassifier`;
5. torchvision classification model names, wrapped in
   :class:`~distill.models.torchvision_models.TorchvisionClassifier`;

and ``package.module:callable`` for any importable ``nn.Module``. Kinds 2-5 are the
:class:`~distill.models._registry.ModelFamily` entries their files register.

Every model built here honours the same contract (``forward_features``,
``forward_head``, ``cam_layer``, ``has_pooled_linear_head``, ``default_cfg``...), which
is what the Grad-CAM++ code relies on.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from pathlib import Path

from torch import nn

from ._cfg import TIMM_PREFIX
from ._registry import (
    families,
    get_model,
    list_models,
    no_named_weights,
    registered,
    unknown_name_error,
)
from .imported import build_imported
from .weights import is_weights_file, load_weights, read_state_dict

__all__ = ["build_model", "check_weights"]


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
    if not registered(name.strip().lower()):
        for family in families():
            if family.check_weights is not None and family.check_weights(name, weights):
                return
    raise no_named_weights(name, weights)


def _build(
    name: str, num_classes: int, weights: str | None, kwargs: dict, cam_layer: str | None
) -> nn.Module:
    if ":" in name and not name.strip().lower().startswith(TIMM_PREFIX):
        if weights is not None:
            raise no_named_weights(name, weights)
        return build_imported(name.strip(), num_classes, kwargs, cam_layer)
    model = _build_named(name, num_classes, weights, kwargs)
    return _set_cam_layer(model, cam_layer) if cam_layer else model


def _build_named(name: str, num_classes: int, weights: str | None, kwargs: dict) -> nn.Module:
    key = name.strip().lower()
    if registered(key):
        if weights is not None:
            raise no_named_weights(name, weights)
        return get_model(key, num_classes=num_classes, **kwargs)
    for family in families():
        model = family.build(name, num_classes, weights, kwargs)
        if model is not None:
            return model
    known = [known for family in families() for known in family.known()]
    raise unknown_name_error(name, list_models() + known)
