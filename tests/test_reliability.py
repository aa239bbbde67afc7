"""Bad inputs, interruptions and non-finite losses: clear errors, no lost or overwritten work."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch

from distill import ExplanationDistiller, build_model
from distill.config import ConfigError, load_config
from distill.data import DatasetNotFoundError
from distill.tools.train import train
from distill.training.callbacks import NonFiniteLossError
from distill.training.interrupt import RunInterrupted
from distill.training.lightning_modules import CheckpointError

ROOT = Path(__file__).resolve().parent.parent


def run_cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "DISTILL_RUN_DIR"}
    return subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
    )


# ---- configs --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "override, pattern",
    [
        ("student.name=resnt20", r"student.name='resnt20'.*Did you mean: resnet20"),
        ("teacher.name=wrn_17_2", r"teacher.name='wrn_17_2'.*depth"),
        ("data.name=cifar11", r"data.name='cifar11' is not valid \(did you mean 'cifar10'\?\)"),
        (
            "loss.map_layers=[{student: block_2, teacher: relu}]",
            r"loss.map_layers\[0\].student.*did you mean 'block2'",
        ),
        ("loss.at_weight=-0.5", r"loss.at_weight=-0.5 must be >= 0"),
        ("teacher.kwargs={dropot: 0.1}", r"teacher.name='wrn_16_1'.*dropot"),
    ],
)
def test_invalid_models_layers_and_values_are_named(override, pattern):
    with pytest.raises(ConfigError, match=pattern) as info:
        load_config("quickstart", [override])
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("args", [["student.name=resnt20"], ["--config", "missing_recipe"]])
def test_cli_config_errors_exit_2_and_write_nothing(tmp_path, args):
    out = run_cli([*args, f"output_dir={tmp_path / 'runs'}"], tmp_path)
    assert out.returncode == 2, out.stderr
    assert out.stderr.startswith("error: ") and out.stderr.strip().count("\n") == 0
    assert not (tmp_path / "runs").exists()


# ---- checkpoints ----------------------------------------------------------------------------


def _fake_classifier_checkpoint(path: Path, name: str, num_classes: int) -> Path:
    model = build_model(name, num_classes=num_classes)
    torch.save(
        {
            "hyper_parameters": {
                "model_name": name,
                "num_classes": num_classes,
                "model_kwargs": {},
            },
            "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
        },
        path,
    )
    return path


def _checkpoint_cases(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    good = _fake_classifier_checkpoint(tmp_path / "good.ckpt", "wrn_16_1", 6)
    data = good.read_bytes()
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(data[: len(data) // 2])
    corrupt = tmp_path / "corrupt.ckpt"
    corrupt.write_bytes(os.urandom(4096))
    other_arch = _fake_classifier_checkpoint(tmp_path / "arch.ckpt", "resnet20", 6)
    other_classes = _fake_classifier_checkpoint(tmp_path / "classes.ckpt", "wrn_16_1", 10)
    return {
        "missing": (tmp_path / "nope.ckpt", "does not exist"),
        "truncated": (truncated, "cannot be read"),
        "corrupt": (corrupt, "cannot be read"),
        "architecture": (other_arch, "holds a resnet20 but the config asks for wrn_16_1"),
        "classes": (other_classes, "trained for 10 classes but the data has 6"),
    }


@pytest.mark.parametrize("case", ["missing", "truncated", "corrupt", "architecture", "classes"])
def test_bad_teacher_checkpoints_fail_before_anything_is_written(tiny_overrides, tmp_path, case):
    path, message = _checkpoint_cases(tmp_path)[case]
    before = path.read_bytes() if path.exists() else None
    cfg = load_config(
        "quickstart", [*tiny_overrides, "stage=student", f"teacher.checkpoint={path}"]
    )
    with pytest.raises(CheckpointError, match=message) as info:
        train(cfg)
    assert str(path) in str(info.value)
    assert not (tmp_path / "runs").exists()
    assert (path.read_bytes() if path.exists() else None) == before  # nothing overwritten


def test_cli_bad_checkpoint_is_one_line_exit_1(tiny_overrides, tmp_path):
    path, _ = _checkpoint_cases(tmp_path)["corrupt"]
    out = run_cli([*tiny_overrides, "stage=student", f"teacher.checkpoint={path}"], tmp_path)
    assert out.returncode == 1
    assert out.stderr.strip().splitlines()[-1].startswith("error: teacher checkpoint")


# ---- data -----------------------------------------------------------------------------------


def test_missing_imagefolder_fails_before_anything_is_written(tiny_overrides, tmp_path):
    cfg = load_config(
        "quickstart", [*tiny_overrides, "data.name=imagefolder", f"data.root={tmp_path / 'nodata'}"]
    )
    with pytest.raises(DatasetNotFoundError, match="nodata"):
        train(cfg)
    assert not (tmp_path / "runs").exists()


# ---- numerics -------------------------------------------------------------------------------


class PoisonWeights(L.Callback):
    """Simulate divergence: NaN weights at the first step of a given epoch."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.current_epoch == self.epoch and batch_idx == 0:
            with torch.no_grad():
                next(pl_module.trainable().parameters()).fill_(float("nan"))


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tiny_overrides, tmp_path):
    cfg = load_config("quickstart", [*tiny_overrides, "stage=teacher", "teacher.epochs=3"])
    with pytest.raises(NonFiniteLossError, match=r"training loss is nan at epoch 1") as info:
        train(cfg, callbacks=[PoisonWeights(epoch=1)])
    (run_dir,) = (tmp_path / "runs" / "quickstart").iterdir()
    last = run_dir / "teacher" / "last.ckpt"
    assert str(last) in str(info.value)
    state = torch.load(last, map_location="cpu", weights_only=True)
    assert (state["epoch"], state["global_step"]) == (0, 2)  # end of epoch 0, not after the NaN
    assert all(
        torch.isfinite(v).all() for v in state["state_dict"].values() if v.is_floating_point()
    )
    assert not (run_dir / "teacher" / "interrupted.ckpt").exists()


