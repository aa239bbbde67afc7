"""The student stage: the distiller the ``loss`` section describes, the teacher's cached
outputs when ``teacher_cache.enabled``, and the distillation fit.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from distill.data import SECTIONS
from distill.losses import ExplanationDistiller, LayerPair
from distill.models import build_model
from distill.training.checkpoints import load_classifier, weights_sha256
from distill.training.compile import compile_distiller
from distill.training.lightning_modules import DistillModule
from distill.training.stage import (
    RunResult,
    builder_kwargs,
    fit_and_test,
    inference_info,
    key_options,
    set_memory_format,
)
from distill.training.teacher_cache import TeacherCache
from distill.training.teacher_cache_build import open_or_build_teacher_cache
from distill.training.teacher_stage import teacher_checkpoint

__all__ = ["build_distiller", "train_student"]


def build_distiller(
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
    and the process layout. The student is not in it: its layers only say where the teacher's
    maps are matched, so every student of one teacher (a CNN, a ViT) reads one cache."""
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
            "teacher_layers": [p.teacher for p in distiller.map_layers],
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


def train_student(
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
        checkpoint = teacher_checkpoint(cfg, run_dir, summary)
        teacher = load_classifier(
            checkpoint,
            expected_name=cfg.teacher.name,
            expected_classes=dm.num_classes,
            model_kwargs=builder_kwargs(cfg.teacher),
            key_map=list(cfg.teacher.key_map),
        )
        teacher_path = str(checkpoint.resolve())
    student = build_model(
        cfg.student.name,
        num_classes=dm.num_classes,
        weights=cfg.student.weights,
        **key_options(cfg.student, "student"),
        **builder_kwargs(cfg.student),
    )
    set_memory_format(teacher, cfg)
    set_memory_format(student, cfg)
    distiller = build_distiller(cfg, teacher, student)
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
        model_kwargs=builder_kwargs(cfg.student),
        teacher_path=teacher_path,
        teacher_cache=cache,
        val_teacher_cache=val_cache,
        explanation_metrics=cfg.logging.explanation_metrics,
        **inference_info(dm),
    )
    trainer, metrics = fit_and_test(cfg, module, dm, run_dir, "student", resume, extra)
    if cache is not None:
        metrics["teacher_cache"] = str(cache.directory)
    result.trainers["student"] = trainer
    result.teacher, result.student = teacher, student
    return metrics | {"teacher_checkpoint": teacher_path}
