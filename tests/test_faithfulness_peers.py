"""Deletion/insertion AUC and ROAD: the peers' values on the same images and maps (torchcam 0.5,
pytorch-grad-cam 1.5.7), naive one-sample references written from the papers, and the
metrics' accumulation. Tiny model, 12x12 images: seconds on a CPU."""

from __future__ import annotations

import contextlib
from functools import partial

import numpy as np
import pytest
import torch
from torch import nn

from distill.metrics import (
    ROAD,
    DeletionAUC,
    InsertionAUC,
    deletion_auc,
    insertion_auc,
    noisy_linear_imputation,
    perturbation_curves,
    road,
    road_scores,
)
from distill.metrics.deletion import make_baseline


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(6, 6, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(24, 5),
    ).eval()


@pytest.fixture(scope="module")
def batch():
    torch.manual_seed(1)
    images = torch.randn(4, 3, 12, 12) * 2
    maps = torch.rand(4, 6, 6)  # upsampled to 12x12 by every metric
    return _model(), images, maps


class _GivenMaps:
    """torchcam's CAM-extractor protocol around fixed maps, so that both sides rank the same."""

    def __init__(self, model: nn.Module, maps: torch.Tensor) -> None:
        self.model, self.maps = model, maps

    def __call__(self, class_idx=None, scores=None, normalized=True, **kwargs):
        return [self.maps]

    def fuse_cams(self, cams):
        return cams[0]

    def _hooks_off(self):
        return contextlib.nullcontext()


def _torchcam(model, image, maps, softmax: bool, steps: int, baseline=None):
    from torchcam.metrics import DeletionInsertionMetric

    logits_fn = partial(torch.softmax, dim=-1) if softmax else None
    metric = DeletionInsertionMetric(
        _GivenMaps(model, maps), logits_fn, steps=steps, baseline=baseline
    )
    metric.update(image)
    return metric.summary()


@pytest.mark.parametrize(("softmax", "steps"), [(True, 20), (False, 20), (True, 16), (True, 72)])
def test_deletion_insertion_equal_torchcam_per_sample(batch, softmax, steps):
    """steps=20 on 144 pixels: step 8, a short last interval; 16: 9 pixels, uniform; 72:
    two pixels per step."""
    pytest.importorskip("torchcam")
    model, images, maps = batch
    deletion = [
        deletion_auc(model, images[i : i + 1], maps[i : i + 1], steps=steps, softmax=softmax)
        for i in range(len(images))
    ]
    insertion = [
        insertion_auc(model, images[i : i + 1], maps[i : i + 1], steps=steps, softmax=softmax)
        for i in range(len(images))
    ]
    for i in range(len(images)):
        peer = _torchcam(model, images[i : i + 1], maps[i : i + 1], softmax, steps)
        assert float(deletion[i]) == pytest.approx(peer["deletion_auc"], abs=1e-6)
        assert float(insertion[i]) == pytest.approx(peer["insertion_auc"], abs=1e-6)
    # the batch is the mean of its samples, and the samples differ (nothing trivial matched)
    batched = deletion_auc(model, images, maps, steps=steps, softmax=softmax)
    assert float(batched) == pytest.approx(float(torch.stack(deletion).mean()), abs=1e-6)
    assert float(torch.stack(deletion).std()) > 1e-3


def test_deletion_with_a_tensor_baseline_equals_torchcam(batch):
    pytest.importorskip("torchcam")
    model, images, maps = batch
    fill = torch.tensor([0.5, -1.0, 2.0])[:, None, None]
    ours = deletion_auc(model, images, maps, baseline=fill)
    peer = _torchcam(model, images, maps, True, 20, baseline=fill)
    assert float(ours) == pytest.approx(peer["deletion_auc"], abs=1e-6)


