"""Pay for the teacher once: its logits and maps for every (epoch, sample), memory-mapped.

Why: the teacher's forward (and, for maps, its CAM) is about half of every distillation step,
and a comparison or a sweep repeats the same teacher forwards for every student. With a fixed
augmentation stream (``data.augment_seed``) the teacher sees the same augmented images in every
run, so its outputs can be computed once and read back in batches. One large memory-mapped
tensor, not one file per sample: many small reads are slower than recomputing.

Layout: ``<dir>/values.bin`` holds ``[epochs, num_samples, num_classes + sum(h * w) (+ K s s)]``
values in the storage dtype (row = logits, then each map flattened, then CAT-KD's pooled class
maps when the distiller has a CAT term), indexed by the sample's position in
the training split; ``<dir>/header.json`` holds the shapes, the dtype, the key (a dict that
identifies teacher weights, data and augmentation) and which epochs are complete.

This module reads and writes that store; building it by running the teacher is
:mod:`distill.training.teacher_cache_build`.
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

from distill.errors import UserError
from distill.losses.distiller import TeacherOutputs

__all__ = [
    "STORAGE_DTYPES",
    "TeacherCache",
    "TeacherCacheError",
    "cache_key_digest",
]

STORAGE_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}
_FORMAT = 1


class TeacherCacheError(UserError, RuntimeError):
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
        class_map_shape = header.get("class_map_shape")  # absent in caches without CAT-KD
        self.class_map_shape = tuple(class_map_shape) if class_map_shape else None
        self.row = _row_size(self.num_classes, self.map_shapes, self.class_map_shape)
        numel = self.epochs * self.num_samples * self.row
        # torch.from_file maps the file; ``shared=True`` writes through to it.
        flat = torch.from_file(str(self.values_path), shared=writable, size=numel, dtype=self.dtype)
        self.values = flat.view(self.epochs, self.num_samples, self.row)
        # Which (epoch, sample) rows were written: a read of any other row is refused.
        self.written = torch.from_file(
            str(self.directory / "written.bin"),
            shared=writable,
            size=self.epochs * self.num_samples,
            dtype=torch.bool,
        ).view(self.epochs, self.num_samples)

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
        class_map_shape: tuple[int, int, int] | None = None,
    ) -> int:
        """Bytes a cache of these sizes takes (e.g. to check a budget before building it)."""
        row = _row_size(num_classes, map_shapes, class_map_shape)
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
        class_map_shape: tuple[int, int, int] | None = None,
    ) -> TeacherCache:
        """Make an empty cache (any existing one in ``directory`` is replaced);
        ``class_map_shape`` ``(K, s, s)`` also stores CAT-KD's pooled class maps."""
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
        if class_map_shape is not None:
            header["class_map_shape"] = [int(n) for n in class_map_shape]
        size = cls.disk_bytes(
            epochs, num_samples, num_classes, header["map_shapes"], dtype, class_map_shape
        )
        with open(directory / "values.bin", "wb") as f:
            f.truncate(size)  # sparse until written
        with open(directory / "written.bin", "wb") as f:
            f.truncate(int(epochs) * int(num_samples))
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
        if self.class_map_shape is not None:
            if outputs.class_maps is None:
                raise TeacherCacheError("the cache holds class maps, the outputs have none")
            parts.append(outputs.class_maps.reshape(len(indices), -1))
        row = torch.cat(parts, dim=1).to("cpu", self.dtype)
        if row.shape[1] != self.row:
            raise TeacherCacheError(f"a row has {row.shape[1]} values, the cache holds {self.row}")
        index = indices.to("cpu", torch.long)
        self.values[int(epoch)].index_copy_(0, index, row)
        self.written[int(epoch)].index_fill_(0, index, True)

    def rows(self, epoch: int, indices: Tensor) -> Tensor:
        """The stored rows of ``(epoch, indices)`` (host memory, storage dtype); see
        :meth:`unpack`. Refuses rows that were never written."""
        epoch = int(epoch)
        if not 0 <= epoch < self.epochs:
            raise TeacherCacheError(
                f"epoch {epoch} is outside the cache, which holds epochs 0..{self.epochs - 1}: "
                "build it for at least as many epochs as the student trains"
            )
        index = indices.to("cpu", torch.long)
        if not bool(self.written[epoch].index_select(0, index).all()):
            raise TeacherCacheError(
                f"the teacher cache at {self.directory} holds no outputs for some samples of "
                f"epoch {epoch}: it was built for another stream (batches, "
                "limit_train_batches or world size); delete the folder to rebuild it"
            )
        return self.values[epoch].index_select(0, index)

    def unpack(self, rows: Tensor) -> TeacherOutputs:
        """Rows (on any device) as float32 :class:`TeacherOutputs`."""
        rows = rows.float()
        logits = rows[:, : self.num_classes]
        maps, start = [], self.num_classes
        for h, w in self.map_shapes:
            maps.append(rows[:, start : start + h * w].reshape(-1, h, w))
            start += h * w
        class_maps = None
        if self.class_map_shape is not None:
            class_maps = rows[:, start:].reshape(-1, *self.class_map_shape)
        return TeacherOutputs(logits, tuple(maps), class_maps)

    def read(self, epoch: int, indices: Tensor, device: torch.device | str) -> TeacherOutputs:
        """The teacher outputs of ``(epoch, indices)``, as float32 on ``device``."""
        return self.unpack(self.rows(epoch, indices).to(device, non_blocking=True))

    def __repr__(self) -> str:
        size = self.nbytes / 2**20
        return (
            f"TeacherCache({str(self.directory)!r}, epochs={self.epochs}, "
            f"samples={self.num_samples}, row={self.row} x {self.header['dtype']}, "
            f"{size:.1f} MiB, complete={len(self.complete_epochs)}/{self.epochs})"
        )


def _row_size(
    num_classes: int,
    map_shapes: Iterable[tuple[int, int]],
    class_map_shape: tuple[int, int, int] | None,
) -> int:
    """Values in one cached row: logits, maps, pooled class maps."""
    row = num_classes + sum(h * w for h, w in map_shapes)
    return row + (math.prod(class_map_shape) if class_map_shape else 0)
