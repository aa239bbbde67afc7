"""Vision transformers: token-grid Grad-CAM(++) equals eq. 19 per sample, the closed form of
token-average heads equals autograd, layouts come from the model, distillation across families.

Random weights, small configurations, never downloads. timm tests are skipped without timm.
"""

from __future__ import annotations

import pytest
import torch
from test_cam import eq19_map  # tests/ is on sys.path (no __init__.py)
from torch import nn
from torch.func import functional_call

from distill import ExplanationDistiller, build_model
from distill.cam import (
    GradCAM,
    GradCAMPlusPlus,
    TokenLayout,
    capture_activations,
    gradcam,
    gradcam_pp,
    gradcam_pp_weights,
    minmax_normalize,
    pooled_head,
    token_layout,
    tokens_to_grid,
    twice_differentiable,
)
from distill.models import list_models

pytest.importorskip("timm", reason="timm models need timm")

# Small timm configurations: the architecture of the named model, fewer/narrower blocks.
TIMM_VIT = ("timm/vit_tiny_patch16_224", {"depth": 2})
TIMM_DEIT = ("timm/deit_tiny_distilled_patch16_224", {"depth": 2})
TIMM_SWIN = (
    "timm/swin_tiny_patch4_window7_224",
    {"depths": (1, 1, 1, 2), "embed_dim": 16, "num_heads": (1, 1, 2, 2)},
)


