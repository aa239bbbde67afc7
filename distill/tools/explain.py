"""Explain a trained model's predictions on image files.

``python -m distill.explain CHECKPOINT IMAGE_OR_FOLDER... --out DIR [--teacher CHECKPOINT]
[--batch-size N] [--target predicted|INDEX|CLASS] [--method NAME[,NAME...]|all]
[--device DEVICE]`` writes ``DIR/<image name>.png`` for every image: the image, then per method
(default ``gradcam_pp``; ``all``: every one of :data:`distill.cam.CAM_METHODS` the models
support) the model's map over it and, with a teacher, the teacher's map beside it, each
captioned with the model's role (student or teacher), the predicted class, its probability and
the method. Images are decoded as training decodes
them (:func:`distill.data.decode.pil_rgb`: 16-bit files keep their high byte). CHECKPOINT is anything
:func:`distill.load_model` reads (a checkpoint, a run directory, an export). Without
``--teacher`` the teacher a student checkpoint records is drawn when that file still exists
and still holds the same weights.
"""

from __future__ import annotations

import argparse
import difflib
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn
from torchvision import transforms as T
from torchvision.transforms.functional import pil_to_tensor

from distill.cam import CAM_METHODS, EXPLAINERS, pooled_head
from distill.cam.visualize import captioned_row, overlay_maps
from distill.data.decode import pil_rgb
from distill.data.preprocess import eval_geometry
from distill.errors import UserError, report
from distill.training.checkpoints import load_model, weights_sha256

__all__ = ["IMAGE_SUFFIXES", "InputError", "explain_batch", "find_images", "main", "read_images"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
MIN_PANEL = 160
"""Panels are upscaled to at least this many pixels, so small (CIFAR-sized) maps stay legible."""
MAX_PANEL = 512
"""Larger images are shown shrunk to this many pixels."""


class InputError(UserError, ValueError):
    """A missing or unreadable input, or a bad option; the message is one line naming it."""

    exit_code = 2


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
    as the file storage decodes training images (:func:`~distill.data.decode.pil_rgb`), resized as the model's evaluation was (``crop``, see
    :func:`distill.data.preprocess.eval_geometry`): stretched (``pad``), or the shorter side
    resized and the center cropped (``random_resized``)."""
    geometry = T.Compose(eval_geometry(crop, size))
    pictures = []
    for path in paths:
        try:
            with Image.open(path) as image:
                rgb = geometry(pil_rgb(image))
        except (OSError, ValueError) as error:
            raise InputError(f"cannot read image {path}: {error}") from None
        pictures.append(pil_to_tensor(rgb).float() / 255)
    return torch.stack(pictures)


def explain_batch(
    model: nn.Module, pictures: Tensor, target: int | None = None, method: str = "gradcam_pp"
) -> tuple[Tensor, Tensor, Tensor]:
    """Probabilities ``[B, C]``, predicted classes ``[B]`` and maps ``[B, h, w]``.

    Args:
        model: a network from :func:`distill.load_model` (its ``mean``, ``std`` and
            ``image_size`` prepare the input).
        pictures: ``[B, 3, H, W]`` RGB in [0, 1].
        target: the class to explain; ``None``: each image's predicted class.
        method: a name of :data:`distill.cam.CAM_METHODS`.
    """
    if model.image_size and tuple(pictures.shape[-2:]) != tuple(model.image_size):
        pictures = F.interpolate(pictures, size=model.image_size, mode="bilinear", antialias=True)
    mean = torch.tensor(model.mean or (0.0,) * 3, device=pictures.device)[:, None, None]
    std = torch.tensor(model.std or (1.0,) * 3, device=pictures.device)[:, None, None]
    images = (pictures - mean) / std
    targets = None if target is None else torch.full((len(images),), target, device=images.device)
    maps, scores = EXPLAINERS[method](model).maps_and_scores(images, targets)
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


def _target(text: str, model: nn.Module) -> int | None:
    """``--target``: ``predicted``, a class index (digits) or one of ``model``'s class names."""
    if text == "predicted":
        return None
    if text.lstrip("-").isdigit():
        index = int(text)
        if not 0 <= index < model.num_classes:
            raise InputError(
                f"--target {text}: the model has {model.num_classes} classes (0 to "
                f"{model.num_classes - 1})"
            )
        return index
    names = list(model.classes or [])
    if text in names:
        return names.index(text)
    folded = [i for i, name in enumerate(names) if name.casefold() == text.casefold()]
    if len(folded) == 1:
        return folded[0]
    if not names:
        raise InputError(
            f"--target {text}: the checkpoint records no class names; give 'predicted' or an "
            f"index from 0 to {model.num_classes - 1}"
        )
    close = difflib.get_close_matches(text, names, n=3, cutoff=0.5)
    hint = (
        f"; did you mean {', '.join(close)}?"
        if close
        else f"; its classes: {', '.join(names[:10])}"
    )
    raise InputError(f"--target {text}: no class of that name{hint}")


def _supports(model: nn.Module, method: str) -> bool:
    """Whether ``method`` draws ``model``'s maps: CAM needs its layer to feed the pooled head."""
    if EXPLAINERS[method].rule.gradient != "classifier":
        return True
    return pooled_head(model, getattr(model, "cam_layer", "")) is not None


