"""wandb dashboards, checked from the offline run files that ``wandb sync`` would upload."""

from __future__ import annotations

import json
import re
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import wandb
from omegaconf import OmegaConf
from PIL import Image

from distill.cam.visualize import map_grid
from distill.config import load_config
from distill.tools.compare import compare
from distill.tools.train import train
from distill.training.loggers import OfflineRun, read_offline_run


@pytest.fixture
def offline_wandb(tiny_overrides, tmp_path, monkeypatch):
    """The tiny overrides with wandb offline, every wandb file kept under ``tmp_path``."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    for variable in ("WANDB_DIR", "WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(variable, str(tmp_path / "wandb-home"))
    return [*tiny_overrides, "logging.wandb=offline"]


def _read(folders: list[Path]) -> list[OfflineRun]:
    """Read offline runs once wandb has written them: ``run.finish()`` can return before the
    service has flushed the ``.wandb`` file, ``wandb.teardown()`` waits for it."""
    wandb.teardown()
    return [read_offline_run(folder) for folder in folders]


def _runs(wandb_dir: Path) -> dict[str, OfflineRun]:
    """The offline runs under ``wandb_dir``, by job type (each job type once)."""
    runs = _read(sorted(wandb_dir.glob("offline-run-*")))
    by_type = {run.job_type: run for run in runs}
    assert len(by_type) == len(runs), [run.job_type for run in runs]
    return by_type


def _logged_images(run: OfflineRun, key: str) -> list[tuple[Path, str]]:
    """Every image logged under ``key``: its file in the run folder and its caption."""
    folder = run.path.parent / "files"
    return [
        (folder / name, caption)
        for row in run.history
        if key in row
        for name, caption in zip(row[key]["filenames"], row[key]["captions"], strict=True)
    ]


def test_each_stage_is_one_offline_run_with_config_and_results(offline_wandb, capsys):
    cfg = load_config("quickstart", offline_wandb)
    summary, _ = train(cfg)
    run_dir = Path(summary["run_dir"])
    runs = _runs(run_dir / "wandb")
    assert set(runs) == {"teacher", "student"}
    written = json.loads((run_dir / "summary.json").read_text())
    resolved = OmegaConf.to_container(cfg, resolve=True)
    for stage, run in runs.items():
        assert run.name == f"quickstart-{run_dir.name}-{stage}"
        assert run.group == run_dir.name
        assert run.exit_code == 0  # finished, not left open for the next stage
        # The whole resolved config, every section, plus the stage.
        for section, value in resolved.items():
            assert run.config[section] == value, section
        assert run.config["loss"]["map_weight"] == cfg.loss.map_weight
        assert run.config["data"]["val_fraction"] == cfg.data.val_fraction
        assert run.config["run_stage"] == stage
        # Best, final and test results in the summary, as in summary.json.
        entry = written[stage]
        assert run.summary["best/val_acc"] == pytest.approx(entry["val_acc_best"])
        assert run.summary["final/val_acc"] == pytest.approx(entry["val_acc"])
        assert run.summary["test/acc"] == pytest.approx(entry["test_acc"])
        assert run.summary["selected_on"] == entry["selected_on"] == "holdout"
        assert run.summary["epochs"] == entry["epochs"] and run.summary["steps"] == entry["steps"]
        # The maps: one captioned image per validation image, each the same pixels as its row
        # of the PNG file (below the same column titles), which also carries the caption.
        logged = _logged_images(run, "val/maps")
        assert len(logged) == cfg.logging.map_images
        names = "|".join(["circle", "square", "triangle", "cross", "ring", "diamond"])
        models = ["model"] if stage == "teacher" else ["teacher", "student"]
        pattern = rf"true: ({names})" + "".join(rf" \| {m}: ({names})" for m in models)
        grid = np.asarray(Image.open(run_dir / stage / "maps_epoch001.png"))
        for i, (path, caption) in enumerate(logged):
            assert path.relative_to(run.path.parent / "files").as_posix() in run.files
            assert re.fullmatch(pattern, caption), caption
            strip = np.asarray(Image.open(path))
            header, tile = strip.shape[0] - 128, 128  # 32-pixel images drawn 4x
            assert strip[header:].std() > 10  # a picture, not a blank
            row = grid[header + i * tile : header + (i + 1) * tile, -strip.shape[1] :]
            np.testing.assert_array_equal(strip[header:], row)
    # The student's metrics went to the student's run only.
    assert any("val/agreement" in row for row in runs["student"].history)
    assert not any("val/agreement" in row for row in runs["teacher"].history)
    # One sync command, covering both runs.
    out = capsys.readouterr().out
    assert out.count("wandb sync") == 1
    assert f"wandb sync {run_dir / 'wandb'}/offline-run-*" in out


def test_compare_logs_each_run_and_a_results_table_in_one_group(offline_wandb, capsys):
    rows, out = compare("quickstart", offline_wandb, seeds=[0], methods=["ce", "kd"])
    runs = _read(
        sorted([*out.glob("wandb/offline-run-*"), *out.glob("runs/*/*/wandb/offline-run-*")])
    )
    assert sorted(run.job_type for run in runs) == ["compare", "student", "student", "teacher"]
    assert {run.group for run in runs} == {out.name}
    (summary_run,) = (run for run in runs if run.job_type == "compare")
    assert summary_run.config["methods"] == ["ce", "kd"]
    (logged,) = (row for row in summary_run.history if "results" in row)
    assert logged["results"]["_type"] == "table-file" and logged["results"]["nrows"] == len(rows)
    table = json.loads((summary_run.path.parent / "files" / logged["results"]["path"]).read_text())
    assert [row[:2] for row in table["data"]] == [["ce", 0], ["kd", 0]]
    column = table["columns"].index("test_acc")
    assert [row[column] for row in table["data"]] == [row["test_acc"] for row in rows]
    assert logged["top1_plot"]["_type"] == "image-file"
    printed = capsys.readouterr().out
    assert printed.count("wandb sync") == 1
    assert f"{out}/wandb/offline-run-* {out}/runs/*/*/wandb/offline-run-*" in printed


def test_map_grid_draws_titles_and_row_labels():
    images, maps = torch.zeros(2, 3, 8, 8), {"teacher": torch.rand(2, 4, 4)}
    plain = map_grid(images, maps, (0, 0, 0), (1, 1, 1), scale=2)
    labelled = map_grid(
        images, maps, (0, 0, 0), (1, 1, 1), scale=2, titles=["image", "teacher"],
        row_labels=["true: circle\nteacher: ring", "true: ring\nteacher: ring"],
    )  # fmt: skip
    header = labelled.shape[1] - plain.shape[1]
    margin = labelled.shape[2] - plain.shape[2]
    assert header > 0 and margin > 0
    assert torch.equal(labelled[:, header:, margin:], plain.mul(255).round().div(255))
    assert (labelled[:, :header] < 1).any() and (labelled[:, header:, :margin] < 1).any()  # text


class _Fail(L.Callback):
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        raise RuntimeError("boom")


def test_a_failed_stage_finishes_its_run_and_the_next_train_gets_a_new_one(offline_wandb):
    cfg = load_config("quickstart", [*offline_wandb, "stage=teacher"])
    with pytest.raises(RuntimeError, match="boom"):
        train(cfg, callbacks=[_Fail()])
    assert wandb.run is None
    summary, _ = train(cfg)
    folders = sorted(Path(summary["run_dir"]).parent.glob("*/wandb/offline-run-*"))
    runs = sorted(_read(folders), key=lambda run: run.exit_code)
    assert [run.exit_code for run in runs] == [0, 1]
    assert runs[0].name != runs[1].name and "test/acc" in runs[0].summary


class _FailInEpoch(L.Callback):
    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.current_epoch == self.epoch:
            raise RuntimeError("crash")


def test_resume_continues_the_stage_s_wandb_run(offline_wandb, tmp_path, capsys):
    """A crash in epoch 1, then ``--resume``: the resumed stage logs into the run it started
    (one id, which ``wandb sync`` joins), with the later steps, not into a second run."""
    cfg = load_config("quickstart", [*offline_wandb, "stage=teacher", "teacher.epochs=2"])
    with pytest.raises(RuntimeError, match="crash"):
        train(cfg, callbacks=[_FailInEpoch(1)])
    (run_dir,) = (tmp_path / "runs" / "quickstart").iterdir()
    capsys.readouterr()
    summary, _ = train(load_config(str(run_dir / "config.yaml")), resume_dir=run_dir)
    # Offline, wandb does not mark the second folder as resumed: --id uploads both into one run.
    stage_id = f"{run_dir.name}-teacher"
    sync = f"wandb sync --id {stage_id} {run_dir / 'wandb'}/offline-run-*-{stage_id}*"
    out = capsys.readouterr().out
    assert out.count("wandb sync") == 1 and sync in out, out[-500:]
    folders = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert len(folders) == 2  # one per process start, both of the same run
    # offline-run-<date>_<time>-<id>, "-1" appended when both started in the same second
    assert all(f"-{run_dir.name}-teacher" in f.name for f in folders), folders
    crashed, resumed = sorted(_read(folders), key=lambda run: run.exit_code or 0, reverse=True)
    assert crashed.exit_code == 1 and resumed.exit_code == 0
    assert crashed.name == resumed.name == f"quickstart-{run_dir.name}-teacher"
    assert crashed.group == resumed.group == run_dir.name
    assert crashed.run_id == resumed.run_id == f"{run_dir.name}-teacher"

    def epochs(run: OfflineRun) -> set[int]:  # the epochs trained (the test logs epoch 2)
        return {int(row["epoch"]) for row in run.history if "train/acc" in row}

    assert epochs(crashed) == {0} and epochs(resumed) == {1}  # disjoint: sync appends
    assert resumed.summary["test/acc"] == pytest.approx(summary["teacher"]["test_acc"])


def test_resumed_sync_command_covers_folders_started_in_the_same_second(tmp_path):
    """wandb appends "-1" to a folder whose name (second + id) exists: one command per stage
    still covers both."""
    from distill.training.loggers import offline_sync_command

    run_dir = tmp_path / "20261128-143657-d5db8afc"
    for name in ("teacher", "teacher-1", "student"):
        (run_dir / "wandb" / f"offline-run-20261128_143657-{run_dir.name}-{name}").mkdir(
            parents=True
        )
    folders = run_dir / "wandb"
    assert offline_sync_command(run_dir, resumed=True) == (
        f"wandb sync --id {run_dir.name}-teacher {folders}/offline-run-*-{run_dir.name}-teacher*"
        f" && wandb sync --id {run_dir.name}-student {folders}/offline-run-*-{run_dir.name}-student*"
    )
    assert offline_sync_command(run_dir, resumed=False) == f"wandb sync {folders}/offline-run-*"
