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
"""

from __future__ import annotations

import json
import os
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from omegaconf import DictConfig, OmegaConf

from distill.config import ConfigError, load_config, stages_to_train
from distill.config.resolution import check_map_grids
from distill.data import SECTIONS, datamodule_from_config
from distill.losses import ExplanationDistiller, LayerPair
from distill.models import build_model
from distill.models.weights import missing_file_error
from distill.training.callbacks import (
    FiniteLossGuard,
    InterruptCheckpoint,
    LastCheckpoint,
    MapImageCallback,
)
from distill.training.checkpoints import CheckpointError, load_classifier, weights_sha256
from distill.training.compile import compile_classifier, compile_distiller
from distill.training.console import quiet_lightning, warn_small_cam_layers
from distill.training.interrupt import RunInterrupted, agreed, handle_stop_signals, stop
from distill.training.lightning_modules import ClassifierModule, DistillModule
from distill.training.loggers import (
    build_loggers,
    finish_wandb,
    offline_sync_command,
    stage_summary,
    wandb_mode,
)
from distill.training.resume import changed_keys, check_resume_changes, finished, resume_checkpoint
from distill.training.run_dir import RUN_DIR_ENV, launched_worker, make_run_dir, write_run_files
from distill.training.teacher_cache import TeacherCache, open_or_build_teacher_cache

__all__ = ["train", "make_run_dir", "RUN_DIR_ENV", "RunResult"]

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


def _datamodule(cfg: DictConfig) -> L.LightningDataModule:
    """The ``data`` section (shared options and the chosen dataset's own section); the run adds
    its seed and whether evaluation batches carry boxes (for the explanation metrics)."""
    data = OmegaConf.to_container(cfg.data)
    return datamodule_from_config(data, seed=cfg.seed, boxes=cfg.logging.explanation_metrics)


def _inference_info(dm: Any) -> dict[str, Any]:
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


def _trainer(
    cfg: DictConfig, run_dir: Path, stage: str, epochs: int, callbacks: list, holdout: bool
) -> L.Trainer:
    callbacks = [FiniteLossGuard(), InterruptCheckpoint(run_dir / stage), *callbacks]
    loggers, _ = build_loggers(cfg, run_dir, stage)
    options = OmegaConf.to_container(cfg.trainer)
    options.pop(
        "compile"
    )  # applied to the networks (distill/training/compile.py), not a Trainer argument
    options.pop("channels_last")  # applied to the networks (_memory_format)
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
    (last,) = (cb for cb in trainer.callbacks if isinstance(cb, LastCheckpoint))
    if not last.path.is_file():
        return {}
    return torch.load(last.path, map_location="cpu", weights_only=True).get("val_metrics", {})


def _fit_and_test(
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
    trainer = _trainer(cfg, run_dir, stage, cfg[stage].epochs, callbacks, holdout)
    try:
        # The toolkit's checkpoints hold tensors and plain containers only: load them safely.
        trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path, weights_only=True)
        last_val = _val_metrics(trainer)  # read before test() replaces the callback metrics
        selected = _selected_checkpoint(trainer, holdout)
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
        "selected_on": "holdout" if holdout else "last",
        "val_split": "holdout" if holdout else "test",
        "checkpoint": str(selected),
        "epochs": trainer.current_epoch,
        "steps": trainer.global_step,
    }
    return trainer, metrics


def _selected_checkpoint(trainer: L.Trainer, holdout: bool) -> Path:
    """The checkpoint the stage reports: ``best.ckpt`` (holdout) or ``last.ckpt``."""
    (last,) = (cb for cb in trainer.callbacks if isinstance(cb, LastCheckpoint))
    chosen = str(last.path)
    if holdout:
        (best,) = (cb for cb in trainer.callbacks if isinstance(cb, ModelCheckpoint))
        chosen = best.best_model_path
    if not chosen or not Path(chosen).is_file():
        raise RuntimeError(f"no checkpoint was written under {trainer.default_root_dir}")
    return Path(chosen)


def _memory_format(model: torch.nn.Module, cfg: DictConfig) -> None:
    """``trainer.channels_last``: channels-last weights make every convolution (and so every
    activation after the first) channels-last; the input batch needs no conversion."""
    if cfg.trainer.channels_last:
        model.to(memory_format=torch.channels_last)


def _model_kwargs(section: DictConfig) -> dict[str, Any]:
    """A section's builder arguments, with its ``cam_layer`` when set (checkpoints store them,
    so a loaded network explains the same layer)."""
    kwargs = OmegaConf.to_container(section.kwargs)
    return kwargs | ({"cam_layer": section.cam_layer} if section.cam_layer else {})


def _key_options(section: DictConfig, role: str) -> dict[str, Any]:
    """How a section's weights file is fitted: its key map, and the section messages name."""
    return {"key_map": list(section.key_map), "role": role}


