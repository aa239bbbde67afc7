"""KD, map matching, attention transfer and the importable distiller."""

from __future__ import annotations

import gc
import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from distill import ExplanationDistiller, build_model
from distill.cam import capture_activations, gradcam_pp
from distill.losses import (
    AttentionTransferLoss,
    ExplanationMatchingLoss,
    KDLoss,
    LayerPair,
    attention_transfer,
    explanation_matching,
    kd_loss,
)


def _softmax(values: list[float]) -> list[float]:
    exps = [math.exp(v) for v in values]
    return [e / sum(exps) for e in exps]


def test_kd_matches_hand_computation():
    student = [[1.0, 0.0, -1.0], [0.5, 2.0, 0.0]]
    teacher = [[0.0, 1.0, 3.0], [1.0, 1.0, 1.0]]
    temperature = 4.0
    expected = 0.0
    for s_row, t_row in zip(student, teacher, strict=True):
        p_s = _softmax([v / temperature for v in s_row])
        p_t = _softmax([v / temperature for v in t_row])
        expected += sum(t * math.log(t / s) for s, t in zip(p_s, p_t, strict=True))
    expected = expected / 2 * temperature**2
    got = kd_loss(torch.tensor(student), torch.tensor(teacher), temperature)
    assert got.item() == pytest.approx(expected, rel=1e-5)
    assert KDLoss(temperature)(
        torch.tensor(student), torch.tensor(teacher)
    ).item() == pytest.approx(expected, rel=1e-5)
    assert kd_loss(torch.tensor(teacher), torch.tensor(teacher)).item() == pytest.approx(
        0, abs=1e-6
    )
    with pytest.raises(ValueError, match="temperature"):
        KDLoss(0.0)


def test_explanation_matching_distances_and_normalisations():
    student = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])
    teacher = torch.tensor([[[0.0, 2.0], [3.0, 2.0]]])
    # Paper: ||L_s - L_t||_2^2 per image.
    assert explanation_matching(student, teacher).item() == pytest.approx(1 + 4)
    assert explanation_matching(student, teacher, distance="mse").item() == pytest.approx(5 / 4)
    assert explanation_matching(student, teacher, distance="l1").item() == pytest.approx(3 / 4)
    cosine = (0 + 4 + 9 + 8) / (math.sqrt(30) * math.sqrt(17))
    assert explanation_matching(student, teacher, distance="cosine").item() == pytest.approx(
        1 - cosine
    )
    # minmax: student -> [0, 1/3, 2/3, 1]; teacher -> [0, 2/3, 1, 2/3].
    expected = (1 / 3) ** 2 + (1 / 3) ** 2 + (1 / 3) ** 2
    got = explanation_matching(student, teacher, normalize="minmax")
    assert got.item() == pytest.approx(expected, rel=1e-5)
    # l2: both unit norm, so squared L2 = 2 - 2 cos.
    got = explanation_matching(student, teacher, normalize="l2")
    assert got.item() == pytest.approx(2 - 2 * cosine, rel=1e-5)
    # Zero maps stay finite under every normalisation.
    zeros = torch.zeros(2, 3, 3)
    for norm in ("none", "l2", "minmax"):
        for dist in ("squared_l2", "mse", "l1", "cosine"):
            assert torch.isfinite(explanation_matching(zeros, zeros, normalize=norm, distance=dist))
    with pytest.raises(ValueError, match="distance"):
        ExplanationMatchingLoss(distance="l3")


def test_explanation_matching_resizes_smaller_map():
    small = torch.ones(2, 4, 4)
    large = torch.ones(2, 8, 8)
    assert explanation_matching(small, large).item() == pytest.approx(0, abs=1e-7)
    assert explanation_matching(large, small * 2).item() == pytest.approx(64)


