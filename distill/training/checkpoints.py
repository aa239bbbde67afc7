"""Read every model file the toolkit writes, and fingerprint weights.

One loader serves teacher (:class:`~distill.training.lightning_modules.ClassifierModule`) and student
(:class:`~distill.training.lightning_modules.DistillModule`) checkpoints, run directories and exported
models, so inference code never needs to know which stage or format produced a network. Files
are read with ``torch.load(weights_only=True)``: loading a checkpoint runs no pickled code.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from distill.models import WeightsError, build_model
from distill.models.weights import (
    describe_load_error,
    load_weights,
    missing_file_error,
    unwrap_state_dict,
)

__all__ = [
    "EXPORT_FORMAT",
    "INFERENCE_KEYS",
    "STAGES",
    "CheckpointError",
    "load_classifier",
    "load_model",
    "weights_sha256",
]

STAGES = ("student", "teacher")
"""The stages a run directory holds."""

EXPORT_FORMAT = "distill-export/1"
"""The ``format`` entry of an export's ``model.json``."""

INFERENCE_KEYS = ("classes", "mean", "std", "image_size", "crop")
"""What inference needs besides the weights; training stores these as hyperparameters."""

# Hyperparameter naming the architecture -> prefix of that network in the module's state_dict.
_NETWORKS = {"model_name": "model.", "student_name": "distiller.student."}


class CheckpointError(WeightsError):
    """A checkpoint that is missing, unreadable or does not fit the expected model."""


def weights_sha256(weights: nn.Module | Mapping[str, Tensor]) -> str:
    """SHA-256 of a network's tensors: identifies weights whatever file format holds them.

    Keys are taken in sorted order; each contributes its name, dtype, shape and raw bytes.

    Args:
        weights: a module (its ``state_dict()``) or a state_dict.

    Returns:
        The hex digest.

    Example:
        >>> from distill.models import build_model
        >>> model = build_model("wrn_16_1", num_classes=10)
        >>> weights_sha256(model) == weights_sha256(model.state_dict())
        True
    """
    state = weights.state_dict() if isinstance(weights, nn.Module) else weights
    digest = hashlib.sha256()
    for key in sorted(state):
        tensor = state[key].detach().cpu().contiguous()
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else "truncated or corrupt"


def _read(path: Path, what: str = "checkpoint") -> Any:
    """``torch.load`` with ``weights_only=True`` (``.safetensors``: safetensors); every failure
    is a one-line CheckpointError, and a file holding pickled code is refused without running it."""
    if not path.is_file():
        raise CheckpointError(missing_file_error(path, what))
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path), device="cpu")
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise CheckpointError(f"{what} {path} {describe_load_error(error, path)}") from None


def _build(name: str, kwargs: dict, info: dict[str, Any], state: dict, path: Path) -> nn.Module:
    """The network ``name`` with ``state`` loaded, in eval mode, carrying ``info`` as attributes."""
    # Pretrained torchvision weights would only be downloaded to be overwritten by ``state``.
    kwargs = {key: value for key, value in kwargs.items() if key != "weights"}
    try:
        model = build_model(name, num_classes=int(info["num_classes"]), **kwargs)
    except (ValueError, TypeError) as error:
        raise CheckpointError(f"{path}: cannot build {name}: {_first_line(error)}") from None
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        raise CheckpointError(f"{path}: weights do not fit {name}: {_first_line(error)}") from None
    return _with_info(model, name, kwargs, info)


def _with_info(model: nn.Module, name: str, kwargs: dict, info: dict[str, Any]) -> nn.Module:
    """``model`` in eval mode, carrying what inference needs (``info``, else its defaults)."""
    defaults = getattr(model, "default_cfg", None)
    model.model_name, model.model_kwargs = name, kwargs
    model.num_classes = int(info["num_classes"])
    model.classes = list(info["classes"]) if info.get("classes") else None
    for key in ("mean", "std"):
        value = info.get(key) or getattr(defaults, key, None)
        setattr(model, key, tuple(float(v) for v in value) if value else None)
    size = info.get("image_size") or (defaults.input_size[1:] if defaults else None)
    model.image_size = tuple(int(s) for s in size) if size else None
    # How evaluation resizes new images; pretrained defaults (timm's) are ImageNet's.
    model.crop = info.get("crop") or ("random_resized" if defaults else "pad")
    model.teacher_info = info.get("teacher")
    return model.eval()


