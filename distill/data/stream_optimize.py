"""Write an ImageFolder tree once as litdata chunks, for the streaming storage.

Why: a dataset larger than memory is read fastest as a few large files streamed in order, not as
millions of small ones. ``litdata.optimize`` packs the samples into chunks; each sample is the
image file's encoded bytes (JPEG, PNG, ...; decoded in the loader workers) and its label. Next to
each split's chunks a ``distill.json`` records the class names and the labels in sample order,
so the datamodule knows the classes and the split sizes without reading the images.

The training split is written in a seeded random order, the others in the source order
(``keep_data_ordered``, no reordering by file size). Why shuffle once here: litdata shuffles the
order of the chunks and the items within a window of each worker's chunks, so chunks holding one
class each (an ImageFolder lists its files class by class) would give batches of one or two
classes however the loader shuffles.
A validation holdout cannot be carved from a stream at load time (litdata reads chunks, not
arbitrary samples), so it is carved here, once: ``holdout`` writes a class-balanced, seeded share
of ``train`` (the same indices as ``data.val_fraction`` with ``data.subset_seed`` would select in
memory) to its own split and the rest to ``train``.
"""

from __future__ import annotations

import io
import json
import multiprocessing as mp
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from distill.data.decode import pil_rgb, scan_folder
from distill.data.errors import DatasetNotFoundError, UnreadableImageError
from distill.data.splits import holdout_split

__all__ = ["HOLDOUT_DIR", "META_FILE", "optimize_image_folder", "optimize_split"]

META_FILE = "distill.json"
"""Per-split metadata next to the chunks: format, classes, labels in sample order."""

HOLDOUT_DIR = "holdout"
"""Split folder the holdout is written to."""


@dataclass(frozen=True)
class _Encoder:
    """``(path, label) -> {"image": bytes, "label": int, "path": bytes}``, run by litdata's
    workers (picklable); the path names the file if it fails to decode while training.

    With ``max_side`` the shorter side is brought down to it (never up) and the image re-encoded:
    PNG sources as PNG (lossless), every other format as JPEG at quality 95. Without, the file's
    own bytes are stored. A file PIL cannot open is recorded in ``error_dir`` and stored empty;
    :func:`optimize_split` then raises with its path. Why not raise here: litdata waits forever
    for a worker that died.
    """

    error_dir: str
    max_side: int | None = None

    def __call__(self, sample: tuple[str, int]) -> dict[str, Any]:
        path, label = sample
        try:
            data = Path(path).read_bytes()
            with Image.open(io.BytesIO(data)) as im:
                if self.max_side is not None and min(im.size) > self.max_side:
                    data = _shrink(im, self.max_side)
        except Exception as e:
            with open(Path(self.error_dir) / f"{os.getpid()}.txt", "a") as log:
                log.write(f"cannot decode image file '{path}': {e}".replace("\n", " ") + "\n")
            return {"image": b"", "label": -1, "path": str(path).encode()}
        # The path as bytes: litdata would read a string ending in .png or .jpg as an image file.
        return {"image": data, "label": int(label), "path": str(path).encode()}


