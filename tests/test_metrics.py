"""Explanation-quality metrics: hand-computed values, metric classes, confidences, sanity."""

from __future__ import annotations

import doctest
import importlib
import math
import pickle

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import distill.metrics as metrics_pkg
from distill.cam import GradCAMPlusPlus
from distill.data.shapes import SHAPES_MEAN, SHAPES_STD, make_shapes
from distill.metrics import (
    AverageDrop,
    EnergyPointingGame,
    IncreaseInConfidence,
    Localization,
    MapAgreement,
    TopOneAgreement,
    WinPercentage,
    average_drop,
    energy_pointing_game,
    explanation_confidences,
    explanation_maps,
    increase_in_confidence,
    localization,
    map_agreement,
    top1_agreement,
    win_percentage,
)
from distill.models import build_model

# ---------------------------------------------------------------------------------------------
# Functionals against hand-computed values
# ---------------------------------------------------------------------------------------------


def test_average_drop_and_increase_by_hand():
    y = torch.tensor([0.5, 0.8])
    o = torch.tensor([0.25, 0.9])
    # drops: (0.5 - 0.25) / 0.5 = 0.5 and max(0, 0.8 - 0.9) / 0.8 = 0
    assert average_drop(y, o).item() == pytest.approx(25.0)
    assert increase_in_confidence(y, o).item() == pytest.approx(50.0)
    # Y = 0 cannot drop (and must not give NaN); equal confidences are no increase.
    y = torch.tensor([0.0, 0.4, 0.2])
    o = torch.tensor([0.1, 0.4, 0.05])
    assert average_drop(y, o).item() == pytest.approx((0 + 0 + 0.75) / 3 * 100)
    assert increase_in_confidence(y, o).item() == pytest.approx(100 / 3)


def test_average_drop_is_differentiable():
    o = torch.tensor([0.25, 0.9], requires_grad=True)
    average_drop(torch.tensor([0.5, 0.8]), o).backward()
    # d/do of 100/2 * (0.5 - o)/0.5 = -100; the second sample is clipped at 0
    assert o.grad.tolist() == pytest.approx([-100.0, 0.0])


def test_win_percentage_by_hand_ties_count_for_neither():
    y = torch.full((4,), 0.8)
    o_a = torch.tensor([0.6, 0.2, 0.9, 0.75])  # drops 0.25, 0.75, 0, 0.0625
    o_b = torch.tensor([0.4, 0.3, 0.9, 0.7])  # drops 0.5, 0.625, 0, 0.125
    assert win_percentage(y, o_a, o_b).item() == pytest.approx(50.0)  # samples 0 and 3
    assert win_percentage(y, o_b, o_a).item() == pytest.approx(25.0)  # sample 1
    # Both raise the confidence -> equal (zero) drops -> a tie, not a win.
    assert win_percentage(y[:1], torch.tensor([0.9]), torch.tensor([0.95])).item() == 0.0