def _methods(text: str, models: dict[str, nn.Module]) -> list[str]:
    """``--method``: ``all``, or names of :data:`distill.cam.CAM_METHODS`, comma-separated."""
    if text == "all":
        chosen = [m for m in CAM_METHODS if all(_supports(x, m) for x in models.values())]
        skipped = [m for m in CAM_METHODS if m not in chosen]
        if skipped:
            print(f"note: {', '.join(skipped)} not drawn: no pooled-head layer", file=sys.stderr)
        return chosen
    chosen = list(dict.fromkeys(filter(None, text.split(","))))
    for method in chosen or [text]:
        if method not in CAM_METHODS:
            close = difflib.get_close_matches(method, list(CAM_METHODS), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise InputError(
                f"--method {method}: no such method{hint}; choose all or from "
                f"{', '.join(CAM_METHODS)}"
            )
    for method in chosen:
        for name, model in models.items():
            if not _supports(model, method):
                raise InputError(
                    f"--method {method}: the {name}'s cam_layer "
                    f"{getattr(model, 'cam_layer', None)!r} does not feed its pooled linear head; "
                    "choose another method"
                )
    return chosen


def _device(text: str) -> torch.device:
    """``--device``, refused in one line when torch cannot use it here."""
    try:
        device = torch.device(text)
    except RuntimeError as error:
        raise InputError(f"--device {text}: {str(error).splitlines()[0]}") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise InputError(f"--device {text}: torch sees no CUDA GPU here; use --device cpu")
        if device.index is not None and device.index >= count:
            raise InputError(f"--device {text}: torch sees {count} CUDA GPUs (0 to {count - 1})")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise InputError(f"--device {text}: MPS is not available here; use --device cpu")
    return device


def _out_dir(out: Path) -> None:
    """Create ``--out``, refused in one line when it is a file or cannot be created."""
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is a file; name a folder (it is created if missing)")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise InputError(f"--out {out}: cannot create it ({error.strerror})") from None


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m distill.explain", description=__doc__.splitlines()[0]
    )
    parser.add_argument("checkpoint", help="checkpoint, run directory or export directory")
    parser.add_argument("inputs", nargs="+", metavar="IMAGE_OR_FOLDER")
    parser.add_argument("--out", required=True, type=Path, help="folder for the PNG files")
    parser.add_argument("--teacher", help="teacher checkpoint or run directory to draw beside")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--target", default="predicted", help="predicted | class index | class name"
    )
    parser.add_argument(
        "--method",
        default="gradcam_pp",
        help=f"all | one or more (comma-separated) of {', '.join(CAM_METHODS)}",
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return parser.parse_args(argv)


def _role(model: nn.Module) -> str:
    """What a loaded network is: a student checkpoint records its teacher, a teacher's does not."""
    return "student" if model.teacher_info else "teacher"


def _caption(
    name: str, model: nn.Module, predicted: int, prob: float, target: int | None, method: str
) -> str:
    def label(index: int) -> str:
        return model.classes[index] if model.classes else str(index)

    explained = "" if target is None else f", map of {label(target)}"
    return f"{name}: {label(predicted)} p={prob:.2f}\n{method}{explained}"


def _columns(
    models: dict[str, nn.Module], pictures: Tensor, target: int | None, methods: Sequence[str]
) -> tuple[list[Tensor], list[list[str]]]:
    """Per method, per model, the overlays of a batch and their captions (one forward pass per
    method and model: each method's explainer runs its own)."""
    columns, captions = [], []
    for method in methods:
        for name, model in models.items():
            probs, predicted, maps = explain_batch(model, pictures, target, method)
            columns.append(overlay_maps(pictures, maps.to(pictures.device)))
            confidence = probs.gather(1, predicted[:, None])[:, 0]
            pairs = zip(predicted.tolist(), confidence.tolist(), strict=True)
            captions.append([_caption(name, model, c, p, target, method) for c, p in pairs])
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
    device = _device(args.device)
    if args.out.exists() and not args.out.is_dir():
        _out_dir(args.out)  # refused before the models load
    files = find_images(args.inputs)
    student = load_model(args.checkpoint).to(device)
    teacher = _teacher(args.teacher, student)
    roles = [_role(student), "teacher"]
    if teacher and roles[0] == roles[1]:  # two teachers: tell them apart by architecture
        roles = [f"teacher {student.model_name}", f"teacher {teacher.model_name}"]
        if roles[0] == roles[1]:
            roles[1] = "--teacher"
    models = {roles[0]: student} | ({roles[1]: teacher.to(device)} if teacher else {})
    target = _target(args.target, student)
    for name, model in models.items():
        if target is not None and not target < model.num_classes:
            raise InputError(f"--target {args.target}: the {name} has {model.num_classes} classes")
    methods = _methods(args.method, models)
    if not methods:
        raise InputError(f"--method {args.method}: no method draws these models")
    size = student.image_size or (224, 224)
    batch = max(1, args.batch_size)
    _out_dir(args.out)
    used: set[str] = set()
    for start in range(0, len(files), batch):
        paths = files[start : start + batch]
        pictures = read_images(paths, size, student.crop).to(device)
        columns, captions = _columns(models, pictures, target, methods)
        captions.insert(0, [f"{path.name}\n" for path in paths])
        for i, path in enumerate(paths):
            panels = [pictures[i], *(column[i] for column in columns)]
            row = captioned_row(
                panels, [caption[i] for caption in captions], (MIN_PANEL, MAX_PANEL)
            )
            row.save(args.out / _unique(path, used))
    drawn = " and ".join(f"{name} {model.model_name}" for name, model in models.items())
    return f"wrote {len(files)} explanations ({drawn}; {', '.join(methods)}) to {args.out}"


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (2 for bad inputs and options, 1 for
    unusable checkpoints or images: :class:`~distill.errors.UserError`)."""
    args = _parse(argv)
    try:
        print(_run(args))
    except UserError as error:
        return report(error)
    return 0


if __name__ == "__main__":
    sys.exit(main())