def test_maps_and_losses_stay_finite_for_blank_images_and_dead_relus():
    torch.manual_seed(0)
    teacher, student = build_model("wrn_16_1", 10), build_model("wrn_16_1", 10)
    with torch.no_grad():
        student.bn1.bias.fill_(-100.0)  # final BN -> ReLU outputs zero everywhere: dead ReLUs
    distiller = ExplanationDistiller(teacher, student, map_weight=1.0)
    for images in (torch.zeros(4, 3, 32, 32), torch.randn(4, 3, 32, 32)):
        out = distiller(images, torch.tensor([0, 1, 2, 3]))
        out.loss.backward()
        assert torch.isfinite(out.loss)
        assert all(torch.isfinite(m).all() for m in out.student_maps + out.teacher_maps)
        assert all(torch.isfinite(p.grad).all() for p in student.parameters() if p.grad is not None)
    assert out.student_maps[0].abs().max() == 0


# ---- interruptions --------------------------------------------------------------------------


class SignalAt(L.Callback):
    """Send a real signal to this process after a given training batch."""

    def __init__(self, epoch: int, batch: int, signum: int) -> None:
        self.epoch, self.batch, self.signum = epoch, batch, signum

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.current_epoch == self.epoch and batch_idx == self.batch:
            os.kill(os.getpid(), self.signum)


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


RESUME_OVERRIDES = [
    "stage=teacher",
    "teacher.epochs=3",
    "trainer.deterministic=true",
    "optim.schedule=multistep",
]


def _reference_run(overrides: list[str], out: Path) -> tuple[dict, Path]:
    summary, _ = train(load_config("quickstart", [*overrides, f"output_dir={out}"]))
    (run_dir,) = (out / "quickstart").iterdir()
    return summary, run_dir


