"""Read a user's weights file safely and fit it to a built model.

A teacher trained in someone else's code arrives as a plain ``state_dict`` in a ``.pt`` /
``.pth`` / ``.bin`` file (pickle) or a ``.safetensors`` file, often wrapped
(``{"state_dict": ...}``, ``{"model": ...}``) and with the prefixes of the code that saved it
(``module.`` from DDP, ``_orig_mod.`` from ``torch.compile``, ``model.`` from a
LightningModule). This module unwraps and re-prefixes such files to the model's own keys.

Pickle files are read with ``torch.load(weights_only=True)``: a file that holds anything but
tensors and plain containers is refused before any of its code can run.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from distill.errors import UserError

__all__ = [
    "WEIGHTS_SUFFIXES",
    "WeightsError",
    "describe_load_error",
    "is_weights_file",
    "load_weights",
    "read_state_dict",
    "unwrap_state_dict",
]

WEIGHTS_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")
"""File endings that make a ``weights`` value a path rather than a pretrained-weights name."""

# Keys under which training code commonly nests the state_dict, tried in this order.
_WRAPPERS = ("state_dict", "model_state_dict", "model", "module", "net", "network")
_LISTED = 8  # keys named per category in an error message


class WeightsError(UserError, RuntimeError):
    """Weights that are missing, unreadable, unsafe, unavailable or that do not fit the model."""


def is_weights_file(value: str | Path) -> bool:
    """Whether a ``weights`` value names a file (a path or a known suffix) rather than a name
    such as ``DEFAULT`` or ``IMAGENET1K_V1``."""
    text = str(value)
    return "/" in text or "\\" in text or text.lower().endswith(WEIGHTS_SUFFIXES)


def describe_load_error(error: BaseException) -> str:
    """One clause saying why ``torch.load(weights_only=True)`` failed; an unsafe file is named
    as refused, with what to do instead."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    refused = [line for line in lines if line.startswith("WeightsUnpickler error")]
    if refused:
        what = refused[0].removeprefix("WeightsUnpickler error:").split(" was not an allowed")[0]
        return (
            f"refused: it holds pickled objects that are not tensors ({what.strip()}); "
            "loading it would run code from the file. Re-save the weights as a plain "
            "state_dict (torch.save(model.state_dict(), path)) or as .safetensors"
        )
    return f"cannot be read ({type(error).__name__}: {lines[0] if lines else 'corrupt'})"


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """The tensors of a weights file, unwrapped from common training-code containers.

    Args:
        path: a ``.safetensors`` file, or a pickle file (``.pt``, ``.pth``, ``.bin``, ``.ckpt``)
            holding a state_dict, possibly nested under ``state_dict`` / ``model`` / ...

    Returns:
        A flat ``{name: tensor}`` dict on the CPU (prefixes still as saved).

    Raises:
        WeightsError: the file is missing, unreadable, holds non-tensor pickled objects
            (refused without running them) or holds no state_dict.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path), device="cpu")
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise WeightsError(f"weights file {path} {describe_load_error(error)}") from None
    return unwrap_state_dict(loaded, path)


def unwrap_state_dict(obj: Any, path: str | Path) -> dict[str, Tensor]:
    """The ``name -> tensor`` dict inside ``obj``, descending through ``state_dict`` /
    ``model`` / ... wrappers; a WeightsError naming ``path`` when there is none."""
    trail = []
    while isinstance(obj, Mapping) and not all(isinstance(v, Tensor) for v in obj.values()):
        key = next((k for k in _WRAPPERS if isinstance(obj.get(k), Mapping)), None)
        if key is None:
            break
        trail.append(key)
        obj = obj[key]
    tensors = isinstance(obj, Mapping) and obj and all(isinstance(v, Tensor) for v in obj.values())
    if not tensors:
        where = "".join(f"[{k!r}]" for k in trail) or "the top level"
        keys = list(obj)[:_LISTED] if isinstance(obj, Mapping) else type(obj).__name__
        raise WeightsError(
            f"weights file {path} holds no state_dict at {where} (found {keys}); expected "
            f"name -> tensor, possibly under one of {', '.join(_WRAPPERS)}"
        )
    return dict(obj)


def _common_prefix(keys: list[str]) -> str:
    first = keys[0].split(".", 1)[0] + "."
    return first if all(k.startswith(first) for k in keys) else ""


def _fit_keys(state: dict[str, Tensor], model_keys: set[str]) -> dict[str, Tensor]:
    """Rename ``state``'s keys to the candidate (leading prefixes stripped, ``net.`` added for
    the wrappers of torchvision and timm models) that matches most of ``model_keys``."""
    candidates = [state]
    current = state
    while (prefix := _common_prefix(list(current))) and len(candidates) < 4:
        current = {k.removeprefix(prefix): v for k, v in current.items()}
        candidates.append(current)
    candidates += [{f"net.{k}": v for k, v in c.items()} for c in list(candidates)]
    return max(candidates, key=lambda c: len(model_keys.intersection(c)))


def _classifier_keys(model: nn.Module) -> set[str]:
    get_classifier = getattr(model, "get_classifier", None)
    if not callable(get_classifier):
        return set()
    classifier = get_classifier()
    name = next((n for n, m in model.named_modules() if m is classifier), None)
    if name is None:
        return set()
    return {f"{name}.{k}" if name else k for k in classifier.state_dict()}


def _listing(label: str, keys: list[str]) -> str:
    shown = ", ".join(keys[:_LISTED]) + (
        f", ... ({len(keys)} in all)" if len(keys) > _LISTED else ""
    )
    return f"{label}: {shown}"


def load_weights(
    model: nn.Module,
    state: Mapping[str, Tensor],
    *,
    source: str,
    adapt_head: bool,
    name: str | None = None,
) -> bool:
    """Load ``state`` into ``model`` strictly, after fitting its key prefixes.

    Args:
        model: a model from :func:`~distill.models.build_model`.
        state: tensors from :func:`read_state_dict`.
        source: what to call the weights in messages (the file name).
        name: what to call the model in messages (default: its ``model_name`` or class).
        adapt_head: keep the model's freshly initialised classifier when the weights'
            classifier has another shape (another number of classes): a pretrained backbone
            with a new head, to be fine-tuned. When False such a difference is an error.

    Returns:
        Whether the classifier came from the weights (False when ``adapt_head`` replaced it).

    Raises:
        WeightsError: keys are missing or unexpected, or shapes differ; the message lists them.
    """
    own = model.state_dict()
    state = _fit_keys(dict(state), set(own))
    head = _classifier_keys(model)
    head_differs = any(k in state and state[k].shape != own[k].shape for k in head)
    if adapt_head and head_differs:
        state = {k: v for k, v in state.items() if k not in head}
        state.update({k: own[k] for k in head})
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = sorted(
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in set(own) & set(state)
        if state[k].shape != own[k].shape
    )
    if missing or unexpected or mismatched:
        parts = [
            _listing(label, keys)
            for label, keys in (
                ("missing", missing),
                ("unexpected", unexpected),
                ("shape (file vs model)", mismatched),
            )
            if keys
        ]
        name = name or getattr(model, "model_name", type(model).__name__)
        hint = " (another class count: fine-tune it with weights=FILE, stage=teacher)"
        raise WeightsError(
            f"weights {source} do not fit {name}: {'; '.join(parts)}"
            f"{hint if head_differs and not adapt_head else ''}"
        )
    model.load_state_dict(state)
    return not (adapt_head and head_differs)