def _randomise(model: nn.Module) -> nn.Module:
    """Non-zero heads and layer norms, as after training (torchvision zero-initialises heads)."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Linear) and module.out_features == 10:
                module.weight.normal_(0, 0.5)
            if isinstance(module, nn.LayerNorm) and module.weight is not None:
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0, 0.1)
    return model


def _build(name: str, kwargs: dict | None = None, **more) -> nn.Module:
    torch.manual_seed(0)
    return _randomise(build_model(name, 10, **(kwargs or {}), **more)).eval()


def naive_token_eq19(
    model: nn.Module,
    layer: str,
    image: torch.Tensor,
    target: int,
    layout: TokenLayout,
    plus_plus: bool = True,
) -> torch.Tensor:
    """One sample, straight from eq. 19 over the patch tokens (prefix tokens dropped)."""
    store = {}
    module = dict(model.named_modules())[layer]
    handle = module.register_forward_hook(lambda m, i, o: store.__setitem__("a", o))
    score = model(image[None])[0, target]
    handle.remove()
    (grads,) = torch.autograd.grad(score, store["a"])
    acts, grads = store["a"][0], grads[0]
    if layout.channels_last:  # [h, w, C]
        acts, grads = acts.permute(2, 0, 1), grads.permute(2, 0, 1)
    else:  # [N, D]
        h, w = layout.grid
        acts = acts[layout.prefix_tokens :].T.reshape(-1, h, w)
        grads = grads[layout.prefix_tokens :].T.reshape(-1, h, w)
    return eq19_map(acts, grads, plus_plus)


# --------------------------------------------------------------------------- layouts, names


def test_tokens_to_grid_drops_prefix_and_keeps_row_major_order():
    tokens = torch.randn(2, 2 + 3 * 4, 5)
    grid = tokens_to_grid(tokens, TokenLayout(prefix_tokens=2, grid=(3, 4)))
    assert grid.shape == (2, 5, 3, 4)
    torch.testing.assert_close(grid[:, :, 1, 2], tokens[:, 2 + 1 * 4 + 2])
    nhwc = torch.randn(2, 3, 4, 5)
    assert torch.equal(
        tokens_to_grid(nhwc, TokenLayout(channels_last=True)), nhwc.permute(0, 3, 1, 2)
    )
    with pytest.raises(ValueError, match="prefix tokens"):
        tokens_to_grid(tokens, TokenLayout(prefix_tokens=1, grid=(3, 4)))


def test_functional_asks_for_a_layout_for_token_activations():
    tokens = torch.randn(2, 5, 4, requires_grad=True)
    logits = nn.Linear(4, 3)(tokens.mean(1))
    with pytest.raises(ValueError, match="layout"):
        gradcam_pp(tokens, logits)
    maps = gradcam_pp(tokens, logits, layout=TokenLayout(prefix_tokens=1, grid=(2, 2)))
    assert maps.shape == (2, 2, 2)


def test_build_model_accepts_transformer_names():
    assert "vit_tiny_p4_32" in list_models()
    names = set(list_models(include_torchvision=True))
    assert {"vit_b_16", "vit_b_32", "swin_t", "swin_s"} <= names
    with pytest.raises(ValueError, match="is not a timm model"):
        build_model("timm/not_a_model_xyz", 10)


# ------------------------------------------------------------------------ eq. 19 per sample


SMALL_CASES = [
    # name, kwargs, input side, expected grid
    ("vit_tiny_p4_32", {"depth": 2, "embed_dim": 24}, 32, (8, 8)),
    ("vit_tiny_p4_32", {"depth": 2, "embed_dim": 24, "global_pool": "token"}, 40, (10, 10)),
    (*TIMM_VIT, 64, (4, 4)),
    (*TIMM_DEIT, 48, (3, 3)),
    ("timm/vit_tiny_patch16_224", {"depth": 2, "global_pool": "avg"}, 48, (3, 3)),
    ("timm/vit_tiny_patch16_224", {"depth": 2, "global_pool": "avg", "fc_norm": False}, 32, (2, 2)),
    ("timm/vit_tiny_patch16_224", {"depth": 2, "reg_tokens": 4, "img_size": 64}, 80, (5, 5)),
    (*TIMM_SWIN, 64, (2, 2)),
]


@pytest.mark.parametrize("plus_plus", [True, False])
@pytest.mark.parametrize(("name", "kwargs", "side", "grid"), SMALL_CASES)
def test_wrapper_maps_equal_naive_eq19_per_sample(name, kwargs, side, grid, plus_plus):
    model = _build(name, **kwargs).double()
    images = torch.randn(3, 3, side, side, dtype=torch.float64)
    targets = torch.tensor([1, 7, 1])
    cam = (GradCAMPlusPlus if plus_plus else GradCAM)(model)
    maps = cam(images, targets)
    layout = token_layout(model, (side, side))
    naive = torch.stack(
        [
            naive_token_eq19(model, model.cam_layer, images[i], int(targets[i]), layout, plus_plus)
            for i in range(3)
        ]
    )
    assert maps.shape == (3, *grid)
    assert maps.abs().sum() > 0
    torch.testing.assert_close(maps, naive, rtol=1e-9, atol=1e-12)


def test_deit_layout_has_two_prefix_tokens():
    model = _build(*TIMM_DEIT)
    assert model.num_prefix_tokens == 2
    assert token_layout(model, (224, 224)) == TokenLayout(2, (14, 14))
    assert token_layout(model, (96, 160)) == TokenLayout(2, (6, 10))
    maps = GradCAMPlusPlus(model)(torch.randn(2, 3, 96, 160), torch.tensor([0, 1]))
    assert maps.shape == (2, 6, 10)


@pytest.mark.parametrize(
    ("name", "side", "grid"),
    [("vit_b_16", 64, (4, 4)), ("swin_t", 96, (3, 3))],
)
def test_torchvision_transformers_at_a_small_input(name, side, grid):
    model = _build(name)
    images = torch.randn(2, 3, side, side)
    maps = GradCAMPlusPlus(model)(images, torch.tensor([3, 4]))
    assert maps.shape == (2, *grid) and torch.isfinite(maps).all() and maps.sum() > 0
    assert GradCAM(model)(images).shape == (2, *grid)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "grid"),
    [("vit_b_16", (14, 14)), ("vit_b_32", (7, 7)), ("swin_t", (7, 7)), ("swin_s", (7, 7))],
)
def test_torchvision_transformers_at_224(name, grid):
    model = _build(name)
    # One image, four classes: at random weights a single class's map can be all zero.
    images = torch.randn(1, 3, 224, 224).expand(4, -1, -1, -1)
    maps = GradCAMPlusPlus(model)(images, torch.tensor([0, 1, 2, 3]))
    assert maps.shape == (4, *grid) and torch.isfinite(maps).all() and maps.sum() > 0
    assert model.default_cfg.pool_size == grid


@pytest.mark.slow
def test_timm_full_size_models_at_224():
    for name in (
        "timm/vit_base_patch16_224",
        "timm/deit_tiny_distilled_patch16_224",
        "timm/swin_tiny_patch4_window7_224",
    ):
        model = _build(name)
        maps = GradCAMPlusPlus(model)(torch.randn(1, 3, 224, 224))
        assert maps.shape[-2:] == model.default_cfg.pool_size


def test_torchvision_vit_grid_matches_naive_at_a_non_native_size():
    model = _build("vit_b_32").double()
    images = torch.randn(2, 3, 64, 96, dtype=torch.float64)
    maps = GradCAMPlusPlus(model)(images, torch.tensor([2, 5]))
    layout = token_layout(model, (64, 96))
    assert layout == TokenLayout(1, (2, 3)) and maps.shape == (2, 2, 3)
    naive = naive_token_eq19(model, model.cam_layer, images[1], 5, layout)
    torch.testing.assert_close(maps[1], naive, rtol=1e-9, atol=1e-12)


def test_class_token_default_layer_is_the_last_block_input():
    """The last block's patch outputs get no gradient from a class-token score: its input does."""
    model = _build(*TIMM_VIT)
    assert model.cam_layer == "net.blocks.0"
    images = torch.randn(2, 3, 32, 32)
    last_block_output = GradCAMPlusPlus(model, "net.blocks.1")(images)
    assert last_block_output.abs().max() == 0
    assert GradCAMPlusPlus(model)(images).sum() > 0


