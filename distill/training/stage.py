"""One stage of a run on Lightning: its Trainer (loggers, checkpoints, guards), fit then test
of the checkpoint the protocol selects, and the few things both stages build alike.

The teacher stage (:mod:`distill.training.teacher_stage`) and the student stage
(:mod:`distill.training.student_stage`) differ only in the module they fit;
:func:`distill.tools.train.train` runs them in turn.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from omegaconf import DictConfig, OmegaConf

from distill.training.callbacks import (
    FiniteLossGuard,
    InterruptCheckpoint,
    LastCheckpoint,
    MapImageCallback,
)
from distill.training.console import warn_small_cam_layers
from distill.training.loggers import build_loggers, finish_wandb
from distill.training.resume import resume_checkpoint

__all__ = [
    "RunResult",
    "builder_kwargs",
    "fit_and_test",
    "inference_info",
    "key_options",
    "set_memory_format",
    "stage_trainer",
]

# The frozen teacher is in eval mode on purpose during student training.
warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
# Run directories are never reused except by --resume, which first renames the old metrics.csv.
warnings.filterwarnings("ignore", message=r"Experiment logs directory .* exists and is not empty")


@dataclass
class RunResult:
    """What ``train`` built, for callers that want more than the summary."""

    run_dir: Path
    teacher: torch.nn.Module | None = None
    student: torch.nn.Module | None = None
    trainers: dict[str, L.Trainer] = field(default_factory=dict)


def inference_info(dm: Any) -> dict[str, Any]:
    """What a checkpoint needs for inference later: class names, normalisation, image size and
    the crop (which says how evaluation resizes)."""
    dm.setup("fit")  # the image size is known once a split is loaded; fit loads the same splits
    return {
        "mean": tuple(dm.mean),
        "std": tuple(dm.std),
        "classes": list(dm.classes),
        "image_size": tuple(dm.image_shape[1:]),
        "crop": dm.transforms.crop,
    }


def builder_kwargs(section: DictConfig) -> dict[str, Any]:
    """A section's builder arguments, with its ``cam_layer`` when set (checkpoints store them,
    so a loaded network explains the same layer)."""
    kwargs = OmegaConf.to_container(section.kwargs)
    return kwargs | ({"cam_layer": section.cam_layer} if section.cam_layer else {})


def key_options(section: DictConfig, role: str) -> dict[str, Any]:
    """How a section's weights file is fitted: its key map, and the section messages name."""
    return {"key_map": list(section.key_map), "role": role}


def set_memory_format(model: torch.nn.Module, cfg: DictConfig) -> None:
    """``trainer.channels_last``: channels-last weights make every convolution (and so every
    activation after the first) channels-last; the input batch needs no conversion."""
    if cfg.trainer.channels_last:
        model.to(memory_format=torch.channels_last)


def _checkpoints(stage_dir: Path, holdout: bool) -> list[L.Callback]:
    """``last.ckpt`` after every epoch (a resume never goes back more than one epoch); with a
    holdout also ``best.ckpt``, the best validation accuracy on the holdout. Without one
    nothing is selected: validation runs on the test split."""
    last = LastCheckpoint(stage_dir)
    if not holdout:
        return [last]
    best = ModelCheckpoint(
        dirpath=stage_dir,
        filename="best",
        monitor="val/acc",
        mode="max",
        auto_insert_metric_name=False,
        enable_version_counter=False,
    )
    return [best, last]


def stage_trainer(
    cfg: DictConfig, run_dir: Path, stage: str, epochs: int, callbacks: list, holdout: bool
) -> L.Trainer:
    """The ``trainer`` section's Lightning Trainer for ``stage``, with the run's loggers, its
    checkpoints, the non-finite-loss guard and the interrupt checkpoint."""
    callbacks = [FiniteLossGuard(), InterruptCheckpoint(run_dir / stage), *callbacks]
    loggers, _ = build_loggers(cfg, run_dir, stage)
    options = OmegaConf.to_container(cfg.trainer)
    options.pop("compile")  # applied to the networks (training/compile.py), not a Trainer argument
    options.pop("channels_last")  # applied to the networks (set_memory_format)
    return L.Trainer(
        **options,  # the other TrainerConfig fields are Trainer arguments
        max_epochs=epochs,
        logger=loggers,
        callbacks=[
            *_checkpoints(run_dir / stage, holdout),
            LearningRateMonitor(logging_interval="epoch"),
            *callbacks,
        ],
        default_root_dir=str(run_dir),
        # Map similarity and map callbacks may need autograd inside validation.
        inference_mode=False,
    )


