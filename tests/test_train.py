"""train.py end to end on tiny shapes data: both stages, run directory, resume, DDP."""

from __future__ import annotations

import json
from pathlib import Path

from distill.config import load_config
from distill.pipeline import RUN_DIR_ENV, make_run_dir, train

ROOT = Path(__file__).resolve().parent.parent


def _only_run_dir(runs: Path) -> Path:
    (run_dir,) = list((runs / "quickstart").iterdir())
    return run_dir


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
    student = written["student"]
    for key in ("test_acc", "val_acc", "val_agreement", "val_teacher_acc"):
        assert 0.0 <= student[key] <= 1.0, key
    assert -1.0 <= student["val_map_similarity"] <= 1.0
    header = (run_dir / "student" / "metrics.csv").read_text().splitlines()[0]
    for column in ("train/ce", "train/kd", "train/map", "val/agreement", "val/map_similarity"):
        assert column in header, column
    assert not any(p.requires_grad for p in result.teacher.parameters())
    monkeypatch.delenv(RUN_DIR_ENV, raising=False)


def test_resume_continues_the_student_and_skips_the_done_teacher(
    tiny_overrides, tmp_path, monkeypatch
):
    train(load_config("quickstart", tiny_overrides))
    run_dir = _only_run_dir(tmp_path / "runs")
    teacher_ckpt = (run_dir / "teacher" / "best.ckpt").stat().st_mtime
    monkeypatch.delenv(RUN_DIR_ENV, raising=False)
    cfg = load_config(str(run_dir / "config.yaml"), ["student.epochs=2"])
    summary, _ = train(cfg, resume_dir=run_dir)
    assert summary["student"]["epochs"] == 2
    # The first attempt's metrics are kept beside the resumed ones.
    assert (run_dir / "student" / "metrics.attempt1.csv").is_file()
    assert (run_dir / "student" / "metrics.csv").is_file()
    assert (run_dir / "teacher" / "best.ckpt").stat().st_mtime == teacher_ckpt
    assert len(list((tmp_path / "runs" / "quickstart").iterdir())) == 1
    monkeypatch.delenv(RUN_DIR_ENV, raising=False)


def test_student_stage_uses_a_given_teacher_checkpoint(tiny_overrides, tmp_path, monkeypatch):
    teacher_path = tmp_path / "teacher.ckpt"
    train(
        load_config(
            "quickstart", [*tiny_overrides, "stage=all", f"teacher.checkpoint={teacher_path}"]
        )
    )
    assert teacher_path.is_file()  # absent before: trained, then saved there
    monkeypatch.delenv(RUN_DIR_ENV, raising=False)
    summary, _ = train(
        load_config(
            "quickstart", [*tiny_overrides, "stage=student", f"teacher.checkpoint={teacher_path}"]
        )
    )
    assert "teacher" not in summary and summary["student"]["teacher_checkpoint"] == str(
        teacher_path
    )
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
    summary, _ = train(load_config("quickstart", [*tiny_overrides, "trainer.precision=bf16-mixed"]))
    assert 0.0 <= summary["student"]["val_map_similarity"] <= 1.0
    assert summary["student"]["test_acc"] >= 0.0
    monkeypatch.delenv(RUN_DIR_ENV, raising=False)


def test_explanation_metrics_are_logged_when_enabled(tiny_overrides, tmp_path):
    summary, _ = train(
        load_config("quickstart", [*tiny_overrides, "logging.explanation_metrics=true"])
    )
    header = (Path(summary["run_dir"]) / "student" / "metrics.csv").read_text().splitlines()[0]
    for column in (
        "val/average_drop",
        "val/increase_in_confidence",
        "val/localization",
        "val/energy_pointing",
    ):
        assert column in header, column
