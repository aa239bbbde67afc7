"""Export a trained network for use without this toolkit.

An export directory holds the weights as a plain state_dict (``model.safetensors``, or
``model.pt`` without the ``safetensors`` package), ``model.json`` with what inference needs
(architecture, class names, normalisation, image size, CAM layer), and ``model.pt2``, a
``torch.export`` program that runs with torch alone::

    program = torch.export.load("export/model.pt2").module()
    logits = program(images)  # [B, 3, H, W] normalised as model.json says

``torch.export`` rather than TorchScript: ``torch.jit.trace``/``save``/``load`` are deprecated
in current torch. :func:`distill.load_model` reads the directory back as an ``nn.Module``.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
from torch import nn

from distill.checkpoints import EXPORT_FORMAT, load_model

__all__ = ["PROGRAM_FILE", "export_model"]

PROGRAM_FILE = "model.pt2"


def _save_weights(model: nn.Module, out_dir: Path) -> Path:
    state = {key: value.detach().cpu().contiguous() for key, value in model.state_dict().items()}
    try:
        from safetensors.torch import save_file
    except ImportError:
        path = out_dir / "model.pt"
        torch.save(state, path)
        return path
    path = out_dir / "model.safetensors"
    save_file(state, str(path))
    return path


def _save_program(model: nn.Module, image_size: tuple[int, int], out_dir: Path) -> Path:
    """``torch.export`` the eval-mode forward with a dynamic batch dimension."""
    example = torch.zeros(2, 3, *image_size)
    batch = torch.export.Dim("batch")
    program = torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
    path = out_dir / PROGRAM_FILE
    torch.export.save(program, path)
    return path


def export_model(
    model_or_path: nn.Module | str | Path, out_dir: str | Path, *, stage: str = "student"
) -> dict[str, Path]:
    """Write a network's weights, metadata and a standalone program into ``out_dir``.

    Args:
        model_or_path: a network from :func:`distill.load_model`, or anything it accepts
            (a checkpoint, a run directory, an export).
        out_dir: the directory to write (created if needed; files in it are replaced).
        stage: which network of a run directory.

    Returns:
        Paths of the written files: ``weights``, ``metadata`` and ``program``.

    Raises:
        ValueError: ``model_or_path`` is a module that does not say what it is (built by hand
            rather than loaded): export its checkpoint instead.
        CheckpointError: ``model_or_path`` is a path that :func:`distill.load_model` rejects.
    """
    if isinstance(model_or_path, str | Path):
        model_or_path = load_model(model_or_path, stage)
    if getattr(model_or_path, "model_name", None) is None or not model_or_path.image_size:
        raise ValueError(
            "export_model needs the architecture and image size that distill.load_model "
            "attaches (model_name, image_size): pass the checkpoint or run directory"
        )
    model = copy.deepcopy(model_or_path).cpu().eval()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    weights = _save_weights(model, out)
    program = _save_program(model, model.image_size, out)
    meta = {
        "format": EXPORT_FORMAT,
        "architecture": model.model_name,
        "kwargs": model.model_kwargs,
        "num_classes": model.num_classes,
        "classes": model.classes,
        "mean": model.mean,
        "std": model.std,
        "image_size": model.image_size,
        "crop": model.crop,
        "cam_layer": getattr(model, "cam_layer", None),
        "weights": weights.name,
        "program": program.name,
        "teacher": model.teacher_info,
    }
    metadata = out / "model.json"
    metadata.write_text(json.dumps(meta, indent=2) + "\n")
    return {"weights": weights, "metadata": metadata, "program": program}
