"""The evaluation protocol: a class-balanced validation holdout, one test with the selected
checkpoint, and summaries that say what selected it."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest
import torch

from distill.config import ConfigError, load_config
from distill.data import ShapesDataModule, holdout_split
from distill.tools.train import train


def _labels(dm: ShapesDataModule, split: str) -> torch.Tensor:
    data = dm._split(split)
    if hasattr(data, "images"):  # tensor storage
        return data.labels
    return torch.tensor([int(data.dataset[i][1]) for i in range(len(data))])  # decoded


def test_holdout_split_is_class_balanced_seeded_and_disjoint():
    labels = torch.arange(6).repeat_interleave(torch.tensor([50, 40, 30, 20, 10, 100]))
    train, holdout = holdout_split(labels, 0.1, seed=0)
    assert torch.equal(torch.sort(torch.cat([train, holdout])).values, torch.arange(len(labels)))
    assert torch.bincount(labels[holdout]).tolist() == [5, 4, 3, 2, 1, 10]
    again = holdout_split(labels, 0.1, seed=0)[1]
    other = holdout_split(labels, 0.1, seed=1)[1]
    assert torch.equal(holdout, again) and not torch.equal(holdout, other)


@pytest.mark.parametrize("in_memory", [True, False])
def test_validation_is_a_holdout_of_the_training_images_never_the_test_images(in_memory):
    common = dict(num_train=300, num_val=60, in_memory=in_memory, return_boxes=True)
    dm = ShapesDataModule(val_fraction=0.2, **common)
    full = ShapesDataModule(val_fraction=0.0, **common)
    train_idx, holdout_idx = dm.holdout_indices()
    all_train = full._split("train")
    train_images = all_train.images if in_memory else torch.from_numpy(all_train.dataset.images)
    assert len(holdout_idx) == 60 and len(train_idx) == 240
    # Per class: 20% of its training images are held out.
    counts = torch.bincount(_labels(full, "train"), minlength=6)
    assert torch.bincount(_labels(dm, "val"), minlength=6).tolist() == [
        round(0.2 * c) for c in counts.tolist()
    ]
    assert torch.equal(_labels(dm, "val"), _labels(full, "train")[holdout_idx])
    assert torch.equal(_labels(dm, "train"), _labels(full, "train")[train_idx])
    assert torch.equal(_labels(dm, "test"), _labels(full, "test"))
    if in_memory:
        assert torch.equal(dm._split("val").images, all_train.images[holdout_idx])
    else:
        image, *_ = dm._split("val").dataset[0]
        assert torch.equal(
            torch.as_tensor(list(image.getdata())).view(32, 32, 3),
            torch.as_tensor(train_images[holdout_idx[0]]),
        )
    # Boxes follow the holdout, and the evaluation loaders iterate exactly those images.
    assert torch.equal(dm.val_boxes, full._generate("train").boxes[holdout_idx])
    assert torch.equal(dm.split_extras("test")[0], full._generate("test").boxes)
    assert sum(len(b[1]) for b in dm.val_dataloader()) == 60
    assert sum(len(b[1]) for b in dm.test_dataloader()) == 60


def test_train_fraction_is_taken_from_what_the_holdout_leaves():
    dm = ShapesDataModule(num_train=600, num_val=60, val_fraction=0.1, train_fraction=0.5)
    train_idx, holdout_idx = dm.holdout_indices()
    assert len(dm._split("train").labels) == pytest.approx(0.5 * len(train_idx), abs=6)
    full = ShapesDataModule(num_train=600, num_val=60, val_fraction=0.0)._split("train").images
    held_out = full[holdout_idx].flatten(1)
    trained = dm._split("train").images.flatten(1)
    assert not (trained[:, None] == held_out[None]).all(-1).any()  # no held-out image trains


def test_val_fraction_is_checked():
    with pytest.raises(ConfigError, match=r"data.val_fraction=1.0 must be in \[0, 1\)"):
        load_config("quickstart", ["data.val_fraction=1.0"])


class CountEvaluations(L.Callback):
    """How many validation and test epochs ran, and how many images each saw."""

    def __init__(self) -> None:
        self.val_images: list[int] = []
        self.tests = 0
        self.test_images = 0

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, *args):
        if not trainer.sanity_checking:
            if batch_idx == 0:
                self.val_images.append(0)
            self.val_images[-1] += len(batch[1])

    def on_test_epoch_start(self, trainer, pl_module):
        self.tests += 1

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, *args):
        self.test_images += len(batch[1])


def test_holdout_selects_the_best_checkpoint_and_the_test_split_is_used_once(
    tiny_overrides, tmp_path, capsys
):
    counter = CountEvaluations()
    cfg = load_config("quickstart", [*tiny_overrides, "stage=teacher", "teacher.epochs=3"])
    summary, _ = train(cfg, callbacks=[counter])
    teacher = summary["teacher"]
    assert (teacher["selected_on"], teacher["val_split"]) == ("holdout", "holdout")
    run_dir = Path(summary["run_dir"])
    assert teacher["checkpoint"] == str(run_dir / "teacher" / "best.ckpt")
    holdout = round(0.1 * 192 / 6) * 6  # tiny shapes: 192 training images, 6 classes
    assert counter.val_images == [holdout] * 3  # every epoch validates on the holdout only
    # the 64 test images, once with the selected checkpoint and once with the last epoch's
    # weights (reported beside it, selecting nothing)
    assert (counter.tests, counter.test_images) == (2, 128)
    assert 0 <= teacher["test_acc_last"] <= 1
    best = torch.load(run_dir / "teacher" / "best.ckpt", weights_only=True)
    monitor = [v for k, v in best["callbacks"].items() if "val/acc" in k][0]
    assert float(monitor["best_model_score"]) == pytest.approx(teacher["val_acc_best"])
    saved = json.loads((run_dir / "summary.json").read_text())["teacher"]
    assert saved["selected_on"] == "holdout"
    printed = [line.split() for line in capsys.readouterr().out.splitlines()]
    assert ["teacher.selected_on", "holdout"] in printed


def test_without_a_holdout_the_last_checkpoint_is_tested(tiny_overrides, tmp_path):
    counter = CountEvaluations()
    overrides = [*tiny_overrides, "stage=teacher", "teacher.epochs=2", "data.val_fraction=0"]
    summary, result = train(load_config("quickstart", overrides), callbacks=[counter])
    teacher = summary["teacher"]
    run_dir = Path(summary["run_dir"])
    assert (teacher["selected_on"], teacher["val_split"]) == ("last", "test")
    assert teacher["checkpoint"] == str(run_dir / "teacher" / "last.ckpt")
    assert not (run_dir / "teacher" / "best.ckpt").exists()  # nothing is selected on the test split
    assert counter.val_images == [64, 64]  # the curves are on the test split: monitoring only
    last = torch.load(run_dir / "teacher" / "last.ckpt", weights_only=True)
    assert last["global_step"] == 2 * 3  # 192 images, batch 64, 2 epochs: the final weights
    for key, value in result.teacher.state_dict().items():
        assert torch.equal(last["state_dict"][f"model.{key}"], value), key
