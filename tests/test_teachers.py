"""Bring your own teacher: timm models, pretrained names, plain state_dict files, safe loading.

Random weights only: every download is patched out, nothing touches the network.
"""

from __future__ import annotations

import urllib.error
from pathlib import Path

import pytest
import torch
import torchvision
from safetensors.torch import save_file

from distill.cam import GradCAMPlusPlus, capture_activations, gradcam_pp
from distill.config import ConfigError, load_config
from distill.models import WeightsError, build_model, read_state_dict
from distill.models.key_map import apply_key_map, parse_key_map
from distill.tools.train import train
from distill.training.checkpoints import CheckpointError, load_classifier

timm = pytest.importorskip("timm")


# ---- timm models ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "layer", "pooled_linear"),
    [
        ("timm/resnet18", "net.layer4", True),
        ("timm/efficientnet_b0", "net.bn2", True),
        ("timm/mobilenetv3_small_050", "net.blocks", False),  # conv + act after the pooling
        ("timm/convnext_atto", "net.norm_pre", False),  # LayerNorm in the head
    ],
)
def test_timm_contract(name: str, layer: str, pooled_linear: bool) -> None:
    torch.manual_seed(0)
    model = build_model(name, num_classes=5).eval()
    assert model.cam_layer == layer
    assert model.has_pooled_linear_head is pooled_linear
    x = torch.randn(2, 3, 64, 64, requires_grad=True)
    with capture_activations(model, [layer]) as acts:
        logits = model(x)
    feats = model.forward_features(x)
    assert logits.shape == (2, 5) and torch.isfinite(logits).all()
    assert feats.shape == (2, model.num_features, 2, 2)
    torch.testing.assert_close(acts[layer], feats)  # the CAM layer's output is the map
    assert model.forward_head(feats, pre_logits=True).shape == (2, model.head_hidden_size)
    logits.sum().backward()
    assert x.grad.abs().sum() > 0
    assert model.default_cfg.pool_size == (7, 7)


def test_timm_closed_form_matches_autograd() -> None:
    """The pooled-linear head found from timm's contract gives the same maps as autograd."""
    torch.manual_seed(0)
    model = build_model("timm/resnet18", num_classes=4).eval()
    x = torch.randn(3, 3, 64, 64)
    targets = torch.tensor([0, 1, 3])
    closed = GradCAMPlusPlus(model, model.cam_layer)(x, targets)
    with torch.enable_grad(), capture_activations(model, [model.cam_layer]) as acts:
        scores = model(x)
        reference = gradcam_pp(acts[model.cam_layer], scores, targets)
    torch.testing.assert_close(closed, reference, rtol=1e-4, atol=1e-6)


def test_timm_dropout_head_is_not_closed_form() -> None:
    model = build_model("timm/resnet18", num_classes=4, drop_rate=0.5)
    assert model.has_pooled_linear_head is False


