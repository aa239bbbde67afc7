"""Explain a trained model's predictions on image files.

``python -m distill.explain CHECKPOINT IMAGE_OR_FOLDER... --out DIR [--teacher CHECKPOINT]
[--batch-size N] [--target predicted|INDEX]`` writes ``DIR/<image name>.png`` for every image:
the image, the student's Grad-CAM++ map over it and, with a teacher, the teacher's map beside
it, each captioned with the predicted class and its probability. CHECKPOINT is anything
:func:`distill.load_model` reads (a checkpoint, a run directory, an export). Without
``--teacher`` the teacher a student checkpoint records is drawn when that file still exists
and still holds the same weights.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn
from torchvision import transforms as T
from torchvision.transforms.functional import pil_to_tensor

from distill.cam import GradCAMPlusPlus
from distill.checkpoints import CheckpointError, load_model, weights_sha256
from distill.data.preprocess import eval_geometry
from distill.visualize import captioned_row, overlay_maps

__all__ = ["IMAGE_SUFFIXES", "InputError", "explain_batch", "find_images", "main", "read_images"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
MIN_PANEL = 160
"""Panels are upscaled to at least this many pixels, so small (CIFAR-sized) maps stay legible."""


class InputError(ValueError):
    """A missing or unreadable input; the message is one line naming it."""


def find_images(inputs: Sequence[str | Path]) -> list[Path]:
    """The image files named by ``inputs``: files as given, folders walked (sorted)."""
    files: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            files += sorted(
                p for p in item.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
            )
        elif item.is_file():
            files.append(item)
        else:
            raise InputError(f"{item} does not exist")
    if not files:
        raise InputError(f"no {'/'.join(IMAGE_SUFFIXES)} images in {', '.join(map(str, inputs))}")
    return files


def read_images(paths: Sequence[Path], size: tuple[int, int], crop: str = "pad") -> Tensor:
    """Decode any size and mode to RGB ``[B, 3, H, W]`` in [0, 1] at ``size`` = ``(H, W)``,
    resized as the model's evaluation was (``crop``, see
    :func:`distill.data.preprocess.eval_geometry`): stretched (``pad``), or the shorter side
    resized and the center cropped (``random_resized``)."""
    geometry = T.Compose(eval_geometry(crop, size))
    pictures = []
    for path in paths:
        try:
            with Image.open(path) as image:
                rgb = geometry(image.convert("RGB"))
        except (OSError, ValueError) as error:
            raise InputError(f"cannot read image {path}: {error}") from None
        pictures.append(pil_to_tensor(rgb).float() / 255)
    return torch.stack(pictures)


def explain_batch(
    model: nn.Module, pictures: Tensor, target: int | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """Probabilities ``[B, C]``, predicted classes ``[B]`` and Grad-CAM++ maps ``[B, h, w]``.

    Args:
        model: a network from :func:`distill.load_model` (its ``mean``, ``std`` and
            ``image_size`` prepare the input).
        pictures: ``[B, 3, H, W]`` RGB in [0, 1].
        target: the class to explain; ``None``: each image's predicted class.
    """
    if model.image_size and tuple(pictures.shape[-2:]) != tuple(model.image_size):
        pictures = F.interpolate(pictures, size=model.image_size, mode="bilinear", antialias=True)
    mean = torch.tensor(model.mean or (0.0,) * 3, device=pictures.device)[:, None, None]
    std = torch.tensor(model.std or (1.0,) * 3, device=pictures.device)[:, None, None]
    images = (pictures - mean) / std
    targets = None if target is None else torch.full((len(images),), target, device=images.device)
    maps, scores = GradCAMPlusPlus(model).maps_and_scores(images, targets)
    probs = scores.softmax(dim=1)
    return probs, probs.argmax(dim=1), maps


def _teacher(path: str | None, student: nn.Module) -> nn.Module | None:
    """``--teacher``, else the teacher the student's checkpoint records, if it is unchanged."""
    if path:
        return load_model(path, stage="teacher")
    info = student.teacher_info
    if not info or not info.get("path") or not Path(info["path"]).is_file():
        return None
    teacher = load_model(info["path"], stage="teacher")
    if weights_sha256(teacher) != info.get("sha256"):
        print(f"note: {info['path']} changed since the distillation: not drawn", file=sys.stderr)
        return None
    return teacher


