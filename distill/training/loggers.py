"""Experiment loggers: a CSV logger always, wandb online, offline or off.

Each stage of a run is its own wandb run (job type ``teacher`` or ``student``), grouped by the
run directory, with the whole resolved config and the stage's results in its summary.
:func:`read_offline_run` reads an offline run back from its ``.wandb`` file, to check what
``wandb sync`` would upload without uploading it.
"""

from __future__ import annotations

import json
import netrc
import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.loggers import CSVLogger, Logger, WandbLogger
from omegaconf import DictConfig, OmegaConf

__all__ = [
    "WANDB_MODES",
    "wandb_mode",
    "wandb_settings",
    "build_loggers",
    "wandb_run_id",
    "offline_sync_command",
    "stage_summary",
    "finish_wandb",
    "OfflineRun",
    "read_offline_run",
]

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


def wandb_settings(mode: str) -> Any:
    """``wandb.Settings`` for a run in ``mode``. Offline runs are quiet: wandb would print a
    sync command per run, and the caller prints one that covers all of them."""
    import wandb

    return wandb.Settings(quiet=mode == "offline")


def build_loggers(cfg: DictConfig, run_dir: Path, stage: str) -> tuple[list[Logger], str]:
    """Loggers for one stage of a run, and the resolved wandb mode.

    The CSV logger writes ``<run_dir>/<stage>/metrics.csv``. The wandb run is named
    ``<name>-<run dir>-<stage>``, grouped by ``logging.group`` or else the run directory's
    name (so that one run's stages sit together, apart from other runs of the same recipe),
    and its config is the whole resolved config plus the stage. Its id is
    ``<run dir>-<stage>``, so that ``--resume`` continues the same wandb run (``WandbLogger``
    resumes an existing id; offline, :func:`offline_sync_command` uploads the folders of one
    id into one run) instead of opening a second one. It writes under
    ``<run_dir>/wandb``; the mode goes to ``wandb.init`` (not ``WANDB_MODE``), so nothing
    leaks into the process environment.
    """
    loggers: list[Logger] = [CSVLogger(save_dir=str(run_dir), name=stage, version="")]
    mode = wandb_mode(cfg.logging.wandb)
    if mode != "disabled":
        config = OmegaConf.to_container(cfg, resolve=True)
        loggers.append(
            WandbLogger(
                project=cfg.logging.project,
                name=f"{cfg.name}-{run_dir.name}-{stage}",
                id=wandb_run_id(run_dir, stage),
                save_dir=str(run_dir),
                group=cfg.logging.group or run_dir.name,
                job_type=stage,
                config={**config, "run_stage": stage, "run_dir": str(run_dir)},
                mode=mode,
                settings=wandb_settings(mode),
            )
        )
    return loggers, mode


def wandb_run_id(run_dir: Path, stage: str) -> str:
    """The wandb id of a stage: fixed by the run directory, whose name is unique, so that a
    resumed stage logs into the run it started.

    Example:
        >>> wandb_run_id(Path("runs/quickstart/20261128-121256-7db589be"), "student")
        '20261128-121256-7db589be-student'
    """
    return f"{run_dir.name}-{stage}"


def offline_sync_command(run_dir: Path, resumed: bool) -> str:
    """The ``wandb sync`` command that uploads every offline run of ``run_dir``.

    A resumed stage has one ``offline-run-*`` folder per process start, all under the stage's
    id: ``--id`` makes ``wandb sync`` upload them into that one run, in order of start time
    (offline, wandb does not mark the later folders as resumed), so a resumed run gets one
    ``wandb sync --id`` per stage, chained.
    """
    folders = run_dir / "wandb"
    if not resumed:
        return f"wandb sync {folders}/offline-run-*"
    # offline-run-<date>_<time>-<id>, with "-1", "-2", ... when two start in the same second
    ids = [wandb_run_id(run_dir, stage) for stage in ("teacher", "student")]
    ids = [i for i in ids if any(folders.glob(f"offline-run-*-{i}*"))]
    return " && ".join(f"wandb sync --id {i} {folders}/offline-run-*-{i}*" for i in ids)


