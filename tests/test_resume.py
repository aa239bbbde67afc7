"""Interrupt a run anywhere, resume it, and get the run that was never interrupted.

A fault injector sends a real SIGINT or SIGTERM (or raises at once, or SIGKILLs a child
process) at the N-th call of one kind of hook: a training batch's start or end, a validation
batch, a validation epoch's end, a stage's test (the teacher -> student boundary), a teacher
cache write. For each point, ``--resume`` must reach the uninterrupted run's global steps,
validate every epoch (once, after a signal), write the same ``summary.json`` keys and values
and, with ``trainer.deterministic=true`` on the CPU, the same weights bit for bit.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch

from distill.config import ConfigError, load_config
from distill.tools.train import train
from distill.training.checkpoints import CheckpointError
from distill.training.interrupt import RunInterrupted
from distill.training.resume import RESULT_FREE_KEYS, check_resume_changes
from distill.training.teacher_cache import TeacherCache

ROOT = Path(__file__).resolve().parent.parent

BASE = [
    "stage=all",
    "teacher.epochs=2",
    "student.epochs=2",
    "trainer.deterministic=true",
    "optim.schedule=multistep",
    "logging.map_every_n_epochs=100",  # maps of the last epoch only: faster
    "data.shapes.num_train=240",  # 216 after the holdout: 3 full batches of 64 (24 dropped)
]
"""2 teacher epochs and 2 student epochs, each of 3 training batches and 1 validation batch."""

HOOKS = (
    "train_batch_start",
    "train_batch_end",
    "train_epoch_start",
    "train_epoch_end",
    "validation_batch_end",  # the sanity check's too
    "validation_epoch_end",
    "test_batch_end",
    "test_end",
)


class Inject(L.Callback):
    """At the ``n``-th (0-based) call of ``hook``, over both stages: send ``signum`` to this
    process, or raise KeyboardInterrupt at once (``signum=None``: a second Ctrl-C)."""

    def __init__(self, hook: str, n: int, signum: int | None) -> None:
        assert hook in (*HOOKS, "cache_write")
        self.hook, self.n, self.signum = hook, n, signum
        self.calls = 0

    def fire(self, hook: str) -> None:
        if hook != self.hook:
            return
        self.calls += 1
        if self.calls - 1 != self.n:
            return
        if self.signum is None:
            raise KeyboardInterrupt
        os.kill(os.getpid(), self.signum)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.fire("train_batch_start")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.fire("train_batch_end")

    def on_train_epoch_start(self, trainer, pl_module):
        self.fire("train_epoch_start")

    def on_train_epoch_end(self, trainer, pl_module):
        self.fire("train_epoch_end")

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, *args):
        self.fire("validation_batch_end")

    def on_validation_epoch_end(self, trainer, pl_module):
        self.fire("validation_epoch_end")

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, *args):
        self.fire("test_batch_end")

    def on_test_end(self, trainer, pl_module):
        self.fire("test_end")


def _patch_cache_writes(monkeypatch, inject: Inject) -> None:
    write = TeacherCache.write

    def counted(self, *args, **kwargs):
        write(self, *args, **kwargs)
        inject.fire("cache_write")

    monkeypatch.setattr(TeacherCache, "write", counted)


def _run_dir(out: Path) -> Path:
    (run_dir,) = (out / "quickstart").iterdir()
    return run_dir


def _val_epochs(stage_dir: Path) -> list[int]:
    """The epochs whose validation was logged, over every attempt's metrics.csv."""
    epochs = []
    for path in stage_dir.glob("metrics*.csv"):
        with open(path) as f:
            epochs += [int(row["epoch"]) for row in csv.DictReader(f) if row.get("val/acc")]
    return sorted(epochs)


PATH_KEYS = ("checkpoint", "teacher_checkpoint", "saved_to", "teacher_cache")


