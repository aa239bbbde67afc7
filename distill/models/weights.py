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

import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from distill.errors import UserError

from ._registry import get_model, list_models
from .key_map import KeyRule, apply_key_map, format_key_map, parse_key_map, suggest_rules

__all__ = [
    "WEIGHTS_SUFFIXES",
    "WeightsError",
    "describe_load_error",
    "is_weights_file",
    "load_weights",
    "missing_file_error",
    "read_state_dict",
    "unwrap_state_dict",
]

WEIGHTS_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")
"""File endings that make a ``weights`` value a path rather than a pretrained-weights name."""

# Keys under which training code commonly nests the state_dict, tried in this order.
_WRAPPERS = ("state_dict", "model_state_dict", "model", "module", "net", "network")
_LISTED = 8  # keys named per category in an error message
_ZIP_MAGIC, _PICKLE_MAGIC = b"PK\x03\x04", b"\x80"  # torch.save (zip), legacy torch.save
_BATCH_COUNT = "num_batches_tracked"


class WeightsError(UserError, RuntimeError):
    """Weights that are missing, unreadable, unsafe, unavailable or that do not fit the model."""


def is_weights_file(value: str | Path) -> bool:
    """Whether a ``weights`` value names a file (a path or a known suffix) rather than a name
    such as ``DEFAULT`` or ``IMAGENET1K_V1``."""
    text = str(value)
    return "/" in text or "\\" in text or text.lower().endswith(WEIGHTS_SUFFIXES)


def describe_load_error(error: BaseException, path: str | Path | None = None) -> str:
    """One clause saying why ``torch.load(weights_only=True)`` failed. An unsafe file is named
    as refused, with what to do instead; a file that is no weights file at all is named as such.
    torch's own advice to load with ``weights_only=False`` is never repeated: it would run the
    file's code."""
    text = str(error)
    unpickler = re.search(r"WeightsUnpickler error:\s*(.+)", text)
    if unpickler and "Unsupported global" in unpickler.group(1):
        what = unpickler.group(1).split(" was not an allowed")[0].strip()
        return (
            f"refused: it holds pickled objects that are not tensors ({what}); "
            "loading it would run code from the file. Re-save the weights as a plain "
            "state_dict (torch.save(model.state_dict(), path)) or as .safetensors"
        )
    head = None if str(path).endswith(".safetensors") else _head_bytes(path)
    if head is not None and not head.startswith((_ZIP_MAGIC, _PICKLE_MAGIC)):
        return (
            "cannot be read: it is not a checkpoint or weights file (neither a torch.save "
            "archive nor a pickle): "
            "give a .ckpt written by this toolkit, a torch.save'd state_dict (.pt, .pth) or a "
            ".safetensors file"
        )
    if unpickler:
        detail = unpickler.group(1).strip().split(". ")[0]
    else:
        sentences = [s for s in re.split(r"(?<=\.)\s+|\n", text) if s.strip()]
        safe = [s for s in sentences if "weights_only" not in s]
        detail = safe[0].strip() if safe else "corrupt"
    return f"cannot be read: truncated or corrupt ({type(error).__name__}: {detail})"


def _head_bytes(path: str | Path | None) -> bytes | None:
    try:
        with open(path, "rb") as file:  # type: ignore[arg-type]
            return file.read(4)
    except (OSError, TypeError):
        return None


def missing_file_error(path: str | Path, what: str) -> str:
    """Why ``path`` is no file to read: absent, or a directory (naming a checkpoint in it)."""
    path = Path(path)
    if not path.is_dir():
        return f"{what} {path} does not exist"
    inside = [
        path / name
        for name in ("teacher/best.ckpt", "teacher/last.ckpt", "best.ckpt", "last.ckpt")
        if (path / name).is_file()
    ]
    hint = f" (e.g. {inside[0]})" if inside else ""
    return f"{what} {path} is a directory, not a file: name the file in it{hint}"


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
        raise WeightsError(missing_file_error(path, "weights file"))
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path), device="cpu")
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise WeightsError(f"weights file {path} {describe_load_error(error, path)}") from None
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
    key_map: Sequence[str] | None = None,
    role: str | None = None,
) -> bool:
    """Load ``state`` into ``model`` strictly, after renaming its keys and fitting prefixes.

    What PyTorch's strict ``load_state_dict`` accepts is accepted: BatchNorm's
    ``num_batches_tracked`` buffers, absent from files of older torch versions, start at 0.

    Args:
        model: a model from :func:`~distill.models.build_model`.
        state: tensors from :func:`read_state_dict`.
        source: what to call the weights in messages (the file name).
        name: what to call the model in messages (default: its ``model_name`` or class).
        adapt_head: keep the model's freshly initialised classifier when the weights'
            classifier has another shape (another number of classes): a pretrained backbone
            with a new head, to be fine-tuned. When False such a difference is an error.
        key_map: rename rules applied to the file's keys first (:mod:`distill.models.key_map`);
            ``module.`` and other wrapper prefixes are fitted automatically after them.
        role: ``teacher`` or ``student``: the config section named in messages.

    Returns:
        Whether the classifier came from the weights (False when ``adapt_head`` replaced it).

    Raises:
        WeightsError: keys are missing or unexpected, or shapes differ; the one-line message
            lists them and names the key_map rule or the architecture that would fit, if any.
    """
    option = (lambda key: f"{role}.{key}") if role else (lambda key: key)
    try:
        rules = parse_key_map(key_map)
    except ValueError as error:
        raise WeightsError(f"{option('key_map')}: {error}") from None
    own = model.state_dict()
    head = _classifier_keys(model)
    try:
        fitted = _fitted(state, rules, own)
    except ValueError as error:
        raise WeightsError(f"weights {source}: {error}") from None
    head_differs = any(k in fitted and fitted[k].shape != own[k].shape for k in head)
    if adapt_head and head_differs:
        fitted = {k: v for k, v in fitted.items() if k not in head}
        fitted.update({k: own[k] for k in head})
    missing, unexpected, mismatched = _problems(fitted, own)
    if missing or unexpected or mismatched:
        parts = [
            _listing(label, keys)
            for label, keys in (
                ("missing", missing),
                ("unexpected", unexpected),
                ("shape (file vs model)", [f"{k} {s} vs {o}" for k, s, o in mismatched]),
            )
            if keys
        ]
        name = name or getattr(model, "model_name", type(model).__name__)
        only_head = not missing and not unexpected and {k for k, _, _ in mismatched} <= head
        if only_head:
            advice = "another class count: fine-tune it with weights=FILE, stage=teacher"
        else:
            adaptable = head if adapt_head else set()
            advice = _advice(state, rules, own, model, name, option, adaptable)
        raise WeightsError(f"weights {source} do not fit {name}: {'; '.join(parts)} ({advice})")
    model.load_state_dict(fitted)
    return not (adapt_head and head_differs)