def stage_summary(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """A stage's ``summary.json`` entry under the names a dashboard compares runs by:
    ``best/val_acc`` (the best validation accuracy), ``final/val_*`` (the last validation),
    ``test/*`` (the single test of the selected checkpoint); the rest keeps its name."""
    summary = {}
    for key, value in metrics.items():
        if key == "val_acc_best":
            summary["best/val_acc"] = value
        elif key.startswith("val_") and key != "val_split":
            summary[f"final/{key}"] = value
        elif key.startswith("test_"):
            summary[f"test/{key.removeprefix('test_')}"] = value
        else:
            summary[key] = value
    return summary


def finish_wandb(
    trainer: L.Trainer, summary: Mapping[str, Any] | None = None, exit_code: int = 0
) -> None:
    """Write ``summary`` into the stage's wandb run and finish it.

    Finishing is what keeps stages apart: ``WandbLogger`` reuses any run still open, so the
    next stage would otherwise log into this one. The open run is taken from ``wandb.run``
    rather than ``logger.experiment``, which would start one if none was started.
    """
    if not trainer.is_global_zero:
        return
    if not any(isinstance(logger, WandbLogger) for logger in trainer.loggers):
        return
    import wandb

    if wandb.run is not None:
        wandb.run.summary.update(dict(summary or {}))
        wandb.run.finish(exit_code=exit_code)


# ---- reading offline runs --------------------------------------------------------------------

_BLOCK = 32768  # the LevelDB log format of wandb's transaction log (.wandb files)
_HEADER = 7  # file header (":W&B", magic, version) and record header (crc, length, type)
_FULL, _LAST = 1, 4


@dataclass
class OfflineRun:
    """What an offline wandb run holds, as ``wandb sync`` would upload it."""

    path: Path
    name: str
    group: str
    job_type: str
    run_id: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    exit_code: int | None = None


def _records(path: Path) -> Any:
    """The ``Record`` protos of a ``.wandb`` file (checksums are not verified)."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path} is not a wandb transaction log")
    pos, parts = _HEADER, []
    while pos + _HEADER <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < _HEADER:  # block trailer
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + _HEADER])
        if kind == 0:  # zero padding to the end of the block
            pos += left
            continue
        parts.append(data[pos + _HEADER : pos + _HEADER + length])
        pos += _HEADER + length
        if kind in (_FULL, _LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(b"".join(parts))
            parts = []
            yield record


def _apply(target: dict[str, Any], items: Any) -> None:
    """Set ``key`` or ``nested_key`` items (JSON values) into a nested dict."""
    for item in items:
        *parents, last = list(item.nested_key) or [item.key]
        node = target
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = json.loads(item.value_json)


def read_offline_run(folder: str | Path) -> OfflineRun:
    """Read an ``offline-run-*`` folder's ``run-*.wandb`` file: name, group, job type, config,
    final summary, history rows, saved files and exit code.

    The file is complete once the process that wrote it has ended or ``wandb.teardown()`` has
    returned; ``run.finish()`` alone can return before wandb has flushed it.
    """
    (path,) = Path(folder).glob("run-*.wandb")
    run = OfflineRun(path=path, name="", group="", job_type="")
    for record in _records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            info = record.run
            run.name, run.group, run.job_type = info.display_name, info.run_group, info.job_type
            run.run_id = info.run_id
            _apply(run.config, info.config.update)
            _apply(run.summary, info.summary.update)
        elif kind == "config":
            _apply(run.config, record.config.update)
        elif kind == "summary":
            _apply(run.summary, record.summary.update)
        elif kind == "history":
            row: dict[str, Any] = {}
            _apply(row, record.history.item)
            run.history.append(row)
        elif kind == "files":
            run.files += [file.path for file in record.files.files]
        elif kind == "exit":
            run.exit_code = record.exit.exit_code
    return run
