"""Tests that fail when one of these behaviours is lost, each of which the other tests missed:

* the test split is scored with the checkpoint the summary names (``best.ckpt`` on a holdout),
  not with the weights the fit ended with;
* the teacher cache belongs to one teacher's weights, is read at the student's own epoch, and
  one built for fewer epochs than the student trains is rebuilt, not read;
* a resume loads its checkpoint without running pickled code, and continues from the newer
  ``interrupted.ckpt`` rather than from the start of the epoch (``last.ckpt``);
* the pipeline's training crops: a horizontal flip of about half the samples (both crops),
  ImageNet's area share of 0.08-1 for the random-resized crop, pad-crop offsets that reach
  ``2 * padding`` and random-resized boxes that reach every edge;
* the per-pair weight of ``loss.map_layers``.

Every run is a tiny one (``tests/conftest.py``) of about a second; the augmentation statistics
use fixed seeds, so every number below is the same on every run.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import lightning as L
import pytest
import torch
from omegaconf import OmegaConf

from distill import ExplanationDistiller, build_model
from distill.config import load_config
from distill.data import BatchRandomResizedCrop, datamodule_from_config
from distill.losses import LayerPair
from distill.tools.train import train
from distill.training.checkpoints import load_classifier
from distill.training.interrupt import RunInterrupted
from distill.training.teacher_cache import TeacherCache


def _weights(path: str | Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def _assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)


# --------------------------------------------------------------------------------------------
# The test split is scored with the selected checkpoint
# --------------------------------------------------------------------------------------------


class ZeroWeightsAfterLastValidation(L.Callback):
    """After the last epoch's validation (so after ``best.ckpt`` was chosen), set every weight
    to zero: the weights the fit ends with, and ``last.ckpt``, then differ from every
    checkpoint the holdout can select. Also records the weights the test split is scored with."""

    def __init__(self) -> None:
        self.tested: dict[str, torch.Tensor] | None = None

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch == trainer.max_epochs - 1:
            with torch.no_grad():
                for param in pl_module.parameters():
                    param.zero_()

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.tested = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}


def _test_accuracy(checkpoint: str | Path, dm) -> float:
    """Top-1 accuracy of a checkpoint on the datamodule's test split, computed here."""
    model = load_classifier(checkpoint)
    dm.setup("test")
    correct = total = 0
    with torch.no_grad():
        for batch in dm.test_dataloader():
            images, labels = dm.preprocess(tuple(batch), train=False)[:2]
            correct += int((model(images).argmax(dim=1) == labels).sum())
            total += len(labels)
    return correct / total


def test_test_split_is_scored_with_the_checkpoint_the_summary_names(tiny_overrides):
    overrides = [*tiny_overrides, "stage=teacher", "teacher.epochs=2"]
    spy = ZeroWeightsAfterLastValidation()
    summary, result = train(load_config("quickstart", overrides), callbacks=[spy])
    stage = summary["teacher"]
    assert stage["selected_on"] == "holdout"
    checkpoint = Path(stage["checkpoint"])
    assert checkpoint.name == "best.ckpt"
    best, last = _weights(checkpoint), _weights(checkpoint.with_name("last.ckpt"))
    assert not last["model.fc.weight"].any() and best["model.fc.weight"].any()  # zeroed
    assert spy.tested is not None and spy.tested.keys() == best.keys()
    for key, value in best.items():
        assert torch.equal(spy.tested[key], value), f"{key}: the test split saw other weights"
    # And the reported accuracy is that checkpoint's, computed here.
    selected = _test_accuracy(checkpoint, result.trainers["teacher"].datamodule)
    assert stage["test_acc"] == pytest.approx(selected, abs=1e-6)


# --------------------------------------------------------------------------------------------
# The teacher cache: one teacher's, read at the student's epoch, as long as the student trains
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def teachers(tmp_path_factory, tiny_overrides_for):
    """Two teacher checkpoints of one architecture: a trained one (A) and the same file with
    other classifier weights (B), which gives other logits and maps."""
    out = tmp_path_factory.mktemp("teachers")
    path_a = out / "teacher_a.ckpt"
    overrides = [*tiny_overrides_for(out), "stage=teacher", f"teacher.checkpoint={path_a}"]
    os.environ.pop("DISTILL_RUN_DIR", None)
    train(load_config("quickstart", overrides))
    checkpoint = torch.load(path_a, map_location="cpu", weights_only=True)
    state = checkpoint["state_dict"]
    for name in [k for k in state if k.endswith(("fc.weight", "fc.bias"))]:
        state[name] = state[name].flip(0)  # the classifier's classes in reverse order
    assert sum(k.endswith(("fc.weight", "fc.bias")) for k in state) == 2
    path_b = out / "teacher_b.ckpt"
    torch.save(checkpoint, path_b)
    return path_a, path_b, out


