"""Value checks that guard behaviour the other tests only touch by shape or finiteness.

* the distiller's ``map_target="teacher"`` explains the teacher's predicted class;
* the map term sends its full gradient (through the Grad-CAM++ gradients too) to the student;
* batched augmentation crops at every offset in ``[0, 2 * padding]`` and flips about half;
* the classic per-sample path (``in_memory=False``) is seeded per ``(epoch, index)``, crops the
  zero-padded image and only normalises for evaluation.
"""

from __future__ import annotations

import pytest
import torch

from distill import ExplanationDistiller, build_model
from distill.cam import capture_activations, gradcam_pp
from distill.data import SHAPES_MEAN, SHAPES_STD, BatchAugment, ShapesDataModule, make_shapes
from distill.data.sampling import mix_seed

# --------------------------------------------------------------------------------------------
# Distiller: map targets and the gradient of the map term
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pair():
    torch.manual_seed(0)
    teacher = build_model("wrn_16_1", num_classes=10).eval()
    student = build_model("wrn_16_1", num_classes=10).eval()
    images = torch.randn(4, 3, 32, 32)
    return teacher, student, images


def _reference_maps(model: torch.nn.Module, images: torch.Tensor, targets: torch.Tensor):
    """Grad-CAM++ maps at ``model.cam_layer`` by the autograd path (no closed form), with the
    graph kept, so that they are differentiable with respect to the model's parameters."""
    inputs = images.clone().requires_grad_()  # a graph also through a frozen model
    with capture_activations(model, [model.cam_layer]) as acts:
        logits = model(inputs)
    maps = gradcam_pp(acts[model.cam_layer], logits, targets, create_graph=True)
    return maps, logits


def _squared_l2(student_maps: torch.Tensor, teacher_maps: torch.Tensor) -> torch.Tensor:
    return (student_maps - teacher_maps).pow(2).sum(dim=(1, 2)).mean()


