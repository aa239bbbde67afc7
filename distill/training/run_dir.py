"""Run directories: one fresh folder per run (shared by the processes of a DDP or SLURM job),
and the files that say what ran in it (``--resume``: distill/training/resume.py)."""

from __future__ import annotations

import functools
import json
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf

from distill.errors import ConfigError

__all__ = ["RUN_DIR_ENV", "launched_worker", "make_run_dir", "write_run_files"]

RUN_DIR_ENV = "DISTILL_RUN_DIR"
"""Set by rank 0 so that processes started by a DDP launcher write into the same run."""


@functools.cache
def git_commit() -> str | None:
    """The code a run used: ``HEAD``, with ``-dirty`` when tracked files differ from it (None
    outside a git checkout). Read once per process: the modules a process imported do not
    change when a commit lands while it runs, so every run of a comparison records the first
    run's commit rather than whatever ``HEAD`` is when it starts."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).resolve().parent,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"],
        capture_output=True,
        text=True,
        timeout=5,
        cwd=Path(__file__).resolve().parent,
    ).stdout.strip()
    return out.stdout.strip() + ("-dirty" if dirty else "")


def launched_worker() -> bool:
    """True in the extra processes a DDP launcher starts (they join rank 0's run)."""
    return int(os.environ.get("LOCAL_RANK", "0")) > 0 or int(os.environ.get("NODE_RANK", "0")) > 0


def make_run_dir(cfg: DictConfig) -> Path:
    """Create a fresh run directory; two runs started at once never get the same one.

    Processes started by Lightning's DDP launcher join the directory of the process that
    started them. Under SLURM every task of a job (all nodes) uses ``slurm-<job id>``.
    """
    inherited = os.environ.get(RUN_DIR_ENV)
    if inherited and launched_worker():
        return Path(inherited)
    parent = Path(cfg.output_dir) / cfg.name
    _mkdir(parent, parents=True, exist_ok=True)
    job = os.environ.get("SLURM_JOB_ID")
    if job and int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        run_dir = parent / f"slurm-{job}"
        _mkdir(run_dir, exist_ok=True)
        return run_dir
    while True:
        run_dir = parent / f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(4)}"
        try:
            _mkdir(run_dir)
        except FileExistsError:
            continue
        os.environ[RUN_DIR_ENV] = str(run_dir.resolve())  # inherited by DDP processes
        return run_dir


def _mkdir(folder: Path, **options: bool) -> None:
    """``folder.mkdir(**options)``; a folder that cannot be created (read-only, under a file,
    no space) is a one-line :class:`ConfigError` naming it, before anything trains."""
    try:
        folder.mkdir(**options)
    except FileExistsError:
        if folder.is_dir():
            raise  # a run folder made at the same moment: the caller picks another name
        raise ConfigError(
            f"output_dir: cannot create {folder}: a file of that name is in the way; "
            "set output_dir to a folder you can write"
        ) from None
    except OSError as error:
        raise ConfigError(
            f"output_dir: cannot create {error.filename or folder} ({error.strerror}); "
            "set output_dir to a folder you can write"
        ) from None


def write_run_files(cfg: DictConfig, run_dir: Path) -> None:
    OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
    meta = {
        "git_commit": git_commit(),
        "command": sys.argv,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "torch": torch.__version__,
        "lightning": L.__version__,
    }
    (run_dir / "meta.json").write_text(json.dumps(meta, indent=2))