def test_attention_transfer_forms():
    fs = torch.zeros(1, 2, 1, 2)
    fs[0, 0, 0, 0] = 1.0  # attention (sum of squares) [1, 0] -> normalised [1, 0]
    ft = torch.ones(1, 3, 1, 2)  # [3, 3] -> [1/sqrt2, 1/sqrt2]
    diff = torch.tensor([1 - 1 / math.sqrt(2), -1 / math.sqrt(2)])
    assert attention_transfer(fs, ft, form="code").item() == pytest.approx(
        diff.pow(2).mean().item()
    )
    assert attention_transfer(fs, ft, form="paper").item() == pytest.approx(diff.norm().item())
    assert AttentionTransferLoss()(ft, ft).item() == pytest.approx(0, abs=1e-7)
    # Different spatial sizes are pooled to the smaller one.
    assert attention_transfer(torch.rand(2, 4, 8, 8), torch.rand(2, 6, 4, 4)).ndim == 0


class SmallNet(nn.Module):
    cam_layer = "act"
    has_pooled_linear_head = True

    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.act = nn.Softplus()
        self.fc = nn.Linear(4, classes)

    def get_classifier(self) -> nn.Linear:
        return self.fc

    def forward(self, x):
        return self.fc(self.act(self.conv(x)).mean((2, 3)))


def test_map_loss_gradient_agrees_with_finite_differences():
    torch.manual_seed(0)
    student = SmallNet().double()
    images = torch.randn(3, 3, 5, 5, dtype=torch.float64)
    targets = torch.tensor([0, 1, 2])
    teacher_maps = torch.rand(3, 5, 5, dtype=torch.float64)
    names = [n for n, _ in student.named_parameters()]

    def loss(*params):
        with capture_activations(student, ["act"]) as acts:
            logits = functional_call(student, dict(zip(names, params, strict=True)), (images,))
        maps = gradcam_pp(
            acts["act"],
            logits,
            targets,
            create_graph=True,
            classifier_weight=params[names.index("fc.weight")],
        )
        return explanation_matching(maps, teacher_maps)

    params = tuple(p.detach().clone().requires_grad_() for p in student.parameters())
    assert torch.autograd.gradcheck(loss, params, eps=1e-6, atol=1e-6, rtol=1e-4)


@pytest.fixture(scope="module")
def wrn_pair():
    torch.manual_seed(0)
    return build_model("wrn_16_2", num_classes=10), build_model("wrn_16_1", num_classes=10)


def test_distiller_parts_and_frozen_teacher(wrn_pair):
    teacher, student = wrn_pair
    distiller = ExplanationDistiller(teacher, student, at_weight=1.0)
    distiller.train()
    assert not teacher.training and student.training
    assert not any(p.requires_grad for p in teacher.parameters())
    images, labels = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    out = distiller(images, labels)
    assert set(out.parts) == {"ce", "kd", "map", "at"}
    assert distiller.loss_terms == ("ce", "kd", "map", "at")  # what the module logs
    # The defaults: KD as the field runs it (CE 0.1, KD 0.9) plus the paper's map weight 0.01.
    expected = (
        0.1 * out.parts["ce"] + 0.9 * out.parts["kd"] + 0.01 * out.parts["map"] + out.parts["at"]
    )
    torch.testing.assert_close(out.loss.detach(), expected)
    assert out.logits.shape == (4, 10) and out.teacher_maps[0].shape == (4, 8, 8)
    out.loss.backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is not None for p in student.parameters() if p.requires_grad)
    # Turning the map weight to 0 skips the maps unless asked for.
    kd_only = ExplanationDistiller(teacher, student, map_weight=0.0)
    assert "map" not in kd_only(images, labels).parts
    assert kd_only(images, labels, return_maps=True).student_maps[0].shape == (4, 8, 8)