def _assert_same_run(run_dir: Path, summary: dict, reference_dir: Path, reference: dict) -> None:
    """Same final weights, bit for bit, and the same best validation accuracy."""
    for name in ("last.ckpt", "best.ckpt"):
        resumed, expected = (
            _weights(run_dir / "teacher" / name),
            _weights(reference_dir / "teacher" / name),
        )
        assert resumed.keys() == expected.keys()
        for key in expected:
            torch.testing.assert_close(resumed[key], expected[key], rtol=0, atol=0, msg=key)
    last = torch.load(run_dir / "teacher" / "last.ckpt", map_location="cpu", weights_only=True)
    final = torch.load(reference_dir / "teacher" / "last.ckpt", weights_only=True)
    assert last["global_step"] == final["global_step"] == 3 * 2  # 3 epochs of 2 full batches
    for key in ("epochs", "val_acc", "val_acc_best", "test_acc"):
        assert summary["teacher"][key] == reference["teacher"][key], key


@pytest.mark.parametrize(
    "signum, seed", [(signal.SIGTERM, 0), (signal.SIGINT, 2), (signal.SIGTERM, 3)]
)
def test_interrupt_mid_epoch_then_resume_matches_uninterrupted(
    tiny_overrides, tmp_path, signum, seed
):
    overrides = [*tiny_overrides, *RESUME_OVERRIDES, f"seed={seed}"]
    reference, reference_dir = _reference_run(overrides, tmp_path / "reference")

    cfg = load_config("quickstart", overrides)
    previous = signal.getsignal(signal.SIGINT)
    # A process started in the background without job control inherits SIGINT as ignored, and
    # the signal would be dropped: install the handler that Ctrl-C relies on.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(RunInterrupted, match=signal.Signals(signum).name):
            train(cfg, callbacks=[SignalAt(epoch=1, batch=0, signum=signum)])  # of 2
    finally:
        signal.signal(signal.SIGINT, previous)  # Lightning ignores further Ctrl-C on shutdown
    (run_dir,) = (tmp_path / "runs" / "quickstart").iterdir()
    interrupted = run_dir / "teacher" / "interrupted.ckpt"
    assert interrupted.is_file()
    assert torch.load(interrupted, map_location="cpu", weights_only=True)["epoch"] == 1

    summary, _ = train(load_config(str(run_dir / "config.yaml")), resume_dir=run_dir)
    _assert_same_run(run_dir, summary, reference_dir, reference)
    assert not interrupted.exists()  # passed: last.ckpt is newer


HARD_KILL_SCRIPT = """
import os, signal, sys
import lightning as L
from distill.config import load_config
from distill.tools.train import train

class KillAt(L.Callback):
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.current_epoch == 2 and batch_idx == 0:  # of 2 batches
            os.kill(os.getpid(), signal.SIGKILL)  # no handler runs, nothing is saved

train(load_config("quickstart", sys.argv[1:]), callbacks=[KillAt()])
"""


