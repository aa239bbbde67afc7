"""The teacher-output cache: storage round trips, refusal of foreign caches, and equal losses."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from distill import ExplanationDistiller, build_model
from distill.losses import TeacherOutputs
from distill.training.teacher_cache import TeacherCache, TeacherCacheError


def _distiller(**kwargs) -> ExplanationDistiller:
    torch.manual_seed(0)
    return ExplanationDistiller(build_model("wrn_16_1", 4), build_model("wrn_16_1", 4), **kwargs)


@pytest.mark.parametrize("map_target", ["label", "teacher"])
def test_cached_teacher_outputs_give_the_live_losses_and_gradients(map_target):
    distiller = _distiller(map_target=map_target, map_weight=0.5)
    images, labels = torch.randn(6, 3, 32, 32), torch.tensor([0, 1, 2, 3, 0, 1])
    live = distiller(images, labels)
    live_grads = torch.autograd.grad(live.loss, list(distiller.student.parameters()))
    cached = distiller(images, labels, teacher=distiller.teacher_outputs(images, labels))
    cached_grads = torch.autograd.grad(cached.loss, list(distiller.student.parameters()))
    assert torch.equal(live.loss, cached.loss)
    assert live.parts.keys() == cached.parts.keys() == {"ce", "kd", "map"}
    assert all(torch.equal(a, b) for a, b in zip(live_grads, cached_grads, strict=True))
    assert torch.equal(live.teacher_maps[0], cached.teacher_maps[0])


def test_cached_outputs_are_refused_where_they_cannot_stand_in_for_the_teacher():
    images, labels = torch.randn(2, 3, 32, 32), torch.tensor([0, 1])
    distiller = _distiller(at_weight=1.0)
    outputs = distiller.teacher_outputs(images, labels)
    with pytest.raises(ValueError, match="attention transfer needs the teacher's features"):
        distiller(images, labels, teacher=outputs)
    distiller = _distiller()
    with pytest.raises(ValueError, match="hold 0 map"):
        distiller(images, labels, teacher=TeacherOutputs(outputs.logits))


def _filled_cache(tmp_path, dtype="float32") -> tuple[TeacherCache, TeacherOutputs, torch.Tensor]:
    cache = TeacherCache.create(
        tmp_path / "c",
        {"teacher": "abc", "augment_seed": 0},
        epochs=2,
        num_samples=5,
        num_classes=3,
        map_shapes=[(2, 2)],
        dtype=dtype,
    )
    torch.manual_seed(1)
    outputs = TeacherOutputs(torch.randn(3, 3), (torch.rand(3, 2, 2),))
    index = torch.tensor([4, 0, 2])
    cache.write(1, index, outputs)
    cache.mark_complete(1)
    return cache, outputs, index


def test_float32_storage_round_trips_exactly_and_persists(tmp_path):
    cache, outputs, index = _filled_cache(tmp_path)
    del cache
    cache = TeacherCache.open(tmp_path / "c", {"teacher": "abc", "augment_seed": 0})
    back = cache.read(1, index, "cpu")
    assert torch.equal(back.logits, outputs.logits)
    assert torch.equal(back.maps[0], outputs.maps[0])
    assert cache.complete_epochs == {1} and not cache.is_complete()
    with pytest.raises(TeacherCacheError, match="holds no outputs for some samples of epoch 0"):
        cache.read(0, torch.tensor([1]), "cpu")
    assert (tmp_path / "c" / "values.bin").stat().st_size == 2 * 5 * (3 + 4) * 4


def test_half_storage_rounds_to_half_precision(tmp_path):
    cache, outputs, index = _filled_cache(tmp_path, dtype="float16")
    back = cache.read(1, index, "cpu")
    assert back.logits.dtype == torch.float32
    assert torch.equal(back.logits, outputs.logits.half().float())
    assert TeacherCache.disk_bytes(200, 50_000, 10, [(8, 8)], "float16") == 50_000 * 200 * 74 * 2


def test_a_cache_for_other_settings_is_refused_naming_the_difference(tmp_path):
    _filled_cache(tmp_path)
    with pytest.raises(TeacherCacheError, match="augment_seed: cache has 0, this run needs 1"):
        TeacherCache.open(tmp_path / "c", {"teacher": "abc", "augment_seed": 1})
    with pytest.raises(TeacherCacheError, match="header.json is missing"):
        TeacherCache.open(tmp_path / "missing", {})
    cache = TeacherCache.open(tmp_path / "c", {"teacher": "abc", "augment_seed": 0})
    with pytest.raises(TeacherCacheError, match="outside the cache"):
        cache.read(2, torch.tensor([0]), "cpu")


def _student_weights(summary: dict) -> dict[str, torch.Tensor]:
    ckpt = torch.load(summary["student"]["checkpoint"], map_location="cpu", weights_only=True)
    return {k: v for k, v in ckpt["state_dict"].items() if k.startswith("distiller.student.")}


@pytest.fixture(scope="module")
def shapes_teacher(tmp_path_factory, tiny_overrides_for):
    """A trained tiny teacher, shared by the cached and live students below."""
    from distill.config import load_config
    from distill.tools.train import train

    out = tmp_path_factory.mktemp("teacher")
    path = out / "teacher.ckpt"
    overrides = [*tiny_overrides_for(out), "stage=teacher", f"teacher.checkpoint={path}"]
    train(load_config("quickstart", overrides))
    return path, out


def _student(teacher, tiny_overrides_for, *extra):
    from distill.config import load_config
    from distill.tools.train import train

    path, out = teacher
    overrides = [
        *tiny_overrides_for(out),
        "stage=student",
        f"teacher.checkpoint={path}",
        "student.epochs=2",
        "data.augment_seed=7",
        "loss.map_weight=0.5",
        *extra,
    ]
    return train(load_config("quickstart", overrides))[0]


def _count_teacher_runs(monkeypatch) -> list[int]:
    """A list that gains an item each time any distiller runs its teacher from now on."""
    calls: list[int] = []
    original = ExplanationDistiller._run_teacher

    def counted(self, *args, **kwargs):
        calls.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(ExplanationDistiller, "_run_teacher", counted)
    return calls


def test_a_float32_cached_run_trains_the_same_student_as_a_live_run(
    shapes_teacher, tiny_overrides_for, monkeypatch
):
    monkeypatch.delenv("DISTILL_RUN_DIR", raising=False)
    live = _student(shapes_teacher, tiny_overrides_for)
    cache = ["teacher_cache.enabled=true", "teacher_cache.dtype=float32"]
    built = _student(shapes_teacher, tiny_overrides_for, *cache)  # builds the cache
    read = _student(shapes_teacher, tiny_overrides_for, *cache)  # finds it
    assert built["student"]["teacher_cache"] == read["student"]["teacher_cache"]
    reference = _student_weights(live)
    for summary in (built, read):
        weights = _student_weights(summary)
        assert weights.keys() == reference.keys()
        assert all(torch.equal(weights[k], reference[k]) for k in reference)
        assert summary["student"]["test_acc"] == live["student"]["test_acc"]
        # validation read the teacher's outputs from the validation cache: the same metrics
        for key in ("val_agreement", "val_map_similarity", "val_teacher_acc", "val_kd", "val_map"):
            assert summary["student"][key] == pytest.approx(live["student"][key], abs=1e-6), key


def test_a_run_that_finds_its_caches_never_runs_the_teacher(
    shapes_teacher, tiny_overrides_for, monkeypatch
):
    """Training, validation and test read the teacher's outputs (test needs none): once both
    caches exist, a student costs what a CE student costs."""
    monkeypatch.delenv("DISTILL_RUN_DIR", raising=False)
    cache = ["teacher_cache.enabled=true", "data.augment_seed=9", "logging.map_every_n_epochs=0"]
    built = _student(shapes_teacher, tiny_overrides_for, *cache)
    calls = _count_teacher_runs(monkeypatch)
    read = _student(shapes_teacher, tiny_overrides_for, *cache)
    assert calls == []
    assert read["student"]["val_agreement"] == built["student"]["val_agreement"]
    folders = [
        p.parent for p in Path(built["student"]["teacher_cache"]).parent.glob("*/header.json")
    ]
    headers = [json.loads((f / "header.json").read_text()) for f in folders]
    # one validation cache per storage dtype, shared by every augmentation stream; it holds
    # one pass over the holdout
    (val,) = [h for h in headers if h["key"].get("split") == "val" and h["dtype"] == "float16"]
    assert val["epochs"] == 1 and val["complete"] == [0] and val["num_samples"] > 0


def test_half_storage_is_its_own_cache_and_another_stream_is_another_cache(
    shapes_teacher, tiny_overrides_for, monkeypatch
):
    monkeypatch.delenv("DISTILL_RUN_DIR", raising=False)
    half = _student(shapes_teacher, tiny_overrides_for, "teacher_cache.enabled=true")
    other = _student(
        shapes_teacher, tiny_overrides_for, "teacher_cache.enabled=true", "data.augment_seed=8"
    )
    assert half["student"]["teacher_cache"] != other["student"]["teacher_cache"]
    cache = TeacherCache.open(
        half["student"]["teacher_cache"],
        json.loads((Path(half["student"]["teacher_cache"]) / "header.json").read_text())["key"],
    )
    assert cache.dtype == torch.float16 and cache.is_complete() and cache.epochs == 2
    # every (epoch, sample) of the stream was written: 2 full batches of 64 of the 174 training
    # images per epoch (the last incomplete batch is dropped, data.drop_last)
    assert cache.written.sum(1).tolist() == [128, 128]


def test_students_of_other_architectures_read_the_same_cache(
    shapes_teacher, tiny_overrides_for, monkeypatch
):
    """The key holds what the teacher sees and returns, not the student: a student with other
    layer names (a ResNet instead of a WRN) finds the WRN student's cache and never runs the
    teacher in training or validation."""
    monkeypatch.delenv("DISTILL_RUN_DIR", raising=False)
    cache = ["teacher_cache.enabled=true", "data.augment_seed=11", "logging.map_every_n_epochs=0"]
    built = _student(shapes_teacher, tiny_overrides_for, *cache)
    calls = _count_teacher_runs(monkeypatch)
    other = _student(shapes_teacher, tiny_overrides_for, *cache, "student.name=resnet20")
    assert calls == []
    assert other["student"]["teacher_cache"] == built["student"]["teacher_cache"]
