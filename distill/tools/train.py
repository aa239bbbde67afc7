"""The two-stage recipe behind ``train.py``: train (or load) a teacher, then distil a student.

``train(cfg)`` is importable and returns ``(summary, objects)``; ``train.py`` only parses the
command line. Every run gets its own directory under ``cfg.output_dir``::

    runs/<name>/<YYYYmmdd-HHMMSS>-<random>/
        config.yaml          resolved config
        meta.json            code version, command, start time
        teacher/             best.ckpt, last.ckpt, metrics.csv, maps_epochNNN.png
        student/             the same for the student
        summary.json         final accuracies, agreement, map similarity, wall time
        wandb/               one wandb run per stage, grouped by this directory's name

This module is the run: checks before anything is written, the run directory, ``--resume``,
the stages in turn and the summary. Each stage is in :mod:`distill.training`
(:mod:`~distill.training.teacher_stage`, :mod:`~distill.training.student_stage`).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf

from distill.config import ConfigError, load_config, stages_to_train
from distill.config.resolution import check_map_grids
from distill.data import datamodule_from_config
from distill.models.weights import missing_file_error
from distill.training.checkpoints import CheckpointError, load_classifier
from distill.training.console import quiet_lightning
from distill.training.interrupt import RunInterrupted, agreed, handle_stop_signals, stop
from distill.training.loggers import finish_wandb, offline_sync_command, stage_summary, wandb_mode
from distill.training.resume import changed_keys, check_resume_changes, finished
from distill.training.run_dir import RUN_DIR_ENV, launched_worker, make_run_dir, write_run_files
from distill.training.stage import RunResult, builder_kwargs
from distill.training.student_stage import train_student
from distill.training.teacher_stage import distils_from_weights, pretrained_teacher, train_teacher

__all__ = ["train", "make_run_dir", "RUN_DIR_ENV", "RunResult"]


def _datamodule(cfg: DictConfig) -> L.LightningDataModule:
    """The ``data`` section (shared options and the chosen dataset's own section); the run adds
    its seed and whether evaluation batches carry boxes (for the explanation metrics)."""
    data = OmegaConf.to_container(cfg.data)
    return datamodule_from_config(data, seed=cfg.seed, boxes=cfg.logging.explanation_metrics)


def _print_summary(summary: dict) -> None:
    rows = []
    for stage in ("teacher", "student"):
        for key, value in summary.get(stage, {}).items():
            if isinstance(value, float):
                rows.append((f"{stage}.{key}", f"{value:.4f}"))
            elif key in ("selected_on", "val_split"):
                rows.append((f"{stage}.{key}", str(value)))
    width = max((len(k) for k, _ in rows), default=10)
    print("\n" + "-" * (width + 12))
    print(f"{'metric'.ljust(width)}  value")
    print("-" * (width + 12))
    for key, value in rows:
        print(f"{key.ljust(width)}  {value}")
    print("-" * (width + 12))
    print(f"run directory: {summary['run_dir']}  ({summary['wall_time_s']:.0f} s)")


def _check_inputs(cfg: DictConfig, dm: Any, resume: bool) -> torch.nn.Module | None:
    """Fail before anything is written: missing data, maps of one pixel under a map loss, an
    unusable teacher checkpoint or teacher weights. Returns the teacher built from
    ``teacher.weights`` when the student is distilled from it as is (else None)."""
    if not launched_worker():
        dm.prepare_data()  # downloads, or one clear error when the data is missing offline
    dm.setup("fit")  # the image size is known once the splits are loaded (kept for the run)
    report = check_map_grids(cfg, dm.image_shape)
    if not launched_worker():
        print("explanation map grids: " + "; ".join(report), flush=True)
    if cfg.teacher.checkpoint and Path(cfg.teacher.checkpoint).is_dir():
        raise CheckpointError(missing_file_error(cfg.teacher.checkpoint, "teacher.checkpoint"))
    teacher_given = bool(cfg.teacher.checkpoint) and Path(cfg.teacher.checkpoint).exists()
    if distils_from_weights(cfg):
        return pretrained_teacher(cfg, dm.num_classes)
    if cfg.stage == "student" and not resume and not teacher_given:
        raise CheckpointError(
            f"stage=student needs a trained teacher, but teacher.checkpoint="
            f"{cfg.teacher.checkpoint} does not exist; use stage=all to train one first, or "
            "set teacher.weights to distil from pretrained weights as they are"
        )
    if cfg.stage != "teacher" and teacher_given:
        load_classifier(
            cfg.teacher.checkpoint,
            expected_name=cfg.teacher.name,
            expected_classes=dm.num_classes,
            model_kwargs=builder_kwargs(cfg.teacher),
            key_map=list(cfg.teacher.key_map),
        )
    return None


def train(
    cfg: DictConfig,
    *,
    resume_dir: str | Path | None = None,
    callbacks: list[L.Callback] | None = None,
    print_sync: bool = True,
) -> tuple[dict, RunResult]:
    """Run the stages ``cfg.stage`` asks for and write the run directory.

    Args:
        cfg: a config from :func:`distill.config.load_config`.
        resume_dir: an earlier run directory to continue from its last (or interrupted)
            checkpoints, with the same config (see :func:`distill.training.resume.check_resume_changes`);
            a finished stage is not repeated, and a finished run is left as it is.
        callbacks: extra Lightning callbacks for every stage.
        print_sync: print the ``wandb sync`` command for offline runs (a caller that runs
            ``train`` several times, such as ``compare``, prints one for all of them).

    Returns:
        ``(summary, result)``: the dict written to ``summary.json`` and the built objects.

    Raises:
        CheckpointError, WeightsError, DatasetNotFoundError: before the run directory is
            created.
        ConfigError: a map loss on a 1x1 map grid at the data's image size (before it too).
        NonFiniteLossError: the loss became NaN/inf (the last good checkpoints are kept).
        RunInterrupted: SIGINT or SIGTERM stopped the run where its state is saved.
    """
    start = time.time()
    quiet_lightning()
    resume = resume_dir is not None
    if resume:
        done = _check_resume(cfg, Path(resume_dir))
        if done is not None:
            return done, RunResult(run_dir=Path(resume_dir))
    L.seed_everything(cfg.seed, workers=True)
    dm = _datamodule(cfg)
    pretrained_teacher = _check_inputs(cfg, dm, resume)
    if resume:
        run_dir = Path(resume_dir)
        os.environ[RUN_DIR_ENV] = str(run_dir.resolve())
    else:
        run_dir = make_run_dir(cfg)
    is_rank_zero = not launched_worker()
    if is_rank_zero and not resume:
        write_run_files(cfg, run_dir)
    result = RunResult(run_dir=run_dir)
    extra = list(callbacks or [])
    summary_path = run_dir / "summary.json"
    summary: dict[str, Any] = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    summary.update({"name": cfg.name, "run_dir": str(run_dir)})

    with handle_stop_signals():  # Ctrl-C, SIGTERM: stop where the state is saved
        try:
            if "teacher" in stages_to_train(cfg) and not summary.get("teacher", {}).get("done"):
                teacher = train_teacher(cfg, dm, run_dir, result, resume, extra)
                summary["teacher"] = teacher | {"done": True}
                finish_wandb(result.trainers["teacher"], stage_summary(teacher))
                if is_rank_zero:
                    summary_path.write_text(json.dumps(summary, indent=2))
                if cfg.stage == "all" and agreed(result.trainers["teacher"]):
                    raise stop("the teacher stage is done and saved, the student has not started")
            if cfg.stage in ("student", "all"):
                L.seed_everything(cfg.seed, workers=True)
                student = train_student(
                    cfg, dm, run_dir, result, resume, extra, summary, pretrained_teacher
                )
                summary["student"] = student | {"done": True}
                finish_wandb(result.trainers["student"], stage_summary(student))
        except RunInterrupted as interrupted:
            interrupted.run_dir = str(run_dir)  # the message says how to continue
            raise
    summary["wall_time_s"] = summary.get("wall_time_s", 0.0) + time.time() - start
    if is_rank_zero:
        summary_path.write_text(json.dumps(summary, indent=2))
        _print_summary(summary)
        if print_sync and wandb_mode(cfg.logging.wandb) == "offline":
            sync = offline_sync_command(run_dir, resumed=resume)  # every stage of this run
            print(f"wandb is offline; upload this run with: {sync}")
    return summary, result


def _check_resume(cfg: DictConfig, run_dir: Path) -> dict[str, Any] | None:
    """Before anything is read or written: refuse config changes that could change the run's
    results; return the summary of a finished run (nothing to do, nothing rewritten), else None.
    """
    saved = run_dir / "config.yaml"
    if not saved.is_file():
        raise ConfigError(f"--resume {run_dir}: no config.yaml there; is it a run directory?")
    check_resume_changes(changed_keys(load_config(str(saved)), cfg))
    summary_path = run_dir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    if not finished(cfg, summary):
        return None
    if not launched_worker():
        print(f"{run_dir} is finished: nothing to resume, no file was changed", flush=True)
    return summary