def _outcome(run_dir: Path, stages: tuple[str, ...]) -> dict:
    """What a run ends with: per stage its steps, validated epochs, summary (without paths and
    time) and the weights of ``last.ckpt`` and ``best.ckpt``."""
    summary = json.loads((run_dir / "summary.json").read_text())
    outcome = {"summary_keys": sorted(summary)}
    for stage in stages:
        last = torch.load(run_dir / stage / "last.ckpt", map_location="cpu", weights_only=True)
        best = torch.load(run_dir / stage / "best.ckpt", map_location="cpu", weights_only=True)
        outcome[stage] = {
            "steps": last["global_step"],
            "epoch": last["epoch"],
            "val_epochs": _val_epochs(run_dir / stage),
            "summary": {k: v for k, v in summary[stage].items() if k not in PATH_KEYS},
            "last": last["state_dict"],
            "best": best["state_dict"],
            "interrupted.ckpt": (run_dir / stage / "interrupted.ckpt").exists(),
        }
    return outcome


def _assert_same(resumed: dict, reference: dict, stages: tuple[str, ...], *, hard: bool) -> None:
    assert resumed["summary_keys"] == reference["summary_keys"]
    for stage in stages:
        got, want = resumed[stage], reference[stage]
        assert not got["interrupted.ckpt"], f"{stage}: a stale interrupted.ckpt"
        assert (got["steps"], got["epoch"]) == (want["steps"], want["epoch"]), stage
        if hard:  # an epoch stopped mid-way is trained and validated again
            assert sorted(set(got["val_epochs"])) == want["val_epochs"], stage
        else:
            assert got["val_epochs"] == want["val_epochs"], stage  # each epoch validated once
        assert got["summary"] == want["summary"], stage
        for name in ("last", "best"):
            assert got[name].keys() == want[name].keys()
            for key, value in want[name].items():
                assert torch.equal(got[name][key], value), (stage, name, key)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_overrides_for):
    """The uninterrupted two-stage run."""
    out = tmp_path_factory.mktemp("reference")
    os.environ.pop("DISTILL_RUN_DIR", None)
    overrides = [*tiny_overrides_for(out / "runs"), *BASE]
    train(load_config("quickstart", overrides))
    os.environ.pop("DISTILL_RUN_DIR", None)
    run_dir = _run_dir(out / "runs")
    return overrides, run_dir, _outcome(run_dir, ("teacher", "student"))


@pytest.fixture(scope="module")
def cached_reference(tmp_path_factory, tiny_overrides_for, reference):
    """The uninterrupted student of the reference teacher, read from a teacher cache."""
    out = tmp_path_factory.mktemp("cached")
    teacher = reference[1] / "teacher" / "best.ckpt"
    overrides = [
        *tiny_overrides_for(out / "runs"),
        *BASE,
        "stage=student",
        f"teacher.checkpoint={teacher}",
        "teacher_cache.enabled=true",
    ]
    train(load_config("quickstart", overrides))
    os.environ.pop("DISTILL_RUN_DIR", None)
    run_dir = _run_dir(out / "runs")
    return overrides, run_dir, _outcome(run_dir, ("student",))


def _interrupt_and_resume(overrides, out: Path, inject: Inject, monkeypatch) -> Path:
    """Run with the injector until it stops the run, then ``--resume`` until it finishes."""
    overrides = [o for o in overrides if not o.startswith("output_dir=")]
    overrides.append(f"output_dir={out}")
    _patch_cache_writes(monkeypatch, inject)
    previous = signal.getsignal(signal.SIGINT)
    try:
        train(load_config("quickstart", overrides), callbacks=[inject])
    except (RunInterrupted, SystemExit):  # SystemExit: Lightning's answer to KeyboardInterrupt
        pass
    finally:
        signal.signal(signal.SIGINT, previous)  # Lightning ignores Ctrl-C after KeyboardInterrupt
    assert inject.calls > inject.n, "the injection point was never reached"
    monkeypatch.undo()
    monkeypatch.delenv("DISTILL_RUN_DIR", raising=False)
    run_dir = _run_dir(out)
    train(load_config(str(run_dir / "config.yaml")), resume_dir=run_dir)
    os.environ.pop("DISTILL_RUN_DIR", None)
    return run_dir