def _fitted(
    state: Mapping[str, Tensor], rules: Sequence[KeyRule], own: Mapping[str, Tensor]
) -> dict[str, Tensor]:
    """``state`` renamed by ``rules``, its prefixes fitted to ``own`` and the BatchNorm batch
    counts that old files lack filled in (as ``BatchNorm._load_from_state_dict`` does)."""
    fitted = _fit_keys(apply_key_map(state, rules), set(own))
    for key in own:
        module = key[: -len(_BATCH_COUNT)]
        if key.endswith(_BATCH_COUNT) and key not in fitted and f"{module}running_mean" in fitted:
            fitted[key] = torch.zeros_like(own[key], device="cpu")
    return fitted


def _problems(
    fitted: Mapping[str, Tensor], own: Mapping[str, Tensor]
) -> tuple[list[str], list[str], list[tuple[str, tuple, tuple]]]:
    missing = sorted(set(own) - set(fitted))
    unexpected = sorted(set(fitted) - set(own))
    mismatched = sorted(
        (k, tuple(fitted[k].shape), tuple(own[k].shape))
        for k in set(own) & set(fitted)
        if fitted[k].shape != own[k].shape
    )
    return missing, unexpected, mismatched


def _advice(
    state: Mapping[str, Tensor],
    rules: list[KeyRule],
    own: Mapping[str, Tensor],
    model: nn.Module,
    name: str,
    option: Callable[[str], str],
    adaptable: set[str],
) -> str:
    """The closest fix: key_map rules that make every key fit, else a registered architecture
    the keys fit, else what to set. Shapes of ``adaptable`` keys (a head to replace) may differ."""

    def score(trial: list[KeyRule]) -> tuple[int, list[str], list[str]]:
        missing, unexpected, mismatched = _problems(_fitted(state, trial, own), own)
        mismatched = [m for m in mismatched if m[0] not in adaptable]
        return len(missing) + len(unexpected) + len(mismatched), unexpected, missing

    fitted = _fit_keys(apply_key_map(state, rules), set(own))

    def shapes(file_key: str, model_key: str) -> bool | None:
        tensor = fitted.get(file_key)
        return None if tensor is None else tensor.shape == own[model_key].shape

    new = suggest_rules(score, shapes, rules)
    if new:
        return f"they fit with {option('key_map')}={format_key_map([*rules, *new])}"
    other = _fitting_architecture(state, rules, name, getattr(model, "num_classes", None))
    if other is not None:
        return f"they are the weights of a {other}: set {option('name')}={other}"
    return (
        f"set {option('name')} to the architecture that wrote the file, or rename its keys "
        f"with {option('key_map')} rules (OLD:NEW or re:PATTERN:REPL)"
    )


def _fitting_architecture(
    state: Mapping[str, Tensor], rules: list[KeyRule], name: str, num_classes: int | None
) -> str | None:
    """A registered model (built on the meta device) whose keys and shapes the file fits,
    the classifier's shape aside."""
    classes = int(num_classes or 10)
    for candidate in list_models():
        if candidate == name:
            continue
        try:
            with torch.device("meta"):
                other = get_model(candidate, num_classes=classes)
        except Exception:  # a family that cannot be built here is no suggestion
            continue
        own = other.state_dict()
        missing, unexpected, mismatched = _problems(_fitted(state, rules, own), own)
        head = _classifier_keys(other)
        if not missing and not unexpected and all(k in head for k, _, _ in mismatched):
            return candidate
    return None