def _naive_curve(model, image, saliency, target, insertion: bool, steps: int, fill):
    """RISE, one image: rank pixels (most salient first), perturb ``k`` of them per step."""
    height, width = saliency.shape
    pixels = height * width
    order = sorted(range(pixels), key=lambda p: (-float(saliency.flatten()[p]), p))
    size = -(-pixels // steps)
    counts = [*range(0, pixels, size), pixels]
    scores = []
    for k in counts:
        x = fill.clone() if insertion else image.clone()
        for p in order[:k]:
            source = image if insertion else fill
            x[:, p // width, p % width] = source[:, p // width, p % width]
        with torch.no_grad():
            scores.append(float(model(x[None]).softmax(1)[0, target]))
    area = sum(
        (counts[j + 1] - counts[j]) / pixels * (scores[j] + scores[j + 1]) / 2
        for j in range(len(counts) - 1)
    )
    return scores, area


@pytest.mark.parametrize("baseline", [0.0, "blur", "mean"])
def test_deletion_insertion_equal_a_naive_reference(batch, baseline):
    model, images, maps = batch
    up = nn.functional.interpolate(maps[:, None], size=(12, 12), mode="bilinear")[:, 0]
    targets = torch.tensor([0, 3, 1, 4])
    fills = make_baseline(images, baseline)
    for mode in ("deletion", "insertion"):
        fractions, curves = perturbation_curves(
            model, images, maps, targets, mode=mode, steps=20, baseline=baseline, chunk_steps=3
        )
        assert fractions[-1] == 1 and len(fractions) == 19  # 0, 8, ..., 136, 144 pixels
        for i in range(len(images)):
            scores, area = _naive_curve(
                model, images[i], up[i], int(targets[i]), mode == "insertion", 20, fills[i]
            )
            torch.testing.assert_close(curves[i], torch.tensor(scores), atol=1e-6, rtol=0)
            auc = torch.trapezoid(curves[i], fractions)
            assert float(auc) == pytest.approx(area, abs=1e-6)


def test_blur_baseline_is_rise_kernel():
    """11 taps spanning ±5 sigma, normalised, zero padding: a constant image keeps its value
    in the middle and loses mass at the border."""
    ones = torch.ones(1, 1, 21, 21)
    blurred = make_baseline(ones, "blur")
    assert float(blurred[0, 0, 10, 10]) == pytest.approx(1.0, abs=1e-6)
    assert float(blurred[0, 0, 0, 0]) < 0.5
    impulse = torch.zeros(1, 1, 21, 21)
    impulse[0, 0, 10, 10] = 1
    kernel = make_baseline(impulse, "blur")[0, 0, 5:16, 5:16]
    edges = torch.linspace(-5, 5, 12, dtype=torch.float64)
    k1 = torch.special.ndtr(edges).diff()
    expected = torch.outer(k1, k1) / torch.outer(k1, k1).sum()
    torch.testing.assert_close(kernel, expected.float(), atol=1e-7, rtol=0)


@pytest.mark.filterwarnings("ignore:The ``compute`` method")
def test_deletion_metrics_accumulate_batches(batch):
    model, images, maps = batch
    metric, insert = DeletionAUC(steps=10), InsertionAUC(steps=10)
    assert torch.isnan(metric.compute())
    for half in (slice(0, 1), slice(1, 4)):
        metric.update(model, images[half], maps[half])
        insert.update(model, images[half], maps[half])
    assert float(metric.compute()) == pytest.approx(
        float(deletion_auc(model, images, maps, steps=10)), abs=1e-6
    )
    assert float(insert.compute()) == pytest.approx(
        float(insertion_auc(model, images, maps, steps=10)), abs=1e-6
    )
    assert not metric.higher_is_better and insert.higher_is_better


def test_given_logits_save_the_forward(batch):
    model, images, maps = batch
    calls = []
    hook = model.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    try:
        logits = model(images)
        calls.clear()
        perturbation_curves(model, images, maps, steps=4, logits=logits, chunk_steps=2)
    finally:
        hook.remove()
    assert calls == [8, 8]  # 4 perturbed steps in chunks of 2 over 4 images; no unperturbed pass


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"steps": 0}, "steps must be a positive integer"),
        ({"mode": "delete"}, "mode must be one of"),
        ({"baseline": "zeros"}, "baseline must be a number"),
        ({"baseline": torch.zeros(2, 1, 1)}, "does not broadcast"),
        ({"chunk_steps": 0}, "chunk_steps must be a positive integer"),
    ],
)
def test_deletion_refuses_bad_options(batch, kwargs, message):
    model, images, maps = batch
    with pytest.raises(ValueError, match=message):
        perturbation_curves(model, images, maps, **kwargs)