def test_ce_only_steps_do_not_run_the_teacher(wrn_pair):
    """With no KD, maps or AT to compute, the teacher's forward would be wasted work."""
    teacher, student = wrn_pair
    calls = []
    handle = teacher.register_forward_hook(lambda *_: calls.append(1))
    ce_only = ExplanationDistiller(teacher, student, ce_weight=1.0, kd_weight=0.0, map_weight=0.0)
    images, labels = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    out = ce_only(images, labels)
    torch.testing.assert_close(out.loss, F.cross_entropy(student(images), labels))
    assert out.teacher_logits is None and out.parts.keys() == {"ce"} and calls == []
    assert ce_only.loss_terms == ("ce",)
    # Monitoring maps (validation) still needs the teacher, once.
    monitored = ce_only(images, labels, return_maps=True)
    assert monitored.teacher_logits.shape == (4, 10) and len(calls) == 1
    handle.remove()


def test_distiller_autograd_layers_and_teacher_targets(wrn_pair):
    teacher, student = wrn_pair
    pairs = [(student.cam_layer, teacher.cam_layer, 1.0), LayerPair("block2", "block2", 0.5)]
    distiller = ExplanationDistiller(teacher, student, map_layers=pairs, map_target="teacher")
    images, labels = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    out = distiller(images, labels)
    assert [m.shape for m in out.student_maps] == [(4, 8, 8), (4, 16, 16)]
    assert all(torch.isfinite(m).all() for m in out.teacher_maps)
    out.loss.backward()
    assert all(p.grad is None for p in teacher.parameters())
    with pytest.raises(ValueError, match="no layer"):
        ExplanationDistiller(teacher, student, map_layers=[("block9", "block2", 1.0)])
    with pytest.raises(ValueError, match="map_weight"):
        ExplanationDistiller(teacher, student, map_weight=-1)


def test_optimizer_steps_bring_student_map_towards_teacher(wrn_pair):
    torch.manual_seed(1)
    teacher, _ = wrn_pair
    student = build_model("wrn_16_1", num_classes=10)
    distiller = ExplanationDistiller(teacher, student, ce_weight=0.0, kd_weight=0.0, map_weight=1.0)
    images, labels = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    optimizer = torch.optim.SGD(student.parameters(), lr=0.001, momentum=0.9)
    distiller.eval()  # fixed BN statistics make the distance a function of the weights alone
    with torch.no_grad():
        before = distiller(images, labels).parts["map"].item()
    for _ in range(15):
        out = distiller(images, labels)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
    with torch.no_grad():
        after = distiller(images, labels).parts["map"].item()
    assert after < 0.5 * before, (before, after)


def _live_tensors() -> int:
    gc.collect()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # some module attributes warn when inspected
        return sum(1 for obj in gc.get_objects() if torch.is_tensor(obj))


def test_no_memory_growth_over_training_steps():
    torch.manual_seed(2)
    teacher, student = build_model("wrn_16_1", 10), build_model("wrn_16_1", 10)
    # Autograd path at a mid layer too, which exercises double backward.
    distiller = ExplanationDistiller(
        teacher, student, map_layers=[("relu", "relu", 1.0), ("block2", "block2", 1.0)]
    )
    optimizer = torch.optim.SGD(student.parameters(), lr=0.01)
    images, labels = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    counts = []
    for step in range(50):
        out = distiller(images, labels)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        optimizer.step()
        del out
        if step in (9, 49):
            counts.append(_live_tensors())
    assert counts[1] <= counts[0], counts


def test_forcing_the_autograd_path_gives_the_same_losses_and_gradients(wrn_pair):
    teacher, student = wrn_pair
    images, labels = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    results = []
    for closed_form in (True, False):
        distiller = ExplanationDistiller(
            teacher, student, map_weight=1.0, map_closed_form=closed_form
        )
        distiller.eval()
        assert distiller.student_maps_need_grad is not closed_form
        student.zero_grad()
        out = distiller(images, labels)
        out.loss.backward()
        results.append((out, [p.grad.clone() for p in student.parameters()]))
    (closed, closed_grads), (autograd, autograd_grads) = results
    torch.testing.assert_close(closed.parts["map"], autograd.parts["map"], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(
        closed.teacher_maps[0], autograd.teacher_maps[0], rtol=1e-4, atol=1e-6
    )
    for a, b in zip(closed_grads, autograd_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-6)
