"""Grad-CAM / Grad-CAM++ maps: eq. 19 per sample, closed form, gradients, edge cases."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call

from distill.cam import (
    GradCAM,
    GradCAMPlusPlus,
    capture_activations,
    gradcam,
    gradcam_pp,
    gradcam_pp_weights,
    minmax_normalize,
    pooled_linear_classifier,
)


class PooledNet(nn.Module):
    """conv -> relu -> conv -> relu(feat) -> GAP -> fc: declares its pooled-linear head."""

    cam_layer = "act"
    has_pooled_linear_head = True

    def __init__(self, classes: int = 5, width: int = 6) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(4, width, 3, stride=2, padding=1)
        self.act = nn.ReLU()
        self.fc = nn.Linear(width, classes)

    def get_classifier(self) -> nn.Linear:
        return self.fc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.conv2(self.relu1(self.conv1(x))))
        return self.fc(x.mean((2, 3)))


class FlatHeadNet(nn.Module):
    """A head that is not a pooled linear one: gradients vary over space."""

    def __init__(self, classes: int = 4, act: type[nn.Module] = nn.ReLU) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.act1 = act()
        self.conv2 = nn.Conv2d(4, 5, 3, stride=2, padding=1)
        self.feat = act()
        self.head = nn.Sequential(
            nn.Conv2d(5, 3, 1), act(), nn.Flatten(), nn.Linear(3 * 4 * 4, classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.feat(self.conv2(self.act1(self.conv1(x)))))


def naive_eq19(model: nn.Module, layer: str, image: torch.Tensor, target: int, plus_plus: bool):
    """One sample at a time, straight from the paper (float64 advised)."""
    store = {}
    handle = dict(model.named_modules())[layer].register_forward_hook(
        lambda m, i, o: store.__setitem__("a", o)
    )
    score = model(image[None])[0, target]
    handle.remove()
    acts = store["a"][0]
    (grads,) = torch.autograd.grad(score, store["a"])
    grads = grads[0]
    return eq19_map(acts, grads, plus_plus)


def eq19_map(acts: torch.Tensor, grads: torch.Tensor, plus_plus: bool) -> torch.Tensor:
    """Eq. 19 (Grad-CAM++) or Grad-CAM for one sample's ``[K, h, w]`` activations and the
    gradients of its score, written out term by term (the reference of the batched maps)."""
    if plus_plus:
        g2, g3 = grads**2, grads**3
        denominator = 2 * g2 + acts.sum((1, 2), keepdim=True) * g3
        alpha = torch.where(denominator != 0, g2 / torch.where(denominator != 0, denominator, 1), 0)
        weights = (alpha * torch.relu(grads)).sum((1, 2))
    else:
        weights = grads.mean((1, 2))
    return torch.relu((weights[:, None, None] * acts).sum(0)).detach()


@pytest.mark.parametrize("plus_plus", [True, False])
@pytest.mark.parametrize("net_cls, layer", [(PooledNet, "act"), (FlatHeadNet, "feat")])
def test_batched_maps_equal_naive_per_sample(net_cls, layer, plus_plus):
    torch.manual_seed(0)
    model = net_cls().double().eval()
    images = torch.randn(6, 3, 8, 8, dtype=torch.float64)
    targets = torch.tensor([0, 1, 2, 3, 0, 2])
    with capture_activations(model, [layer]) as acts:
        logits = model(images)
    fn = gradcam_pp if plus_plus else gradcam
    batched = fn(acts[layer], logits, targets)  # autograd path, one call for the batch
    naive = torch.stack(
        [naive_eq19(model, layer, images[i], int(targets[i]), plus_plus) for i in range(6)]
    )
    assert batched.shape == (6, 4, 4)
    assert batched.abs().sum() > 0
    torch.testing.assert_close(batched, naive, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("fn", [gradcam_pp, gradcam])
def test_closed_form_equals_autograd_path(fn):
    torch.manual_seed(1)
    model = PooledNet()
    images = torch.randn(8, 3, 16, 16)
    targets = torch.randint(0, 5, (8,))
    classifier = pooled_linear_classifier(model, "act")
    assert classifier is model.fc
    with capture_activations(model, ["act"]) as acts:
        logits = model(images)
    closed = fn(
        acts["act"], logits, targets, create_graph=True, classifier_weight=classifier.weight
    )
    autograd = fn(acts["act"], logits, targets, create_graph=True)
    torch.testing.assert_close(closed, autograd, rtol=1e-5, atol=1e-7)
    # ... and so are their gradients with respect to every parameter.
    params = list(model.parameters())
    g_closed = torch.autograd.grad(
        closed.pow(2).sum(), params, retain_graph=True, materialize_grads=True
    )
    g_autograd = torch.autograd.grad(
        autograd.pow(2).sum(), params, retain_graph=True, materialize_grads=True
    )
    for a, b in zip(g_closed, g_autograd, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)


def test_closed_form_weights_match_design_formula():
    """w_k = relu(W[c,k]) / (2 + W[c,k] * mean_ij A_k): DESIGN section 1."""
    torch.manual_seed(2)
    acts = torch.rand(3, 6, 4, 4)
    weight = torch.randn(5, 6)
    targets = torch.tensor([4, 0, 2])
    w = weight[targets]
    expected = torch.relu(w) / (2 + w * acts.mean((2, 3)))
    got = gradcam_pp_weights(acts, (w / 16)[:, :, None, None])
    torch.testing.assert_close(got, expected)


def _map_of_params(model, layer, images, targets, closed_form, fn=gradcam_pp):
    names = [n for n, _ in model.named_parameters()]

    def f(*params):
        with capture_activations(model, [layer]) as acts:
            logits = functional_call(model, dict(zip(names, params, strict=True)), (images,))
        weight = params[names.index("fc.weight")] if closed_form else None
        return fn(acts[layer], logits, targets, create_graph=True, classifier_weight=weight)

    return f, tuple(p.detach().clone().requires_grad_() for p in model.parameters())


@pytest.mark.parametrize("closed_form", [False, True])
def test_gradcheck_float64_wrt_parameters(closed_form):
    torch.manual_seed(3)
    model = PooledNet(classes=3, width=3).double()
    # Smooth activations avoid finite differences straddling a relu kink inside the net.
    model.relu1 = nn.Tanh()
    model.act = nn.Softplus()
    images = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    targets = torch.tensor([0, 2])
    f, params = _map_of_params(model, "act", images, targets, closed_form)
    assert (f(*params) > 0).any()
    assert torch.autograd.gradcheck(f, params, eps=1e-6, atol=1e-5, rtol=1e-4)


def test_gradcheck_spatially_varying_gradients():
    torch.manual_seed(4)
    model = FlatHeadNet(classes=3, act=nn.Softplus).double()
    images = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    names = [n for n, _ in model.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_() for p in model.parameters())

    def f(*ps):
        with capture_activations(model, ["feat"]) as acts:
            logits = functional_call(model, dict(zip(names, ps, strict=True)), (images,))
        return gradcam_pp(acts["feat"], logits, torch.tensor([1, 2]), create_graph=True)

    assert torch.autograd.gradcheck(f, params, eps=1e-6, atol=1e-5, rtol=1e-4)


def test_works_under_no_grad():
    torch.manual_seed(5)
    model = PooledNet()
    images = torch.randn(4, 3, 8, 8)
    with capture_activations(model, ["act"]) as acts:
        logits = model(images)
    reference = gradcam_pp(acts["act"], logits)
    with torch.no_grad():
        # Activations captured with grad, map taken under no_grad (Lightning validation).
        inside = gradcam_pp(acts["act"], logits)
        # Forward under no_grad: the closed form needs no graph.
        with capture_activations(model, ["act"]) as acts_ng:
            logits_ng = model(images)
        closed = gradcam_pp(acts_ng["act"], logits_ng, classifier_weight=model.fc.weight)
        with pytest.raises(RuntimeError, match="enable_grad"):
            gradcam_pp(acts_ng["act"], logits_ng)
    torch.testing.assert_close(inside, reference)
    torch.testing.assert_close(closed, reference)


def test_targets_default_to_argmax_and_are_validated():
    acts = torch.rand(2, 3, 2, 2, requires_grad=True)
    fc = nn.Linear(3, 4)
    logits = fc(acts.mean((2, 3)))
    default = gradcam_pp(acts, logits)
    explicit = gradcam_pp(acts, logits, logits.argmax(1))
    torch.testing.assert_close(default, explicit)
    with pytest.raises(TypeError, match="integer"):
        gradcam_pp(acts, logits, torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match=r"\[B\]"):
        gradcam_pp(acts, logits, torch.tensor([0, 1, 2]))


@pytest.mark.parametrize(
    "case",
    ["zero_grads", "zero_acts", "negative_acts", "vanishing_denominator", "large_acts"],
)
@pytest.mark.parametrize("fn", [gradcam_pp, gradcam])
def test_degenerate_inputs_give_finite_maps(case, fn):
    torch.manual_seed(6)
    acts = torch.rand(4, 3, 4, 4)
    weight = torch.randn(5, 3)
    if case == "zero_grads":
        weight = torch.zeros(5, 3)  # a dead student head at init
    elif case == "zero_acts":
        acts = torch.zeros(4, 3, 4, 4)
    elif case == "negative_acts":
        acts = -torch.rand(4, 3, 4, 4) * 50
    elif case == "vanishing_denominator":
        weight = torch.ones(5, 3) * 0.5
        acts = torch.full((4, 3, 4, 4), -4.0 / 16)  # 2 + W * mean(A) = 2 - 0.5 * 4 = 0
    elif case == "large_acts":
        acts = torch.rand(4, 3, 4, 4) * 1e6
    acts.requires_grad_()
    logits = acts.mean((2, 3)) @ weight.T
    for kwargs in ({}, {"classifier_weight": weight}):
        maps = fn(acts, logits, torch.tensor([0, 1, 2, 3]), **kwargs)
        assert torch.isfinite(maps).all(), (case, kwargs)
        assert (maps >= 0).all()
    if case in ("zero_grads", "zero_acts"):
        assert maps.abs().max() == 0


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_activations_use_float32_weights(dtype):
    torch.manual_seed(7)
    acts32 = torch.rand(2, 8, 4, 4) * 300  # sum(A) * g overflows float16 arithmetic without upcast
    weight = torch.randn(3, 8) * 30
    acts = acts32.to(dtype)
    maps = gradcam_pp(
        acts, acts.float().mean((2, 3)) @ weight.T, torch.tensor([0, 1]), classifier_weight=weight
    )
    reference = gradcam_pp(
        acts.float(),
        acts.float().mean((2, 3)) @ weight.T,
        torch.tensor([0, 1]),
        classifier_weight=weight,
    )
    assert maps.dtype == torch.float32
    torch.testing.assert_close(maps, reference)


def _hook_count(model: nn.Module) -> int:
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
        for m in model.modules()
    )


@pytest.mark.parametrize("cls, fn", [(GradCAMPlusPlus, gradcam_pp), (GradCAM, gradcam)])
@pytest.mark.parametrize("net_cls, layer", [(PooledNet, None), (FlatHeadNet, "feat")])
def test_wrappers_match_functional_and_leave_model_alone(cls, fn, net_cls, layer):
    torch.manual_seed(8)
    model = net_cls()
    images = torch.randn(3, 3, 8, 8)
    for training in (True, False):
        model.train(training)
        cam = cls(model, layer)
        maps = cam(images)
        assert model.training is training
        assert _hook_count(model) == 0
        assert not maps.requires_grad
        assert all(p.grad is None for p in model.parameters())
        name = layer or model.cam_layer
        with capture_activations(model, [name]) as acts:
            logits = model(images)
        torch.testing.assert_close(maps, fn(acts[name], logits), rtol=1e-5, atol=1e-6)
    targets = torch.tensor([1, 1, 0])
    assert cam(images, targets).shape == (3, 4, 4)


def test_capture_unknown_layer_suggests_names_and_hooks_are_removed_on_error():
    model = PooledNet()
    with pytest.raises(ValueError, match="'conv2'"), capture_activations(model, ["conv_2"]):
        pass
    with pytest.raises(RuntimeError, match="boom"), capture_activations(model, ["act", "conv1"]):
        raise RuntimeError("boom")
    assert _hook_count(model) == 0


def test_capture_detach_cuts_graph_before_first_layer():
    model = FlatHeadNet()
    model.requires_grad_(False)
    with capture_activations(model, ["feat", "act1"], detach=True) as acts:
        logits = model(torch.randn(2, 3, 8, 8))
    assert acts["act1"].is_leaf and acts["act1"].requires_grad
    assert not acts["feat"].is_leaf  # still connected to the first cut, so gradients reach it
    maps_deep = gradcam_pp(acts["feat"], logits)
    maps_shallow = gradcam_pp(acts["act1"], logits)
    assert maps_deep.shape == (2, 4, 4) and maps_shallow.shape == (2, 8, 8)


def test_minmax_normalize_constant_maps_are_zero():
    maps = torch.stack([torch.zeros(3, 3), torch.arange(9.0).view(3, 3)])
    out = minmax_normalize(maps)
    assert out[0].abs().max() == 0
    assert out[1].min() == 0 and out[1].max() == 1


@pytest.mark.parametrize("closed_form", [True, False])
def test_maps_and_scores_come_from_one_forward(closed_form):
    torch.manual_seed(0)
    from distill.models import build_model

    model = build_model("wrn_16_1", num_classes=10).eval()
    layer = model.cam_layer if closed_form else "block2"
    images = torch.randn(3, 3, 32, 32)
    cam = GradCAMPlusPlus(model, layer)
    maps, scores = cam.maps_and_scores(images)
    with torch.no_grad():
        expected = model(images)
    torch.testing.assert_close(scores, expected)
    torch.testing.assert_close(maps, cam(images, expected.argmax(1)))  # default: predicted class
    assert not maps.requires_grad and not scores.requires_grad
