"""Callbacks: explanation maps of fixed validation images, and stopping on non-finite losses."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, Checkpoint
from lightning.pytorch.loggers import WandbLogger
from torch import Tensor
from torchvision.transforms.functional import to_pil_image
from torchvision.utils import save_image

from distill.cam import EXPLAINERS
from distill.cam.visualize import map_grid
from distill.errors import UserError
from distill.training import interrupt

__all__ = [
    "MapImageCallback",
    "FiniteLossGuard",
    "INTERRUPTED",
    "InterruptCheckpoint",
    "LastCheckpoint",
    "NonFiniteLossError",
]


class MapImageCallback(Callback):
    """Every ``every_n_epochs`` validation epochs (and after the last), draw the maps of each
    model the module explains (teacher and student side by side) under each of ``methods``
    (one column per method and model) for a fixed set of validation images, save them as
    ``maps_epoch<NNN>.png`` in ``out_dir`` and send them to wandb when a :class:`WandbLogger` is
    attached. Maps explain the ground-truth class.

    The PNG carries column titles (model and method) and, per image, the true class and each model's prediction;
    wandb gets one captioned image per validation image, so that a dashboard shows which
    maps belong to right and wrong predictions.

    Args:
        images: ``[N, 3, H, W]`` normalised validation images (the same ones every time).
        labels: ``[N]`` their labels.
        out_dir: folder for the PNG files.
        mean, std: the normalisation to undo for display.
        every_n_epochs: drawing period.
        class_names: names of the labels (``dm.classes``); None: the label numbers.
        methods: names of :data:`distill.cam.CAM_METHODS` (``logging.map_methods``).
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        out_dir: str | Path,
        mean: Sequence[float],
        std: Sequence[float],
        every_n_epochs: int = 5,
        class_names: Sequence[str] | None = None,
        methods: Sequence[str] = ("gradcam_pp",),
    ) -> None:
        super().__init__()
        self.images = images
        self.labels = labels
        self.out_dir = Path(out_dir)
        self.mean, self.std = tuple(mean), tuple(std)
        self.every_n_epochs = max(1, every_n_epochs)
        self.class_names = list(class_names) if class_names is not None else None
        self.methods = list(methods)
        unknown = [m for m in self.methods if m not in EXPLAINERS]
        if unknown or not self.methods:
            raise ValueError(f"methods must name some of {tuple(EXPLAINERS)}, got {methods}")
        self.saved: list[Path] = []

    def _due(self, trainer: L.Trainer) -> bool:
        epoch = trainer.current_epoch + 1
        last = trainer.max_epochs is not None and epoch >= trainer.max_epochs
        return epoch % self.every_n_epochs == 0 or last

    def _name(self, label: int) -> str:
        return self.class_names[label] if self.class_names else str(label)

    @torch.no_grad()
    def draw(self, pl_module: L.LightningModule) -> tuple[Tensor, list[Tensor], list[str]]:
        """For the module's current weights: the labelled ``[3, H', W']`` grid of all images,
        one titled strip per image, and each image's caption (true class, predictions)."""
        images = self.images.to(pl_module.device)
        labels = self.labels.to(pl_module.device)
        maps, predicted, titles = {}, {}, ["image"]
        for method in self.methods:  # one forward per method and model, every few epochs
            for name, model in pl_module.explained_models().items():
                was_training = model.training
                model.eval()
                column, scores = EXPLAINERS[method](model).maps_and_scores(images, labels)
                model.train(was_training)
                maps[(method, name)] = column
                predicted.setdefault(name, scores.argmax(dim=1).tolist())
                titles.append(f"{name}\n{method}")
        captions = []
        for i, label in enumerate(labels.tolist()):
            guesses = [f"{name}: {self._name(p[i])}" for name, p in predicted.items()]
            captions.append(" | ".join([f"true: {self._name(label)}", *guesses]))
        row_labels = [caption.replace(" | ", "\n") for caption in captions]
        grid = map_grid(images, maps, self.mean, self.std, titles=titles, row_labels=row_labels)
        strips = [
            map_grid(
                images[i : i + 1],
                {k: m[i : i + 1] for k, m in maps.items()},
                self.mean,
                self.std,
                titles=titles,
            )
            for i in range(len(images))
        ]
        return grid, strips, captions

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero or not self._due(trainer):
            return
        grid, strips, captions = self.draw(pl_module)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        path = self.out_dir / f"maps_epoch{trainer.current_epoch + 1:03d}.png"
        save_image(grid, path)
        self.saved.append(path)
        # PIL images: wandb casts float tensors to uint8 without scaling (all black).
        pictures = [to_pil_image(strip) for strip in strips]
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_image(
                    key="val/maps", images=pictures, caption=captions, step=trainer.global_step
                )


class NonFiniteLossError(UserError, FloatingPointError):
    """The training loss became NaN or infinite; the message says where and what to try."""