def _shrink(im: Image.Image, side: int) -> bytes:
    fmt = "PNG" if im.format == "PNG" else "JPEG"
    rgb = pil_rgb(im)
    w, h = rgb.size
    scale = side / min(w, h)
    rgb = rgb.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BICUBIC)
    out = io.BytesIO()
    rgb.save(out, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return out.getvalue()


def _check_local(out: str) -> Path:
    if "://" in str(out):
        raise ValueError(
            f"optimize writes to a local folder, not {out!r}: write it locally, then copy the "
            "folder to the object store (e.g. aws s3 sync OUT s3://bucket/prefix); training "
            "reads the s3:// (gs://, ...) path directly"
        )
    return Path(out).expanduser()


def optimize_split(
    samples: list[tuple[str, int]],
    classes: list[str],
    out_dir: str | Path,
    *,
    max_side: int | None = None,
    num_workers: int = 1,
    chunk_bytes: str = "64MB",
    start_method: str | None = None,
) -> Path:
    """Write ``samples`` (``(path, label)``, in order) as one optimized split in ``out_dir``.

    Args:
        samples: Image files and their labels, in the order the split keeps.
        classes: Class names, index = label.
        out_dir: Local output folder (overwritten).
        max_side: Shorter side to shrink larger images to before storing (``None``: the
            files' own bytes).
        num_workers: litdata processes encoding the samples.
        chunk_bytes: Target chunk size.
        start_method: Multiprocessing start method of those processes (default: ``fork``
            where available, which starts in milliseconds; litdata's own default is ``spawn``).

    Returns:
        The split folder.
    """
    import litdata

    if not samples:
        raise DatasetNotFoundError(f"no samples to write to '{out_dir}'")
    out = _check_local(str(out_dir))
    out.mkdir(parents=True, exist_ok=True)
    if start_method is None and "fork" in mp.get_all_start_methods():
        start_method = "fork"
    errors = Path(tempfile.mkdtemp(prefix="distill-optimize-"))
    litdata.optimize(
        fn=_Encoder(str(errors), max_side),
        inputs=list(samples),
        output_dir=str(out),
        chunk_bytes=chunk_bytes,
        num_workers=max(1, min(int(num_workers), len(samples))),
        reorder_files=False,
        keep_data_ordered=True,  # the chunks hold the samples in the order of `samples`
        mode="overwrite",
        start_method=start_method,
        verbose=False,
    )
    failed = [line for log in sorted(errors.iterdir()) for line in log.read_text().splitlines()]
    shutil.rmtree(errors, ignore_errors=True)
    if failed:
        shutil.rmtree(out, ignore_errors=True)
        more = f" (and {len(failed) - 1} more files)" if len(failed) > 1 else ""
        raise UnreadableImageError(f"{failed[0]}{more}; nothing was written to '{out}'")
    meta = {"format": 1, "classes": list(classes), "labels": [int(y) for _, y in samples]}
    (out / META_FILE).write_text(json.dumps(meta))
    return out


def optimize_image_folder(
    src: str | Path,
    out: str | Path,
    *,
    splits: list[str] | None = None,
    max_side: int | None = None,
    holdout: float = 0.0,
    subset_seed: int = 0,
    order_seed: int = 0,
    num_workers: int = 1,
    chunk_bytes: str = "64MB",
) -> dict[str, Path]:
    """Optimize every split folder of an ImageFolder tree (``src/<split>/<class>/<image>``).

    Args:
        src: Dataset root.
        out: Local output root; each split goes to ``out/<split>``.
        splits: Split folders to write; ``None``: every sub-folder of ``src``.
        max_side: See :func:`optimize_split`.
        holdout: Class-balanced share of ``train`` written to ``out/holdout`` instead (seeded by
            ``subset_seed``, as ``data.val_fraction`` selects it in memory); 0: none.
        subset_seed: Seed of the holdout.
        order_seed: Seed of the order ``train`` is written in.
        num_workers: litdata processes.
        chunk_bytes: Target chunk size.

    Returns:
        Split name -> its folder.
    """
    import torch

    src = Path(src).expanduser()
    if not src.is_dir():
        raise DatasetNotFoundError(f"image folder '{src}' does not exist")
    names = list(splits or sorted(p.name for p in src.iterdir() if p.is_dir()))
    if not names:
        raise DatasetNotFoundError(f"'{src}' holds no split folders (<split>/<class>/<image>)")
    scanned = {name: scan_folder(src / name) for name in names}
    classes = scanned[names[0]][0]
    for name, (found, _) in scanned.items():
        if found != classes:
            raise ValueError(
                f"class folders of '{src / name}' differ from those of '{src / names[0]}'; every "
                "split needs the same class subfolders"
            )
    plan = {name: samples for name, (_, samples) in scanned.items()}
    if holdout > 0:
        if "train" not in plan:
            raise ValueError(f"a holdout is carved from 'train', which is not among {names}")
        if HOLDOUT_DIR in plan:
            raise ValueError(f"'{src / HOLDOUT_DIR}' exists; the holdout would overwrite it")
        samples = plan["train"]
        labels = torch.tensor([y for _, y in samples])
        keep, held = holdout_split(labels, holdout, subset_seed)
        plan["train"] = [samples[i] for i in keep.tolist()]
        plan[HOLDOUT_DIR] = [samples[i] for i in held.tolist()]
    if "train" in plan:
        order = torch.randperm(
            len(plan["train"]), generator=torch.Generator().manual_seed(order_seed)
        )
        plan["train"] = [plan["train"][i] for i in order.tolist()]
    out_root = _check_local(str(out))
    kw = {"max_side": max_side, "num_workers": num_workers, "chunk_bytes": chunk_bytes}
    return {
        name: optimize_split(samples, classes, out_root / name, **kw)
        for name, samples in plan.items()
    }