# --------------------------------------------------------------------------------------------
# ROAD
# --------------------------------------------------------------------------------------------

_WEIGHTS = {(dy, dx): (1 / 12 if dy and dx else 1 / 6) for dy in (-1, 0, 1) for dx in (-1, 0, 1)}
del _WEIGHTS[(0, 0)]


def _naive_imputation(image: torch.Tensor, removed: torch.Tensor) -> torch.Tensor:
    """Rong et al.: each removed pixel is the weighted mean of its in-image neighbours; one
    dense linear system over the removed pixels, solved in float64."""
    channels, height, width = image.shape
    holes = [(y, x) for y in range(height) for x in range(width) if removed[y, x]]
    index = {p: i for i, p in enumerate(holes)}
    a = torch.zeros(len(holes), len(holes), dtype=torch.float64)
    b = torch.zeros(len(holes), channels, dtype=torch.float64)
    for i, (y, x) in enumerate(holes):
        for (dy, dx), w in _WEIGHTS.items():
            ny, nx = y + dy, x + dx
            if not (0 <= ny < height and 0 <= nx < width):
                continue
            a[i, i] += w
            if removed[ny, nx]:
                a[i, index[(ny, nx)]] -= w
            else:
                b[i] += w * image[:, ny, nx].double()
    out = image.clone().double()
    solution = torch.linalg.solve(a, b)
    for i, (y, x) in enumerate(holes):
        out[:, y, x] = solution[i]
    return out


def test_imputation_equals_the_dense_solution(batch):
    _, images, _ = batch
    torch.manual_seed(3)
    removed = torch.rand(4, 12, 12) < torch.tensor([0.1, 0.5, 0.9, 0.97])[:, None, None]
    ours = noisy_linear_imputation(images, removed, noise=0.0)
    exact = noisy_linear_imputation(images.double(), removed, noise=0.0)  # solved in float64
    for i in range(len(images)):
        expected = _naive_imputation(images[i], removed[i])
        torch.testing.assert_close(ours[i].double(), expected, atol=5e-5, rtol=0)
        torch.testing.assert_close(exact[i], expected, atol=1e-8, rtol=0)
    assert torch.equal(
        ours[~removed[:, None].expand_as(images)], images[~removed[:, None].expand_as(images)]
    )


def test_imputation_noise_is_seeded_and_only_on_removed_pixels(batch):
    _, images, _ = batch
    removed = torch.zeros(4, 12, 12, dtype=torch.bool)
    removed[:, 3:9, 2:10] = True
    clean = noisy_linear_imputation(images, removed, noise=0.0)
    noisy = [
        noisy_linear_imputation(images, removed, 0.5, generator=torch.Generator().manual_seed(7))
        for _ in range(2)
    ]
    assert torch.equal(noisy[0], noisy[1])
    diff = noisy[0] - clean
    mask = removed[:, None].expand_as(images)
    assert torch.equal(diff[~mask], torch.zeros_like(diff[~mask]))
    assert float(diff[mask].std()) == pytest.approx(0.5, rel=0.1)


