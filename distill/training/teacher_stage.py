"""The teacher stage: train (or fine-tune) the teacher, evaluate given weights as they are
(``teacher.epochs=0``), or find the checkpoint or weights the student learns from.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from distill.models import build_model
from distill.training.checkpoints import CheckpointError, load_classifier
from distill.training.compile import compile_classifier
from distill.training.lightning_modules import ClassifierModule
from distill.training.stage import (
    RunResult,
    builder_kwargs,
    fit_and_test,
    inference_info,
    key_options,
    set_memory_format,
    stage_trainer,
)

__all__ = ["distils_from_weights", "pretrained_teacher", "teacher_checkpoint", "train_teacher"]


def _evaluate_teacher(cfg: DictConfig, dm: Any, run_dir: Path, result: RunResult) -> dict:
    """``teacher.epochs=0``: the given teacher (``teacher.weights``, else
    ``teacher.checkpoint``) evaluated as it is, on the holdout if there is one and the test
    split; nothing is trained or written but the logs."""
    if cfg.teacher.weights:
        model = pretrained_teacher(cfg, dm.num_classes)
    else:
        model = load_classifier(
            cfg.teacher.checkpoint,
            expected_name=cfg.teacher.name,
            expected_classes=dm.num_classes,
            model_kwargs=builder_kwargs(cfg.teacher),
            key_map=list(cfg.teacher.key_map),
        )
    module = ClassifierModule(
        model,
        model_name=cfg.teacher.name,
        num_classes=dm.num_classes,
        optim=OmegaConf.to_container(cfg.optim),
        epochs=1,
        model_kwargs=builder_kwargs(cfg.teacher),
        **inference_info(dm),
    )
    trainer = stage_trainer(cfg, run_dir, "teacher", 1, [], dm.has_holdout)
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


def train_teacher(
    cfg: DictConfig, dm: Any, run_dir: Path, result: RunResult, resume: bool, extra: list
) -> dict:
    if cfg.teacher.epochs == 0:
        return _evaluate_teacher(cfg, dm, run_dir, result)
    model = build_model(
        cfg.teacher.name,
        num_classes=dm.num_classes,
        weights=cfg.teacher.weights,  # pretrained: fine-tuned here on the data's classes
        **key_options(cfg.teacher, "teacher"),
        **builder_kwargs(cfg.teacher),
    )
    set_memory_format(model, cfg)
    compile_classifier(model, cfg.trainer.compile)
    module = ClassifierModule(
        model,
        model_name=cfg.teacher.name,
        num_classes=dm.num_classes,
        optim=OmegaConf.to_container(cfg.optim),
        epochs=cfg.teacher.epochs,
        model_kwargs=builder_kwargs(cfg.teacher),
        explanation_metrics=cfg.logging.explanation_metrics,
        **inference_info(dm),
    )
    trainer, metrics = fit_and_test(cfg, module, dm, run_dir, "teacher", resume, extra)
    result.trainers["teacher"] = trainer
    result.teacher = model
    target = cfg.teacher.checkpoint
    if target and trainer.is_global_zero and not Path(target).exists():
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(metrics["checkpoint"], target)
        metrics["saved_to"] = str(target)
    return metrics


def pretrained_teacher(cfg: DictConfig, num_classes: int) -> torch.nn.Module:
    """The teacher as ``teacher.weights`` gives it, for distillation without fine-tuning: its
    classifier must come with the weights (the same classes as the data)."""
    teacher = build_model(
        cfg.teacher.name,
        num_classes=num_classes,
        weights=cfg.teacher.weights,
        **key_options(cfg.teacher, "teacher"),
        **builder_kwargs(cfg.teacher),
    )
    if not teacher.pretrained_head:
        raise CheckpointError(
            f"teacher.weights={cfg.teacher.weights} has another number of classes than the "
            f"data ({num_classes}): {cfg.teacher.name} got a new, untrained head. Fine-tune it "
            "first: stage=all (teacher, then student), or stage=teacher "
            "teacher.checkpoint=PATH and then stage=student with that checkpoint"
        )
    return teacher.eval()


def distils_from_weights(cfg: DictConfig) -> bool:
    """``stage=student`` with ``teacher.weights`` and no teacher checkpoint file: the student
    learns from those weights as they are (else from a checkpoint, given or trained here)."""
    given = bool(cfg.teacher.checkpoint) and Path(cfg.teacher.checkpoint).exists()
    return cfg.stage == "student" and not given and bool(cfg.teacher.weights)


def teacher_checkpoint(cfg: DictConfig, run_dir: Path, summary: dict) -> Path:
    if cfg.teacher.checkpoint and Path(cfg.teacher.checkpoint).is_file():
        return Path(cfg.teacher.checkpoint)
    trained = Path(summary.get("teacher", {}).get("checkpoint", run_dir / "teacher" / "best.ckpt"))
    if trained.is_file():
        return trained
    raise CheckpointError(
        f"teacher checkpoint {cfg.teacher.checkpoint or trained} does not exist: "
        "train one with stage=all or stage=teacher, or set teacher.checkpoint=PATH"
    )