INT, TERM = signal.SIGINT, signal.SIGTERM

# (hook, n, signal): n counts over both stages. Teacher: training batches 0-5, epochs 0-1,
# validation batches (and epoch ends) 0 (the sanity check), 1, 2; test 0. Student: training
# batches 6-11, epochs 2-3, validation 3 (sanity), 4, 5; test 1.
POINTS = [
    ("train_batch_start", 0, INT),  # the very first batch
    ("train_batch_start", 4, TERM),  # teacher epoch 1, mid-epoch
    ("train_batch_end", 1, INT),  # teacher epoch 0, mid-epoch
    ("train_batch_end", 2, TERM),  # an epoch's last batch: its validation comes first
    ("train_batch_end", 5, INT),  # the teacher's last batch
    ("train_batch_end", 7, TERM),  # student epoch 0, mid-epoch
    ("train_batch_end", 11, INT),  # the student's last batch
    ("train_epoch_start", 1, TERM),
    ("train_epoch_start", 2, INT),  # the student's first epoch
    ("train_epoch_end", 0, TERM),
    ("train_epoch_end", 1, INT),  # the teacher's last epoch
    ("validation_batch_end", 0, INT),  # the teacher's sanity check
    ("validation_batch_end", 1, TERM),  # teacher epoch 0's validation
    ("validation_batch_end", 2, INT),  # the teacher's last validation
    ("validation_batch_end", 3, TERM),  # the student's sanity check
    ("validation_batch_end", 4, INT),
    ("validation_epoch_end", 1, TERM),
    ("validation_epoch_end", 5, INT),  # the student's last validation
    ("test_batch_end", 0, TERM),  # the teacher's test: the stage boundary
    ("test_end", 0, INT),  # the stage boundary
    ("test_end", 1, TERM),  # after the student's test: the run ends as usual
    ("train_batch_end", 4, None),  # a second Ctrl-C: at once, nothing saved
    ("validation_batch_end", 4, None),
    ("train_epoch_end", 2, None),  # after validation, before last.ckpt
]
DEFAULT_POINTS = {2, 12, 19, 21}
"""A handful: a mid-epoch batch, validation, the stage boundary and an immediate stop. The
full sweep is slow (about 30 s a point on 2 free CPU cores)."""


def _point_id(point: tuple) -> str:
    hook, n, signum = point
    return f"{hook}-{n}-{signal.Signals(signum).name if signum else 'raise'}"


def _params(points: list[tuple], default: set[int]) -> list:
    return [
        pytest.param(*p, id=_point_id(p))
        if i in default
        else pytest.param(*p, id=_point_id(p), marks=pytest.mark.slow)  # the full sweep: slow
        for i, p in enumerate(points)
    ]


@pytest.mark.parametrize("hook, n, signum", _params(POINTS, DEFAULT_POINTS))
def test_interrupt_anywhere_then_resume_equals_the_uninterrupted_run(
    reference, tmp_path, monkeypatch, hook, n, signum
):
    overrides, _, expected = reference
    run_dir = _interrupt_and_resume(
        overrides, tmp_path / "runs", Inject(hook, n, signum), monkeypatch
    )
    stages = ("teacher", "student")
    _assert_same(_outcome(run_dir, stages), expected, stages, hard=signum is None)


CACHE_POINTS = [("cache_write", 0, INT), ("cache_write", 1, TERM), ("train_batch_end", 1, TERM)]