def _evaluate_teacher(cfg: DictConfig, dm: Any, run_dir: Path, result: RunResult) -> dict:
    """``teacher.epochs=0``: the given teacher (``teacher.weights``, else
    ``teacher.checkpoint``) evaluated as it is, on the holdout if there is one and the test
    split; nothing is trained or written but the logs."""
    if cfg.teacher.weights:
        model = _pretrained_teacher(cfg, dm.num_classes)
    else:
        model = load_classifier(
            cfg.teacher.checkpoint,
            expected_name=cfg.teacher.name,
            expected_classes=dm.num_classes,
            model_kwargs=_model_kwargs(cfg.teacher),
            key_map=list(cfg.teacher.key_map),
        )
    module = ClassifierModule(
        model,
        model_name=cfg.teacher.name,
        num_classes=dm.num_classes,
        optim=OmegaConf.to_container(cfg.optim),
        epochs=1,
        model_kwargs=_model_kwargs(cfg.teacher),
        **_inference_info(dm),
    )
    trainer = _trainer(cfg, run_dir, "teacher", 1, [], dm.has_holdout)
    metrics: dict[str, Any] = {}
    if dm.has_holdout:
        validated = trainer.validate(module, datamodule=dm, verbose=False)
        metrics["val_acc"] = validated[0]["val/acc"]
    tested = trainer.test(module, datamodule=dm, verbose=False)
    result.trainers["teacher"] = trainer
    result.teacher = model
    source = cfg.teacher.weights or cfg.teacher.checkpoint
    return metrics | {
        "test_acc": tested[0]["test/acc"],
        "test_acc5": tested[0]["test/acc5"],
        "evaluated": str(source),
        "epochs": 0,
    }


def _train_teacher(
    cfg: DictConfig, dm: Any, run_dir: Path, result: RunResult, resume: bool, extra: list
) -> dict:
    if cfg.teacher.epochs == 0:
        return _evaluate_teacher(cfg, dm, run_dir, result)
    model = build_model(
        cfg.teacher.name,
        num_classes=dm.num_classes,
        weights=cfg.teacher.weights,  # pretrained: fine-tuned here on the data's classes
        **_key_options(cfg.teacher, "teacher"),
        **_model_kwargs(cfg.teacher),
    )
    _memory_format(model, cfg)
    compile_classifier(model, cfg.trainer.compile)
    module = ClassifierModule(
        model,
        model_name=cfg.teacher.name,
        num_classes=dm.num_classes,
        optim=OmegaConf.to_container(cfg.optim),
        epochs=cfg.teacher.epochs,
        model_kwargs=_model_kwargs(cfg.teacher),
        explanation_metrics=cfg.logging.explanation_metrics,
        **_inference_info(dm),
    )
    trainer, metrics = _fit_and_test(cfg, module, dm, run_dir, "teacher", resume, extra)
    result.trainers["teacher"] = trainer
    result.teacher = model
    target = cfg.teacher.checkpoint
    if target and trainer.is_global_zero and not Path(target).exists():
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(metrics["checkpoint"], target)
        metrics["saved_to"] = str(target)
    return metrics