# ------------------------------------------------------------------- closed form vs autograd


AVG_CASES = [
    ("vit_tiny_p4_32", {"depth": 2, "embed_dim": 24}, 32),
    ("timm/vit_tiny_patch16_224", {"depth": 2, "global_pool": "avg"}, 48),
    ("timm/vit_tiny_patch16_224", {"depth": 2, "global_pool": "avg", "fc_norm": False}, 48),
    (*TIMM_SWIN[:2], 64),
]


def _closed_and_autograd(model, layer, images, targets, fn, create_graph):
    head = pooled_head(model, layer)
    assert head is not None
    layout = token_layout(model, images.shape[-2:])
    with capture_activations(model, [layer]) as acts:
        scores = model(images)
    closed = fn(
        acts[layer],
        scores,
        targets,
        classifier_weight=head.classifier.weight,
        head_norm=head.norm,
        layout=layout,
        create_graph=create_graph,
    )
    autograd = fn(acts[layer], scores, targets, layout=layout, create_graph=create_graph)
    return closed, autograd


@pytest.mark.parametrize("fn", [gradcam_pp, gradcam])
@pytest.mark.parametrize(("name", "kwargs", "side"), AVG_CASES)
def test_token_average_closed_form_equals_autograd(name, kwargs, side, fn):
    model = _build(name, **kwargs).double()
    layer = getattr(model, "pooled_head_layer", model.cam_layer)
    images = torch.randn(4, 3, side, side, dtype=torch.float64)
    targets = torch.tensor([0, 3, 9, 3])
    closed, autograd = _closed_and_autograd(model, layer, images, targets, fn, True)
    assert closed.abs().sum() > 0
    torch.testing.assert_close(closed, autograd, rtol=1e-10, atol=1e-12)
    # ... and so are their gradients with respect to every parameter.
    params = [p for p in model.parameters()]
    with twice_differentiable():
        closed, autograd = _closed_and_autograd(model, layer, images, targets, fn, True)
        g_closed = torch.autograd.grad(
            closed.pow(2).sum(), params, retain_graph=True, materialize_grads=True
        )
        g_autograd = torch.autograd.grad(autograd.pow(2).sum(), params, materialize_grads=True)
    for a, b in zip(g_closed, g_autograd, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)


def test_head_norm_vjp_matches_design_formula():
    """w_k = N relu(g_k) / (2 + S_k g_k), g = J_f(z)^T W[c] / N: DESIGN section 5."""
    torch.manual_seed(1)
    norm = nn.LayerNorm(6).double()
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.normal_()
    weight = torch.randn(4, 6, dtype=torch.float64)
    tokens = torch.randn(3, 1 + 9, 6, dtype=torch.float64)
    targets = torch.tensor([2, 0, 3])
    layout = TokenLayout(1, (3, 3))
    z = tokens[:, 1:].mean(1).requires_grad_()
    (vjp,) = torch.autograd.grad((norm(z) * weight[targets]).sum(), z)
    g = vjp / 9
    sums = tokens[:, 1:].sum(1)
    expected_w = 9 * torch.relu(g) / (2 + sums * g)
    grid = tokens_to_grid(tokens, layout)
    expected = torch.relu(torch.einsum("bk,bkhw->bhw", expected_w, grid))
    logits = nn.functional.linear(norm(tokens[:, 1:].mean(1)), weight)
    got = gradcam_pp(
        tokens, logits, targets, classifier_weight=weight, head_norm=norm, layout=layout
    )
    torch.testing.assert_close(got, expected)


def _gradcheck_model(name: str, **kwargs) -> nn.Module:
    torch.manual_seed(2)
    return _randomise(build_model(name, 3, **kwargs)).double().eval()