@pytest.mark.parametrize("hook, n, signum", _params(CACHE_POINTS, {1}))
def test_interrupt_during_the_teacher_cache_build_then_resume(
    cached_reference, tmp_path, monkeypatch, hook, n, signum
):
    overrides, _, expected = cached_reference
    run_dir = _interrupt_and_resume(
        overrides, tmp_path / "runs", Inject(hook, n, signum), monkeypatch
    )
    _assert_same(_outcome(run_dir, ("student",)), expected, ("student",), hard=False)


KILL_SCRIPT = """
import os, signal, sys
sys.path.insert(0, {tests!r})
from test_resume import Inject
from distill.config import load_config
from distill.tools.train import train

hook, n = sys.argv[1], int(sys.argv[2])
inject = Inject(hook, n, signal.SIGKILL)  # no handler runs, nothing is saved
train(load_config("quickstart", sys.argv[3:]), callbacks=[inject])
"""


@pytest.mark.parametrize(
    "hook, n",
    [
        ("train_batch_end", 4),  # mid-epoch: redo the epoch from last.ckpt
        pytest.param("validation_epoch_end", 4, marks=pytest.mark.slow),  # after the log
        pytest.param("train_batch_end", 8, marks=pytest.mark.slow),  # the student's
    ],
)
def test_resume_after_sigkill_equals_the_uninterrupted_run(reference, tmp_path, hook, n):
    overrides, _, expected = reference
    out = tmp_path / "runs"
    overrides = [*[o for o in overrides if not o.startswith("output_dir=")], f"output_dir={out}"]
    env = {k: v for k, v in os.environ.items() if k != "DISTILL_RUN_DIR"}
    script = KILL_SCRIPT.format(tests=str(ROOT / "tests"))
    killed = subprocess.run(
        [sys.executable, "-c", script, hook, str(n), *overrides],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    run_dir = _run_dir(out)
    train(load_config(str(run_dir / "config.yaml")), resume_dir=run_dir)
    os.environ.pop("DISTILL_RUN_DIR", None)
    stages = ("teacher", "student")
    _assert_same(_outcome(run_dir, stages), expected, stages, hard=True)


# ---- finished runs, config changes, resumes that cannot work ---------------------------------


def _hashes(run_dir: Path) -> dict[str, str]:
    return {
        str(path.relative_to(run_dir)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(run_dir.rglob("*"))
        if path.is_file()
    }


def test_resume_of_a_finished_run_changes_no_file(reference, tmp_path, capsys):
    _, source, _ = reference
    run_dir = tmp_path / "run"
    subprocess.run(["cp", "-a", str(source), str(run_dir)], check=True)
    before = _hashes(run_dir)
    summary, result = train(load_config(str(run_dir / "config.yaml")), resume_dir=run_dir)
    os.environ.pop("DISTILL_RUN_DIR", None)
    assert _hashes(run_dir) == before
    assert "is finished: nothing to resume, no file was changed" in capsys.readouterr().out
    assert summary == json.loads((run_dir / "summary.json").read_text())
    assert result.trainers == {}


def run_cli(args: list[str]) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "DISTILL_RUN_DIR"}
    return subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
    )


def test_cli_refuses_overrides_that_change_a_resumed_run(reference, tmp_path):
    _, source, _ = reference
    run_dir = tmp_path / "run"
    subprocess.run(["cp", "-a", str(source), str(run_dir)], check=True)
    before = _hashes(run_dir)
    out = run_cli(["--resume", str(run_dir), "student.epochs=20"])
    assert out.returncode == 2, out.stderr[-2000:]
    assert out.stderr.count("\n") == 1 and out.stderr.startswith("error: --resume continues")
    assert "student.epochs would change its results" in out.stderr
    assert _hashes(run_dir) == before
    out = run_cli(["--resume", str(run_dir), "logging.map_images=2"])  # no effect on results
    assert out.returncode == 0, out.stderr[-2000:]
    assert "is finished" in out.stdout
    assert _hashes(run_dir) == before