def _hand_map() -> torch.Tensor:
    # min 0, max 4 -> normalised: [[0, 1, 1, 0], [0, 1, .5, 0], [.25, .75, 0, 0], [0, 0, 0, 0]]
    return torch.tensor(
        [[0.0, 4.0, 4.0, 0.0], [0.0, 4.0, 2.0, 0.0], [1.0, 3.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]
    )


def test_localization_by_hand():
    maps = _hand_map()[None]
    box = torch.tensor([[1, 0, 3, 2]])  # x in {1, 2}, y in {0, 1}: area 4
    # delta 0.5 keeps (y, x) = (0,1) (0,2) (1,1) (1,2) inside and (2,1) outside: 4 / (4 + 1)
    assert localization(maps, box, 0.5).item() == pytest.approx(0.8)
    # delta 0.75 drops the 0.5 pixel: 3 / (4 + 1)
    assert localization(maps, box, 0.75).item() == pytest.approx(0.6)
    # delta 0 keeps all 16 pixels: 4 / (4 + 12)
    assert localization(maps, box, 0.0).item() == pytest.approx(0.25)
    # Min-max normalisation: an offset and a scale change nothing.
    assert localization(3 * maps + 10, box, 0.5).item() == pytest.approx(0.8)
    # Batch mean; an all-zero map keeps nothing (0) and a constant positive one keeps all.
    batch = torch.stack([_hand_map(), torch.zeros(4, 4), torch.full((4, 4), 2.0)])
    boxes = box.expand(3, 4)
    assert localization(batch, boxes, 0.5).item() == pytest.approx((0.8 + 0 + 0.25) / 3)
    # Exactly the box kept -> 1.
    exact = torch.zeros(1, 4, 4)
    exact[0, 0:2, 1:3] = 1
    assert localization(exact, box).item() == pytest.approx(1.0)


def test_localization_upsamples_and_uses_xy_order():
    # A 2x2 map upsampled (bilinear, half-pixel) to 4x4 is outer(f, f) with f = [1, .75, .25, 0]
    # at the top-left corner: >= 0.5 only on the 2x2 top-left block.
    maps = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]])
    assert localization(maps, torch.tensor([[0, 0, 2, 2]]), image_size=4).item() == 1.0
    assert localization(maps, torch.tensor([[0, 0, 1, 2]]), image_size=4).item() == 0.5
    # Non-square image: H = 4, W = 6, blob in the top-right corner; x is the column.
    wide = torch.zeros(1, 4, 6)
    wide[0, 0:2, 4:6] = 1.0
    assert localization(wide, torch.tensor([[4, 0, 6, 2]])).item() == 1.0
    assert localization(wide, torch.tensor([[0, 4, 2, 6]]), validate_args=False).item() == 0.0
    with pytest.raises(ValueError, match="outside the 4x6 image"):
        localization(wide, torch.tensor([[0, 4, 2, 6]]))


def test_energy_pointing_game_by_hand():
    half = torch.zeros(4, 4)
    half[:, 0:2] = 1.0  # energy 8, half of it in column 0
    peaks = torch.zeros(4, 4)
    peaks[0, 0], peaks[3, 3] = 3.0, 1.0
    maps = torch.stack([half, peaks, torch.zeros(4, 4)])
    boxes = torch.tensor([[0, 0, 1, 4], [0, 0, 2, 2], [0, 0, 4, 4]])
    # 4/8, 3/4, and 0 for an all-zero map
    assert energy_pointing_game(maps, boxes).item() == pytest.approx((0.5 + 0.75 + 0) / 3)
    # Not min-max normalised: a constant offset moves energy outside the box.
    assert energy_pointing_game(half[None] + 1, boxes[:1]).item() == pytest.approx(8 / 24)
    # Upsampled 2x2 -> 4x4 map outer(f, f), f = [1, .75, .25, 0]: (1.75 / 2) ** 2 in the corner
    small = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]])
    got = energy_pointing_game(small, torch.tensor([[0, 0, 2, 2]]), image_size=4)
    assert got.item() == pytest.approx((1.75 / 2) ** 2)


