"""The CAM family: XGrad-CAM, LayerCAM, HiResCAM, Grad-CAM element-wise, CAM and Eigen-CAM.

Each method against a one-sample reference written from its paper's equation, gradcheck in
float64 on the closed form and the autograd path, the closed form against autograd, the
equivalences the docs claim, and the peers' maps (pytorch-grad-cam, torchcam) per sample.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call

from distill.cam import (
    CAM,
    CAM_METHODS,
    EigenCAM,
    GradCAM,
    GradCAMElementWise,
    HiResCAM,
    LayerCAM,
    XGradCAM,
    cam,
    capture_activations,
    eigencam,
    eigencam_projection,
    gradcam,
    gradcam_elementwise,
    hirescam,
    layercam,
    pooled_head,
    resize_maps,
    token_layout,
    xgradcam,
)
from distill.models import build_model

NEW = {
    "xgradcam": xgradcam,
    "layercam": layercam,
    "hirescam": hirescam,
    "gradcam_elementwise": gradcam_elementwise,
    "cam": cam,
    "eigencam": eigencam,
}
WITH_GRADIENT = ["xgradcam", "layercam", "hirescam", "gradcam_elementwise"]
WRAPPERS = {
    "xgradcam": XGradCAM,
    "layercam": LayerCAM,
    "hirescam": HiResCAM,
    "gradcam_elementwise": GradCAMElementWise,
    "cam": CAM,
    "eigencam": EigenCAM,
}


class PooledNet(nn.Module):
    """conv -> act -> conv -> act(feat) -> GAP -> fc, declaring its pooled-linear head."""

    cam_layer = "feat"
    has_pooled_linear_head = True

    def __init__(self, act: type[nn.Module] = nn.ReLU, classes: int = 5, width: int = 6) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.act1 = act()
        self.conv2 = nn.Conv2d(4, width, 3, stride=2, padding=1)
        self.feat = act()
        self.fc = nn.Linear(width, classes)

    def get_classifier(self) -> nn.Linear:
        return self.fc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.feat(self.conv2(self.act1(self.conv1(x)))).mean((2, 3)))


class FlatHeadNet(nn.Module):
    """A head after ``feat`` that is not pooled-linear: gradients vary over positions."""

    def __init__(self, act: type[nn.Module] = nn.ReLU, classes: int = 4) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.act1 = act()
        self.conv2 = nn.Conv2d(4, 5, 3, stride=2, padding=1)
        self.feat = act()
        self.head = nn.Sequential(nn.Conv2d(5, 3, 1), act(), nn.Flatten(), nn.Linear(48, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.feat(self.conv2(self.act1(self.conv1(x)))))


# ---------------------------------------------------------------- naive one-sample references


def paper_map(name: str, acts: torch.Tensor, grads: torch.Tensor, row: torch.Tensor | None):
    """One sample's ``[K, h, w]`` map from the paper's equation, channel by channel."""
    total = torch.zeros_like(acts[0])
    if name == "eigencam":
        x = acts.flatten(1).T.double()  # positions x channels
        x = x - x.mean(0)
        v = torch.linalg.svd(x, full_matrices=False).Vh[0]
        v = -v if v.sum() < 0 else v  # the documented sign rule
        return torch.relu(x @ v).view_as(total).to(acts.dtype)
    for k in range(acts.shape[0]):
        a, g = acts[k], grads[k]
        if name == "xgradcam":  # Fu et al. eq. 9; a dead channel (A_k = 0) adds nothing
            total = total + ((a / a.sum() * g).sum() * a if a.any() else 0)
        elif name == "layercam":  # Jiang et al. eq. 5-6
            total = total + torch.relu(g) * a
        elif name == "hirescam":  # Draelos and Carin: element-wise product, channel sum
            total = total + g * a
        elif name == "gradcam_elementwise":
            total = total + torch.relu(g * a)
        elif name == "cam":  # Zhou et al. eq. 2
            total = total + row[k] * a
    return torch.relu(total)


def naive_maps(name, model, layer, images, targets, row_of=None):
    maps = []
    for image, target in zip(images, targets.tolist(), strict=True):
        with capture_activations(model, [layer]) as store:
            score = model(image[None])[0, target]
        (grads,) = torch.autograd.grad(score, store[layer])
        row = row_of(target) if row_of else None
        maps.append(paper_map(name, store[layer][0].detach(), grads[0], row))
    return torch.stack(maps)


@pytest.mark.parametrize("name", list(NEW))
@pytest.mark.parametrize("act", [nn.ReLU, nn.Tanh])  # non-negative and signed activations
def test_batched_maps_equal_naive_per_sample(name, act):
    torch.manual_seed(0)
    pooled = name == "cam"
    model = (PooledNet(act) if pooled else FlatHeadNet(act)).double()
    images = torch.randn(5, 3, 8, 8, dtype=torch.float64)
    targets = torch.tensor([0, 3, 1, 1, 2])  # per sample, not the argmax
    with capture_activations(model, ["feat"]) as acts:
        logits = model(images)
    weight = model.fc.weight if pooled else None
    got = NEW[name](acts["feat"], logits, targets, classifier_weight=weight)
    row_of = (lambda c: weight[c].detach()) if pooled else None
    expected = naive_maps(name, model, "feat", images, targets, row_of)
    assert got.shape == (5, 4, 4) and (expected > 0).any()
    torch.testing.assert_close(got, expected)


# ---------------------------------------------------------------- gradcheck, both paths


def _map_of_params(fn, model, images, targets, closed_form):
    names = [n for n, _ in model.named_parameters()]

    def f(*params):
        with capture_activations(model, ["feat"]) as acts:
            logits = functional_call(model, dict(zip(names, params, strict=True)), (images,))
        weight = params[names.index("fc.weight")] if closed_form else None
        return fn(acts["feat"], logits, targets, create_graph=True, classifier_weight=weight)

    return f, tuple(p.detach().clone().requires_grad_() for p in model.parameters())


@pytest.mark.parametrize(
    "name, closed_form",
    [(n, c) for n in WITH_GRADIENT for c in (False, True)] + [("cam", True), ("eigencam", False)],
)
def test_gradcheck_float64_wrt_parameters(name, closed_form):
    torch.manual_seed(3)
    # Smooth activations: finite differences must not straddle a kink inside the network.
    model = (PooledNet(nn.Softplus, 3, 3) if closed_form else FlatHeadNet(nn.Softplus, 3)).double()
    images = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    f, params = _map_of_params(NEW[name], model, images, torch.tensor([0, 2]), closed_form)
    assert (f(*params) > 0).any()
    assert torch.autograd.gradcheck(f, params, eps=1e-6, atol=1e-5, rtol=1e-4, fast_mode=True)


def test_eigencam_gradient_is_finite_with_repeated_eigenvalues():
    """Dead channels give repeated zero eigenvalues; ``torch.linalg.svd``'s backward is NaN
    there, the first component's own derivative is not."""
    torch.manual_seed(1)
    acts = torch.rand(2, 6, 3, 3, dtype=torch.float64)
    acts[:, 3:] = 0
    acts.requires_grad_()
    scores = torch.zeros(2, 3, dtype=torch.float64)
    maps = eigencam(acts, scores)
    (grad,) = torch.autograd.grad((maps * torch.rand_like(maps)).sum(), acts)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    assert torch.autograd.gradcheck(lambda a: eigencam(a, scores), (acts,), eps=1e-6, atol=1e-6)


