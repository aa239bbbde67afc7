"""Contract tests for distill.models (CPU only, never downloads)."""

from __future__ import annotations

import functools
import urllib.error

import pytest
import torch
import torchvision
from torch import nn

from distill.models import (
    CifarResNet,
    TorchvisionClassifier,
    WideResNet,
    build_model,
    get_model,
    list_models,
    register_model,
)
from distill.models.wide_resnet import wrn_num_params

NUM_CLASSES = 10
BATCH = 2
# Registered CNNs; the registered ViTs (token contract) are tested in tests/test_transformers.py.
CIFAR_MODELS = [name for name in list_models() if not name.startswith("vit_")]


@functools.cache
def _built(name: str) -> nn.Module:
    """Build each model once per session; the big WRNs dominate runtime otherwise."""
    torch.manual_seed(0)
    return build_model(name, NUM_CLASSES).eval()


def _n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _check_contract(model: nn.Module, x: torch.Tensor) -> None:
    """Everything the Grad-CAM++ code assumes about a model (model in eval mode)."""
    captured: list[torch.Tensor] = []
    cam_module = dict(model.named_modules())[model.cam_layer]
    handle = cam_module.register_forward_hook(lambda _m, _i, out: captured.append(out))
    try:
        with torch.no_grad():
            logits = model(x)
    finally:
        handle.remove()
    with torch.no_grad():
        feats = model.forward_features(x)
        pooled = model.forward_head(feats, pre_logits=True)

    assert logits.shape == (x.shape[0], model.num_classes)
    assert torch.isfinite(logits).all()
    assert feats.ndim == 4 and feats.shape[1] == model.num_features
    assert len(captured) == 1, "cam_layer must run exactly once per forward"
    assert torch.equal(captured[0], feats)
    assert torch.equal(model.forward_head(feats), logits)
    clf = model.get_classifier()
    assert isinstance(clf, nn.Linear) and clf.out_features == model.num_classes
    assert pooled.shape == (x.shape[0], clf.in_features)
    assert isinstance(model.has_pooled_linear_head, bool)
    if model.has_pooled_linear_head:
        assert pooled.shape[1] == model.num_features
        torch.testing.assert_close(clf(feats.mean(dim=(2, 3))), logits, rtol=1e-5, atol=1e-6)
    for m in model.modules():
        assert not getattr(m, "inplace", False), f"inplace op in {m}"


@pytest.mark.parametrize("name", CIFAR_MODELS)
def test_cifar_contract(name: str) -> None:
    model = _built(name)
    cfg = model.default_cfg
    assert cfg.input_size == (3, 32, 32)
    x = torch.randn(BATCH, *cfg.input_size)
    _check_contract(model, x)
    assert model.has_pooled_linear_head is True
    with torch.no_grad():
        feats = model.forward_features(x)
    assert tuple(feats.shape[2:]) == cfg.pool_size
    assert (feats >= 0).all(), "forward_features must be post-ReLU"


@pytest.mark.parametrize("name", CIFAR_MODELS)
def test_cifar_gradient_reaches_input(name: str) -> None:
    model = _built(name)
    x = torch.randn(BATCH, 3, 32, 32, requires_grad=True)
    model(x).sum().backward()
    model.zero_grad(set_to_none=True)
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


@pytest.mark.parametrize("name", CIFAR_MODELS)
def test_cifar_param_count_matches_cfg(name: str) -> None:
    assert _n_params(_built(name)) == _built(name).default_cfg.num_params


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("wrn_40_2", 2_243_546),  # RepDistiller
        ("wrn_16_2", 691_674),  # RepDistiller
        ("wrn_16_1", 175_000),
        ("wrn_40_1", 569_000),
        ("resnet20", 270_000),  # He et al.: 0.27M
        ("resnet56", 850_000),  # 0.85M
        ("resnet110", 1_700_000),  # 1.7M
    ],
)
def test_published_param_counts(name: str, expected: int) -> None:
    assert _n_params(_built(name)) == pytest.approx(expected, rel=0.02)


def test_wrn_reference_counts_exact() -> None:
    assert _built("wrn_40_2").default_cfg.num_params == 2_243_546
    assert _built("wrn_16_2").default_cfg.num_params == 691_674


@pytest.mark.parametrize("name", [n for n in CIFAR_MODELS if n.startswith("wrn_")])
def test_wrn_closed_form_param_count(name: str) -> None:
    model = _built(name)
    assert wrn_num_params(model.depth, model.widen_factor) == model.default_cfg.num_params