def _student(teachers, tiny_overrides_for, teacher: Path, epochs: int, cached: bool) -> dict:
    out = teachers[2]
    overrides = [
        *tiny_overrides_for(out / "students"),
        "stage=student",
        f"teacher.checkpoint={teacher}",
        f"student.epochs={epochs}",
        "data.augment_seed=7",
        "loss.map_weight=0.5",
        f"teacher_cache.enabled={str(cached).lower()}",
        "teacher_cache.dtype=float32",  # exact: a cached run trains the live run's student
        f"teacher_cache.dir={out / 'cache'}",
    ]
    os.environ.pop("DISTILL_RUN_DIR", None)
    return train(load_config("quickstart", overrides))[0]["student"]


def _cache(stage: dict) -> TeacherCache:
    folder = Path(stage["teacher_cache"])
    return TeacherCache.open(folder, json.loads((folder / "header.json").read_text())["key"])


@pytest.fixture(scope="module")
def one_epoch_students(teachers, tiny_overrides_for):
    """Students of teachers A and B, one epoch each, with one cache folder for both."""
    path_a, path_b, _ = teachers
    a = _student(teachers, tiny_overrides_for, path_a, epochs=1, cached=True)
    b = _student(teachers, tiny_overrides_for, path_b, epochs=1, cached=True)
    return a, b


@pytest.fixture(scope="module")
def two_epoch_students(teachers, tiny_overrides_for, one_epoch_students):
    """Teacher A's student for two epochs: with the cache (where a one-epoch cache of A is
    found first) and live."""
    path_a = teachers[0]
    cached = _student(teachers, tiny_overrides_for, path_a, epochs=2, cached=True)
    live = _student(teachers, tiny_overrides_for, path_a, epochs=2, cached=False)
    return cached, live


def test_another_teachers_student_gets_its_own_cache(one_epoch_students):
    a, b = one_epoch_students
    assert a["teacher_cache"] != b["teacher_cache"], "teacher B's student read A's cache"
    cache_a, cache_b = _cache(a), _cache(b)
    assert cache_a.is_complete() and cache_b.is_complete()
    # The cached logits are each teacher's: B's classes are A's in reverse order.
    logits_a = cache_a.values[0, :, : cache_a.num_classes]
    logits_b = cache_b.values[0, :, : cache_b.num_classes]
    written = logits_a.abs().sum(1) > 0  # the dropped last batch's rows are never written
    assert written.sum() >= 64 and torch.equal(written, logits_b.abs().sum(1) > 0)
    logits_a, logits_b = logits_a[written], logits_b[written]
    assert not torch.equal(logits_a, logits_b)
    torch.testing.assert_close(logits_b.argmax(1), cache_a.num_classes - 1 - logits_a.argmax(1))


def test_cached_student_reads_each_epochs_own_rows(two_epoch_students):
    """Epoch 1 of a cached run must read epoch 1's teacher outputs: its final weights (not
    ``best.ckpt``, which may be epoch 0's in both runs) equal the live run's, bit for bit."""
    cached, live = two_epoch_students
    cache = _cache(cached)
    assert not torch.equal(cache.values[0], cache.values[1]), "epochs must differ for this test"
    for name in ("last.ckpt", "best.ckpt"):
        last_cached = _weights(Path(cached["checkpoint"]).with_name(name))
        last_live = _weights(Path(live["checkpoint"]).with_name(name))
        _assert_same_weights(last_cached, last_live)
    assert cached["steps"] == live["steps"] and cached["test_acc"] == live["test_acc"]


def test_a_cache_for_fewer_epochs_is_rebuilt(one_epoch_students, two_epoch_students):
    one, _ = one_epoch_students
    two, _ = two_epoch_students
    assert one["teacher_cache"] == two["teacher_cache"]  # the same key: the folder is rebuilt
    cache = _cache(two)
    assert cache.epochs == 2 and cache.complete_epochs == {0, 1}
    written = cache.written.sum(1)  # every training sample a batch holds, in both epochs
    assert int(written[0]) == int(written[1]) > 0
    assert two["epochs"] == 2


