"""The teacher-output cache: storage round trips, refusal of foreign caches, and equal losses."""

from __future__ import annotations

import pytest
import torch

from distill import ExplanationDistiller, build_model
from distill.losses import TeacherOutputs
from distill.teacher_cache import TeacherCache, TeacherCacheError


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
    assert torch.equal(cache.read(0, torch.tensor([1]), "cpu").logits, torch.zeros(1, 3))
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
