"""ONNX export: onnxruntime gives the checkpoint's logits and the toolkit's Grad-CAM++ maps."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from distill import load_model
from distill.cam import GradCAMPlusPlus
from distill.models import build_model
from distill.tools.export import ExportError, export_model, main
from distill.tools.onnx_export import layer_norm_vjp

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

SIZE = (32, 32)
# A ViT as small as build_model offers (its 6 blocks cut to 2: the export takes half the time).
MODELS = {
    "wrn": ("wrn_16_1", {}),
    "resnet": ("resnet18", {}),
    "vit": ("vit_tiny_p4_32", {"depth": 2}),
}


def _randomize_norms(model: nn.Module) -> None:
    """Running statistics and affine parameters away from their initial 0/1, so that the
    eval-mode forward (and the ViT's head-norm Jacobian) is what the comparison exercises."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d | nn.LayerNorm):
                module.weight.uniform_(0.5, 1.5, generator=generator)
                module.bias.normal_(0.0, 0.1, generator=generator)
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.normal_(0.0, 0.1, generator=generator)
                module.running_var.uniform_(0.5, 1.5, generator=generator)


def _checkpoint(tmp_path: Path, key: str, **extra) -> Path:
    """A teacher checkpoint as training writes it (hyperparameters + ``model.`` state_dict)."""
    name, kwargs = MODELS[key]
    kwargs = {**kwargs, **extra}
    torch.manual_seed(0)
    model = build_model(name, num_classes=10, **kwargs)
    _randomize_norms(model)
    hparams = {"model_name": name, "model_kwargs": kwargs, "num_classes": 10, "image_size": SIZE}
    path = tmp_path / f"{key}.ckpt"
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    torch.save({"hyper_parameters": hparams, "state_dict": state}, path)
    return path


def _images(batch: int) -> torch.Tensor:
    return torch.randn(batch, 3, *SIZE, generator=torch.Generator().manual_seed(batch))


def _run(path: Path, images: torch.Tensor) -> list[torch.Tensor]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape[0] == "batch"  # dynamic, not the example's 2
    return [torch.from_numpy(out) for out in session.run(None, {"images": images.numpy()})]


@pytest.mark.parametrize("key", sorted(MODELS))
def test_onnx_logits_equal_the_checkpoint(tmp_path, key):
    checkpoint = _checkpoint(tmp_path, key)
    files = export_model(checkpoint, tmp_path / "export")
    assert files["onnx"] == tmp_path / "export" / "model.onnx"
    meta = json.loads(files["metadata"].read_text())
    assert meta["onnx"] == "model.onnx" and meta["onnx_outputs"] == ["logits"]
    model = load_model(checkpoint)
    for batch in (1, 7):
        images = _images(batch)
        (logits,) = _run(files["onnx"], images)
        with torch.no_grad():
            expected = model(images)
        assert logits.shape == (batch, 10)
        torch.testing.assert_close(logits, expected, atol=1e-4, rtol=0)


def _relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual - expected).abs().max() / expected.abs().max()).item()


@pytest.mark.parametrize("key", ["wrn", "vit"])
def test_onnx_maps_equal_distill_cam(tmp_path, key, capsys):
    checkpoint = _checkpoint(tmp_path, key)
    out = tmp_path / "export"
    assert main([str(checkpoint), "--out", str(out), "--stage", "teacher", "--with-maps"]) == 0
    assert capsys.readouterr().out.strip().endswith(f"to {out}")
    assert json.loads((out / "model.json").read_text())["onnx_outputs"] == ["logits", "maps"]
    model = load_model(checkpoint)
    for batch in (1, 7):
        images = _images(batch)
        logits, maps = _run(out / "model.onnx", images)
        with torch.no_grad():
            torch.testing.assert_close(logits, model(images), atol=1e-4, rtol=0)
        expected = GradCAMPlusPlus(model)(images)  # targets: the argmax
        assert maps.shape == expected.shape == (batch, 8, 8)
        assert expected.flatten(1).amax(1).gt(0).all()  # no sample compares zeros with zeros
        assert _relative_error(maps, expected) < 1e-4


def test_layer_norm_vjp_is_the_norms_backward():
    z, rows = torch.randn(4, 6, dtype=torch.float64), torch.randn(4, 6, dtype=torch.float64)
    for norm in (nn.LayerNorm(6, eps=1e-3), nn.LayerNorm(6, elementwise_affine=False)):
        norm = norm.double()
        if norm.weight is not None:
            nn.init.uniform_(norm.weight, 0.5, 1.5)
        _, vjp = torch.func.vjp(norm, z)
        torch.testing.assert_close(layer_norm_vjp(norm, z, rows), vjp(rows)[0])


def test_maps_of_a_head_that_needs_autograd_are_refused_before_writing(tmp_path):
    checkpoint = _checkpoint(tmp_path, "vit", global_pool="token")  # class-token head
    out = tmp_path / "export"
    with pytest.raises(ExportError, match="pooled-linear head .* export without maps") as error:
        export_model(checkpoint, out, maps=True)
    assert "\n" not in str(error.value) and not out.exists()
    with pytest.raises(ExportError, match="needs onnx=True"):
        export_model(checkpoint, out, onnx=False, maps=True)


def test_out_naming_a_file_is_one_line_and_exit_code_1(tmp_path, capsys):
    checkpoint = _checkpoint(tmp_path, "wrn")
    taken = tmp_path / "taken.txt"
    taken.write_text("not a directory")
    assert main([str(checkpoint), "--out", str(taken)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{taken} is a file, not a directory" in err
    assert taken.read_text() == "not a directory"


@pytest.mark.parametrize("package", ["onnx", "onnxscript"])
def test_missing_onnx_packages_name_the_extra(tmp_path, monkeypatch, capsys, package):
    checkpoint = _checkpoint(tmp_path, "wrn")
    monkeypatch.setitem(sys.modules, package, None)  # the import fails
    out = tmp_path / "export"
    assert main([str(checkpoint), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"needs {package}: pip install 'distill[onnx]'" in err
    assert not out.exists()
    files = export_model(checkpoint, out, onnx=False)  # the rest still exports
    assert "onnx" not in files and not (out / "model.onnx").exists()
    assert json.loads(files["metadata"].read_text())["onnx"] is None


def test_an_exporter_failure_is_one_line_and_writes_nothing(tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        try:
            raise RuntimeError("unsupported operator\nwith a long trace")
        except RuntimeError as cause:
            raise torch.onnx.OnnxExporterError("Failed to export\nstep 1/3") from cause

    monkeypatch.setattr(torch.onnx, "export", fail)
    out = tmp_path / "export"
    message = "wrn_16_1 cannot be exported to ONNX \\(RuntimeError: unsupported operator\\)"
    with pytest.raises(ExportError, match=message + ".*--no-onnx") as error:
        export_model(_checkpoint(tmp_path, "wrn"), out)
    assert "\n" not in str(error.value) and not any(out.iterdir())


def test_importing_the_package_imports_no_onnx_package():
    code = (
        "import sys, distill, distill.tools.export, distill.tools.onnx_export; "
        "print(sorted({'onnx', 'onnxscript', 'onnxruntime'} & set(sys.modules)))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