class FiniteLossGuard(Callback):
    """Stop at the first NaN/inf loss, before its backward pass touches the weights.

    Raising here means no checkpoint is written after the failure: ``last.ckpt`` and
    ``best.ckpt`` keep the last good state. The check costs one scalar synchronisation per step.
    """

    def on_before_backward(
        self, trainer: L.Trainer, pl_module: L.LightningModule, loss: Tensor
    ) -> None:
        if torch.isfinite(loss.detach()).all():
            return
        last = [cb.path for cb in trainer.callbacks if isinstance(cb, LastCheckpoint)]
        checkpoint = last[0] if last and last[0].is_file() else "none yet"
        raise NonFiniteLossError(
            f"training loss is {loss.detach().float().item()} at epoch {trainer.current_epoch}, "
            f"step {trainer.global_step}; stopped before updating the weights. Last good "
            f"checkpoint: {checkpoint}. Try a lower optim.lr or loss weights, or "
            "trainer.gradient_clip_val"
        )


INTERRUPTED = "interrupted.ckpt"
"""The checkpoint of a run stopped by SIGINT/SIGTERM between two batches of an epoch."""


def _save_atomically(trainer: L.Trainer, path: Path) -> None:
    """The trainer's full (resumable) state at ``path``; a kill during the write leaves the
    previous file."""
    partial = path.with_name(path.name + ".partial")
    trainer.save_checkpoint(partial, weights_only=False)
    if trainer.is_global_zero:
        os.replace(partial, path)
    trainer.strategy.barrier("atomic_checkpoint")


class LastCheckpoint(Checkpoint):
    """``last.ckpt`` at the end of every training epoch (after its validation), whether or not
    validation improved, written atomically (a kill during the write leaves the previous file).
    It records the epoch's validation metrics (``val_metrics``), so that a resumed stage with
    nothing left to train still reports them. Writing it removes ``interrupted.ckpt``: that
    state is older.

    Why not ``ModelCheckpoint(save_last=True)``: Lightning rewrites ``last.ckpt`` only when it
    saves a top-k checkpoint at the same step, so after a hard kill a resume could go back
    several epochs. (A resume from this checkpoint skips that epoch's scheduler step in
    Lightning; the modules catch the schedule up in ``on_train_epoch_start``.)
    """

    def __init__(self, dirpath: str | Path) -> None:
        super().__init__()
        self.path = Path(dirpath) / "last.ckpt"
        self._saved_step = -1

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.ckpt_path and Path(trainer.ckpt_path).resolve() == self.path.resolve():
            self._saved_step = trainer.global_step  # resumed from this very file: not rewritten

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.save(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.save(trainer)

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict
    ) -> None:
        metrics = trainer.callback_metrics
        checkpoint["val_metrics"] = {
            k: float(v) for k, v in metrics.items() if k.startswith("val/")
        }

    def save(self, trainer: L.Trainer) -> None:
        """Write the trainer's state to ``last.ckpt`` (once per global step)."""
        if trainer.global_step == self._saved_step:
            return
        _save_atomically(trainer, self.path)
        self._saved_step = trainer.global_step
        interrupted = self.path.with_name(INTERRUPTED)
        if trainer.is_global_zero and interrupted.is_file():
            interrupted.unlink()


class InterruptCheckpoint(Checkpoint):
    """Stop a fit that SIGINT or SIGTERM asked to stop (:mod:`distill.training.interrupt`) at the next
    point whose state resumes exactly:

    - after a training batch that is not its epoch's last: save ``interrupted.ckpt``, from which
      ``--resume`` continues with the very next batch;
    - after the epoch's last batch: let the validation run and stop once ``last.ckpt`` is
      written (this callback is ordered after :class:`LastCheckpoint`).

    It takes the two signals over from Lightning while it trains and tests (Lightning's
    SIGTERM handler would raise in the middle of validation). A second Ctrl-C stops at once
    and saves nothing, as does any other exception: a resume then starts from ``last.ckpt``.
    """

    def __init__(self, dirpath: str | Path) -> None:
        super().__init__()
        self.path = Path(dirpath) / INTERRUPTED

    def on_sanity_check_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        interrupt.take_over()

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        interrupt.take_over()

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        interrupt.take_over()

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int
    ) -> None:
        if batch_idx + 1 >= trainer.num_training_batches or not interrupt.agreed(trainer):
            return  # the epoch's last batch: validation and last.ckpt come first
        _save_atomically(trainer, self.path)
        raise interrupt.stop(f"saved {self.path}")

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if interrupt.agreed(trainer):
            raise interrupt.stop(f"the epoch's end is saved in {self.path.with_name('last.ckpt')}")

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        if isinstance(exception, KeyboardInterrupt) and trainer.is_global_zero:
            print(
                "\nstopped at once (a second Ctrl-C): nothing was saved; --resume continues "
                "from last.ckpt, the end of the last finished epoch",
                flush=True,
            )