def _target(text: str) -> int | None:
    if text == "predicted":
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected 'predicted' or a class index, got {text!r}"
        ) from None


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m distill.explain", description=__doc__.splitlines()[0]
    )
    parser.add_argument("checkpoint", help="checkpoint, run directory or export directory")
    parser.add_argument("inputs", nargs="+", metavar="IMAGE_OR_FOLDER")
    parser.add_argument("--out", required=True, type=Path, help="folder for the PNG files")
    parser.add_argument("--teacher", help="teacher checkpoint or run directory to draw beside")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--target", type=_target, default=None, help="predicted | class index")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return parser.parse_args(argv)


def _caption(name: str, model: nn.Module, predicted: int, prob: float, target: int | None) -> str:
    def label(index: int) -> str:
        return model.classes[index] if model.classes else str(index)

    explained = "" if target is None else f", map of {label(target)}"
    return f"{name}: {label(predicted)}\np={prob:.2f}{explained}"


def _columns(
    models: dict[str, nn.Module], pictures: Tensor, target: int | None
) -> tuple[list[Tensor], list[list[str]]]:
    """Per model, the overlays of a batch and their captions."""
    columns, captions = [], []
    for name, model in models.items():
        probs, predicted, maps = explain_batch(model, pictures, target)
        columns.append(overlay_maps(pictures, maps.to(pictures.device)))
        confidence = probs.gather(1, predicted[:, None])[:, 0]
        pairs = zip(predicted.tolist(), confidence.tolist(), strict=True)
        captions.append([_caption(name, model, c, p, target) for c, p in pairs])
    return columns, captions


def _unique(path: Path, used: set[str]) -> str:
    """``<stem>.png``, numbered when another input had the same stem."""
    name, n = f"{path.stem}.png", 1
    while name in used:
        n += 1
        name = f"{path.stem}_{n}.png"
    used.add(name)
    return name


def _run(args: argparse.Namespace) -> str:
    files = find_images(args.inputs)
    student = load_model(args.checkpoint).to(args.device)
    teacher = _teacher(args.teacher, student)
    models = {"student": student} | ({"teacher": teacher.to(args.device)} if teacher else {})
    for name, model in models.items():
        if args.target is not None and not 0 <= args.target < model.num_classes:
            raise InputError(f"--target {args.target}: the {name} has {model.num_classes} classes")
    size = student.image_size or (224, 224)
    scale, batch = math.ceil(MIN_PANEL / max(size)), max(1, args.batch_size)
    args.out.mkdir(parents=True, exist_ok=True)
    used: set[str] = set()
    for start in range(0, len(files), batch):
        paths = files[start : start + batch]
        pictures = read_images(paths, size, student.crop).to(args.device)
        columns, captions = _columns(models, pictures, args.target)
        captions.insert(0, [f"{path.name}\n" for path in paths])
        for i, path in enumerate(paths):
            panels = [pictures[i], *(column[i] for column in columns)]
            row = captioned_row(panels, [caption[i] for caption in captions], scale)
            row.save(args.out / _unique(path, used))
    drawn = " and ".join(f"{name} {model.model_name}" for name, model in models.items())
    return f"wrote {len(files)} explanations ({drawn}) to {args.out}"


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (2 for bad inputs)."""
    args = _parse(argv)
    try:
        print(_run(args))
    except (CheckpointError, InputError) as error:
        print(f"error: {' '.join(str(error).split())}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
