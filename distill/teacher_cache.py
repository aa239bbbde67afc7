"""Pay for the teacher once: its logits and maps for every (epoch, sample), memory-mapped.

Why: the teacher's forward (and, for maps, its CAM) is about half of every distillation step,
and a comparison or a sweep repeats the same teacher forwards for every student. With a fixed
augmentation stream (``data.augment_seed``) the teacher sees the same augmented images in every
run, so its outputs can be computed once and read back in batches. One large memory-mapped
tensor, not one file per sample: many small reads are slower than recomputing.

Layout: ``<dir>/values.bin`` holds ``[epochs, num_samples, num_classes + sum(h * w)]`` values in
the storage dtype (row = logits, then each map flattened), indexed by the sample's position in
the training split; ``<dir>/header.json`` holds the shapes, the dtype, the key (a dict that
identifies teacher weights, data and augmentation) and which epochs are complete.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from distill.losses.distiller import TeacherOutputs

__all__ = ["STORAGE_DTYPES", "TeacherCache", "TeacherCacheError", "cache_key_digest"]

STORAGE_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}
_FORMAT = 1


class TeacherCacheError(RuntimeError):
    """A cache that does not belong to this run, or is incomplete; the message says why."""


def cache_key_digest(key: Mapping[str, Any]) -> str:
    """A short stable hash of a cache key (the name of its folder)."""
    text = json.dumps(key, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _differences(expected: Mapping[str, Any], found: Mapping[str, Any]) -> list[str]:
    names = sorted(set(expected) | set(found))
    return [
        f"{n}: cache has {found.get(n)!r}, this run needs {expected.get(n)!r}"
        for n in names
        if json.dumps(expected.get(n), sort_keys=True, default=str)
        != json.dumps(found.get(n), sort_keys=True, default=str)
    ]


class TeacherCache:
    """A memory-mapped store of teacher logits and maps, written once and read in batches.

    Use :meth:`create` to make an empty cache, :meth:`write` each batch of each epoch, then
    :meth:`mark_complete` per epoch; :meth:`open` a finished one (it refuses a key that differs
    from the run's, naming each difference) and :meth:`read` ``(epoch, indices)`` batches.

    Args:
        directory: the cache folder.
        header: its parsed ``header.json``.
        writable: map the file for writing.
    """

    def __init__(self, directory: Path, header: dict[str, Any], writable: bool) -> None:
        self.directory = Path(directory)
        self.header = header
        self.dtype = STORAGE_DTYPES[header["dtype"]]
        self.epochs = int(header["epochs"])
        self.num_samples = int(header["num_samples"])
        self.num_classes = int(header["num_classes"])
        self.map_shapes = [tuple(s) for s in header["map_shapes"]]
        self.row = self.num_classes + sum(h * w for h, w in self.map_shapes)
        numel = self.epochs * self.num_samples * self.row
        # torch.from_file maps the file; ``shared=True`` writes through to it.
        flat = torch.from_file(str(self.values_path), shared=writable, size=numel, dtype=self.dtype)
        self.values = flat.view(self.epochs, self.num_samples, self.row)

    @property
    def values_path(self) -> Path:
        return self.directory / "values.bin"

    @property
    def key(self) -> dict[str, Any]:
        return dict(self.header["key"])

    @property
    def nbytes(self) -> int:
        return self.values.numel() * self.values.element_size()

    @staticmethod
    def disk_bytes(
        epochs: int,
        num_samples: int,
        num_classes: int,
        map_shapes: Iterable[tuple[int, int]],
        dtype: str = "float16",
    ) -> int:
        """Bytes a cache of these sizes takes (e.g. to check a budget before building it)."""
        row = num_classes + sum(h * w for h, w in map_shapes)
        return epochs * num_samples * row * STORAGE_DTYPES[dtype].itemsize

    @classmethod
    def create(
        cls,
        directory: str | Path,
        key: Mapping[str, Any],
        *,
        epochs: int,
        num_samples: int,
        num_classes: int,
        map_shapes: Iterable[tuple[int, int]],
        dtype: str = "float16",
    ) -> TeacherCache:
        """Make an empty cache (any existing one in ``directory`` is replaced)."""
        if dtype not in STORAGE_DTYPES:
            raise ValueError(f"dtype must be one of {tuple(STORAGE_DTYPES)}, got {dtype!r}")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        header = {
            "format": _FORMAT,
            "key": dict(key),
            "dtype": dtype,
            "epochs": int(epochs),
            "num_samples": int(num_samples),
            "num_classes": int(num_classes),
            "map_shapes": [list(map(int, s)) for s in map_shapes],
            "complete": [],
        }
        size = cls.disk_bytes(epochs, num_samples, num_classes, header["map_shapes"], dtype)
        with open(directory / "values.bin", "wb") as f:
            f.truncate(size)  # sparse until written
        cache = cls(directory, header, writable=True)
        cache._save_header()
        return cache

    @classmethod
    def open(
        cls, directory: str | Path, key: Mapping[str, Any], *, writable: bool = False
    ) -> TeacherCache:
        """Open a cache for ``key``; refuse one written for another teacher, data or stream."""
        directory = Path(directory)
        header_path = directory / "header.json"
        if not header_path.is_file():
            raise TeacherCacheError(f"no teacher cache at {directory} (header.json is missing)")
        header = json.loads(header_path.read_text())
        if header.get("format") != _FORMAT:
            raise TeacherCacheError(
                f"the teacher cache at {directory} has format {header.get('format')}, this "
                f"version reads format {_FORMAT}: delete the folder to rebuild it"
            )
        differences = _differences(key, header["key"])
        if differences:
            raise TeacherCacheError(
                f"the teacher cache at {directory} was built for other settings:\n  "
                + "\n  ".join(differences)
                + "\ndelete the folder or point the run at another cache directory"
            )
        return cls(directory, header, writable)

    def _save_header(self) -> None:
        tmp = self.directory / "header.json.tmp"
        tmp.write_text(json.dumps(self.header, indent=2, sort_keys=True, default=str))
        os.replace(tmp, self.directory / "header.json")

    @property
    def complete_epochs(self) -> set[int]:
        return set(self.header["complete"])

    def is_complete(self) -> bool:
        return self.complete_epochs == set(range(self.epochs))

    def mark_complete(self, epoch: int) -> None:
        """Record that every sample of ``epoch`` is written.

        The values went through a shared mapping, so they are in the file as far as any later
        reader is concerned; the header is written after them, atomically.
        """
        self.header["complete"] = sorted(self.complete_epochs | {int(epoch)})
        self._save_header()

    def write(self, epoch: int, indices: Tensor, outputs: TeacherOutputs) -> None:
        """Store one batch's teacher outputs at ``(epoch, indices)``."""
        if len(outputs.maps) != len(self.map_shapes):
            raise TeacherCacheError(
                f"{len(outputs.maps)} map(s) given, the cache holds {len(self.map_shapes)}"
            )
        parts = [outputs.logits.reshape(len(indices), -1)]
        parts += [m.reshape(len(indices), -1) for m in outputs.maps]
        row = torch.cat(parts, dim=1).to("cpu", self.dtype)
        if row.shape[1] != self.row:
            raise TeacherCacheError(f"a row has {row.shape[1]} values, the cache holds {self.row}")
        self.values[int(epoch)].index_copy_(0, indices.to("cpu", torch.long), row)

    def read(self, epoch: int, indices: Tensor, device: torch.device | str) -> TeacherOutputs:
        """The teacher outputs of ``(epoch, indices)``, as float32 on ``device``."""
        epoch = int(epoch)
        if not 0 <= epoch < self.epochs:
            raise TeacherCacheError(
                f"epoch {epoch} is outside the cache, which holds epochs 0..{self.epochs - 1}: "
                "build it for at least as many epochs as the student trains"
            )
        rows = self.values[epoch].index_select(0, indices.to("cpu", torch.long))
        rows = rows.to(device, non_blocking=True).float()
        logits = rows[:, : self.num_classes]
        maps, start = [], self.num_classes
        for h, w in self.map_shapes:
            maps.append(rows[:, start : start + h * w].reshape(-1, h, w))
            start += h * w
        return TeacherOutputs(logits, tuple(maps))

    def __repr__(self) -> str:
        size = self.nbytes / 2**20
        return (
            f"TeacherCache({str(self.directory)!r}, epochs={self.epochs}, "
            f"samples={self.num_samples}, row={self.row} x {self.header['dtype']}, "
            f"{size:.1f} MiB, complete={len(self.complete_epochs)}/{self.epochs})"
        )


def human_bytes(n: float) -> str:
    """``1536`` -> ``'1.5 KiB'``."""
    units = ["B", "KiB", "MiB", "GiB", "TiB"]
    i = min(int(math.log(max(n, 1), 1024)), len(units) - 1)
    return f"{n / 1024**i:.1f} {units[i]}"
