"""train.py end to end on tiny shapes data: both stages, run directory, resume, DDP."""

from __future__ import annotations

import csv
import json
from contextlib import nullcontext
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image

from distill.config import load_config
from distill.tools.train import RUN_DIR_ENV, make_run_dir, train
from distill.training.lightning_modules import load_classifier

ROOT = Path(__file__).resolve().parent.parent


def _only_run_dir(runs: Path) -> Path:
    (run_dir,) = list((runs / "quickstart").iterdir())
    return run_dir


def _logged(metrics_csv: Path, column: str) -> list[float]:
    """The values of one column of a CSVLogger ``metrics.csv``, in order, empty cells left out."""
    with metrics_csv.open() as f:
        return [float(row[column]) for row in csv.DictReader(f) if row.get(column)]


def _test_accuracy(cfg, model: torch.nn.Module, autocast: bool = False) -> tuple[float, int]:
    """Top-1 accuracy of ``model`` on the run's test split, computed here, and the split size."""
    from distill.tools.train import _datamodule  # the datamodule the run itself built

    dm = _datamodule(cfg)
    dm.setup("test")
    model.eval()
    correct = total = 0
    cast = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else nullcontext()
    with torch.no_grad(), cast:
        for batch in dm.test_dataloader():
            images, labels = dm.preprocess(batch, train=False)[:2]
            correct += int((model(images).argmax(dim=1) == labels).sum())
            total += len(labels)
    return correct / total, total


def _assert_same_weights(expected: dict, got: dict) -> None:
    assert expected.keys() == got.keys()
    for key, value in expected.items():
        assert torch.equal(value.cpu(), got[key].cpu()), key


def test_two_stages_write_a_complete_run_directory(tiny_overrides, tmp_path, monkeypatch):
    cfg = load_config("quickstart", tiny_overrides)
    summary, result = train(cfg)
    run_dir = _only_run_dir(tmp_path / "runs")
    assert result.run_dir == run_dir
    for name in ("config.yaml", "meta.json", "summary.json"):
        assert (run_dir / name).is_file(), name
    for stage in ("teacher", "student"):
        assert (run_dir / stage / "best.ckpt").is_file()
        assert (run_dir / stage / "last.ckpt").is_file()
        assert (run_dir / stage / "metrics.csv").is_file()
        assert list((run_dir / stage).glob("maps_epoch*.png")), stage
    written = json.loads((run_dir / "summary.json").read_text())
    assert written["student"]["done"] and written["teacher"]["done"]
    assert written["student"]["test_acc"] == summary["student"]["test_acc"]
    student = written["student"]
    for key in ("test_acc", "val_acc", "val_agreement", "val_teacher_acc"):
        assert 0.0 <= student[key] <= 1.0, key
    assert -1.0 <= student["val_map_similarity"] <= 1.0
    header = (run_dir / "student" / "metrics.csv").read_text().splitlines()[0]
    for column in ("train/ce", "train/kd", "train/map", "val/agreement", "val/map_similarity"):
        assert column in header, column
    assert not any(p.requires_grad for p in result.teacher.parameters())

    for stage, model in (
        ("teacher", result.trainers["teacher"].lightning_module.model),
        ("student", result.student),
    ):
        metrics, metrics_csv = written[stage], run_dir / stage / "metrics.csv"
        # The summary holds what the logger wrote: the test accuracy, the last validation
        # accuracy, the number of epochs run, the best checkpoint of this stage.
        assert metrics["test_acc"] == pytest.approx(_logged(metrics_csv, "test/acc")[-1]), stage
        assert metrics["val_acc"] == pytest.approx(_logged(metrics_csv, "val/acc")[-1]), stage
        assert metrics["epochs"] == cfg[stage].epochs == 1, stage
        assert Path(metrics["checkpoint"]) == run_dir / stage / "best.ckpt", stage
        # ... and the test accuracy is that of the model left in memory, evaluated here.
        accuracy, total = _test_accuracy(cfg, model)
        assert metrics["test_acc"] == pytest.approx(accuracy, abs=1e-6), stage
        assert metrics["test_acc"] * total == pytest.approx(round(metrics["test_acc"] * total))

    # The tested (best) checkpoints hold the weights of the models the run returns.
    teacher_ckpt = written["teacher"]["checkpoint"]
    teacher = result.trainers["teacher"].lightning_module.model
    _assert_same_weights(teacher.state_dict(), load_classifier(teacher_ckpt).state_dict())
    _assert_same_weights(teacher.state_dict(), result.teacher.state_dict())
    assert written["student"]["teacher_checkpoint"] == teacher_ckpt
    state = torch.load(written["student"]["checkpoint"], map_location="cpu", weights_only=True)
    prefix = "distiller.student."
    student_state = {
        k.removeprefix(prefix): v for k, v in state["state_dict"].items() if k.startswith(prefix)
    }
    _assert_same_weights(result.student.state_dict(), student_state)
    monkeypatch.delenv(RUN_DIR_ENV, raising=False)