def _is_toolkit_checkpoint(checkpoint: Any) -> bool:
    hparams = checkpoint.get("hyper_parameters") if isinstance(checkpoint, dict) else None
    return isinstance(hparams, dict) and any(key in hparams for key in _NETWORKS)


def _from_state_dict(
    checkpoint: Any,
    path: Path,
    name: str | None,
    num_classes: int | None,
    kwargs: dict,
    key_map: list[str] | None = None,
) -> nn.Module:
    """A network built by name with the plain state_dict of another codebase loaded strictly."""
    if name is None or num_classes is None:
        raise CheckpointError(
            f"{path} is not a checkpoint written by this toolkit; to use it as a plain "
            "state_dict, name its architecture (teacher.name=...)"
        )
    kwargs = {key: value for key, value in kwargs.items() if key != "weights"}
    try:
        model = build_model(name, num_classes=num_classes, **kwargs)
    except (ValueError, TypeError) as error:
        raise CheckpointError(f"{path}: cannot build {name}: {_first_line(error)}") from None
    try:
        state = unwrap_state_dict(checkpoint, path)
        load_weights(
            model,
            state,
            source=str(path),
            adapt_head=False,
            name=name,
            key_map=key_map,
            role="teacher",
        )
    except WeightsError as error:
        raise CheckpointError(str(error)) from None
    info = {"num_classes": num_classes}
    return _with_info(model, name, kwargs, info)


def _from_checkpoint(checkpoint: Any, path: Path) -> nn.Module:
    """The network of a ClassifierModule or DistillModule checkpoint (the student's)."""
    hparams = checkpoint.get("hyper_parameters") if isinstance(checkpoint, dict) else None
    state = checkpoint.get("state_dict") if isinstance(checkpoint, dict) else None
    if isinstance(hparams, dict) and isinstance(state, dict):
        for key, prefix in _NETWORKS.items():
            if key in hparams:
                weights = {
                    k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)
                }
                info = {k: hparams.get(k) for k in ("num_classes", *INFERENCE_KEYS)}
                info["teacher"] = checkpoint.get("teacher")
                kwargs = dict(hparams.get("model_kwargs") or {})
                return _build(hparams[key], kwargs, info, weights, path)
    raise CheckpointError(
        f"{path} is not a checkpoint written by this toolkit "
        "(no model_name or student_name hyperparameter, or no state_dict)"
    )


def _from_export(meta_path: Path) -> nn.Module:
    """The network of an :func:`distill.export_model` directory (``model.json`` + weights)."""
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError) as error:
        raise CheckpointError(f"{meta_path} cannot be read ({_first_line(error)})") from None
    if not isinstance(meta, dict) or meta.get("format") != EXPORT_FORMAT:
        raise CheckpointError(f"{meta_path} is not a model.json of format {EXPORT_FORMAT}")
    weights = meta_path.parent / meta["weights"]
    if weights.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise CheckpointError(
                f"{weights} needs the safetensors package: pip install safetensors"
            ) from None
        if not weights.is_file():
            raise CheckpointError(f"exported weights {weights} do not exist")
        try:
            state = load_file(weights)
        except Exception as error:
            raise CheckpointError(f"{weights} cannot be read ({_first_line(error)})") from None
    else:
        state = _read(weights, "exported weights")
    return _build(meta["architecture"], dict(meta.get("kwargs") or {}), meta, state, weights)


def _export_meta(path: Path) -> Path | None:
    """The ``model.json`` that ``path`` (an export directory, or a file in one) belongs to."""
    if path.is_dir():
        meta = path / "model.json"
    elif path.name in ("model.json", "model.safetensors", "model.pt"):
        meta = path.with_name("model.json")
    else:
        return None
    return meta if meta.is_file() else None