# ---------------------------------------------------------------- closed forms, equivalences


def _wrn(name: str = "wrn_16_2") -> nn.Module:
    torch.manual_seed(0)
    model = build_model(name, num_classes=10).eval()
    for module in model.modules():  # trained-like BN statistics: maps are not near-uniform
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    return model


def _both_paths(model, images, targets):
    """Activations at the pooled layer, the scores, and the closed form's arguments."""
    layer = model.cam_layer
    with capture_activations(model, [layer]) as acts:
        logits = model(images)
    head = pooled_head(model, layer)
    closed = {"classifier_weight": head.classifier.weight, "head_norm": head.norm}
    return acts[layer], logits, closed, token_layout(model, images.shape[-2:])


@pytest.mark.parametrize("model_name", ["wrn_16_1", "vit_tiny_p4_32"])
@pytest.mark.parametrize("name", WITH_GRADIENT)
def test_closed_form_equals_autograd(name, model_name):
    """CNN pooled-linear head and token-average transformer head (mean, norm, linear)."""
    model = _wrn(model_name) if model_name.startswith("wrn") else build_model(model_name, 10)
    torch.manual_seed(1)
    images, targets = torch.randn(4, 3, 32, 32), torch.tensor([0, 5, 9, 2])
    acts, logits, closed, layout = _both_paths(model.eval(), images, targets)
    fn = NEW[name]
    autograd = fn(acts, logits, targets, layout=layout)
    closed_form = fn(acts, logits, targets, layout=layout, **closed)
    assert autograd.shape == (4, 8, 8) and autograd.amax() > 0
    torch.testing.assert_close(
        closed_form, autograd, rtol=1e-4, atol=1e-5 * float(autograd.detach().amax())
    )