class _CrashInStudentEpoch1(L.Callback):
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if "distiller" in dict(pl_module.named_children()) and trainer.current_epoch == 1:
            raise RuntimeError("crash")


def test_resume_continues_the_student_and_skips_the_done_teacher(
    tiny_overrides, tmp_path, monkeypatch
):
    with pytest.raises(RuntimeError, match="crash"):
        train(
            load_config("quickstart", [*tiny_overrides, "student.epochs=2"]),
            callbacks=[_CrashInStudentEpoch1()],
        )
    run_dir = _only_run_dir(tmp_path / "runs")
    teacher_ckpt = (run_dir / "teacher" / "best.ckpt").stat().st_mtime
    monkeypatch.delenv(RUN_DIR_ENV, raising=False)
    summary, _ = train(load_config(str(run_dir / "config.yaml")), resume_dir=run_dir)
    assert summary["student"]["epochs"] == 2
    # The first attempt's metrics are kept beside the resumed ones.
    assert (run_dir / "student" / "metrics.attempt1.csv").is_file()
    assert (run_dir / "student" / "metrics.csv").is_file()
    assert (run_dir / "teacher" / "best.ckpt").stat().st_mtime == teacher_ckpt
    assert len(list((tmp_path / "runs" / "quickstart").iterdir())) == 1
    monkeypatch.delenv(RUN_DIR_ENV, raising=False)


def test_student_stage_uses_a_given_teacher_checkpoint(tiny_overrides, tmp_path, monkeypatch):
    teacher_path = tmp_path / "teacher.ckpt"
    _, first = train(
        load_config(
            "quickstart", [*tiny_overrides, "stage=all", f"teacher.checkpoint={teacher_path}"]
        )
    )
    assert teacher_path.is_file()  # absent before: trained, then saved there
    trained = first.trainers["teacher"].lightning_module.model.state_dict()
    _assert_same_weights(trained, load_classifier(teacher_path).state_dict())
    monkeypatch.delenv(RUN_DIR_ENV, raising=False)
    summary, second = train(
        load_config(
            "quickstart", [*tiny_overrides, "stage=student", f"teacher.checkpoint={teacher_path}"]
        )
    )
    assert "teacher" not in summary and summary["student"]["teacher_checkpoint"] == str(
        teacher_path
    )
    # The student was distilled from exactly that teacher.
    _assert_same_weights(trained, second.teacher.state_dict())
    monkeypatch.delenv(RUN_DIR_ENV, raising=False)


COLOURS = {"red": (200, 40, 40), "green": (40, 180, 60), "blue": (40, 60, 200), "grey": (128,) * 3}