def test_map_agreement_and_top1_by_hand():
    a = torch.tensor([[[1.0, 0.0], [0.0, 0.0]], [[1.0, 1.0], [0.0, 0.0]]])
    b = torch.tensor([[[2.0, 0.0], [0.0, 0.0]], [[0.0, 1.0], [0.0, 0.0]]])
    assert map_agreement(a, b).item() == pytest.approx((1 + 1 / math.sqrt(2)) / 2)
    # Orthogonal maps 0; an all-zero map 0.
    assert map_agreement(a[:1], torch.tensor([[[0.0, 1.0], [0.0, 0.0]]])).item() == 0.0
    assert map_agreement(a[:1], torch.zeros(1, 2, 2)).item() == 0.0
    # Different resolutions: both go to the larger size (constant maps stay constant).
    assert map_agreement(torch.ones(3, 2, 2), torch.ones(3, 8, 8)).item() == pytest.approx(1.0)
    assert map_agreement(torch.ones(1, 2, 4), torch.ones(1, 4, 2)).item() == pytest.approx(1.0)
    logits_a = torch.tensor([[2.0, 1.0], [0.0, 3.0], [1.0, 0.0]])
    logits_b = torch.tensor([[5.0, 1.0], [4.0, 3.0], [1.0, 0.5]])
    assert top1_agreement(logits_a, logits_b).item() == pytest.approx(2 / 3)
    assert top1_agreement(logits_a, logits_a).item() == 1.0


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: average_drop(torch.ones(3), torch.ones(2)), ValueError, "same shape"),
        (lambda: average_drop(torch.tensor([-0.1]), torch.ones(1)), ValueError, "negative"),
        (lambda: average_drop(torch.ones(2, dtype=torch.long), torch.ones(2)), TypeError, "float"),
        (lambda: win_percentage(torch.ones(2), torch.ones(2), torch.ones(3)), ValueError, "shape"),
        (lambda: increase_in_confidence(torch.ones(2), -torch.ones(2)), ValueError, "negative"),
        (lambda: localization(torch.ones(4, 4), torch.tensor([[0, 0, 1, 1]])), ValueError, "B, H"),
        (
            lambda: localization(torch.ones(2, 4, 4), torch.tensor([[0, 0, 1, 1]])),
            ValueError,
            "batch sizes",
        ),
        (lambda: localization(torch.ones(1, 4, 4), torch.tensor([[0, 0, 1]])), ValueError, "4]"),
        (
            lambda: localization(torch.ones(1, 4, 4), torch.tensor([[0, 0, 5, 1]])),
            ValueError,
            "outside",
        ),
        (
            lambda: localization(torch.ones(1, 4, 4), torch.tensor([[2, 0, 2, 1]])),
            ValueError,
            "empty",
        ),
        (
            lambda: localization(torch.ones(1, 4, 4), torch.tensor([[0, 0, 1, 1]]), 1.5),
            ValueError,
            "delta",
        ),
        (
            lambda: energy_pointing_game(-torch.ones(1, 4, 4), torch.tensor([[0, 0, 1, 1]])),
            ValueError,
            "non-negative",
        ),
        (lambda: map_agreement(torch.ones(2, 4, 4), torch.ones(3, 4, 4)), ValueError, "batch"),
        (lambda: top1_agreement(torch.ones(2, 3), torch.ones(2, 4)), ValueError, "same shape"),
        (lambda: top1_agreement(torch.ones(2), torch.ones(2)), ValueError, "B, C"),
        (
            lambda: explanation_maps(torch.ones(1, 3, 4, 4), torch.ones(1, 4, 4), mean=[0.5] * 3),
            ValueError,
            "both mean and std",
        ),
        (
            lambda: explanation_maps(torch.ones(1, 3, 4, 4), torch.ones(2, 4, 4)),
            ValueError,
            "batch sizes",
        ),
        (lambda: Localization(delta=-0.1), ValueError, "delta"),
        (lambda: Localization(image_size=0), ValueError, "image_size"),
    ],
)
def test_input_validation(call, error, match):
    with pytest.raises(error, match=match):
        call()


# ---------------------------------------------------------------------------------------------
# Metric classes
# ---------------------------------------------------------------------------------------------


def _confidences(n: int, seed: int) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.rand(n, generator=g) for _ in range(3))