@pytest.mark.parametrize(
    ("kwargs", "closed_form"),
    [
        ({"global_pool": "avg"}, True),
        ({"global_pool": "avg"}, False),
        ({"global_pool": "token"}, False),
    ],
)
def test_gradcheck_float64_token_maps_wrt_parameters(kwargs, closed_form):
    """The maps of the token paths are differentiable, and the derivatives are right."""
    model = _gradcheck_model(
        "vit_tiny_p4_32", embed_dim=6, depth=2, num_heads=2, patch_size=8, **kwargs
    )
    with torch.no_grad():
        model.head.weight.normal_(0, 2.0)
    layer = model.cam_layer
    images = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    targets = torch.tensor([0, 2])
    layout = token_layout(model, (16, 16))
    # Only the parameters after the layer and a few before it: the check stays quick.
    names = [
        n
        for n, _ in model.named_parameters()
        if n.startswith(("blocks.1", "fc_norm", "head", "norm"))
    ]
    names += ["blocks.0.mlp.fc2.bias"]

    def f(*params):
        with capture_activations(model, [layer]) as acts, twice_differentiable():
            logits = functional_call(model, dict(zip(names, params, strict=True)), (images,))
        head = pooled_head(model, layer) if closed_form else None
        weight = params[names.index("head.weight")] if head is not None else None
        norm = None
        if head is not None and head.norm is not None:
            state = {
                "weight": params[names.index("fc_norm.weight")],
                "bias": params[names.index("fc_norm.bias")],
            }
            norm = _Bound(head.norm, state)
        return gradcam_pp(
            acts[layer],
            logits,
            targets,
            create_graph=True,
            classifier_weight=weight,
            head_norm=norm,
            layout=layout,
        )

    params = tuple(
        dict(model.named_parameters())[n].detach().clone().requires_grad_() for n in names
    )
    assert (f(*params) > 0).any()
    assert torch.autograd.gradcheck(f, params, eps=1e-6, atol=1e-5, rtol=1e-4)