def _gradcam_road(model, images, maps_full, targets, order: str, percentiles, softmax: bool):
    """pytorch-grad-cam's ROAD with its own classes, noise 0, averaged over the percentiles."""
    road_mod = pytest.importorskip("pytorch_grad_cam.metrics.road")
    from pytorch_grad_cam.metrics.perturbation_confidence import (
        AveragerAcrossThresholds,
        PerturbationConfidenceMetric,
        RemoveLeastRelevantFirst,
        RemoveMostRelevantFirst,
    )
    from pytorch_grad_cam.utils.model_targets import (
        ClassifierOutputSoftmaxTarget,
        ClassifierOutputTarget,
    )

    remove = RemoveMostRelevantFirst if order == "morf" else RemoveLeastRelevantFirst

    def metric(percentile):
        return PerturbationConfidenceMetric(remove(percentile, road_mod.NoisyLinearImputer(0.0)))

    kind = ClassifierOutputSoftmaxTarget if softmax else ClassifierOutputTarget
    target_fns = [kind(int(t)) for t in targets]
    cams = maps_full.numpy().astype(np.float32)
    return AveragerAcrossThresholds(metric, list(percentiles))(images, cams, target_fns, model)


@pytest.mark.parametrize(
    ("order", "percentiles", "softmax"),
    [
        ("morf", [80], True),
        ("lerf", [20], True),
        ("morf", [10, 20, 30, 40, 50, 60, 70, 80, 90], True),
        ("lerf", [10, 20, 30, 40, 50, 60, 70, 80, 90], False),
    ],
)
def test_road_equals_pytorch_grad_cam_per_sample(batch, order, percentiles, softmax):
    model, images, maps = batch
    up = nn.functional.interpolate(maps[:, None], size=(12, 12), mode="bilinear")[:, 0]
    targets = torch.tensor([2, 0, 4, 1])
    peer = _gradcam_road(model, images, up, targets, order, percentiles, softmax)
    fractions = [1 - p / 100 for p in percentiles]
    original, imputed = road_scores(
        model, images, up, targets, order=order, fractions=fractions, noise=0.0, softmax=softmax
    )
    ours = (imputed - original[:, None]).mean(1)
    torch.testing.assert_close(ours, torch.from_numpy(np.asarray(peer)), atol=2e-5, rtol=0)
    assert float(ours.abs().max()) > 1e-3  # a real change was matched
    batched = road(
        model, images, up, targets, order=order, fractions=fractions, noise=0.0, softmax=softmax
    )
    assert float(batched) == pytest.approx(float(ours.mean()), abs=1e-6)


def test_road_equals_a_naive_reference(batch):
    """Per sample: remove the top ``f`` share by quantile, impute densely, score softmax."""
    model, images, maps = batch
    up = nn.functional.interpolate(maps[:, None], size=(12, 12), mode="bilinear")[:, 0]
    fractions = (0.25, 0.6)
    original, imputed = road_scores(model, images, maps, fractions=fractions, noise=0.0)
    for i in range(len(images)):
        with torch.no_grad():
            probs = model(images[i : i + 1]).softmax(1)[0]
        target = int(probs.argmax())
        assert float(original[i]) == pytest.approx(float(probs[target]), abs=1e-6)
        for j, f in enumerate(fractions):
            threshold = np.percentile(up[i].numpy(), 100 * (1 - f))
            filled = _naive_imputation(images[i], up[i] >= threshold).float()
            with torch.no_grad():
                expected = float(model(filled[None]).softmax(1)[0, target])
            assert float(imputed[i, j]) == pytest.approx(expected, abs=2e-5)