# --------------------------------------------------------------------------------------------
# Resume
# --------------------------------------------------------------------------------------------


class FailAt(L.Callback):
    """Raise an ordinary error (as a crash would) after one training batch: nothing but the
    epoch-end ``last.ckpt`` is left to resume from."""

    def __init__(self, epoch: int, batch: int) -> None:
        self.epoch, self.batch = epoch, batch

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.current_epoch == self.epoch and batch_idx == self.batch:
            raise RuntimeError("crash injected by the test")


class MakeDirectoryWhenUnpickled:
    """Pickles to a call of ``os.mkdir(path)``: loading it with ``weights_only=False`` runs
    that call, which is how a crafted checkpoint would run code."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (os.mkdir, (self.path,))


def test_resume_never_runs_code_from_a_checkpoint(tiny_overrides, tmp_path):
    overrides = [*tiny_overrides, "stage=teacher", "teacher.epochs=2"]
    with pytest.raises(RuntimeError, match="crash injected"):
        train(load_config("quickstart", overrides), callbacks=[FailAt(epoch=1, batch=0)])
    (run_dir,) = (tmp_path / "runs" / "quickstart").iterdir()
    last = run_dir / "teacher" / "last.ckpt"
    checkpoint = torch.load(last, map_location="cpu", weights_only=True)
    assert checkpoint["epoch"] == 0
    marker = tmp_path / "code-ran"
    checkpoint["payload"] = MakeDirectoryWhenUnpickled(marker)
    torch.save(checkpoint, last)

    with pytest.raises(Exception):  # noqa: B017 - whichever error refuses it, nothing may run
        train(load_config(str(run_dir / "config.yaml")), resume_dir=run_dir)
    assert not marker.exists(), "resuming unpickled code from last.ckpt"


class FirstStep(L.Callback):
    """The global step at the first training batch of a fit."""

    def __init__(self) -> None:
        self.first: int | None = None
        self.batches = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.first is None:
            self.first = trainer.global_step
        self.batches += 1


class SigtermAt(L.Callback):
    def __init__(self, epoch: int, batch: int) -> None:
        self.epoch, self.batch = epoch, batch

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.current_epoch == self.epoch and batch_idx == self.batch:
            os.kill(os.getpid(), signal.SIGTERM)


def test_resume_continues_from_the_interrupted_batch_not_the_epoch_start(tiny_overrides, tmp_path):
    overrides = [*tiny_overrides, "stage=teacher", "teacher.epochs=2"]
    # The run stops once the batch in flight ends and says what it saved.
    with pytest.raises(RunInterrupted):
        train(load_config("quickstart", overrides), callbacks=[SigtermAt(epoch=1, batch=0)])
    (run_dir,) = (tmp_path / "runs" / "quickstart").iterdir()
    epoch_end = torch.load(run_dir / "teacher" / "last.ckpt", weights_only=True)["global_step"]
    interrupted = torch.load(run_dir / "teacher" / "interrupted.ckpt", weights_only=True)
    assert interrupted["global_step"] == epoch_end + 1  # one batch into epoch 1

    counter = FirstStep()
    summary, _ = train(
        load_config(str(run_dir / "config.yaml")), resume_dir=run_dir, callbacks=[counter]
    )
    assert counter.first == interrupted["global_step"], (
        f"the resume started at step {counter.first}; last.ckpt is at {epoch_end}, "
        f"interrupted.ckpt at {interrupted['global_step']}"
    )
    assert counter.first + counter.batches == summary["teacher"]["steps"] == 2 * epoch_end


# --------------------------------------------------------------------------------------------
# The pipeline's training crops, measured on ramp images
# --------------------------------------------------------------------------------------------

RAMP = 14  # grey levels per pixel: a crop's values say where it was taken from


def _ramps(n: int, side: int, step: int, offset: int = 0) -> torch.Tensor:
    """``n`` uint8 images: channel 0 is ``offset + step * column``, channel 1 the same of the
    row, channel 2 constant."""
    ramp = offset + step * torch.arange(side)
    image = torch.stack(
        [ramp.expand(side, side), ramp[:, None].expand(side, side), torch.full((side, side), 99)]
    )
    assert int(image.max()) <= 255
    return image.to(torch.uint8).expand(n, 3, side, side).contiguous()


def _pipeline_datamodule(*overrides: str):
    """The datamodule a quickstart run builds with these overrides."""
    cfg = load_config("quickstart", list(overrides))
    return datamodule_from_config(OmegaConf.to_container(cfg.data), seed=cfg.seed)


def _train_levels(dm, images: torch.Tensor) -> torch.Tensor:
    """The pipeline's training transform of a uint8 batch, back in 0..255 levels."""
    out, _ = dm.preprocess((images, torch.zeros(len(images), dtype=torch.long)), train=True)
    mean = torch.tensor(dm.mean).view(1, 3, 1, 1)
    std = torch.tensor(dm.std).view(1, 3, 1, 1)
    return out * std * 255 + mean * 255