def _colour_folder(root: Path, per_class: dict[str, int]) -> Path:
    """An ImageFolder tree of noisy single-colour images: a task any working training learns
    in a few steps, while an untrained network stays near chance (1 / 4)."""
    rng = np.random.default_rng(0)
    for split, n in per_class.items():
        for name, rgb in COLOURS.items():
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                noise = rng.normal(0.0, 40.0, (32, 32, 3))
                pixels = np.clip(np.array(rgb)[None, None] + noise, 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


def test_training_learns_an_easy_task(tiny_overrides, tmp_path, monkeypatch):
    """Accuracies are real: both stages get far above chance on an easy task. Thresholds leave
    room for changes of the loss weights or of the validation split; a stage that does not
    learn (no optimizer steps, wrong weights tested, labels shuffled) stays near 0.25."""
    root = _colour_folder(tmp_path / "colours", {"train": 48, "test": 16})
    cfg = load_config(
        "quickstart",
        [
            *tiny_overrides,
            "data.name=imagefolder",
            f"data.root={root}",
            "data.batch_size=32",
            "teacher.epochs=2",
            "student.epochs=4",
            "logging.map_every_n_epochs=10",
        ],
    )
    summary, result = train(cfg)
    teacher, student = summary["teacher"], summary["student"]
    assert 0.9 <= teacher["test_acc"] <= 1.0, teacher
    assert 0.6 <= student["test_acc"] <= 1.0, student
    assert 0.6 <= student["val_acc"] <= 1.0, student
    assert (teacher["epochs"], student["epochs"]) == (2, 4)
    accuracy, _ = _test_accuracy(cfg, result.student)
    assert student["test_acc"] == pytest.approx(accuracy, abs=1e-6)
    monkeypatch.delenv(RUN_DIR_ENV, raising=False)


def test_run_directories_are_never_shared(tiny_overrides, monkeypatch):
    cfg = load_config("quickstart", tiny_overrides)
    dirs = set()
    for _ in range(5):
        monkeypatch.delenv(RUN_DIR_ENV, raising=False)
        dirs.add(make_run_dir(cfg))
    assert len(dirs) == 5
    monkeypatch.delenv(RUN_DIR_ENV, raising=False)


def test_bf16_mixed_precision_run(tiny_overrides, tmp_path, monkeypatch):
    cfg = load_config("quickstart", [*tiny_overrides, "trainer.precision=bf16-mixed"])
    summary, result = train(cfg)
    assert 0.0 <= summary["student"]["val_map_similarity"] <= 1.0
    test_acc = summary["student"]["test_acc"]
    assert 0.0 <= test_acc <= 1.0
    # The logged accuracy is that of the student under bf16 autocast (one prediction of
    # slack for ties that bf16 rounding may break either way).
    accuracy, total = _test_accuracy(cfg, result.student, autocast=True)
    assert abs(test_acc - accuracy) <= 1 / total + 1e-6, (test_acc, accuracy)
    assert all(p.dtype == torch.float32 for p in result.student.parameters())
    monkeypatch.delenv(RUN_DIR_ENV, raising=False)


def test_explanation_metrics_are_logged_when_enabled(tiny_overrides, tmp_path):
    summary, _ = train(
        load_config("quickstart", [*tiny_overrides, "logging.explanation_metrics=true"])
    )
    metrics_csv = Path(summary["run_dir"]) / "student" / "metrics.csv"
    ranges = {
        "val/average_drop": 100.0,  # percentages
        "val/increase_in_confidence": 100.0,
        "val/deletion_auc": 1.0,  # area under a probability curve
        "val/localization": 1.0,
        "val/energy_pointing": 1.0,
    }
    for column, upper in ranges.items():
        values = _logged(metrics_csv, column)
        assert values, column
        assert all(0.0 <= v <= upper for v in values), (column, values)
    # A random map keeps about as much energy in the box as the box's share of the image,
    # which is well above 0: an all-zero value would mean the metric saw no maps or no boxes.
    assert _logged(metrics_csv, "val/energy_pointing")[-1] > 0.0


def test_one_warning_when_the_cam_layer_is_smaller_than_4x4(recwarn):
    """resnet18 downsamples 32x32 inputs to a 1x1 CAM layer: its maps cannot localise."""
    import warnings

    from distill.models import build_model
    from distill.training.console import warn_small_cam_layers

    models = {"teacher": build_model("resnet18", 6), "student": build_model("wrn_16_1", 6)}
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warn_small_cam_layers(models, (3, 32, 32))
        warn_small_cam_layers({"student": models["teacher"]}, (3, 224, 224))  # 7x7: fine
    small = [str(w.message) for w in recwarn if "CAM layer" in str(w.message)]
    assert small == [
        "the teacher's CAM layer 'net.layer4' is 1x1 at 32x32 inputs: its maps cannot localise "
        "and map similarity means little; use larger input images or a model built for this "
        "resolution"
    ]
    assert models["teacher"].training  # the mode is left as it was


def test_lightning_tips_and_default_limits_are_not_printed(tiny_overrides, capsys, caplog):
    train(load_config("quickstart", [*tiny_overrides, "stage=teacher"]))
    printed = capsys.readouterr().out + capsys.readouterr().err + caplog.text
    assert "Tip:" not in printed and "was configured so 100%" not in printed
    assert "teacher.test_acc" in printed  # the run's own summary still prints


def test_channels_last_trains_the_same_networks(tiny_overrides, monkeypatch):
    """``trainer.channels_last``: both networks hold channels-last weights (so every
    convolution runs channels-last), the numbers are those of the default layout up to the
    order of summation, and the checkpoint loads as usual."""
    summaries = {}
    for channels_last in (False, True):
        monkeypatch.delenv(RUN_DIR_ENV, raising=False)
        cfg = load_config("quickstart", [*tiny_overrides, f"trainer.channels_last={channels_last}"])
        summaries[channels_last], result = train(cfg)
    for model in (result.teacher, result.student):
        weight = next(p for p in model.parameters() if p.dim() == 4)
        assert (
            weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()
        )
    for stage in ("teacher", "student"):
        plain, fast = summaries[False][stage], summaries[True][stage]
        assert fast["val_loss"] == pytest.approx(plain["val_loss"], rel=1e-3), stage
        assert fast["test_acc"] == pytest.approx(plain["test_acc"], abs=2 / 64), stage
    loaded = load_classifier(summaries[True]["student"]["checkpoint"])
    assert all(p.is_contiguous() for p in loaded.parameters())
    monkeypatch.delenv(RUN_DIR_ENV, raising=False)