@pytest.mark.parametrize("model_name", ["wrn_16_1", "vit_tiny_p4_32"])
def test_equivalences_at_a_pooled_head(model_name):
    """Grad-CAM = HiResCAM = XGrad-CAM; CAM = Z x Grad-CAM; LayerCAM = element-wise where the
    activations are non-negative (the CNN's post-ReLU layer), not for signed tokens."""
    model = _wrn(model_name) if model_name.startswith("wrn") else build_model(model_name, 10)
    torch.manual_seed(2)
    images, targets = torch.randn(4, 3, 32, 32), torch.tensor([1, 1, 7, 3])
    acts, logits, closed, layout = _both_paths(model.eval(), images, targets)
    maps = {n: f(acts, logits, targets, layout=layout, **closed) for n, f in CAM_METHODS.items()}
    scale = float(maps["gradcam"].detach().amax())
    for name in ("hirescam", "xgradcam"):
        torch.testing.assert_close(maps[name], maps["gradcam"], rtol=1e-5, atol=1e-6 * scale)
    torch.testing.assert_close(maps["cam"], 64 * maps["gradcam"], rtol=1e-5, atol=1e-4 * scale)
    if model_name.startswith("wrn"):
        assert acts.min() >= 0
        torch.testing.assert_close(maps["layercam"], maps["gradcam_elementwise"])
    else:
        assert acts.min() < 0 and not torch.allclose(maps["layercam"], maps["gradcam_elementwise"])
    assert not torch.allclose(maps["layercam"], maps["gradcam"])  # negative weights dropped


def test_layercam_equals_elementwise_for_non_negative_activations_anywhere():
    """relu(g) A = relu(g A) when A >= 0, whatever the gradient: also at earlier layers."""
    model = _wrn("wrn_16_1")
    layer = "block2.layer.1.relu1"  # post-ReLU, inside the network: gradients vary
    with capture_activations(model, [layer]) as acts:
        logits = model(torch.randn(3, 3, 32, 32))
    assert acts[layer].min() >= 0
    torch.testing.assert_close(
        layercam(acts[layer], logits), gradcam_elementwise(acts[layer], logits)
    )
    assert not torch.allclose(hirescam(acts[layer], logits), gradcam(acts[layer], logits))


# ---------------------------------------------------------------- contract: no_grad, dtypes


@pytest.mark.parametrize("name", list(NEW))
def test_wrappers_work_under_no_grad_and_match_functional(name):
    model = _wrn("wrn_16_1")
    images, targets = torch.randn(3, 3, 32, 32), torch.tensor([2, 4, 6])
    acts, logits, closed, layout = _both_paths(model, images, targets)
    expected = NEW[name](acts, logits, targets, **closed)
    with torch.no_grad():
        got = WRAPPERS[name](model)(images, targets)
        inside = NEW[name](acts.detach(), logits.detach(), targets, **closed)
    assert not got.requires_grad and got.shape == (3, 8, 8)
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(inside, expected)
    mid = "block2"
    if name == "cam":
        with pytest.raises(ValueError, match="pooled linear head"):
            CAM(model, mid)
    else:
        with torch.no_grad():
            assert WRAPPERS[name](model, mid)(images, targets).shape == (3, 16, 16)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", list(NEW))
def test_half_precision_activations_accumulate_in_float32(name, dtype):
    torch.manual_seed(4)
    acts = torch.rand(2, 64, 8, 8).to(dtype)
    weight = torch.randn(5, 64)
    scores = (acts.float().mean((2, 3)) @ weight.T).to(dtype)
    targets = torch.tensor([1, 4])
    got = NEW[name](acts, scores, targets, classifier_weight=weight)
    reference = NEW[name](acts.float(), scores.float(), targets, classifier_weight=weight)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, reference, rtol=1e-4, atol=1e-4 * float(reference.amax()))