def _fit_axis(profile: torch.Tensor, step: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(start, length)`` in source pixels of the box each output ``profile`` ``[N, S]`` was
    resampled from, by a least-squares line through the inner bins (the outer two may be
    clamped at the image border): aligned ``roi_align`` gives bin ``j`` the mean of the
    source ramp over ``[x0 + j * L / S, x0 + (j + 1) * L / S]`` in pixel-edge coordinates."""
    size = profile.shape[1]
    j = torch.arange(2, size - 2, dtype=torch.float64) + 0.5
    y = profile[:, 2 : size - 2].double() / step
    slope = ((j - j.mean()) * (y - y.mean(1, keepdim=True))).sum(1) / ((j - j.mean()) ** 2).sum()
    start = (y - slope[:, None] * j).mean(1) + 0.5  # centre of pixel 0 is at 0.5
    return start, slope * size


def _measured_boxes(levels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Boxes ``[N, 4]`` (x0, y0, x1, y1, integers) and flips ``[N]`` of random-resized crops of
    :func:`_ramps` images, read from the crops' values alone."""
    columns = levels[:, 0].mean(1)  # [N, S]: channel 0 along the width
    flips = columns[:, -3] < columns[:, 2]
    columns = torch.where(flips[:, None], columns.flip(1), columns)
    x0, w = _fit_axis(columns, RAMP)
    y0, h = _fit_axis(levels[:, 1].mean(2), RAMP)
    boxes = torch.stack([x0, y0, x0 + w, y0 + h], 1)
    assert (boxes - boxes.round()).abs().max() < 0.2, "not a box of whole pixels"
    return boxes.round().long(), flips


@pytest.fixture(scope="module")
def random_resized_crops(tmp_path_factory) -> tuple[torch.Tensor, torch.Tensor, int]:
    """2,000 training crops of the pipeline's random-resized transform (16 px from 18 px) for
    an image folder (none is read: the crops are of the images given here)."""
    dm = _pipeline_datamodule(
        "data.name=imagefolder",
        f"data.root={tmp_path_factory.mktemp('photos')}",
        "data.crop=random_resized",
        "data.image_size=16",
    )
    side = dm.transforms.decode_size
    assert side == 18  # round(16 / 0.875)
    boxes, flips = _measured_boxes(_train_levels(dm, _ramps(2000, side, RAMP)))
    return boxes, flips, side


def test_pipeline_random_resized_crop_flips_half_of_the_samples(random_resized_crops):
    _, flips, _ = random_resized_crops
    share = float(flips.double().mean())
    assert 0.46 < share < 0.54, f"share of flipped random-resized crops {share:.3f}"


def test_pipeline_random_resized_crop_takes_area_shares_of_8_to_100_percent(random_resized_crops):
    from torchvision.transforms import RandomResizedCrop

    boxes, _, side = random_resized_crops
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    share = (w * h).double() / side**2
    torch.manual_seed(0)
    reference = torch.tensor(
        [
            p[2] * p[3] / side**2
            for p in (
                RandomResizedCrop.get_params(torch.zeros(3, side, side), [0.08, 1], [3 / 4, 4 / 3])
                for _ in range(2000)
            )
        ],
        dtype=torch.float64,
    )
    assert abs(float(share.mean() - reference.mean())) < 0.03, (share.mean(), reference.mean())
    small = float((share < 0.2).double().mean())
    assert 0.08 < small < 0.2, f"share of crops under 20% of the image: {small:.3f}"
    assert float(share.min()) < 0.1 and float(share.max()) == 1.0
    ratio = (w / h).double()
    assert float(ratio.min()) >= 0.65 and float(ratio.max()) <= 1.55  # 3/4-4/3, whole pixels


def test_pipeline_random_resized_boxes_reach_every_edge(random_resized_crops):
    boxes, _, side = random_resized_crops
    x0, y0, x1, y1 = boxes.unbind(1)
    assert int(x0.min()) == 0 and int(y0.min()) == 0
    assert int(x1.max()) == side and int(y1.max()) == side
    # Boxes smaller than the image also touch the far edges (not only full-size ones).
    assert bool(((x1 == side) & (x0 > 0)).any()) and bool(((y1 == side) & (y0 > 0)).any())
    assert bool(((x0 == 0) & (x1 < side)).any()) and bool(((y0 == 0) & (y1 < side)).any())


def test_random_resized_crop_positions_cover_every_offset():
    """Every box's offset is uniform over ``0..size - box``: both ends are reached."""
    height, width = 60, 80
    boxes, _ = BatchRandomResizedCrop(8, generator=0).sample_params(4000, height, width)
    x0, y0, x1, y1 = boxes.long().unbind(1)
    free_x, free_y = width - (x1 - x0), height - (y1 - y0)
    assert bool(((x1 == width) & (free_x > 0)).any()) and bool(((x0 == 0) & (free_x > 0)).any())
    assert bool(((y1 == height) & (free_y > 0)).any()) and bool(((y0 == 0) & (free_y > 0)).any())
    # The relative position is uniform on [0, 1]: its mean is 1/2, its ends both reached.
    movable = (free_x > 3) & (free_y > 3)
    rel_x = x0[movable].double() / free_x[movable]
    rel_y = y0[movable].double() / free_y[movable]
    for rel in (rel_x, rel_y):
        assert abs(float(rel.mean()) - 0.5) < 0.03
        assert float((rel == 1).double().mean()) > 0.005


def test_pipeline_pad_crop_reaches_every_offset_and_flips_half():
    dm = _pipeline_datamodule()
    padding = dm.padding
    assert padding == 4
    step, offset, side = 6, 30, 32  # levels 30..216: never the padding's 0
    levels = _train_levels(dm, _ramps(1000, side, step, offset)).round()
    mid = side // 2
    columns = levels[:, 0, mid]
    flips = columns[:, mid + 4] < columns[:, mid - 4]  # inner columns never see the padding
    columns = torch.where(flips[:, None], columns.flip(1), columns)
    # An output pixel (r, c) is source pixel (r + dy - padding, c + dx - padding).
    dx = (columns[:, mid] - offset) / step - mid + padding
    dy = (levels[:, 1, mid, mid] - offset) / step - mid + padding
    assert torch.equal(dx, dx.round()) and torch.equal(dy, dy.round())
    full = set(range(2 * padding + 1))
    assert set(dx.long().tolist()) == full, sorted(set(dx.long().tolist()))
    assert set(dy.long().tolist()) == full, sorted(set(dy.long().tolist()))
    share = float(flips.double().mean())
    assert 0.44 < share < 0.56, f"share of flipped pad crops {share:.3f}"


# --------------------------------------------------------------------------------------------
# Per-pair map weights
# --------------------------------------------------------------------------------------------


def test_each_map_layer_pair_is_weighted_by_its_own_weight():
    torch.manual_seed(0)
    teacher = build_model("wrn_16_1", num_classes=10).eval()
    student = build_model("wrn_16_1", num_classes=10).eval()
    images, labels = torch.randn(4, 3, 32, 32), torch.tensor([0, 3, 5, 9])
    cam = (student.cam_layer, teacher.cam_layer)

    def map_part(pairs: list[LayerPair]) -> torch.Tensor:
        distiller = ExplanationDistiller(teacher, student, map_weight=1.0, map_layers=pairs)
        return distiller.eval()(images, labels).parts["map"]

    first = map_part([LayerPair(*cam)])
    second = map_part([LayerPair("block2", "block2")])
    assert float(first) > 0 and float(second) > 0
    for w1, w2 in [(1.0, 0.5), (0.25, 2.0), (1.0, 0.0)]:
        both = map_part([LayerPair(*cam, weight=w1), LayerPair("block2", "block2", weight=w2)])
        torch.testing.assert_close(both, w1 * first + w2 * second, rtol=1e-5, atol=1e-7)
    # The pairs of the config (plain mappings with a weight) are weighted the same way.
    config = load_config(
        "quickstart",
        [
            f"loss.map_layers=[{{student: {cam[0]}, teacher: {cam[1]}, weight: 0.25}},"
            " {student: block2, teacher: block2, weight: 2.0}]"
        ],
    )
    pairs = [LayerPair(**pair) for pair in config.loss.map_layers]
    torch.testing.assert_close(map_part(pairs), 0.25 * first + 2.0 * second, rtol=1e-5, atol=1e-7)