def test_registered_families() -> None:
    expected = {
        "wrn_16_1", "wrn_16_2", "wrn_16_4", "wrn_16_8", "wrn_28_10",
        "wrn_40_1", "wrn_40_2", "wrn_40_4",
        "resnet20", "resnet32", "resnet44", "resnet56", "resnet110",
    }  # fmt: skip
    assert expected <= set(CIFAR_MODELS)
    assert sorted(CIFAR_MODELS) == CIFAR_MODELS
    assert isinstance(_built("wrn_16_1"), WideResNet)
    assert isinstance(_built("resnet20"), CifarResNet)
    assert _built("wrn_16_1").cam_layer == "relu"
    assert _built("resnet20").cam_layer == "layer3.2"
    assert _built("resnet110").cam_layer == "layer3.17"
    assert "resnet18" in list_models(include_torchvision=True)


def test_get_model_and_kwargs() -> None:
    model = get_model("wrn_16_1", num_classes=7, dropout=0.3)
    assert model.get_classifier().out_features == 7
    assert any(isinstance(m, nn.Dropout) and m.p == 0.3 for m in model.modules())
    assert model.has_pooled_linear_head  # dropout is inside blocks, not in the head
    model.train()
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 7)


def test_init_scheme() -> None:
    model = _built("wrn_16_1")
    assert torch.all(model.fc.bias == 0)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(torch.all(m.weight == 1) and torch.all(m.bias == 0) for m in bns)


def test_build_parsed_wrn() -> None:
    model = build_model("wrn_22_4", 100)
    assert isinstance(model, WideResNet)
    assert (model.depth, model.widen_factor, model.num_classes) == (22, 4, 100)
    assert model.default_cfg.num_params == wrn_num_params(22, 4)
    assert _n_params(model) == wrn_num_params(22, 4, num_classes=100)
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 100)


def test_parsed_wrn_bad_depth() -> None:
    with pytest.raises(ValueError, match=r"depth - 4\) % 6"):
        build_model("wrn_18_2", 10)


@pytest.mark.parametrize(("bad", "suggestion"), [("wrn_16_3x", "wrn_16_"), ("resnt20", "resnet20")])
def test_unknown_name_suggests(bad: str, suggestion: str) -> None:
    with pytest.raises(ValueError, match="list_models") as info:
        build_model(bad, 10)
    assert suggestion in str(info.value)
    with pytest.raises(ValueError, match="Did you mean"):
        get_model(bad)


def test_double_registration_raises() -> None:
    before = list_models()

    def resnet20(**kwargs):  # same name as the registered CIFAR builder
        raise AssertionError("must not be registered")

    with pytest.raises(ValueError, match="already registered"):
        register_model(resnet20)
    with pytest.raises(ValueError, match="already registered"):
        register_model(name="wrn_40_2")(resnet20)
    assert list_models() == before


def test_torchvision_resnet18_contract() -> None:
    torch.manual_seed(0)
    model = build_model("resnet18", NUM_CLASSES).eval()
    assert isinstance(model, TorchvisionClassifier)
    assert model.cam_layer == "net.layer4"
    assert model.has_pooled_linear_head is True
    assert model.num_features == 512
    assert model.default_cfg.num_params == _n_params(model)
    x = torch.randn(BATCH, 3, 64, 64)
    _check_contract(model, x)
    assert model.forward_features(x).shape[2:] == (2, 2)  # output stride 32
    x.requires_grad_(True)
    model(x).sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_torchvision_non_linear_head() -> None:
    torch.manual_seed(0)
    model = build_model("mobilenet_v3_small", NUM_CLASSES).eval()
    assert model.has_pooled_linear_head is False
    assert model.cam_layer == "net.features"
    assert (model.num_features, model.head_hidden_size) == (576, 1024)
    x = torch.randn(BATCH, 3, 64, 64)
    _check_contract(model, x)
    with torch.no_grad():  # the wrapper's forward equals torchvision's own forward
        torch.testing.assert_close(model(x), model.net(x))


def test_torchvision_unsupported_family() -> None:
    with pytest.raises(ValueError, match="Supported families: resnet"):
        build_model("alexnet", 10)


def test_torchvision_download_failure(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path))

    def offline(url, *args, **kwargs):
        raise urllib.error.URLError("network is unreachable")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(RuntimeError, match="Could not download") as info:
        build_model("resnet18", 10, weights="DEFAULT")
    assert str(tmp_path) in str(info.value)


def test_torchvision_bad_weights_name() -> None:
    with pytest.raises(ValueError, match="IMAGENET1K_V1"):
        build_model("resnet18", 10, weights="NOT_A_WEIGHT")


def test_torchvision_pretrained_replaces_classifier(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(1)
    reference = torchvision.models.resnet18(num_classes=1000)
    state = reference.state_dict()
    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", lambda *a, **k: state)
    model = build_model("resnet18", 10, weights="IMAGENET1K_V1")
    assert model.get_classifier().out_features == 10
    torch.testing.assert_close(model.net.conv1.weight, reference.conv1.weight)
    assert model.default_cfg.num_params == _n_params(model)
    model_1k = build_model("resnet18", 1000, weights="IMAGENET1K_V1")
    torch.testing.assert_close(model_1k.net.fc.weight, reference.fc.weight)