def test_cam_needs_the_classifier_and_eigencam_ignores_the_target():
    acts = torch.rand(2, 4, 3, 3, requires_grad=True)
    scores = nn.Linear(4, 5)(acts.mean((2, 3)))
    with pytest.raises(ValueError, match="CAM needs classifier_weight"):
        cam(acts, scores)
    one = eigencam(acts, scores, torch.tensor([0, 1]))
    torch.testing.assert_close(eigencam(acts, scores, torch.tensor([4, 2])), one)
    with pytest.raises(ValueError, match="targets must have shape"):
        eigencam(acts, scores, torch.tensor([0]))


def test_eigencam_sign_rule_makes_maps_correlate_with_total_activation():
    torch.manual_seed(5)
    acts = torch.rand(6, 16, 5, 5) * torch.rand(6, 16, 1, 1)
    projection = eigencam_projection(acts)
    total = acts.sum(1)
    total = total - total.mean((1, 2), keepdim=True)
    assert ((projection * total).sum((1, 2)) > 0).all()
    # The same maps whatever sign the eigen-solver returns: flipping the input's mean is not
    # a sign change, but negating the channels is (their total flips too).
    torch.testing.assert_close(eigencam_projection(-acts), -projection, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------- peers


def _scale_free_minmax(maps: torch.Tensor) -> torch.Tensor:
    """Per-sample min-max with no eps: the maps of a random-init DeiT are ~1e-8 in size."""
    flat = maps.flatten(1).double()
    low, high = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
    return torch.where(high > low, (flat - low) / (high - low), 0.0).view_as(maps)


def _as_pytorch_grad_cam(maps: torch.Tensor, size) -> torch.Tensor:
    """pytorch-grad-cam's post-processing: min-max, bilinear resize (half-pixel centres),
    min-max again. Its eps (``x / (max + 1e-7)``) only rescales and is undone by the second
    normalisation up to ~1e-7 relative."""
    return _scale_free_minmax(resize_maps(_scale_free_minmax(maps).float(), size))


def _peer_setups():
    # float64 for DeiT: its default layer feeds the last block only through LayerNorm, which is
    # scale-invariant per token, so sum_k g_k A_k (HiResCAM's map) is 0 up to the norm's eps:
    # at random init the channel sum cancels to ~1e-7 of its terms, below float32's
    # resolution, and both libraries' float32 maps are rounding noise (they differ by ~5%).
    deit = build_model("timm/deit_tiny_patch16_224", num_classes=10, img_size=64)
    return {
        "wrn_default": (_wrn(), None, 32, torch.float32),
        "wrn_middle": (_wrn(), "block2", 32, torch.float32),
        "deit_default": (deit.double().eval(), None, 64, torch.float64),
    }


PYTORCH_GRAD_CAM = {
    "xgradcam": "XGradCAM",
    "layercam": "LayerCAM",
    "hirescam": "HiResCAM",
    "gradcam_elementwise": "GradCAMElementWise",
    "eigencam": "EigenCAM",
    "gradcam": "GradCAM",
}


@pytest.fixture(scope="module")
def peer_setups():
    pytest.importorskip("timm")
    return _peer_setups()


@pytest.mark.slow  # six peer runs per setup (NumPy, per-image resizing): 30-90 s on 2 CPU cores
@pytest.mark.parametrize("setup", ["wrn_default", "wrn_middle", "deit_default"])
def test_equal_to_pytorch_grad_cam_per_sample(peer_setups, setup):
    pgc = pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model, layer, size, dtype = peer_setups[setup]
    layer = layer or model.cam_layer
    torch.manual_seed(6)
    images = torch.randn(6, 3, size, size, dtype=dtype)
    targets = torch.tensor([0, 1, 2, 3, 4, 9])
    layout = token_layout(model, (size, size))

    def reshape(x):  # tokens -> [B, D, h, w] grid, from the model's own layout
        if layout is None:
            return x
        h, w = layout.grid
        return x[:, layout.prefix_tokens :].reshape(x.shape[0], h, w, -1).permute(0, 3, 1, 2)

    module = dict(model.named_modules())[layer]
    wrappers = {**WRAPPERS, "gradcam": GradCAM}
    for name, peer_name in PYTORCH_GRAD_CAM.items():
        with getattr(pgc, peer_name)(model, [module], reshape_transform=reshape) as peer:
            theirs = peer(images, [ClassifierOutputTarget(int(t)) for t in targets])
        theirs = torch.from_numpy(theirs).double()
        ours = _as_pytorch_grad_cam(wrappers[name](model, layer)(images, targets), size)
        if name == "eigencam":
            # Its SVD's sign is arbitrary per sample (relu(p) or relu(-p)); ours is fixed.
            with capture_activations(model, [layer]) as acts, torch.no_grad():
                model(images)
            from distill.cam import tokens_to_grid

            flipped = -eigencam_projection(tokens_to_grid(acts[layer], layout))
            other = _as_pytorch_grad_cam(torch.relu(flipped), size)
            same = (ours - theirs).abs().flatten(1).amax(1) < 1e-4
            opposite = (other - theirs).abs().flatten(1).amax(1) < 1e-4
            assert (same | opposite).all(), f"{setup} {name}"
            continue
        torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=0, msg=f"{setup} {name}")