def test_the_resume_rule_allows_only_what_cannot_change_results():
    for key in ("logging.wandb", "logging.map_images", "trainer.enable_progress_bar"):
        check_resume_changes([key])
    for key in ("student.epochs", "optim.lr", "seed", "trainer.deterministic", "loggingx.y"):
        with pytest.raises(ConfigError, match=f"{key} would change its results") as info:
            check_resume_changes(["logging.wandb", key])
        assert "\n" not in str(info.value)
    assert "logging." in RESULT_FREE_KEYS


def _interrupted_student(reference, tmp_path, monkeypatch) -> Path:
    """A run stopped by SIGTERM in the student's first epoch (teacher done)."""
    overrides, _, _ = reference
    out = tmp_path / "runs"
    overrides = [*[o for o in overrides if not o.startswith("output_dir=")], f"output_dir={out}"]
    with pytest.raises(RunInterrupted, match=r"interrupted \(SIGTERM\); saved .*interrupted.ckpt"):
        train(load_config("quickstart", overrides), callbacks=[Inject("train_batch_end", 7, TERM)])
    monkeypatch.delenv("DISTILL_RUN_DIR", raising=False)
    run_dir = _run_dir(out)
    assert (run_dir / "student" / "interrupted.ckpt").is_file()
    return run_dir


@pytest.mark.parametrize("damage", ["truncated", "teacher changed"])
def test_a_resume_that_cannot_work_fails_before_moving_any_file(
    reference, tmp_path, monkeypatch, damage
):
    run_dir = _interrupted_student(reference, tmp_path, monkeypatch)
    if damage == "truncated":
        path = run_dir / "student" / "interrupted.ckpt"
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        expected = r"cannot resume from .*interrupted.ckpt: it cannot be read"
    else:
        path = run_dir / "teacher" / "best.ckpt"
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        checkpoint["state_dict"]["model.fc.bias"] += 0.01
        torch.save(checkpoint, path)
        expected = "the teacher changed since this student checkpoint was written"
    before = _hashes(run_dir)
    with pytest.raises(CheckpointError, match=expected) as info:
        train(load_config(str(run_dir / "config.yaml")), resume_dir=run_dir)
    monkeypatch.delenv("DISTILL_RUN_DIR", raising=False)
    assert "\n" not in str(info.value)
    assert _hashes(run_dir) == before  # metrics.csv not renamed, nothing written
    out = run_cli(["--resume", str(run_dir)])
    assert out.returncode == 1
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    assert out.stderr.strip().splitlines()[-1].startswith("error: ")
    assert _hashes(run_dir) == before


CLI_SCRIPT = """
import signal, sys
sys.path.insert(0, {tests!r})
sys.path.insert(0, {root!r})
from test_resume import Inject
import distill.tools.train as pipeline
from train import main

def train(cfg, **kwargs):  # the CLI's train() with a SIGTERM at the teacher's second batch
    return run(cfg, callbacks=[Inject("train_batch_end", 1, signal.SIGTERM)], **kwargs)

run, pipeline.train = pipeline.train, train
sys.exit(main(sys.argv[1:]))
"""


def test_cli_interrupt_prints_how_to_continue_and_exits_with_the_signal(reference, tmp_path):
    overrides, _, _ = reference
    out = tmp_path / "runs"
    overrides = [*[o for o in overrides if not o.startswith("output_dir=")], f"output_dir={out}"]
    env = {k: v for k, v in os.environ.items() if k != "DISTILL_RUN_DIR"}
    script = CLI_SCRIPT.format(tests=str(ROOT / "tests"), root=str(ROOT))
    done = subprocess.run(
        [sys.executable, "-c", script, *overrides], capture_output=True, text=True, env=env
    )
    assert done.returncode == 128 + signal.SIGTERM, done.stderr[-2000:]
    run_dir = _run_dir(out)
    assert done.stderr.strip().splitlines()[-1] == (
        f"interrupted (SIGTERM); saved {run_dir / 'teacher' / 'interrupted.ckpt'}. "
        f"Continue with: python train.py --resume {run_dir}"
    )