def _run_checkpoint(run_dir: Path, stage: str) -> Path:
    """The checkpoint a run directory's summary names for ``stage``, else best, else last."""
    candidates = []
    summary_path = run_dir / "summary.json"
    if summary_path.is_file():
        try:
            summary = json.loads(summary_path.read_text())
        except ValueError:
            summary = {}
        entry = summary.get(stage, {})
        candidates.append(entry.get("checkpoint"))
        if stage == "teacher":  # a student-only run names the teacher it was distilled from
            candidates.append(summary.get("student", {}).get("teacher_checkpoint"))
    candidates += [run_dir / stage / "best.ckpt", run_dir / stage / "last.ckpt"]
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    raise CheckpointError(
        f"{run_dir} holds no {stage} checkpoint (looked at summary.json, "
        f"{stage}/best.ckpt, {stage}/last.ckpt)"
    )


def load_model(path: str | Path, stage: str = "student") -> nn.Module:
    """Load a trained network for inference, from any file or directory the toolkit writes.

    Args:
        path: a teacher or student checkpoint (``.ckpt``), a run directory (its
            ``summary.json`` names the selected checkpoint of ``stage``; else
            ``<stage>/best.ckpt``, then ``last.ckpt``), or an export directory (or its
            ``model.json``) written by :func:`distill.export_model`.
        stage: ``"student"`` or ``"teacher"``: which network of a run directory.

    Returns:
        The network on the CPU in eval mode, with attributes ``num_classes``, ``classes``
        (class names, ``None`` if unknown), ``mean``, ``std`` (input normalisation),
        ``image_size`` (``(H, W)`` it was trained at), ``crop`` (the data's training crop,
        which says how evaluation resizes: see :func:`distill.data.preprocess.eval_geometry`),
        ``model_name``, ``model_kwargs`` and
        ``teacher_info`` (``{"path", "sha256", "name"}`` of a student's teacher, else ``None``).

    Raises:
        CheckpointError: the path is missing, unreadable or not the toolkit's, or ``stage`` is
            unknown; the one-line message names the path.
    """
    path = Path(path)
    if stage not in STAGES:
        raise CheckpointError(f"unknown stage {stage!r} for {path}: expected one of {STAGES}")
    if not path.exists():
        raise CheckpointError(f"{path} does not exist")
    meta = _export_meta(path)
    if meta is not None:
        return _from_export(meta)
    if path.is_dir():
        path = _run_checkpoint(path, stage)
    return _from_checkpoint(_read(path), path)


def load_classifier(
    path: str | Path,
    *,
    expected_name: str | None = None,
    expected_classes: int | None = None,
    model_kwargs: dict[str, Any] | None = None,
    key_map: list[str] | None = None,
    map_location: str | torch.device = "cpu",
) -> nn.Module:
    """Load a teacher for distillation: a checkpoint as :func:`load_model` reads it, or a plain
    ``state_dict`` from any code (``.pt``, ``.pth``, ``.safetensors``; wrapped under
    ``state_dict`` / ``model`` or with ``module.`` prefixes) for the architecture
    ``expected_name`` built with ``model_kwargs``, its keys renamed by ``key_map``
    (:mod:`distill.models.key_map`). The network is returned in eval mode on ``map_location``.

    Raises:
        CheckpointError: the file is missing, unreadable or unsafe (pickled code is refused
            without running it), or its architecture, keys or class count differ from the
            expected ones; the message names the file and the mismatch.
    """
    path = Path(path)
    checkpoint = _read(path, "teacher checkpoint")
    if _is_toolkit_checkpoint(checkpoint):
        model = _from_checkpoint(checkpoint, path)
    else:
        kwargs = dict(model_kwargs or {})
        model = _from_state_dict(checkpoint, path, expected_name, expected_classes, kwargs, key_map)
    if expected_name is not None and model.model_name != expected_name:
        raise CheckpointError(
            f"{path} holds a {model.model_name} but the config asks for {expected_name}: "
            f"set teacher.name={model.model_name} or point teacher.checkpoint at a {expected_name}"
        )
    if expected_classes is not None and model.num_classes != expected_classes:
        raise CheckpointError(
            f"{path} was trained for {model.num_classes} classes but the data has "
            f"{expected_classes}"
        )
    return model.to(map_location)
