"""Build a teacher cache: run the teacher over the training stream (or once over the
validation split) exactly as the student will see it, in a Lightning loop, and store its
outputs in a :class:`~distill.training.teacher_cache.TeacherCache`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import Tensor

from distill.losses.distiller import ExplanationDistiller
from distill.training import interrupt
from distill.training.run_dir import launched_worker
from distill.training.teacher_cache import TeacherCache, TeacherCacheError, cache_key_digest

__all__ = ["human_bytes", "open_or_build_teacher_cache"]


def _say(message: str) -> None:
    """Print once per run, not once per DDP process (as the run's own messages)."""
    if not launched_worker():
        print(message)


def human_bytes(n: float) -> str:
    """``1536`` -> ``'1.5 KiB'``."""
    units = ["B", "KiB", "MiB", "GiB", "TiB"]
    i = min(int(math.log(max(n, 1), 1024)), len(units) - 1)
    return f"{n / 1024**i:.1f} {units[i]}"


class _TeacherCacheWriter(L.LightningModule):
    """Runs the teacher over the training stream, batch for batch as a student would see it
    (``fit``), or once over the validation split (``validate``), and stores its outputs. No
    optimizer: nothing is trained.

    Under DDP the first process creates the files once every process has started, the others
    then map them, and each process writes the rows of its own batches. The folder must be on a
    file system that every process sees.
    """

    def __init__(
        self,
        distiller: ExplanationDistiller,
        folder: Path,
        key: Mapping[str, Any],
        layout: Mapping[str, Any],
    ) -> None:
        super().__init__()
        self.distiller = distiller
        self.folder = folder
        self.key = key
        self.layout = layout  # TeacherCache.create's sizes and dtype
        self.cache: TeacherCache | None = None
        self.automatic_optimization = False

    def setup(self, stage: str) -> None:
        if self.trainer.is_global_zero:
            self.cache = TeacherCache.create(self.folder, self.key, **self.layout)
        self.trainer.strategy.barrier()  # the files exist before another rank maps them
        if self.cache is None:
            self.cache = TeacherCache.open(self.folder, self.key, writable=True)

    def training_step(self, batch: tuple[Tensor, ...], batch_idx: int) -> None:
        images, labels, index = batch[0], batch[1], batch[-1]
        outputs = self.distiller.teacher_outputs(images, labels)  # grad only where maps need it
        self.cache.write(self.current_epoch, index, outputs)

    def validation_step(self, batch: tuple[Tensor, ...], batch_idx: int) -> None:
        images, labels, index = batch[0], batch[1], batch[-1]
        with torch.enable_grad():  # maps by autograd need it (the trainer has no inference mode)
            outputs = self.distiller.teacher_outputs(images, labels)
        self.cache.write(0, index, outputs)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self._stop_if_asked()

    def on_validation_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self._stop_if_asked()

    def _stop_if_asked(self) -> None:
        if interrupt.agreed(self.trainer):  # SIGINT/SIGTERM: an unfinished cache is rebuilt
            raise interrupt.stop("the teacher cache was not finished (a resume builds it again)")

    def on_train_epoch_end(self) -> None:
        self._complete(self.current_epoch)

    def on_validation_epoch_end(self) -> None:
        self._complete(0)

    def _complete(self, epoch: int) -> None:
        self.trainer.strategy.barrier()  # every rank has written its shard
        if self.trainer.is_global_zero:
            self.cache.mark_complete(epoch)
        self.trainer.strategy.barrier()  # no rank reads the header before it is written

    def configure_optimizers(self) -> None:
        return None


def _cache_layout(distiller: ExplanationDistiller, image_shape: tuple[int, ...]) -> tuple:
    """``(num_classes, map_shapes, class_map_shape)`` of the teacher's outputs, from a
    two-image probe."""
    device = next(distiller.teacher.parameters()).device
    probe = torch.zeros(2, *image_shape, device=device)
    outputs = distiller.teacher_outputs(probe, torch.zeros(2, dtype=torch.long, device=device))
    class_maps = outputs.class_maps
    return (
        outputs.logits.shape[1],
        [tuple(m.shape[1:]) for m in outputs.maps],
        None if class_maps is None else tuple(class_maps.shape[1:]),
    )


def open_or_build_teacher_cache(
    directory: str | Path,
    key: Mapping[str, Any],
    *,
    distiller: ExplanationDistiller,
    datamodule: Any,
    epochs: int,
    dtype: str = "float16",
    trainer_kwargs: Mapping[str, Any] | None = None,
    split: str = "train",
) -> TeacherCache:
    """The cache of ``key`` under ``directory/<hash of key>``, built first if it is missing,
    incomplete or shorter than ``epochs``.

    Building runs the teacher once over ``epochs`` epochs of ``datamodule``'s training stream
    in a Lightning loop (``trainer_kwargs``: accelerator, devices, precision, ... as the
    student's), so each batch, its augmentation and its precision are the student's. The
    global RNG state is restored afterwards: a run that builds the cache trains the same
    student as one that finds it. With ``split="val"`` it runs once over the validation split
    instead (deterministic transforms: one epoch, whatever ``epochs`` says).
    """
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    epochs = epochs if split == "train" else 1
    key = {**key, "dtype": dtype}  # what is stored is part of what is asked for
    if split == "val":
        key["split"] = split
    if distiller.cat_weight > 0:  # CAT-KD's class maps are stored too
        key["class_maps"] = distiller.cat_size
    folder = Path(directory) / cache_key_digest(key)
    try:
        cache = TeacherCache.open(folder, key)
        if cache.is_complete() and cache.epochs >= epochs:
            _say(f"teacher cache: reading {cache}")
            return cache
        reason = f"it holds {len(cache.complete_epochs)} complete epoch(s) of {epochs} needed"
    except TeacherCacheError:
        if (folder / "header.json").is_file():
            raise  # another key under this key's hash, or an old format: never overwrite it
        reason = "none exists yet"
    datamodule.setup("fit")
    num_classes, map_shapes, class_map_shape = _cache_layout(distiller, datamodule.image_shape)
    num_samples = datamodule.split_size(split)
    size = TeacherCache.disk_bytes(
        epochs, num_samples, num_classes, map_shapes, dtype, class_map_shape
    )
    _say(f"teacher cache: building {folder} ({human_bytes(size)} on disk), since {reason}")
    layout = {
        "epochs": epochs,
        "num_samples": num_samples,
        "num_classes": num_classes,
        "map_shapes": map_shapes,
        "dtype": dtype,
        "class_map_shape": class_map_shape,
    }
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    flag = "index_train_batches" if split == "train" else "index_val_batches"
    setattr(datamodule, flag, True)
    try:
        with torch.random.fork_rng(devices=devices), warnings.catch_warnings():
            # Nothing is validated or optimised on purpose.
            warnings.filterwarnings("ignore", message=".*no `validation_step`")
            warnings.filterwarnings("ignore", message=".*configure_optimizers` returned `None`")
            options = {
                "max_epochs": epochs,
                "logger": False,
                "enable_checkpointing": False,
                "enable_model_summary": False,
                "limit_val_batches": 0 if split == "train" else 1.0,
                "num_sanity_val_steps": 0,
                "inference_mode": False,
            }
            trainer = L.Trainer(**(options | dict(trainer_kwargs or {})))
            writer = _TeacherCacheWriter(distiller, folder, key, layout)
            if split == "train":
                trainer.fit(writer, datamodule=datamodule)
            else:
                trainer.validate(writer, datamodule=datamodule, verbose=False)
    finally:
        setattr(datamodule, flag, False)
    cache = TeacherCache.open(folder, key)  # as written to disk, by every rank
    if not cache.is_complete():
        raise TeacherCacheError(f"building the teacher cache at {folder} stopped early")
    return cache
