"""``--resume RUN_DIR``: what may change, whether anything is left to do, and the checkpoint a
stage continues from (checked before any file of the run is touched)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from distill.errors import ConfigError
from distill.models.weights import describe_load_error
from distill.training.callbacks import INTERRUPTED
from distill.training.checkpoints import CheckpointError
from distill.training.run_dir import launched_worker

__all__ = [
    "RESULT_FREE_KEYS",
    "changed_keys",
    "check_resume_changes",
    "finished",
    "keep_previous_logs",
    "resume_checkpoint",
]

RESULT_FREE_KEYS = (
    "logging.",
    "trainer.enable_progress_bar",
    "trainer.enable_model_summary",
    "trainer.log_every_n_steps",
    "data.num_workers",  # every batch is seeded by its position, not by the worker
)
"""Config keys (a trailing dot: a whole section) that a resume may change: what is logged and
shown, never what is trained or measured."""


def check_resume_changes(changed: Iterable[str]) -> None:
    """Refuse, in one line, changes to a resumed run's config that could change its results.

    Why: a resume continues the run that ``config.yaml`` describes; ``student.epochs=20`` on a
    finished 8-epoch run would silently train 12 more epochs with a new schedule.
    """
    refused = [
        key
        for key in changed
        if not any(key == k or (k.endswith(".") and key.startswith(k)) for k in RESULT_FREE_KEYS)
    ]
    if refused:
        allowed = ", ".join(k + "*" if k.endswith(".") else k for k in RESULT_FREE_KEYS)
        raise ConfigError(
            f"--resume continues a run as its config.yaml says; {', '.join(refused)} would "
            f"change its results: start a new run instead (a resume may change only {allowed})"
        )


def changed_keys(saved: DictConfig, cfg: DictConfig) -> list[str]:
    """The dotted keys whose values differ between two configs (compared leaf by leaf)."""

    def leaves(node: Any, prefix: str = "") -> dict[str, Any]:
        if isinstance(node, dict):
            out: dict[str, Any] = {}
            for key, value in node.items():
                out |= leaves(value, f"{prefix}{key}.")
            return out or {prefix[:-1]: {}}
        return {prefix[:-1]: node}

    old = leaves(OmegaConf.to_container(saved, resolve=True))
    new = leaves(OmegaConf.to_container(cfg, resolve=True))
    return sorted(key for key in old.keys() | new.keys() if old.get(key) != new.get(key))


def finished(cfg: DictConfig, summary: dict[str, Any]) -> bool:
    """Whether every stage the run asks for is done (the student is always the last one)."""
    last = "teacher" if cfg.stage == "teacher" else "student"
    return bool(summary.get(last, {}).get("done"))


def keep_previous_logs(run_dir: Path, stage: str) -> None:
    """A resumed stage starts a new metrics.csv; keep the interrupted attempt's beside it."""
    metrics = run_dir / stage / "metrics.csv"
    if metrics.is_file():
        attempt = 1
        while (run_dir / stage / f"metrics.attempt{attempt}.csv").exists():
            attempt += 1
        metrics.rename(run_dir / stage / f"metrics.attempt{attempt}.csv")


def resume_checkpoint(run_dir: Path, stage: str, module: Any) -> str | None:
    """The checkpoint a resumed stage continues from: the newer of ``last.ckpt`` (epoch ends)
    and ``interrupted.ckpt`` (SIGINT, SIGTERM), or None when the stage never saved one.

    It is loaded (tensors only) and ``module.check_checkpoint`` checks it (e.g. the teacher it
    was distilled from) before the earlier attempt's ``metrics.csv`` is moved aside, so that a
    resume that cannot work fails in one line and leaves the run as it was.

    Raises:
        CheckpointError: the file cannot be read, or does not fit this module.
    """
    candidates = [run_dir / stage / name for name in ("last.ckpt", INTERRUPTED)]
    existing = [path for path in candidates if path.is_file()]
    if not existing:
        return None
    path = max(existing, key=lambda p: p.stat().st_mtime)
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # truncated, corrupt, or holding more than tensors
        raise CheckpointError(
            f"cannot resume from {path}: it {describe_load_error(error, path)}; "
            "the run was left as it was"
        ) from None
    module.check_checkpoint(checkpoint)
    if not launched_worker():
        keep_previous_logs(run_dir, stage)
    return str(path)