@pytest.mark.parametrize("seed", [2, 3])
def test_resume_after_a_hard_kill_continues_from_the_last_epoch(tiny_overrides, tmp_path, seed):
    """SIGKILL in epoch 2 leaves no interrupted.ckpt: the resume starts from last.ckpt, which
    must be the end of epoch 1 even when epoch 1 did not improve the holdout accuracy."""
    overrides = [*tiny_overrides, *RESUME_OVERRIDES, f"seed={seed}"]
    reference, reference_dir = _reference_run(overrides, tmp_path / "reference")
    env = {k: v for k, v in os.environ.items() if k != "DISTILL_RUN_DIR"}
    killed = subprocess.run(
        [sys.executable, "-c", HARD_KILL_SCRIPT, *overrides],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    (run_dir,) = (tmp_path / "runs" / "quickstart").iterdir()
    assert not (run_dir / "teacher" / "interrupted.ckpt").exists()
    last = torch.load(run_dir / "teacher" / "last.ckpt", map_location="cpu", weights_only=True)
    assert (last["epoch"], last["global_step"]) == (1, 2 * 2)  # the end of epoch 1 (2 batches)

    summary, _ = train(load_config(str(run_dir / "config.yaml")), resume_dir=run_dir)
    _assert_same_run(run_dir, summary, reference_dir, reference)


# ---- run directories ------------------------------------------------------------------------


def test_concurrent_runs_get_their_own_directories_with_config_and_commit(tiny_overrides, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "DISTILL_RUN_DIR"}
    script = (
        "import sys; from distill.config import load_config; from distill.tools.train import make_run_dir;"
        "print(make_run_dir(load_config('quickstart', sys.argv[1:])))"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, *tiny_overrides],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        for _ in range(4)
    ]
    dirs = {p.communicate()[0].strip() for p in procs}
    assert len(dirs) == 4
    summary, _ = train(load_config("quickstart", [*tiny_overrides, "stage=teacher"]))
    meta = json.loads((Path(summary["run_dir"]) / "meta.json").read_text())
    assert meta["git_commit"] is None or len(meta["git_commit"].split("-")[0]) == 40
    assert (Path(summary["run_dir"]) / "config.yaml").is_file()


# ---- distributed ----------------------------------------------------------------------------


NO_NORM_SCRIPT = """
import sys
from torch import nn
from distill.models import build_model, register_model

@register_model
def wrn_16_1_nonorm(*, num_classes=10, **kwargs):
    # Batch norm couples the samples of a batch (and SyncBatchNorm needs CUDA): without it a
    # 2 x 32 DDP step computes the same gradient as a 1 x 64 step.
    model = build_model("wrn_16_1", num_classes=num_classes, **kwargs)
    for module in list(model.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, nn.BatchNorm2d):
                setattr(module, child_name, nn.Identity())
    return model

sys.path.insert(0, {root!r})
from train import main
sys.exit(main())
"""