def _maps_boxes(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    maps = torch.rand(n, 8, 8, generator=g)
    xy0 = torch.randint(0, 16, (n, 2), generator=g)
    size = torch.randint(1, 17, (n, 2), generator=g)
    return maps, torch.cat([xy0, xy0 + size], dim=1)


def _logits(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 5, generator=g), torch.randn(n, 5, generator=g)


# (metric factory, functional on the same data, batch maker)
CASES = {
    "average_drop": (AverageDrop, average_drop, lambda n, s: _confidences(n, s)[:2]),
    "increase": (
        IncreaseInConfidence,
        increase_in_confidence,
        lambda n, s: _confidences(n, s)[:2],
    ),
    "win": (WinPercentage, win_percentage, _confidences),
    "localization": (
        lambda: Localization(delta=0.4, image_size=32),
        lambda m, b: localization(m, b, 0.4, image_size=32),
        _maps_boxes,
    ),
    "energy": (
        EnergyPointingGame,
        lambda m, b: energy_pointing_game(m, b, image_size=32),
        _maps_boxes,
    ),
    "map_agreement": (
        MapAgreement,
        map_agreement,
        lambda n, s: (_maps_boxes(n, s)[0], _maps_boxes(n, s + 100)[0][:, :4, :4]),
    ),
    "top1": (TopOneAgreement, top1_agreement, _logits),
}


@pytest.mark.parametrize("name", list(CASES))
def test_class_matches_functional_and_accumulates(name):
    make_metric, functional, make_batch = CASES[name]
    batches = [make_batch(n, seed) for seed, n in enumerate((5, 3, 8))]
    concatenated = [torch.cat(parts) for parts in zip(*batches, strict=True)]
    expected = functional(*concatenated)

    one_shot = make_metric()
    one_shot.update(*concatenated)
    torch.testing.assert_close(one_shot.compute(), expected)

    metric = make_metric()
    for batch in batches:
        batch_value = metric(*batch)  # forward: this batch's value, and accumulates
        torch.testing.assert_close(batch_value, functional(*batch))
    torch.testing.assert_close(metric.compute(), expected)

    restored = pickle.loads(pickle.dumps(metric))
    torch.testing.assert_close(restored.compute(), expected)
    restored.update(*batches[0])  # the restored state keeps accumulating
    more = [torch.cat(parts) for parts in zip(concatenated, batches[0], strict=True)]
    torch.testing.assert_close(restored.compute(), functional(*more))

    metric.reset()
    metric.update(*batches[1])
    torch.testing.assert_close(metric.compute(), functional(*batches[1]))


def test_metric_attributes_and_state_defaults():
    for cls in (
        AverageDrop,
        IncreaseInConfidence,
        WinPercentage,
        Localization,
        EnergyPointingGame,
        MapAgreement,
        TopOneAgreement,
    ):
        metric = cls()
        assert metric.full_state_update is False
        assert isinstance(metric.is_differentiable, bool)
        assert isinstance(metric.higher_is_better, bool)
        for default in metric._defaults.values():
            assert torch.equal(default, torch.tensor(0.0))
        assert set(metric._reductions) == set(metric._defaults)
    assert AverageDrop.higher_is_better is False
    assert Localization().image_size == (32, 32)


def test_map_agreement_identical_maps_is_one():
    maps = torch.rand(4, 8, 8) + 0.1
    metric = MapAgreement()
    metric.update(maps, maps)
    metric.update(maps[:2], maps[:2].clone())
    assert metric.compute().item() == pytest.approx(1.0)


def test_localization_class_upsamples_to_image_size():
    maps = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]])
    metric = Localization(delta=0.5, image_size=4)
    metric.update(maps, torch.tensor([[0, 0, 1, 2]]))
    assert metric.compute().item() == pytest.approx(0.5)
    with pytest.raises(ValueError, match="outside the 4x4 image"):
        metric.update(maps, torch.tensor([[0, 0, 5, 2]]))


# ---------------------------------------------------------------------------------------------
# Explanation confidences
# ---------------------------------------------------------------------------------------------


def _tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 5)).eval()


def test_explanation_confidences_match_hand_built_explanation():
    model = _tiny_model()
    images = torch.randn(3, 3, 4, 4)
    targets = torch.tensor([0, 3, 4])
    maps = torch.rand(3, 4, 4)
    maps[:, 0, 0], maps[:, 3, 3] = 0.0, 1.0  # already min-max normalised, at image size
    mean, std = [0.4, 0.5, 0.6], [0.2, 0.25, 0.3]
    m = torch.tensor(mean).view(1, 3, 1, 1)
    s = torch.tensor(std).view(1, 3, 1, 1)

    y, o = explanation_confidences(model, images, maps, targets)
    by_hand = (images * maps[:, None]).flatten(1)
    rows = torch.arange(3)
    torch.testing.assert_close(o, model(by_hand.view(3, 3, 4, 4)).softmax(1)[rows, targets])
    torch.testing.assert_close(y, model(images).softmax(1)[rows, targets])
    assert not y.requires_grad and not o.requires_grad

    _, o_norm = explanation_confidences(model, images, maps, targets, mean=mean, std=std)
    explained = ((images * s + m) * maps[:, None] - m) / s
    torch.testing.assert_close(o_norm, model(explained).softmax(1)[rows, targets])

    # A 2x2 map is upsampled (bilinear) and min-max normalised before multiplying.
    coarse = torch.tensor([[[0.0, 2.0], [4.0, 1.0]]]).expand(3, 2, 2)
    weights = F.interpolate(coarse[:, None], size=(4, 4), mode="bilinear", align_corners=False)
    weights = (weights - weights.amin((2, 3), keepdim=True)) / (
        weights.amax((2, 3), keepdim=True) - weights.amin((2, 3), keepdim=True)
    )
    _, o_coarse = explanation_confidences(model, images, coarse, targets)
    torch.testing.assert_close(o_coarse, model(images * weights).softmax(1)[rows, targets])