def _pretrained_teacher(cfg: DictConfig, num_classes: int) -> torch.nn.Module:
    """The teacher as ``teacher.weights`` gives it, for distillation without fine-tuning: its
    classifier must come with the weights (the same classes as the data)."""
    teacher = build_model(
        cfg.teacher.name,
        num_classes=num_classes,
        weights=cfg.teacher.weights,
        **_key_options(cfg.teacher, "teacher"),
        **_model_kwargs(cfg.teacher),
    )
    if not teacher.pretrained_head:
        raise CheckpointError(
            f"teacher.weights={cfg.teacher.weights} has another number of classes than the "
            f"data ({num_classes}): {cfg.teacher.name} got a new, untrained head. Fine-tune it "
            "first: stage=all (teacher, then student), or stage=teacher "
            "teacher.checkpoint=PATH and then stage=student with that checkpoint"
        )
    return teacher.eval()


def _distils_from_weights(cfg: DictConfig) -> bool:
    """``stage=student`` with ``teacher.weights`` and no teacher checkpoint file: the student
    learns from those weights as they are (else from a checkpoint, given or trained here)."""
    given = bool(cfg.teacher.checkpoint) and Path(cfg.teacher.checkpoint).exists()
    return cfg.stage == "student" and not given and bool(cfg.teacher.weights)


def _teacher_checkpoint(cfg: DictConfig, run_dir: Path, summary: dict) -> Path:
    if cfg.teacher.checkpoint and Path(cfg.teacher.checkpoint).is_file():
        return Path(cfg.teacher.checkpoint)
    trained = Path(summary.get("teacher", {}).get("checkpoint", run_dir / "teacher" / "best.ckpt"))
    if trained.is_file():
        return trained
    raise CheckpointError(
        f"teacher checkpoint {cfg.teacher.checkpoint or trained} does not exist: "
        "train one with stage=all or stage=teacher, or set teacher.checkpoint=PATH"
    )


def _distiller(
    cfg: DictConfig, teacher: torch.nn.Module, student: torch.nn.Module
) -> ExplanationDistiller:
    """The ``loss`` section's fields are the distiller's keyword arguments (layer pairs become
    :class:`LayerPair` objects), so a new loss option touches the loss and the schema only."""
    options = OmegaConf.to_container(cfg.loss, resolve=True)
    options.pop("cat_beta")  # the pair's CAT-KD weight, for compare.py's cat_kd method
    for key in ("map_layers", "at_layers"):
        if options[key] is not None:
            options[key] = [LayerPair(**pair) for pair in options[key]]
    return ExplanationDistiller(teacher, student, **options)


def _teacher_cache(
    cfg: DictConfig, distiller: ExplanationDistiller, dm: Any, split: str = "train"
) -> TeacherCache:
    """The run's teacher cache of ``split`` (the training stream, or the validation split),
    built on first use. Its key is everything that changes what the teacher sees or returns:
    its weights, the data and its stream, the map settings, the precision, the memory format
    and the process layout."""
    data = OmegaConf.to_container(cfg.data, resolve=True)
    own = data.get(SECTIONS[cfg.data.name])  # the other datasets' sections are not read
    for unused in ("num_workers", "augment_seed", *SECTIONS.values()):
        data.pop(unused, None)  # no effect on the batches; in stream_seed; sections
    data["options"] = own
    trainer = OmegaConf.to_container(cfg.trainer, resolve=True)
    layout = ("accelerator", "devices", "num_nodes", "strategy", "precision", "deterministic")
    key = {
        "teacher_sha256": weights_sha256(distiller.teacher),
        "data": data,
        "stream_seed": dm.stream_seed,
        "map": {
            "method": cfg.loss.map_method,
            "target": cfg.loss.map_target,
            "layers": [[p.student, p.teacher] for p in distiller.map_layers],
        },
        "trainer": {k: trainer[k] for k in (*layout, "limit_train_batches", "channels_last")},
    }
    limit = "limit_train_batches"
    if split == "val":  # deterministic transforms: the stream and training length do not matter
        limit = "limit_val_batches"
        del key["stream_seed"], key["trainer"]["limit_train_batches"]
        key["trainer"][limit] = trainer[limit]
    return open_or_build_teacher_cache(
        cfg.teacher_cache.dir or Path(cfg.output_dir) / "teacher_cache",
        key,
        distiller=distiller,
        datamodule=dm,
        epochs=cfg.student.epochs,
        dtype=cfg.teacher_cache.dtype,
        trainer_kwargs={
            **{k: trainer[k] for k in layout},
            limit: trainer[limit],
            "enable_progress_bar": trainer["enable_progress_bar"],
        },
        split=split,
    )