@pytest.mark.filterwarnings("ignore:The ``compute`` method")
def test_road_metric_accumulates_and_repeats(batch):
    model, images, maps = batch

    def evaluate(seed):
        metric = ROAD(order="lerf", fractions=(0.3, 0.7), seed=seed)
        assert torch.isnan(metric.compute())
        metric.update(model, images[:2], maps[:2])
        metric.update(model, images[2:], maps[2:])
        return float(metric.compute())

    first = evaluate(5)
    assert evaluate(5) == first  # same seed, same noise
    assert evaluate(6) != first
    noiseless = road(model, images, maps, order="lerf", fractions=(0.3, 0.7), noise=0.0)
    assert first == pytest.approx(float(noiseless), abs=0.02)  # noise 0.01 moves it little
    metric = ROAD(fractions=(0.5,), noise=0.0)
    metric(model, images, maps)  # forward: update plus this batch's value
    expected = road(model, images, maps, fractions=(0.5,), noise=0.0)
    assert float(metric.compute()) == pytest.approx(float(expected))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"order": "most"}, "order must be one of"),
        ({"fractions": (0.0, 0.5)}, r"fractions must be shares of pixels in \(0, 1\)"),
        ({"fractions": ()}, "fractions must be shares"),
    ],
)
def test_road_refuses_bad_options(batch, kwargs, message):
    model, images, maps = batch
    with pytest.raises(ValueError, match=message):
        road_scores(model, images, maps, **kwargs)


# --------------------------------------------------------------------------------------------
# Beside Average Drop: the comparison's table and the validation logs
# --------------------------------------------------------------------------------------------


def _wrn_and_images():
    from distill.models import get_model

    torch.manual_seed(4)
    return get_model("wrn_16_1", num_classes=5).eval(), torch.randn(5, 3, 8, 8)


def test_compare_reports_deletion_insertion_and_road_of_the_predicted_class():
    from types import SimpleNamespace

    from distill.cam import GradCAMPlusPlus
    from distill.tools.compare import evaluate_student
    from distill.tools.compare_report import COLUMNS

    model, images = _wrn_and_images()
    dm = SimpleNamespace(
        fixed_batch=lambda n, split: (images, torch.zeros(len(images), dtype=torch.long)),
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25),
    )
    metrics, _ = evaluate_student(model, dm, batch_size=3)  # two batches: 3 + 2
    maps, scores = GradCAMPlusPlus(model).maps_and_scores(images)
    predicted = scores.argmax(1)
    expected = {
        "deletion_auc": deletion_auc(model, images, maps, predicted),
        "insertion_auc": insertion_auc(model, images, maps, predicted),
    }
    # ROAD's noise: one generator seeded 0 across the two batches, as the metric draws it
    stream = torch.Generator().manual_seed(0)
    halves = [slice(0, 3), slice(3, 5)]
    changes = [
        road(model, images[h], maps[h], predicted[h], generator=stream) * len(images[h])
        for h in halves
    ]
    expected["road_morf"] = sum(changes) / len(images)
    for key, value in expected.items():
        assert metrics[key] == pytest.approx(float(value), abs=1e-5), key
        assert key in [column for column, _, _ in COLUMNS]
    assert metrics["deletion_auc"] != metrics["insertion_auc"]


def test_validation_logs_the_deletion_auc_beside_average_drop():
    from distill.cam import GradCAMPlusPlus
    from distill.training.lightning_modules import ClassifierModule

    model, images = _wrn_and_images()
    module = ClassifierModule(
        model, "wrn_16_1", 5, {"name": "sgd", "lr": 0.1}, 1, explanation_metrics=True
    )
    logged = {}
    module.log = lambda name, value, **kwargs: logged.setdefault(name, value)
    labels = torch.zeros(len(images), dtype=torch.long)
    with torch.no_grad():
        module._log_explanation_metrics((images[:3], labels[:3]))
        module._log_explanation_metrics((images[3:], labels[3:]))
    maps, scores = GradCAMPlusPlus(model).maps_and_scores(images)
    expected = deletion_auc(model, images, maps, scores.argmax(1))
    assert logged["val/deletion_auc"] is module.val_deletion
    assert float(module.val_deletion.compute()) == pytest.approx(float(expected), abs=1e-5)


@pytest.mark.parametrize("module", ["distill.metrics.deletion", "distill.metrics.road"])
def test_docstring_examples_hold(module):
    """The modules' examples (a pixel that matters, removed first or last) as doctests."""
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS)
    assert result.attempted >= 4 and result.failed == 0