class _Bound(nn.Module):
    """A norm module evaluated with given parameter tensors (for gradcheck)."""

    def __init__(self, module: nn.Module, state: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.module, self.state = module, state

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return functional_call(self.module, self.state, (x,))


# ---------------------------------------------------------------------------- the guard


def test_signed_tokens_guard_only_a_vanishing_denominator():
    """2 + S g can be zero or negative for signed tokens: zero only at the pole, eq. 19 else."""
    acts = torch.zeros(1, 3, 2, 2)
    acts[0, 0] = -0.5  # S = -2: with g = 1, 2 + S g = 0 exactly
    acts[0, 1] = -1.0  # S = -4: 2 + S g = -2, a negative alpha as eq. 19 defines it
    acts[0, 2] = 1.0  # S = 4: 2 + S g = 6
    grads = torch.ones(1, 3, 2, 2)
    weights = gradcam_pp_weights(acts, grads)
    torch.testing.assert_close(weights, torch.tensor([[0.0, 4 * -0.5, 4 / 6]]))
    near = acts.clone()
    near[0, 0] = -0.5 * (1 + 3e-7)  # within rounding error of the pole: zero, not ~1e7
    assert gradcam_pp_weights(near, grads)[0, 0] == 0
    farther = acts.clone()
    farther[0, 0] = -0.5 * (1 + 1e-3)  # clearly off the pole: eq. 19's large value is kept
    torch.testing.assert_close(
        gradcam_pp_weights(farther, grads)[0, 0],
        torch.tensor(4 / (2 - 2 * (1 + 1e-3))),
        rtol=1e-3,
        atol=0,
    )
    grads_pp = torch.ones(1, 3, 2, 2, requires_grad=True)
    gradcam_pp_weights(acts, grads_pp).sum().backward()
    assert torch.isfinite(grads_pp.grad).all()


# ------------------------------------------------------------------------- distillation


@pytest.mark.parametrize(
    ("teacher", "student", "kwargs_t", "kwargs_s"),
    [
        ("wrn_16_1", "vit_tiny_p4_32", {}, {"depth": 2, "embed_dim": 48}),
        ("wrn_16_1", "vit_tiny_p4_32", {}, {"depth": 2, "embed_dim": 48, "global_pool": "token"}),
        ("vit_tiny_p4_32", "wrn_16_1", {"depth": 2, "embed_dim": 48, "patch_size": 8}, {}),
    ],
)
def test_cross_family_distillation_step(teacher, student, kwargs_t, kwargs_s):
    torch.manual_seed(3)
    distiller = ExplanationDistiller(
        _randomise(build_model(teacher, 10, **kwargs_t)), build_model(student, 10, **kwargs_s)
    )
    images, labels = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    out = distiller(images, labels)
    out.loss.backward()
    assert set(out.parts) == {"ce", "kd", "map"} and torch.isfinite(out.loss)
    grads = [p.grad for p in distiller.student.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert all(p.grad is None for p in distiller.teacher.parameters())
    # The map term reaches the student's parameters.
    distiller.student.zero_grad()
    maps_only = ExplanationDistiller(
        distiller.teacher, distiller.student, ce_weight=0, kd_weight=0, map_weight=1.0
    )
    maps_only(images, labels).loss.backward()
    assert any(
        p.grad is not None and p.grad.abs().sum() > 0 for p in distiller.student.parameters()
    )


def test_maps_of_different_grids_are_resized_to_the_larger():
    torch.manual_seed(4)
    teacher = _randomise(build_model("vit_tiny_p4_32", 10, depth=2, embed_dim=24, patch_size=8))
    student = build_model("wrn_16_1", 10)
    out = ExplanationDistiller(teacher, student)(
        torch.randn(2, 3, 32, 32), torch.tensor([0, 1]), return_maps=True
    )
    assert out.teacher_maps[0].shape == (2, 4, 4) and out.student_maps[0].shape == (2, 8, 8)
    assert torch.isfinite(out.parts["map"])


def test_attention_transfer_on_token_layers():
    torch.manual_seed(5)
    distiller = ExplanationDistiller(
        build_model("wrn_16_1", 10),
        build_model("vit_tiny_p4_32", 10, depth=2, embed_dim=24),
        at_weight=1.0,
    )
    out = distiller(torch.randn(2, 3, 32, 32), torch.tensor([0, 1]))
    assert torch.isfinite(out.parts["at"])


def test_bf16_autocast_and_channels_last_on_a_vit():
    torch.manual_seed(6)
    model = _randomise(build_model("vit_tiny_p4_32", 10, depth=2, embed_dim=48)).eval()
    images = torch.randn(8, 3, 32, 32)
    targets = torch.randint(0, 10, (8,))
    reference = GradCAMPlusPlus(model)(images, targets)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        maps = GradCAMPlusPlus(model)(images, targets)
    assert maps.dtype == torch.float32
    diff = (minmax_normalize(maps) - minmax_normalize(reference)).abs().max().item()
    assert diff < 0.05, diff
    model_cl = model.to(memory_format=torch.channels_last)
    maps_cl = GradCAMPlusPlus(model_cl)(images.to(memory_format=torch.channels_last), targets)
    torch.testing.assert_close(maps_cl, reference, rtol=1e-4, atol=1e-5)
    distiller = ExplanationDistiller(build_model("wrn_16_1", 10), model_cl.train())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = distiller(images.to(memory_format=torch.channels_last), targets)
    out.loss.backward()
    assert torch.isfinite(out.loss)


# ---------------------------------------------------------------------------- contracts


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("vit_tiny_p4_32", {}),
        ("vit_tiny_p4_32", {"global_pool": "token"}),
        TIMM_VIT,
        TIMM_DEIT,
        TIMM_SWIN,
    ],
)
def test_transformer_contract(name, kwargs):
    model = _build(name, **kwargs)
    side = model.default_cfg.input_size[-1]
    images = torch.randn(2, 3, side, side)
    with torch.no_grad():
        logits = model(images)
        feats = model.forward_features(images)
        pre = model.forward_head(feats, pre_logits=True)
    assert logits.shape == (2, 10) and torch.isfinite(logits).all()
    torch.testing.assert_close(model.forward_head(feats), logits)
    assert pre.shape == (2, model.get_classifier().in_features)
    assert isinstance(model.get_classifier(), nn.Linear)
    grid = tokens_to_grid(feats, token_layout(model, (side, side)))
    assert grid.shape[1] == model.num_features
    assert tuple(grid.shape[-2:]) == model.default_cfg.pool_size
    assert sum(p.numel() for p in model.parameters()) == model.default_cfg.num_params
    x = images.clone().requires_grad_()
    model(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_vit_tiny_p4_32_metadata():
    model = build_model("vit_tiny_p4_32", 10)
    assert model.default_cfg.input_size == (3, 32, 32) and model.default_cfg.pool_size == (8, 8)
    assert model.cam_layer == "norm" and model.has_pooled_linear_head
    assert pooled_head(model, "norm").norm is model.fc_norm
    assert model.default_cfg.num_params == pytest.approx(2_690_000, rel=0.02)
    token = build_model("vit_tiny_p4_32", 10, global_pool="token")
    assert token.cam_layer == "blocks.4" and not token.has_pooled_linear_head