@pytest.mark.parametrize("setup", ["wrn_default", "wrn_middle"])
def test_equal_to_torchcam_raw_maps(peer_setups, setup):
    """torchcam's unnormalised maps (``normalized=False``), equal to ours before any scaling.
    Its CAM has no relu (ours, like the family, has); its XGrad-CAM adds 1e-8 to sum A."""
    methods = pytest.importorskip("torchcam.methods")
    model, layer, _, _ = peer_setups[setup]
    layer = layer or model.cam_layer
    torch.manual_seed(7)
    images, targets = torch.randn(6, 3, 32, 32), [0, 1, 2, 3, 4, 9]
    pairs = {"xgradcam": methods.XGradCAM, "layercam": methods.LayerCAM}
    if setup == "wrn_default":
        pairs["cam"] = methods.CAM
    classifier = next(n for n, m in model.named_modules() if m is model.get_classifier())
    for name, peer_cls in pairs.items():
        kwargs = {"fc_layer": classifier} if name == "cam" else {}
        with peer_cls(model, target_layer=layer, **kwargs) as peer:
            scores = model(images)
            (theirs,) = peer(class_idx=targets, scores=scores, normalized=False)
        ours = WRAPPERS[name](model, layer)(images, torch.tensor(targets))
        theirs = torch.relu(theirs)
        torch.testing.assert_close(
            ours, theirs, rtol=1e-4, atol=1e-5 * float(theirs.amax()), msg=f"{setup} {name}"
        )


# ---------------------------------------------------------------- as distillation targets


@pytest.mark.parametrize("name", list(CAM_METHODS))
def test_every_method_trains_as_a_map_target(name):
    from distill import ExplanationDistiller

    torch.manual_seed(8)
    distiller = ExplanationDistiller(_wrn("wrn_16_1"), build_model("wrn_16_1", 10), map_method=name)
    images, labels = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    out = distiller(images, labels)
    out.loss.backward()
    grads = [p.grad for p in distiller.student.parameters() if p.grad is not None]
    assert torch.isfinite(out.parts["map"]) and out.parts["map"] > 0
    assert all(torch.isfinite(g).all() for g in grads)
    assert not distiller.student_maps_need_grad  # closed form, or no gradient at all


def test_cam_target_is_refused_away_from_the_pooled_layer():
    from distill import ExplanationDistiller
    from distill.config import ConfigError, load_config

    with pytest.raises(ValueError, match="map_method='cam' needs the student's pooled-head"):
        ExplanationDistiller(
            build_model("wrn_16_1", 10),
            build_model("wrn_16_1", 10),
            map_method="cam",
            map_layers=[("block2", "relu", 1.0)],
        )
    overrides = [
        "loss.map_method=cam",
        "loss.map_layers=[{student: block2, teacher: block2, weight: 1.0}]",
    ]
    with pytest.raises(ConfigError, match="loss.map_method=cam needs the teacher's pooled-head"):
        load_config(overrides=overrides)
    assert load_config(overrides=["loss.map_method=cam"]).loss.map_method == "cam"