def _map_callback(cfg: DictConfig, dm: Any, run_dir: Path, stage: str) -> MapImageCallback:
    images, labels = dm.fixed_val_batch(cfg.logging.map_images)
    return MapImageCallback(
        images,
        labels,
        run_dir / stage,
        mean=dm.mean,
        std=dm.std,
        every_n_epochs=cfg.logging.map_every_n_epochs,
        class_names=dm.classes,
        methods=cfg.logging.map_methods,
    )


def _val_metrics(trainer: L.Trainer) -> dict[str, float]:
    """The last validation epoch's metrics (read before ``test`` replaces them). A resumed fit
    with nothing left to train validates nothing: then those ``last.ckpt`` recorded."""
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
    if metrics:
        return metrics
    last = _last_checkpoint(trainer)
    if not last.is_file():
        return {}
    return torch.load(last, map_location="cpu", weights_only=True).get("val_metrics", {})


def fit_and_test(
    cfg: DictConfig,
    module: L.LightningModule,
    dm: Any,
    run_dir: Path,
    stage: str,
    resume: bool,
    extra: list,
) -> tuple[L.Trainer, dict]:
    """Fit one stage (resuming if asked), then test once the checkpoint the protocol selects:
    the best on the holdout, or the last one when there is no holdout."""
    callbacks = [_map_callback(cfg, dm, run_dir, stage), *extra]  # loads the validation split
    models = module.explained_models()
    warn_small_cam_layers(
        {stage if k == "model" else k: m for k, m in models.items()}, dm.image_shape
    )
    ckpt_path = resume_checkpoint(run_dir, stage, module) if resume else None
    holdout = dm.has_holdout
    trainer = stage_trainer(cfg, run_dir, stage, cfg[stage].epochs, callbacks, holdout)
    try:
        # The toolkit's checkpoints hold tensors and plain containers only: load them safely.
        trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path, weights_only=True)
        last_val = _val_metrics(trainer)  # read before test() replaces the callback metrics
        selected = _selected_checkpoint(trainer, holdout)
        last = _last_checkpoint(trainer)
        tested_last = None
        if selected != last:  # the last epoch too, selected by nothing (reported beside it)
            module.test_prefix = "test_last"
            try:
                tested_last = trainer.test(
                    module, datamodule=dm, ckpt_path=str(last), verbose=False, weights_only=True
                )[0]
            finally:
                module.test_prefix = "test"
        tested = trainer.test(
            module, datamodule=dm, ckpt_path=str(selected), verbose=False, weights_only=True
        )
    except BaseException:
        finish_wandb(trainer, exit_code=1)  # else a later train() in this process logs into it
        raise
    metrics = {f"val_{key[4:]}": value for key, value in last_val.items()}
    metrics |= {
        "test_acc": tested[0]["test/acc"],
        "test_acc5": tested[0]["test/acc5"],
        "test_acc_last": tested_last["test_last/acc"] if tested_last else tested[0]["test/acc"],
        "selected_on": "holdout" if holdout else "last",
        "val_split": "holdout" if holdout else "test",
        "checkpoint": str(selected),
        "epochs": trainer.current_epoch,
        "steps": trainer.global_step,
    }
    return trainer, metrics


def _last_checkpoint(trainer: L.Trainer) -> Path:
    (last,) = (cb for cb in trainer.callbacks if isinstance(cb, LastCheckpoint))
    return last.path


def _selected_checkpoint(trainer: L.Trainer, holdout: bool) -> Path:
    """The checkpoint the stage reports: ``best.ckpt`` (holdout) or ``last.ckpt``."""
    chosen = str(_last_checkpoint(trainer))
    if holdout:
        (best,) = (cb for cb in trainer.callbacks if isinstance(cb, ModelCheckpoint))
        chosen = best.best_model_path
    if not chosen or not Path(chosen).is_file():
        raise RuntimeError(f"no checkpoint was written under {trainer.default_root_dir}")
    return Path(chosen)
