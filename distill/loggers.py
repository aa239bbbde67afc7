"""Experiment loggers: a CSV logger always, wandb online, offline or off."""

from __future__ import annotations

import netrc
import os
from pathlib import Path

from lightning.pytorch.loggers import CSVLogger, Logger, WandbLogger

__all__ = ["WANDB_MODES", "wandb_mode", "build_loggers"]

WANDB_MODES: tuple[str, ...] = ("auto", "online", "offline", "disabled")
"""``auto``: online when logged in (API key or ``wandb login``), else offline."""


def _wandb_logged_in() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def wandb_mode(setting: str) -> str:
    """Resolve ``auto`` to ``online`` when an API key or a ``wandb login`` is found, else
    ``offline``; ``WANDB_MODE`` in the environment wins over ``auto``."""
    if setting != "auto":
        return setting
    env_mode = os.environ.get("WANDB_MODE")
    if env_mode in ("online", "offline", "disabled"):
        return env_mode
    return "online" if _wandb_logged_in() else "offline"


def build_loggers(
    mode: str, run_dir: Path, stage: str, project: str, run_name: str
) -> tuple[list[Logger], str]:
    """Loggers for one stage of a run, and the resolved wandb mode.

    The CSV logger writes ``<run_dir>/<stage>/metrics.csv``; wandb writes under
    ``<run_dir>/wandb`` (offline runs are uploaded later with ``wandb sync``).
    """
    loggers: list[Logger] = [CSVLogger(save_dir=str(run_dir), name=stage, version="")]
    resolved = wandb_mode(mode)
    if resolved != "disabled":
        loggers.append(
            WandbLogger(
                project=project,
                name=f"{run_name}-{stage}",
                save_dir=str(run_dir),
                offline=resolved == "offline",
                group=run_name,
                job_type=stage,
            )
        )
    return loggers, resolved