@pytest.mark.parametrize("closed_form", [True, False], ids=["closed_form", "autograd"])
def test_teacher_map_target_explains_the_teachers_prediction(pair, closed_form):
    teacher, student, images = pair
    with torch.no_grad():
        predicted = teacher(images).argmax(dim=1)
    labels = (predicted + 1) % 10  # every label differs from the teacher's prediction
    distiller = ExplanationDistiller(
        teacher, student, map_weight=1.0, map_target="teacher", map_closed_form=closed_form
    ).eval()
    out = distiller(images, labels)

    t_ref = _reference_maps(teacher, images, predicted)[0].detach()
    s_ref = _reference_maps(student, images, predicted)[0].detach()
    torch.testing.assert_close(out.teacher_maps[0], t_ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out.student_maps[0], s_ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out.parts["map"], _squared_l2(s_ref, t_ref), rtol=1e-4, atol=1e-5)

    # The ground-truth targets give other maps and another loss: the target matters.
    t_label = _reference_maps(teacher, images, labels)[0].detach()
    s_label = _reference_maps(student, images, labels)[0].detach()
    assert not torch.allclose(out.teacher_maps[0], t_label, rtol=1e-3, atol=1e-4)
    assert not torch.allclose(out.student_maps[0], s_label, rtol=1e-3, atol=1e-4)
    label_loss = _squared_l2(s_label, t_label)
    assert not torch.isclose(out.parts["map"], label_loss, rtol=1e-3), (out.parts, label_loss)
    # ... and map_target="label" does explain the labels.
    by_label = ExplanationDistiller(
        teacher, student, map_weight=1.0, map_target="label", map_closed_form=closed_form
    ).eval()(images, labels)
    torch.testing.assert_close(by_label.teacher_maps[0], t_label, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(by_label.student_maps[0], s_label, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("closed_form", [True, False], ids=["closed_form", "autograd"])
@pytest.mark.parametrize("map_target", ["label", "teacher"])
def test_map_term_gradient_equals_the_hand_computed_one(pair, closed_form, map_target):
    """With only the map term, the student's gradient is that of ``||M_s - M_t||^2`` with
    ``M_s`` differentiated through its Grad-CAM++ gradients as well (``create_graph=True``):
    the classifier gets a nonzero gradient, which it would not with the gradients treated as
    constants."""
    teacher, student, images = pair
    labels = torch.tensor([0, 3, 5, 9])
    distiller = ExplanationDistiller(
        teacher,
        student,
        ce_weight=0.0,
        kd_weight=0.0,
        map_weight=1.0,
        map_target=map_target,
        map_closed_form=closed_form,
    ).eval()
    named = [(n, p) for n, p in student.named_parameters() if p.requires_grad]
    names, params = [n for n, _ in named], [p for _, p in named]
    out = distiller(images, labels)
    got = torch.autograd.grad(out.loss, params, allow_unused=True)

    with torch.no_grad():
        targets = labels if map_target == "label" else teacher(images).argmax(dim=1)
    t_ref = _reference_maps(teacher, images, targets)[0].detach()
    s_ref, _ = _reference_maps(student, images, targets)
    expected = torch.autograd.grad(_squared_l2(s_ref, t_ref), params, allow_unused=True)

    index = next(i for i, p in enumerate(params) if p is student.get_classifier().weight)
    assert float(expected[index].abs().max()) > 1e-3  # the reference itself is far from zero
    fc_grad = 0.0 if got[index] is None else float(got[index].abs().max())
    assert fc_grad > 1e-3, f"the map term sends no gradient to the classifier: max |grad| {fc_grad}"
    for name, param, g, e in zip(names, params, got, expected, strict=True):
        g = torch.zeros_like(param) if g is None else g
        e = torch.zeros_like(param) if e is None else e
        torch.testing.assert_close(g, e, rtol=1e-3, atol=1e-5, msg=lambda m, n=name: f"{n}: {m}")


# --------------------------------------------------------------------------------------------
# Batched augmentation (fast path)
# --------------------------------------------------------------------------------------------


def _match_crops(
    out: torch.Tensor, source: torch.Tensor, padding: int, atol: float = 0.0
) -> list[tuple[int, int, bool]]:
    """For each output sample, the one ``(dy, dx, flip)`` whose crop of the zero-padded
    ``source`` it equals; fails when none or several do."""
    _, _, h, w = source.shape
    padded = torch.nn.functional.pad(source, (padding,) * 4)
    found = []
    for i in range(out.shape[0]):
        matches = []
        for dy in range(2 * padding + 1):
            for dx in range(2 * padding + 1):
                crop = padded[i, :, dy : dy + h, dx : dx + w]
                for flip in (False, True):
                    candidate = crop.flip(-1) if flip else crop
                    if torch.allclose(out[i], candidate, rtol=0.0, atol=atol):
                        matches.append((dy, dx, flip))
        assert len(matches) == 1, f"sample {i}: crops matching the output: {matches}"
        found.append(matches[0])
    return found


def test_batch_augment_crops_every_offset_and_flips_half():
    padding, n = 2, 300
    # Every pixel distinct and nonzero, so each (offset, flip) gives a different crop.
    x = torch.arange(1, n * 2 * 6 * 6 + 1, dtype=torch.float32).view(n, 2, 6, 6)
    aug = BatchAugment(padding=padding, generator=11)
    out = aug(x)
    assert out.shape == x.shape and out.dtype == x.dtype
    found = _match_crops(out, x, padding)
    dys = {dy for dy, _, _ in found}
    dxs = {dx for _, dx, _ in found}
    full = set(range(2 * padding + 1))
    assert dys == full, f"crop row offsets seen {sorted(dys)}, expected all of {sorted(full)}"
    assert dxs == full, f"crop column offsets seen {sorted(dxs)}, expected all of {sorted(full)}"
    assert len({(dy, dx) for dy, dx, _ in found}) == (2 * padding + 1) ** 2
    flips = sum(flip for _, _, flip in found) / n
    assert 0.38 < flips < 0.62, f"share of flipped samples {flips:.2f}"
    # Roughly uniform offsets: no value of dy takes more than twice its share.
    counts = torch.bincount(torch.tensor([dy for dy, _, _ in found]))
    assert counts.max() < 2 * n / (2 * padding + 1), counts

    # Same seed, same output; the stream moves on between calls; another seed differs.
    assert torch.equal(BatchAugment(padding=padding, generator=11)(x), out)
    assert not torch.equal(aug(x), out)
    assert not torch.equal(BatchAugment(padding=padding, generator=12)(x), out)


def test_batch_augment_uint8_and_switches():
    x = torch.randint(1, 256, (64, 3, 8, 8), dtype=torch.uint8)
    out = BatchAugment(padding=3, generator=0)(x)
    assert out.dtype == torch.uint8
    found = _match_crops(out.float(), x.float(), 3)
    dys, dxs = {dy for dy, _, _ in found}, {dx for _, dx, _ in found}
    assert dys == dxs == set(range(7)), f"offsets seen: rows {sorted(dys)}, columns {sorted(dxs)}"
    # Padding shows up as zeros exactly where the offset leaves the image.
    for i, (dy, dx, _) in enumerate(found):
        zero_rows = (out[i] == 0).all(dim=(0, 2))
        zero_cols = (out[i] == 0).all(dim=(0, 1))
        assert int(zero_rows.sum()) == abs(dy - 3), (i, dy)
        assert int(zero_cols.sum()) == abs(dx - 3), (i, dx)
    no_flip = _match_crops(
        BatchAugment(padding=3, flip=False, generator=0)(x).float(), x.float(), 3
    )
    assert not any(flip for _, _, flip in no_flip)
    # Without padding the crop is the image (possibly flipped).
    for i, (dy, dx, _) in enumerate(
        _match_crops(BatchAugment(0, generator=0)(x).float(), x.float(), 0)
    ):
        assert (dy, dx) == (0, 0), i


def test_datamodule_fast_path_train_batches_are_augmented_crops():
    dm = ShapesDataModule(num_train=64, num_val=16, batch_size=64, seed=5)
    dm.setup("fit")
    images, labels = next(iter(dm.train_dataloader()))
    assert images.dtype == torch.uint8
    out, out_labels = dm.preprocess((images, labels), train=True)
    assert torch.equal(out_labels, labels)
    mean = torch.tensor(SHAPES_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(SHAPES_STD).view(1, 3, 1, 1)
    # Undo the normalisation, back to 0..255 levels (padding is level 0).
    levels = out * std * 255 + mean * 255
    found = _match_crops(levels, images.float(), dm.padding, atol=1e-3)
    offsets = {(dy, dx) for dy, dx, _ in found}
    assert len(offsets) > 20, f"only {len(offsets)} distinct crop offsets: {sorted(offsets)}"
    assert any(flip for _, _, flip in found) and not all(flip for _, _, flip in found)
    # Eval batches are only normalised.
    plain, _ = dm.preprocess((images, labels), train=False)
    torch.testing.assert_close(plain, (images.float() / 255 - mean) / std)


# --------------------------------------------------------------------------------------------
# Classic per-sample path (in_memory=False)
# --------------------------------------------------------------------------------------------


def _normalise(images_uint8: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(SHAPES_MEAN).view(-1, 1, 1)
    std = torch.tensor(SHAPES_STD).view(-1, 1, 1)
    return (images_uint8.float() / 255 - mean) / std


@pytest.fixture(scope="module")
def classic():
    dm = ShapesDataModule(num_train=48, num_val=16, batch_size=16, in_memory=False, seed=3)
    dm.setup("fit")
    return dm, dm.train_dataloader().dataset, make_shapes(48, 0).images


def test_classic_augmentation_is_seeded_by_epoch_and_index(classic):
    _, dataset, _ = classic
    for index in (0, 7, 30):
        a, label_a = dataset[(0, index)]
        b, label_b = dataset[(0, index)]
        assert torch.equal(a, b) and label_a == label_b
        assert torch.equal(dataset[index][0], a)  # a plain index means epoch 0
    # Across epochs (and across indices of one epoch) the crops change.
    differ = sum(not torch.equal(dataset[(0, i)][0], dataset[(1, i)][0]) for i in range(16))
    assert differ >= 14, f"only {differ} of 16 samples are augmented differently in epoch 1"
    # Another datamodule seed gives other crops for the same (epoch, index).
    other = ShapesDataModule(num_train=48, num_val=16, batch_size=16, in_memory=False, seed=4)
    other.setup("fit")
    other_ds = other.train_dataloader().dataset
    differ = sum(not torch.equal(dataset[(0, i)][0], other_ds[(0, i)][0]) for i in range(16))
    assert differ >= 14, f"only {differ} of 16 samples are augmented differently with seed 4"


def test_classic_train_items_are_crops_of_the_zero_padded_normalised_image(classic):
    dm, dataset, raw = classic
    padding = dm.padding
    found = []
    for epoch in range(3):
        indices = list(range(len(raw)))
        out = torch.stack([dataset[(epoch, i)][0] for i in indices])
        assert out.dtype == torch.float32 and out.shape == (len(raw), 3, 32, 32)
        # RandomCrop pads the uint8 image with black, which then is normalised like any pixel:
        # compare in 0..255 levels.
        levels = out * torch.tensor(SHAPES_STD).view(1, 3, 1, 1) * 255
        levels = levels + torch.tensor(SHAPES_MEAN).view(1, 3, 1, 1) * 255
        found += _match_crops(levels, raw[indices].float(), padding, atol=1e-3)
    dys = {dy for dy, _, _ in found}
    dxs = {dx for _, dx, _ in found}
    seen = f"crop offsets seen: rows {sorted(dys)}, columns {sorted(dxs)}"
    assert {0, 2 * padding} <= dys and {0, 2 * padding} <= dxs, seen
    assert len(dys) >= 7 and len(dxs) >= 7, seen
    flips = sum(flip for _, _, flip in found) / len(found)
    assert 0.3 < flips < 0.7, f"share of flipped samples {flips:.2f}"
    # The labels are passed through untouched.
    assert [int(dataset[(0, i)][1]) for i in range(8)] == make_shapes(48, 0).labels[:8].tolist()


def test_classic_eval_items_are_the_normalised_images(classic):
    dm, _, _ = classic
    generated = make_shapes(16, mix_seed(0, 0x5EED))  # the shapes test split
    dm.setup("test")
    loader = dm.test_dataloader()
    images, labels = next(iter(loader))
    assert len(images) == 16
    torch.testing.assert_close(images, _normalise(generated.images), rtol=0, atol=1e-5)
    assert torch.equal(labels, generated.labels)
    # Eval items do not depend on the epoch.
    assert torch.equal(loader.dataset[(0, 3)][0], loader.dataset[(5, 3)][0])


# --------------------------------------------------------------------------------------------
# Doctests of the CAM layer and the losses
# --------------------------------------------------------------------------------------------


def test_cam_and_losses_doctests_exist_and_are_collected_by_default():
    """``pytest`` runs the docstring examples of ``distill/cam`` and ``distill/losses``
    (``--doctest-modules`` on those testpaths in pyproject.toml); make sure there are some and
    that the default configuration keeps collecting them."""
    import doctest
    import importlib
    import pkgutil
    from pathlib import Path

    import distill.cam
    import distill.losses

    tomllib = pytest.importorskip("tomllib")
    pyproject = Path(__file__).resolve().parent.parent / "pyproject.toml"
    options = tomllib.loads(pyproject.read_text())["tool"]["pytest"]["ini_options"]
    assert "--doctest-modules" in options["addopts"].split()
    finder = doctest.DocTestFinder()
    for package in (distill.cam, distill.losses):
        assert package.__name__.replace(".", "/") in options["testpaths"]
        modules = [
            importlib.import_module(info.name)
            for info in pkgutil.iter_modules(package.__path__, package.__name__ + ".")
        ]
        examples = sum(len(test.examples) for m in modules for test in finder.find(m))
        assert examples >= 5, (package.__name__, examples)