@pytest.mark.parametrize(
    ("name", "match"),
    [
        ("timm/mixer_s16_224", "returns \\(1, 196, 512\\)"),
        ("timm/resnet_18", "Did you mean: timm/resnet18"),
    ],
)
def test_timm_unsupported_or_unknown(name: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        build_model(name, num_classes=10)


def test_timm_offline_download_names_what_to_fetch(monkeypatch, tmp_path) -> None:
    import huggingface_hub.constants

    def offline(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files")

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(timm.models._hub, "hf_hub_download", offline)
    with pytest.raises(WeightsError) as info:
        build_model("timm/resnet18.a1_in1k", num_classes=10, weights="DEFAULT")
    message = str(info.value)
    assert "https://huggingface.co/timm/resnet18.a1_in1k/resolve/main/model.safetensors" in message
    assert str(tmp_path / "hf") in message
    assert "teacher.weights=/path/to/model.safetensors" in message


def test_timm_pretrained_keeps_backbone_and_adapts_head(monkeypatch) -> None:
    torch.manual_seed(1)
    reference = timm.create_model("resnet18", num_classes=1000)
    state = reference.state_dict()
    monkeypatch.setattr(  # timm pops the classifier from the dict it gets: give it a copy
        timm.models._builder, "load_state_dict_from_hf", lambda *a, **k: dict(state)
    )
    model = build_model("timm/resnet18", num_classes=10, weights="DEFAULT")
    torch.testing.assert_close(model.net.conv1.weight, reference.conv1.weight)
    assert model.get_classifier().out_features == 10 and model.pretrained_head is False
    same = build_model("timm/resnet18", num_classes=1000, weights="DEFAULT")
    torch.testing.assert_close(same.net.fc.weight, reference.fc.weight)
    assert same.pretrained_head is True


# ---- torchvision download failure and weights names ----------------------------------------


def test_torchvision_offline_is_a_weights_error(monkeypatch, tmp_path) -> None:
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path))

    def offline(url, *args, **kwargs):
        raise urllib.error.URLError("network is unreachable")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(WeightsError, match="resnet18-f37072fd.pth") as info:
        build_model("resnet18", 10, weights="IMAGENET1K_V1")
    assert str(tmp_path / "checkpoints") in str(info.value)


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ("teacher.weights=DEFAULT", "wrn_16_1.*no named pretrained weights"),
        ("teacher.weights=missing/teacher.pth", "does not exist"),
        ("teacher.name=resnet18 teacher.weights=NOPE", "IMAGENET1K_V1"),
        ("teacher.name=timm/resnet18 teacher.weights=IMAGENET1K_V1", "take weights=DEFAULT"),
        ("student.name=timm/mixer_s16_224", "not a \\[B, 512, H, W\\] map"),
    ],
)
def test_config_checks_weights_without_downloading(override: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_config("quickstart", override.split())


# ---- plain state_dict files ----------------------------------------------------------------


def test_state_dict_wrappers_and_prefixes(tmp_path) -> None:
    """A torchvision state_dict saved under DDP (``module.``) inside ``{"model": ...}``."""
    torch.manual_seed(0)
    plain = torchvision.models.resnet18(num_classes=7)
    path = tmp_path / "teacher.pth"
    torch.save(
        {"epoch": 3, "model": {f"module.{k}": v for k, v in plain.state_dict().items()}}, path
    )
    model = build_model("resnet18", num_classes=7, weights=str(path))
    torch.testing.assert_close(model.net.layer1[0].conv1.weight, plain.layer1[0].conv1.weight)
    torch.testing.assert_close(model.net.fc.weight, plain.fc.weight)
    assert model.pretrained_head is True
    # Another class count: the backbone is kept, the head is new (to fine-tune).
    adapted = build_model("resnet18", num_classes=3, weights=str(path))
    torch.testing.assert_close(adapted.net.conv1.weight, plain.conv1.weight)
    assert adapted.get_classifier().out_features == 3 and adapted.pretrained_head is False


def test_safetensors_state_dict(tmp_path) -> None:
    torch.manual_seed(0)
    source = build_model("wrn_16_1", num_classes=6)
    path = tmp_path / "teacher.safetensors"
    save_file({f"_orig_mod.{k}": v.contiguous() for k, v in source.state_dict().items()}, path)
    assert len(read_state_dict(path)) == len(source.state_dict())
    model = build_model("wrn_16_1", num_classes=6, weights=str(path))
    for key, value in source.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key


def test_state_dict_of_another_architecture_lists_the_keys(tmp_path) -> None:
    path = tmp_path / "teacher.pt"
    torch.save(build_model("wrn_16_1", num_classes=6).state_dict(), path)
    with pytest.raises(WeightsError) as info:
        build_model("resnet20", num_classes=6, weights=str(path))
    message = str(info.value)
    assert "do not fit resnet20" in message
    assert "missing: " in message and "unexpected: " in message
    assert "block1" in message  # a WRN key the ResNet does not have


def test_plain_state_dict_as_teacher_checkpoint(tmp_path) -> None:
    torch.manual_seed(0)
    source = build_model("wrn_16_1", num_classes=6)
    path = tmp_path / "mine.pth"
    torch.save({"state_dict": source.state_dict()}, path)
    teacher = load_classifier(path, expected_name="wrn_16_1", expected_classes=6)
    assert teacher.model_name == "wrn_16_1" and not teacher.training
    with pytest.raises(CheckpointError, match="shape .*fc.weight.*another class count"):
        load_classifier(path, expected_name="wrn_16_1", expected_classes=4)
    with pytest.raises(CheckpointError, match="teacher.name"):
        load_classifier(path)


# ---- safe loading --------------------------------------------------------------------------


class _Payload:
    """Pickles to a call that writes ``marker`` when unpickled by an unsafe loader."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('ran')",))


def _malicious(tmp_path: Path) -> tuple[Path, Path]:
    marker = tmp_path / "payload_ran"
    path = tmp_path / "teacher.pth"
    state = build_model("wrn_16_1", num_classes=6).state_dict()
    torch.save({"state_dict": state, "extra": _Payload(marker)}, path)
    return path, marker


def test_malicious_teacher_checkpoint_is_refused_unrun(tiny_overrides, tmp_path) -> None:
    path, marker = _malicious(tmp_path)
    overrides = [*tiny_overrides, f"teacher.checkpoint={path}", "stage=student"]
    cfg = load_config("quickstart", overrides)
    with pytest.raises(CheckpointError, match="refused: it holds pickled objects") as info:
        train(cfg)
    assert "Unsupported global: GLOBAL exec" in str(info.value)
    assert not marker.exists()
    assert not (tmp_path / "runs" / "quickstart").exists()  # nothing was written


def test_malicious_weights_file_is_refused_unrun(tmp_path) -> None:
    path, marker = _malicious(tmp_path)
    with pytest.raises(WeightsError, match="loading it would run code"):
        build_model("wrn_16_1", num_classes=6, weights=str(path))
    assert not marker.exists()


# ---- the pipeline with your own teacher ----------------------------------------------------


def test_distil_from_a_plain_state_dict_teacher(tiny_overrides, tmp_path) -> None:
    torch.manual_seed(0)
    path = tmp_path / "teacher.pt"
    torch.save({"model": build_model("wrn_16_1", num_classes=6).state_dict()}, path)
    cfg = load_config("quickstart", [*tiny_overrides, f"teacher.checkpoint={path}"])
    summary, result = train(cfg)
    assert "teacher" not in summary  # a given teacher is not trained again
    assert summary["student"]["teacher_checkpoint"] == str(path)
    state = torch.load(path, weights_only=True)["model"]
    for key, value in state.items():
        assert torch.equal(result.teacher.state_dict()[key], value), key


def test_fine_tune_a_teacher_from_weights(tiny_overrides, tmp_path) -> None:
    """stage=teacher from a state_dict with another class count: backbone kept, new head.
    With lr=0 the fine-tuned backbone still equals the file's (BN statistics aside)."""
    torch.manual_seed(0)
    source = build_model("wrn_16_1", num_classes=10)
    path = tmp_path / "backbone.pth"
    torch.save(source.state_dict(), path)
    overrides = [*tiny_overrides, "stage=teacher", f"teacher.weights={path}", "optim.lr=0"]
    _, result = train(load_config("quickstart", overrides))
    tuned = result.teacher.state_dict()
    assert tuned["fc.weight"].shape == (6, source.fc.in_features)
    torch.testing.assert_close(tuned["conv1.weight"], source.state_dict()["conv1.weight"])


def test_stage_student_from_pretrained_weights_as_they_are(tiny_overrides, tmp_path) -> None:
    path = tmp_path / "teacher.safetensors"
    save_file(build_model("wrn_16_1", num_classes=6).state_dict(), path)
    overrides = [*tiny_overrides, "stage=student", f"teacher.weights={path}"]
    summary, _ = train(load_config("quickstart", overrides))
    assert summary["student"]["teacher_checkpoint"] == f"wrn_16_1 weights={path}"
    # Weights for another class count would give the teacher an untrained head: refused.
    other = tmp_path / "other.safetensors"
    save_file(build_model("wrn_16_1", num_classes=10).state_dict(), other)
    overrides = [*tiny_overrides, "stage=student", f"teacher.weights={other}"]
    with pytest.raises(CheckpointError, match="new, untrained head. Fine-tune it first"):
        train(load_config("quickstart", overrides))


def test_timm_teacher_trains_in_the_pipeline(tiny_overrides) -> None:
    overrides = [
        *tiny_overrides,
        "teacher.name=timm/resnet18",
        "loss.map_weight=0",  # resnet18's maps are 1x1 at 32x32
    ]
    summary, result = train(load_config("quickstart", overrides))
    assert result.teacher.cam_layer == "net.layer4"
    assert summary["student"]["done"]


# ---- files from other code: key maps, old torch versions, advice -----------------------------


def _published(tmp_path: Path, name: str = "resnet20") -> tuple[Path, dict]:
    """A state_dict as another CIFAR codebase publishes it: under ``state_dict`` with
    DataParallel's ``module.`` prefix, the classifier named ``linear``, and no BatchNorm
    ``num_batches_tracked`` (saved by torch < 0.4.1)."""
    torch.manual_seed(0)
    source = build_model(name, num_classes=6).state_dict()
    published = {
        "module." + key.replace("fc.", "linear."): value
        for key, value in source.items()
        if not key.endswith("num_batches_tracked")
    }
    path = tmp_path / f"{name}.th"
    torch.save({"best_prec1": 93.0, "state_dict": published}, path)
    return path, source


def test_missing_batch_counts_are_accepted_as_pytorch_accepts_them(tmp_path) -> None:
    torch.manual_seed(0)
    source = build_model("resnet20", num_classes=6).state_dict()
    old = {k: v for k, v in source.items() if not k.endswith("num_batches_tracked")}
    reference = build_model("resnet20", num_classes=6)
    reference.load_state_dict(old, strict=True)  # PyTorch's own strict load fills them in
    path = tmp_path / "old.pt"
    torch.save(old, path)
    model = build_model("resnet20", num_classes=6, weights=str(path))
    for key, value in reference.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key


def test_key_map_rules_rename_in_order() -> None:
    rules = parse_key_map(["module.:", "linear.:fc.", r"re:^layer(\d)\.:stage\1.", ":net."])
    renamed = apply_key_map(
        {
            "module.layer1.0.conv.weight": 1,
            "module.linear.weight": 2,
            "module.head.linear.b": 3,
            "module.nonlinear.w": 4,
        },
        rules,
    )
    assert renamed == {
        "net.stage1.0.conv.weight": 1,
        "net.fc.weight": 2,
        "net.head.fc.b": 3,
        "net.nonlinear.w": 4,  # a rule replaces whole dotted parts only
    }
    for bad, message in (("nocolon", "OLD:NEW"), ("re:(x:y", "invalid regular expression")):
        with pytest.raises(ValueError, match=message):
            parse_key_map([bad])
    with pytest.raises(ValueError, match="renames both a.w and b.w to b.w"):
        apply_key_map({"a.w": 1, "b.w": 2}, parse_key_map(["a.:b."]))


def test_published_file_names_the_rule_to_copy_and_loads_with_it(tmp_path) -> None:
    path, source = _published(tmp_path)
    with pytest.raises(WeightsError) as info:
        build_model("resnet20", num_classes=6, weights=str(path), role="teacher")
    message = str(info.value)
    assert "missing: fc.bias, fc.weight; unexpected: linear.bias, linear.weight" in message
    assert message.endswith('(they fit with teacher.key_map=["linear.:fc."])')
    model = build_model("resnet20", num_classes=6, weights=str(path), key_map=["linear.:fc."])
    teacher = load_classifier(
        path, expected_name="resnet20", expected_classes=6, key_map=["module.:", "linear.:fc."]
    )
    for key, value in source.items():  # the batch counts start at 0, as in PyTorch
        assert torch.equal(model.state_dict()[key], value), key
        assert torch.equal(teacher.state_dict()[key], value), key


def test_another_architecture_names_the_one_the_keys_fit(tmp_path) -> None:
    path = tmp_path / "teacher.pt"
    torch.save(build_model("wrn_16_2", num_classes=6).state_dict(), path)
    with pytest.raises(CheckpointError) as info:
        load_classifier(path, expected_name="wrn_16_1", expected_classes=6)
    message = str(info.value)
    assert message.endswith("(they are the weights of a wrn_16_2: set teacher.name=wrn_16_2)")
    assert "class count" not in message and "\n" not in message


def test_evaluate_a_given_teacher_without_training(tiny_overrides, tmp_path) -> None:
    """stage=teacher teacher.epochs=0: the file is tested as it is; nothing trains."""
    path, source = _published(tmp_path)
    overrides = [
        *tiny_overrides,
        "stage=teacher",
        "teacher.name=resnet20",
        "teacher.epochs=0",
        f"teacher.weights={path}",
        'teacher.key_map=["linear.:fc."]',
    ]
    summary, result = train(load_config("quickstart", overrides))
    assert summary["teacher"]["epochs"] == 0 and summary["teacher"]["evaluated"] == str(path)
    assert 0 <= summary["teacher"]["test_acc"] <= 1 and "val_acc" in summary["teacher"]
    for key, value in source.items():
        assert torch.equal(result.teacher.state_dict()[key], value), key
    assert not list(Path(summary["run_dir"]).glob("teacher/*.ckpt"))
    with pytest.raises(ConfigError, match="teacher.epochs=0 evaluates a given teacher"):
        load_config("quickstart", [*tiny_overrides, "stage=teacher", "teacher.epochs=0"])


@pytest.mark.parametrize(
    "case, pattern",
    [
        ("directory", r"teacher.checkpoint .* is a directory, not a file: name the file in it"),
        ("text", r"cannot be read: it is not a checkpoint or weights file"),
        ("garbage", r"cannot be read: it is not a checkpoint or weights file"),
        ("garbage_pickle", r"cannot be read: truncated or corrupt \(UnpicklingError: Unsupported"),
    ],
)
def test_files_that_are_no_teacher_get_the_right_advice(tiny_overrides, tmp_path, case, pattern):
    path = tmp_path / {"directory": "teachers", "text": "teacher.txt"}.get(case, "teacher.pt")
    if case == "directory":
        (path / "teacher").mkdir(parents=True)
        torch.save({}, path / "teacher" / "best.ckpt")
    elif case == "text":
        path.write_text("hello teacher\n")
    else:
        start = b"\x80\x02" if case == "garbage_pickle" else b"\x00\x01"
        path.write_bytes(start + bytes(range(256)) * 8)
    stage = "stage=all" if case == "directory" else "stage=student"
    cfg = load_config("quickstart", [*tiny_overrides, stage, f"teacher.checkpoint={path}"])
    with pytest.raises(CheckpointError, match=pattern) as info:
        train(cfg)
    message = str(info.value)
    assert "weights_only" not in message and "KeyError" not in message and "\n" not in message
    if case == "directory":
        assert str(path / "teacher" / "best.ckpt") in message
    assert not (tmp_path / "runs").exists()  # refused before anything was written or trained
