"""Data problems are refused (or handled) before anything trains, each with one line.

The holdout never takes a class's last training image; class folders that differ between
splits, an empty class folder and a missing split folder are named at start-up; an empty method
list is refused before the teacher trains; the last incomplete training batch is dropped on
every data path, so batch norm never sees a batch of one; the 1x1-grid error suggests an image
size that gives 4x4 maps; a one-seed comparison prints no spread.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from distill.config import ConfigError, load_config
from distill.config.resolution import cam_grid
from distill.data import (
    DatasetNotFoundError,
    ImageFolderDataModule,
    ShapesDataModule,
    holdout_split,
)
from distill.models import build_model
from distill.tools.compare_report import plot, summarize
from distill.tools.train import train

REPO = Path(__file__).resolve().parent.parent


def _write_tree(root: Path, splits: dict[str, dict[str, int]], size: int = 8) -> Path:
    """``root/<split>/<class>/<i>.png``: ``n`` small images per class (an empty folder at 0)."""
    rng = np.random.default_rng(0)
    for split, classes in splits.items():
        for label, (name, n) in enumerate(classes.items()):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 40, (size, size, 3), np.uint8) + 40 * label
                Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{i:03d}.png")
    return root


def _one_line(error: BaseException) -> str:
    message = str(error)
    assert "\n" not in message, message
    return message


def _cli(script: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "DISTILL_RUN_DIR"}
    env["PYTHONPATH"] = str(REPO)
    return subprocess.run(
        [sys.executable, str(REPO / script), *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=300,
    )


def _error_line(result: subprocess.CompletedProcess) -> str:
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    return lines[0]


# ---- the holdout never takes a class's last training image -------------------------------


def test_a_class_of_one_image_keeps_it_to_train():
    labels = torch.tensor([0] * 10 + [1])  # class 1 has a single image
    train_idx, holdout = holdout_split(labels, 0.1, seed=0)
    assert 10 in train_idx.tolist()  # the single image trains
    assert holdout.tolist() and all(labels[holdout] == 0)
    assert len(train_idx) + len(holdout) == 11


def test_a_large_fraction_leaves_one_image_per_class_to_train():
    labels = torch.arange(6).repeat_interleave(48)  # 6 classes of 48
    train_idx, holdout = holdout_split(labels, 0.99, seed=0)
    assert labels[train_idx].bincount().tolist() == [1] * 6
    assert labels[holdout].bincount().tolist() == [47] * 6


def test_the_datamodule_warns_naming_the_capped_class(tmp_path):
    root = _write_tree(tmp_path, {"train": {"big": 10, "tiny": 1}, "test": {"big": 2, "tiny": 2}})
    dm = ImageFolderDataModule(root, val_fraction=0.1, batch_size=4)
    with pytest.warns(UserWarning) as record:
        dm.setup("fit")
    (warning,) = [w for w in record if "val_fraction" in str(w.message)]
    message = str(warning.message)
    assert "'tiny' (1 image)" in message and "'big'" not in message and "\n" not in message
    assert dm.split_size("train") == 10 and dm.split_size("val") == 1
    tiny = dm.classes.index("tiny")
    assert tiny in dm._split("train").labels.tolist()


def test_a_holdout_left_empty_is_refused_in_one_line(tmp_path):
    root = _write_tree(tmp_path, {"train": {"a": 1, "b": 1}, "test": {"a": 1, "b": 1}})
    dm = ImageFolderDataModule(root, val_fraction=0.1, batch_size=4)
    with pytest.raises(ConfigError, match=r"data.val_fraction=0.1 leaves nothing to validate on"):
        dm.setup("fit")


def test_val_fraction_099_trains_one_image_per_class(tiny_overrides, tmp_path):
    """48 images per class at val_fraction=0.99: each class trains on one image, as one batch
    of 6 (smaller than data.batch_size=64), and the run writes its checkpoints."""
    overrides = [
        *tiny_overrides,
        "stage=teacher",
        "data.shapes.num_train=288",
        "data.val_fraction=0.99",
    ]
    with pytest.warns(UserWarning, match="data.val_fraction=0.99 would hold out every"):
        summary, result = train(load_config("quickstart", overrides))
    dm = result.trainers["teacher"].datamodule
    assert dm.split_size("train") == 6 and dm.split_size("val") == 282
    assert result.trainers["teacher"].global_step == 1  # one batch of 6 images
    assert Path(summary["teacher"]["checkpoint"]).is_file()


# ---- ImageFolder layout: named at start-up ---------------------------------------------------


@pytest.mark.parametrize(
    ("test_classes", "only_in_test", "only_in_train"),
    [({"a": 2, "b": 2, "c": 2}, "'c'", None), ({"a": 2}, None, "'b'")],
)
def test_class_folders_that_differ_between_splits_are_named_at_setup(
    tmp_path, test_classes, only_in_test, only_in_train
):
    root = _write_tree(tmp_path, {"train": {"a": 4, "b": 4}, "test": test_classes})
    dm = ImageFolderDataModule(root, val_fraction=0.25, batch_size=4)
    with pytest.raises(DatasetNotFoundError) as info:
        dm.setup("fit")  # fit loads train and its holdout only: test is checked all the same
    message = _one_line(info.value)
    if only_in_test:
        assert f"only in '{root / 'test'}': {only_in_test}" in message
    if only_in_train:
        assert f"only in '{root / 'train'}': {only_in_train}" in message


def test_an_empty_class_folder_is_named(tmp_path):
    root = _write_tree(tmp_path, {"train": {"a": 3, "b": 0, "c": 3}, "test": {"a": 1, "c": 1}})
    (root / "test" / "b").mkdir()
    (root / "test" / "b" / "x.png").write_bytes((root / "test" / "a" / "000.png").read_bytes())
    dm = ImageFolderDataModule(root, batch_size=4)
    with pytest.raises(DatasetNotFoundError) as info:
        dm.prepare_data()
    message = _one_line(info.value)
    assert f"class folder '{root / 'train' / 'b'}' of '{root / 'train'}' holds no images" in message
    assert "the other 2 class folder(s) hold 6 images" in message


def test_train_and_val_without_test_suggests_val_dir(tmp_path):
    root = _write_tree(tmp_path, {"train": {"a": 2, "b": 2}, "val": {"a": 1, "b": 1}})
    dm = ImageFolderDataModule(root, batch_size=4)
    with pytest.raises(DatasetNotFoundError) as info:
        dm.prepare_data()
    message = _one_line(info.value)
    assert "data.imagefolder.val_dir=test" in message  # the option that named the missing folder
    assert message.endswith("set data.imagefolder.val_dir=val")
    # ... and the suggestion works
    ImageFolderDataModule(root, val_dir="val", batch_size=4).prepare_data()


def test_cli_data_layout_errors_are_one_line_exit_1_before_anything_is_written(
    tiny_overrides, tmp_path
):
    root = _write_tree(
        tmp_path / "data", {"train": {"a": 4, "b": 4}, "test": {"a": 2, "b": 2, "c": 2}}
    )
    data = ["data.name=imagefolder", f"data.root={root}", "stage=teacher"]
    result = _cli("train.py", *tiny_overrides, *data, cwd=tmp_path)
    assert result.returncode == 1, result.stderr[-3000:]
    assert f"only in '{root / 'test'}': 'c'" in _error_line(result)
    assert not (tmp_path / "runs").exists()


def test_cli_empty_holdout_exit_2(tiny_overrides, tmp_path):
    root = _write_tree(tmp_path / "data", {"train": {"a": 1, "b": 1}, "test": {"a": 1, "b": 1}})
    data = ["data.name=imagefolder", f"data.root={root}", "stage=teacher"]
    result = _cli("train.py", *tiny_overrides, *data, cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "leaves nothing to validate on" in _error_line(result)
    assert not (tmp_path / "runs").exists()


# ---- the last incomplete training batch is dropped -----------------------------------------


def _batch_sizes(dm) -> list[int]:
    dm.setup("fit")
    return [len(batch[1]) for batch in dm.train_dataloader()]


@pytest.mark.parametrize("in_memory", [True, False])
def test_the_last_incomplete_training_batch_is_dropped(in_memory):
    dm = ShapesDataModule(num_train=129, num_val=12, batch_size=128, in_memory=in_memory)
    assert _batch_sizes(dm) == [128]
    assert len(dm.train_dataloader()) == 1
    # validation keeps every image
    assert sum(len(batch[1]) for batch in dm.val_dataloader()) == 12
    # opting out keeps it; a split smaller than one batch trains as one batch
    keep = ShapesDataModule(num_train=129, num_val=12, batch_size=128, drop_last=False)
    assert _batch_sizes(keep) == [128, 1]
    small = ShapesDataModule(num_train=30, num_val=12, batch_size=128, in_memory=in_memory)
    assert _batch_sizes(small) == [30]


def test_the_streamed_path_drops_it_too(tmp_path):
    pytest.importorskip("litdata")
    from distill.data import StreamDataModule
    from distill.data.stream import main as stream_main

    src = _write_tree(tmp_path / "src", {"train": {"a": 3, "b": 3, "c": 3}, "val": {"a": 1}})
    for name in ("b", "c"):
        (src / "val" / name).mkdir()
        (src / "val" / name / "0.png").write_bytes((src / "val" / "a" / "000.png").read_bytes())
    assert stream_main(["optimize", str(src), str(tmp_path / "out")]) == 0
    dm = StreamDataModule(tmp_path / "out", image_size=8, batch_size=4, num_workers=0)
    assert _batch_sizes(dm) == [4, 4]  # 9 images: the ninth would be a batch of one


def test_config_default_drops_it():
    assert load_config("quickstart").data.drop_last is True


@pytest.mark.slow  # a resnet18 epoch on 129 images: about 20 s on 2 CPU cores
def test_129_images_at_batch_128_train_a_batch_norm_teacher(tiny_overrides):
    overrides = [
        *tiny_overrides,
        "stage=teacher",
        "teacher.name=resnet18",
        "data.shapes.num_train=129",
        "data.val_fraction=0",
        "data.batch_size=128",
    ]
    summary, result = train(load_config("quickstart", overrides))
    assert result.trainers["teacher"].global_step == 1
    assert Path(summary["teacher"]["checkpoint"]).is_file()


# ---- map grids: the suggested image size gives 4x4 maps --------------------------------------


@pytest.mark.parametrize(
    ("teacher", "size", "suggested"),
    [("wrn_16_1", 1, 16), ("wrn_16_1", 2, 16), ("resnet18", 1, 128), ("resnet18", 2, 128)],
)
def test_the_1x1_grid_error_suggests_a_size_that_gives_4x4(teacher, size, suggested):
    with pytest.raises(ConfigError) as info:
        load_config("quickstart", [f"data.image_size={size}", f"teacher.name={teacher}"])
    message = _one_line(info.value)
    assert f"(data.image_size={suggested} gives 4x4)" in message
    with torch.device("meta"):
        model = build_model(teacher, num_classes=10)
    assert min(cam_grid(model, model.cam_layer, (3, suggested, suggested))) >= 4


# ---- compare: empty choices refused, one seed shows no spread -------------------------------


@pytest.mark.parametrize(
    ("methods", "seeds", "pattern"),
    [
        ([], [0], "--methods is empty"),
        (["kd", "nope"], [0], "unknown methods"),
        (["kd"], [], "--seeds is empty"),
    ],
)
def test_empty_or_unknown_choices_are_refused(methods, seeds, pattern):
    from distill.tools.compare import check_choices

    with pytest.raises(ConfigError, match=pattern) as info:
        check_choices(methods, seeds)
    _one_line(info.value)


def test_compare_cli_with_no_methods_exits_2_before_training(tiny_overrides, tmp_path):
    result = _cli("compare.py", "--methods", "", *tiny_overrides, cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "--methods is empty" in _error_line(result)
    assert not (tmp_path / "runs").exists()


def test_one_seed_prints_no_spread(tmp_path):
    rows = [{"method": "kd", "seed": 0, "selected_on": "last", "test_acc": 0.8}]
    table = summarize(rows)
    assert "| CE + KD | 1 | last | 80.00 | n/a |" in table
    assert "±" not in table
    plot(rows, tmp_path / "results.png")  # no whisker, no error
    assert (tmp_path / "results.png").stat().st_size > 0
    two = summarize([*rows, {**rows[0], "seed": 1, "test_acc": 0.9}])
    assert "| CE + KD | 2 | last | 85.00 ± 7.07 |" in two