def _epoch_values(run_dir: Path, stage: str) -> dict[str, float]:
    """The last ``train/*_epoch`` values of a stage's ``metrics.csv``."""
    with open(run_dir / stage / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    return {
        key: float(row[key])
        for row in rows
        for key in row
        if key.startswith("train/") and key.endswith("_epoch") and row[key]
    }


def test_ddp_two_processes_match_one_process_at_the_same_global_batch(tiny_overrides, tmp_path):
    """Same global batch of 64: one process, or two processes of 32 each (gloo). Batch norm is
    removed from the models and augmentation is off (its random stream is per rank), so both
    compute the same thing. Weights agree to float rounding (the gradient all-reduce sums in
    another order): atol 1e-5. Validation metrics are reduced over both ranks: accuracy and
    agreement are equal, map similarity agrees to 1e-5.

    Then the teacher cache under DDP: a third run distils from the two-process run's teacher
    with a float32 cache. Each rank writes the rows of its own batches and reads them back, so
    it trains the live two-process student exactly."""
    script = tmp_path / "train_nonorm.py"
    script.write_text(NO_NORM_SCRIPT.format(root=str(ROOT)))
    env = {k: v for k, v in os.environ.items() if k != "DISTILL_RUN_DIR"}
    common = [
        *tiny_overrides,
        "data.augment=false",
        "teacher.name=wrn_16_1_nonorm",
        "student.name=wrn_16_1_nonorm",
        "optim.lr=0.01",
    ]

    def run(name: str, devices: int, *extra: str) -> Path:
        out_dir = tmp_path / name
        ddp = ["trainer.strategy=ddp"] if devices == 2 else []
        args = [*common, f"output_dir={out_dir}", f"trainer.devices={devices}", *ddp, *extra]
        result = subprocess.run(
            [sys.executable, str(script), *args],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            env=env,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        if devices == 2:
            assert "MEMBER: 2/2" in result.stdout + result.stderr
        assert "sync_dist" not in result.stderr  # every epoch-level value is reduced
        (run_dir,) = (out_dir / "quickstart").iterdir()
        return run_dir

    runs = {devices: run(f"devices{devices}", devices) for devices in (1, 2)}
    for stage in ("teacher", "student"):
        one = _weights(runs[1] / stage / "last.ckpt")
        two = _weights(runs[2] / stage / "last.ckpt")
        assert one.keys() == two.keys()
        for key in one:
            torch.testing.assert_close(two[key], one[key], rtol=0, atol=1e-5, msg=f"{stage} {key}")
    for stage in ("teacher", "student"):  # the epoch's training losses, over both processes
        one, two = _epoch_values(runs[1], stage), _epoch_values(runs[2], stage)
        assert one.keys() == two.keys() and "train/loss_epoch" in one
        for key in one:
            assert two[key] == pytest.approx(one[key], abs=1e-5), (stage, key)
    s1 = json.loads((runs[1] / "summary.json").read_text())["student"]
    s2 = json.loads((runs[2] / "summary.json").read_text())["student"]
    for key in ("val_acc", "val_agreement", "val_teacher_acc"):
        assert s2[key] == pytest.approx(s1[key], abs=1e-6), key
    assert s2["val_map_similarity"] == pytest.approx(s1["val_map_similarity"], abs=1e-5)

    teacher = json.loads((runs[2] / "summary.json").read_text())["teacher"]["checkpoint"]
    cached = run(
        "devices2_cached",
        2,
        "stage=student",
        f"teacher.checkpoint={teacher}",
        "teacher_cache.enabled=true",
        "teacher_cache.dtype=float32",
    )
    folders = {
        d: json.loads((d / "header.json").read_text())
        for d in (cached.parent.parent / "teacher_cache").iterdir()
    }
    # one cache of the training stream, one of the validation split (written once, both ranks)
    (cache_dir,) = [d for d, h in folders.items() if "split" not in h["key"]]
    (val_dir,) = [d for d, h in folders.items() if h["key"].get("split") == "val"]
    assert folders[val_dir]["complete"] == [0]
    assert sum((val_dir / "written.bin").read_bytes()) == folders[val_dir]["num_samples"]
    header = folders[cache_dir]
    assert header["complete"] == [0] and header["key"]["trainer"]["devices"] == 2
    written = (cache_dir / "written.bin").read_bytes()
    # Both ranks wrote their rows: one per image of the epoch's full batches (the last,
    # incomplete batch is dropped on every rank, and its rows are never read).
    steps = json.loads((cached / "summary.json").read_text())["student"]["steps"]
    assert steps >= 1 and sum(written) == steps * 64  # the global batch
    live, read = (
        _weights(runs[2] / "student" / "last.ckpt"),
        _weights(cached / "student" / "last.ckpt"),
    )
    students = [key for key in live if key.startswith("distiller.student.")]
    assert students and all(torch.equal(read[key], live[key]) for key in students)


def test_a_process_records_the_commit_it_started_with_even_if_head_moves(monkeypatch):
    """A commit landing while a comparison runs must not relabel its later students."""
    from distill.training import run_dir

    heads = iter(["a" * 40, "b" * 40])

    def fake_run(args, **kwargs):
        stdout = next(heads) + "\n" if args[:2] == ["git", "rev-parse"] else ""
        return subprocess.CompletedProcess(args, 0, stdout=stdout, stderr="")

    run_dir.git_commit.cache_clear()
    monkeypatch.setattr(run_dir.subprocess, "run", fake_run)
    try:
        assert run_dir.git_commit() == "a" * 40
        assert run_dir.git_commit() == "a" * 40  # HEAD is now "b...": still the first commit
    finally:
        run_dir.git_commit.cache_clear()