def _train_student(
    cfg: DictConfig,
    dm: Any,
    run_dir: Path,
    result: RunResult,
    resume: bool,
    extra: list,
    summary: dict,
    pretrained_teacher: torch.nn.Module | None = None,
) -> dict:
    if pretrained_teacher is not None:
        teacher = pretrained_teacher
        teacher_path = f"{cfg.teacher.name} weights={cfg.teacher.weights}"
    else:
        checkpoint = _teacher_checkpoint(cfg, run_dir, summary)
        teacher = load_classifier(
            checkpoint,
            expected_name=cfg.teacher.name,
            expected_classes=dm.num_classes,
            model_kwargs=_model_kwargs(cfg.teacher),
            key_map=list(cfg.teacher.key_map),
        )
        teacher_path = str(checkpoint.resolve())
    student = build_model(
        cfg.student.name,
        num_classes=dm.num_classes,
        weights=cfg.student.weights,
        **_key_options(cfg.student, "student"),
        **_model_kwargs(cfg.student),
    )
    _memory_format(teacher, cfg)
    _memory_format(student, cfg)
    distiller = _distiller(cfg, teacher, student)
    compile_distiller(distiller, cfg.trainer.compile, warn=False)  # load_config warned
    cache = val_cache = None
    if cfg.teacher_cache.enabled:
        cache = _teacher_cache(cfg, distiller, dm)
        val_cache = _teacher_cache(cfg, distiller, dm, split="val")
    dm.attach_teacher_cache(cache, val_cache)
    module = DistillModule(
        distiller,
        num_classes=dm.num_classes,
        optim=OmegaConf.to_container(cfg.optim),
        epochs=cfg.student.epochs,
        student_name=cfg.student.name,
        teacher_name=cfg.teacher.name,
        model_kwargs=_model_kwargs(cfg.student),
        teacher_path=teacher_path,
        teacher_cache=cache,
        val_teacher_cache=val_cache,
        explanation_metrics=cfg.logging.explanation_metrics,
        **_inference_info(dm),
    )
    trainer, metrics = _fit_and_test(cfg, module, dm, run_dir, "student", resume, extra)
    if cache is not None:
        metrics["teacher_cache"] = str(cache.directory)
    result.trainers["student"] = trainer
    result.teacher, result.student = teacher, student
    return metrics | {"teacher_checkpoint": teacher_path}


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
    if _distils_from_weights(cfg):
        return _pretrained_teacher(cfg, dm.num_classes)
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
            model_kwargs=_model_kwargs(cfg.teacher),
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
                teacher = _train_teacher(cfg, dm, run_dir, result, resume, extra)
                summary["teacher"] = teacher | {"done": True}
                finish_wandb(result.trainers["teacher"], stage_summary(teacher))
                if is_rank_zero:
                    summary_path.write_text(json.dumps(summary, indent=2))
                if cfg.stage == "all" and agreed(result.trainers["teacher"]):
                    raise stop("the teacher stage is done and saved, the student has not started")
            if cfg.stage in ("student", "all"):
                L.seed_everything(cfg.seed, workers=True)
                student = _train_student(
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