def test_all_ones_map_keeps_confidence_and_default_target_is_prediction():
    model = _tiny_model()
    images = torch.randn(4, 3, 4, 4)
    ones = torch.ones(4, 4, 4)
    y, o = explanation_confidences(model, images, ones)
    assert torch.equal(y, o)
    torch.testing.assert_close(y, model(images).softmax(1).amax(1))
    y, o = explanation_confidences(model, images, ones, mean=SHAPES_MEAN, std=SHAPES_STD)
    torch.testing.assert_close(y, o)
    assert average_drop(y, o).item() == pytest.approx(0.0, abs=1e-4)


def test_explanation_confidences_with_gradcam_pp_on_shapes():
    data = make_shapes(6, seed=1)
    mean = torch.tensor(SHAPES_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(SHAPES_STD).view(1, 3, 1, 1)
    images = (data.images.float() / 255 - mean) / std
    model = build_model("wrn_16_1", num_classes=6).eval()
    maps = GradCAMPlusPlus(model)(images, data.labels)
    y, o = explanation_confidences(model, images, maps, data.labels, SHAPES_MEAN, SHAPES_STD)
    assert y.shape == o.shape == (6,)
    assert bool(((y > 0) & (y <= 1) & (o > 0) & (o <= 1)).all())
    assert not model.training
    drop = AverageDrop()
    drop.update(y, o)
    assert 0.0 <= drop.compute().item() <= 100.0
    loc = Localization(image_size=32)
    loc.update(maps, data.boxes)
    assert 0.0 <= loc.compute().item() <= 1.0


# ---------------------------------------------------------------------------------------------
# Sanity on the shapes dataset
# ---------------------------------------------------------------------------------------------


def test_shapes_mask_box_and_outside_maps():
    data = make_shapes(12, seed=0)
    masks, boxes = data.masks.float(), data.boxes
    box_masks = torch.zeros_like(masks)
    for i, (x0, y0, x1, y1) in enumerate(boxes.tolist()):
        box_masks[i, y0:y1, x0:x1] = 1.0

    # Map = object mask: nothing kept outside the box, so Loc(0.5) is the share of the box the
    # object fills (< 1 for non-rectangular shapes); all the energy lies in the box.
    fill = masks.sum((1, 2)) / box_masks.sum((1, 2))
    assert localization(masks, boxes).item() == pytest.approx(fill.mean().item(), abs=1e-6)
    assert energy_pointing_game(masks, boxes).item() == pytest.approx(1.0)
    # Map = box: Loc is 1.
    assert localization(box_masks, boxes).item() == pytest.approx(1.0)
    # A coarse (8x8) version of the mask, upsampled like a CAM: still well localised.
    coarse = F.adaptive_avg_pool2d(masks[:, None], 8)[:, 0]
    assert localization(coarse, boxes, image_size=32).item() > 0.5
    assert energy_pointing_game(coarse, boxes, image_size=32).item() > 0.75

    # Map concentrated outside the box: both metrics are low.
    outside = 1.0 - box_masks
    assert localization(outside, boxes).item() == 0.0
    assert energy_pointing_game(outside, boxes).item() == 0.0
    coarse_out = F.adaptive_avg_pool2d(outside[:, None], 8)[:, 0]
    assert localization(coarse_out, boxes, image_size=32).item() < 0.1
    assert energy_pointing_game(coarse_out, boxes, image_size=32).item() < 0.15


# ---------------------------------------------------------------------------------------------
# Docstring examples
# ---------------------------------------------------------------------------------------------


def test_package_exports_the_localization_function():
    # The submodule and the function share a name; the package attribute is the function.
    assert metrics_pkg.localization is localization and callable(localization)
    assert set(metrics_pkg.__all__) <= set(dir(metrics_pkg))


@pytest.mark.parametrize("name", ["functional", "faithfulness", "localization", "agreement"])
def test_docstring_examples(name):
    module = importlib.import_module(f"distill.metrics.{name}")
    assert module.__name__ == f"distill.metrics.{name}"
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0
