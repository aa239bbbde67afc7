"""Export a trained network for use without this toolkit.

``python -m distill.export CHECKPOINT --out DIR [--stage student|teacher] [--with-maps]
[--no-onnx]`` writes the export directory. It holds the weights as a plain state_dict
(``model.safetensors``, or ``model.pt`` without the ``safetensors`` package), ``model.json``
with what inference needs (architecture, class names, normalisation, image size, CAM layer),
``model.pt2``, a ``torch.export`` program that runs with torch alone, and ``model.onnx``
(:mod:`distill.tools.onnx_export`; optionally returning the Grad-CAM++ maps too)::

    program = torch.export.load("export/model.pt2").module()
    logits = program(images)  # [B, 3, H, W] normalised as model.json says

``torch.export`` rather than TorchScript: ``torch.jit.trace``/``save``/``load`` are deprecated
in current torch. :func:`distill.load_model` reads the directory back as an ``nn.Module``.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from distill.errors import UserError, report
from distill.tools.onnx_export import ONNX_FILE, maps_unsupported, missing_onnx_packages, save_onnx
from distill.training.checkpoints import EXPORT_FORMAT, STAGES, load_model

__all__ = ["PROGRAM_FILE", "ExportError", "export_model", "main"]

PROGRAM_FILE = "model.pt2"


class ExportError(UserError, ValueError):
    """An export that cannot be made as asked (output path, missing package, unsupported
    maps); the message is one line and says what to do."""


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


def _save_onnx(model: nn.Module, out: Path, maps: bool) -> Path:
    """``model.onnx``, first: a network the exporter cannot trace leaves no files behind."""
    try:
        return save_onnx(model, model.image_size, out / ONNX_FILE, maps=maps)
    except torch.onnx.OnnxExporterError as error:
        cause = error.__cause__ or error
        detail = next((line.strip() for line in str(cause).splitlines() if line.strip()), "")
        raise ExportError(
            f"{model.model_name} cannot be exported to ONNX ({type(cause).__name__}: {detail}); "
            "export without it: onnx=False, --no-onnx"
        ) from None


def _check_request(model: nn.Module, out: Path, onnx: bool, maps: bool) -> None:
    """Refuse, before anything is written, what the export could not finish."""
    if out.exists() and not out.is_dir():
        raise ExportError(f"{out} is a file, not a directory: name a directory to export into")
    if maps and not onnx:
        raise ExportError("maps are an output of the ONNX graph: maps=True needs onnx=True")
    missing = missing_onnx_packages() if onnx else []
    if missing:
        raise ExportError(
            f"ONNX export needs {' and '.join(missing)}: pip install 'distill[onnx]' "
            "(or export without it: onnx=False, --no-onnx)"
        )
    reason = maps_unsupported(model) if maps else None
    if reason:
        raise ExportError(reason)


def export_model(
    model_or_path: nn.Module | str | Path,
    out_dir: str | Path,
    *,
    stage: str = "student",
    onnx: bool = True,
    maps: bool = False,
) -> dict[str, Path]:
    """Write a network's weights, metadata and standalone programs into ``out_dir``.

    Args:
        model_or_path: a network from :func:`distill.load_model`, or anything it accepts
            (a checkpoint, a run directory, an export).
        out_dir: the directory to write (created if needed; files in it are replaced).
        stage: which network of a run directory.
        onnx: also write ``model.onnx`` (needs the ``onnx`` extra).
        maps: the ONNX graph returns ``(logits, maps)``: the Grad-CAM++ maps of the predicted
            classes too (pooled-linear heads only; see :mod:`distill.tools.onnx_export`).

    Returns:
        Paths of the written files: ``weights``, ``metadata``, ``program`` and ``onnx``.

    Raises:
        ExportError: ``model_or_path`` is a module that does not say what it is (built by
            hand rather than loaded: export its checkpoint instead), ``out_dir`` is a file, the
            ONNX packages are missing, ``maps`` was asked of a head that needs autograd, or
            the exporter cannot trace the network.
        CheckpointError: ``model_or_path`` is a path that :func:`distill.load_model` rejects.
    """
    if isinstance(model_or_path, str | Path):
        model_or_path = load_model(model_or_path, stage)
    if getattr(model_or_path, "model_name", None) is None or not model_or_path.image_size:
        raise ExportError(
            "export_model needs the architecture and image size that distill.load_model "
            "attaches (model_name, image_size): pass the checkpoint or run directory"
        )
    out = Path(out_dir)
    _check_request(model_or_path, out, onnx, maps)
    model = copy.deepcopy(model_or_path).cpu().eval()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ExportError(f"cannot create {out}: {error.strerror or error}") from None
    files = {"onnx": _save_onnx(model, out, maps)} if onnx else {}
    files["weights"] = _save_weights(model, out)
    files["program"] = _save_program(model, model.image_size, out)
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
        "weights": files["weights"].name,
        "program": files["program"].name,
        "onnx": files["onnx"].name if onnx else None,
        "onnx_outputs": (["logits", "maps"] if maps else ["logits"]) if onnx else None,
        "teacher": model.teacher_info,
    }
    files["metadata"] = out / "model.json"
    files["metadata"].write_text(json.dumps(meta, indent=2) + "\n")
    return files


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m distill.export", description=__doc__.splitlines()[0]
    )
    parser.add_argument("checkpoint", help="checkpoint, run directory or export directory")
    parser.add_argument("--out", required=True, type=Path, help="directory to export into")
    parser.add_argument("--stage", choices=STAGES, default="student", help="network of a run")
    parser.add_argument(
        "--with-maps", action="store_true", help="model.onnx returns (logits, Grad-CAM++ maps)"
    )
    parser.add_argument("--no-onnx", action="store_true", help="skip model.onnx")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (1 for a refused export)."""
    args = _parse(argv)
    try:
        files = export_model(
            args.checkpoint, args.out, stage=args.stage, onnx=not args.no_onnx, maps=args.with_maps
        )
    except UserError as error:
        return report(error)
    names = ", ".join(sorted(path.name for path in files.values()))
    print(f"wrote {names} to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
