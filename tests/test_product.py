"""The trained student as a product: student-only checkpoints, one loader, export, explain."""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image, features

from distill import CheckpointError, export_model, load_model, weights_sha256
from distill.cam.visualize import CAPTION_HEIGHT
from distill.config import load_config
from distill.data import SHAPES_CLASSES, SHAPES_MEAN, SHAPES_STD
from distill.data.preprocess import ImageTransforms
from distill.tools.explain import MIN_PANEL, main, read_images
from distill.tools.train import RUN_DIR_ENV, train
from distill.training.lightning_modules import TEACHER_PREFIX


def _train(overrides: list[str]) -> tuple[dict, object, Path]:
    summary, result = train(load_config("quickstart", overrides))
    return summary, result, Path(summary["run_dir"])


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_overrides_for):
    """One tiny two-stage run shared by the tests that only read it."""
    os.environ.pop(RUN_DIR_ENV, None)
    summary, result, run_dir = _train(tiny_overrides_for(tmp_path_factory.mktemp("product")))
    os.environ.pop(RUN_DIR_ENV, None)
    result.student.eval()
    result.teacher.eval()
    return summary, result, run_dir


def _batch() -> torch.Tensor:
    return torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def _logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(_batch())


def test_student_checkpoints_hold_the_student_and_reference_the_teacher(run):
    summary, result, run_dir = run
    teacher_path = (run_dir / "teacher" / "best.ckpt").resolve()
    for name in ("best.ckpt", "last.ckpt"):
        checkpoint = torch.load(run_dir / "student" / name, map_location="cpu", weights_only=True)
        keys = checkpoint["state_dict"].keys()
        assert not [k for k in keys if k.startswith(TEACHER_PREFIX)], name
        assert len(keys) == len(result.student.state_dict()), name
        assert checkpoint["teacher"] == {
            "path": str(teacher_path),
            "sha256": weights_sha256(result.teacher),
            "name": "wrn_16_1",
        }
        # What inference needs travels in the hyperparameters.
        hparams = checkpoint["hyper_parameters"]
        assert hparams["classes"] == list(SHAPES_CLASSES)
        assert tuple(hparams["image_size"]) == (32, 32) and hparams["crop"] == "pad"
    # The recorded hash is the teacher file's weights, whatever its container holds besides.
    assert weights_sha256(load_model(teacher_path)) == weights_sha256(result.teacher)
    assert weights_sha256(result.teacher) != weights_sha256(result.student)


def test_load_model_reads_checkpoints_and_run_directories(run):
    summary, result, run_dir = run
    student, teacher = _logits(result.student), _logits(result.teacher)
    cases = {
        "student checkpoint": (summary["student"]["checkpoint"], "student", student),
        "run directory": (run_dir, "student", student),
        "run directory, teacher": (run_dir, "teacher", teacher),
        "teacher checkpoint": (summary["teacher"]["checkpoint"], "student", teacher),
    }
    for case, (path, stage, expected) in cases.items():
        model = load_model(path, stage)
        assert not model.training, case
        assert torch.equal(_logits(model), expected), case
        assert model.num_classes == len(SHAPES_CLASSES) and model.classes == list(SHAPES_CLASSES)
        assert model.mean == pytest.approx(SHAPES_MEAN) and model.std == pytest.approx(SHAPES_STD)
        assert model.image_size == (32, 32) and model.crop == "pad", case
    assert load_model(run_dir).teacher_info["sha256"] == weights_sha256(result.teacher)
    assert load_model(run_dir, "teacher").teacher_info is None


@pytest.mark.parametrize("safetensors", [True, False])
def test_export_reloads_and_runs_with_torch_alone(run, tmp_path, monkeypatch, safetensors):
    _, result, run_dir = run
    if safetensors:
        pytest.importorskip("safetensors")
    else:  # the import fails: a plain model.pt is written
        monkeypatch.setitem(sys.modules, "safetensors", None)
        monkeypatch.setitem(sys.modules, "safetensors.torch", None)
    files = export_model(run_dir, tmp_path / "export")
    assert files["weights"].name == ("model.safetensors" if safetensors else "model.pt")
    meta = json.loads(files["metadata"].read_text())
    assert meta["architecture"] == "wrn_16_1" and meta["cam_layer"] == "relu"
    assert meta["classes"] == list(SHAPES_CLASSES) and meta["image_size"] == [32, 32]
    assert meta["crop"] == "pad"
    assert meta["num_classes"] == 6 and meta["mean"] == pytest.approx(SHAPES_MEAN)

    expected = _logits(result.student)
    for path in (tmp_path / "export", files["metadata"], files["weights"]):
        assert torch.equal(_logits(load_model(path)), expected), path
    program = torch.export.load(files["program"]).module()
    for batch in (_batch(), _batch()[:1]):  # the batch dimension is dynamic
        torch.testing.assert_close(program(batch), result.student(batch), atol=1e-5, rtol=0)
    # A loaded model exports too, and the plain state_dict is the student's.
    again = export_model(load_model(run_dir), tmp_path / "again")
    assert weights_sha256(load_model(again["metadata"])) == weights_sha256(result.student)


class _NotAWeight:
    """Pickled into a checkpoint: a safe load must refuse it rather than import it."""


@pytest.mark.parametrize("case", ["missing", "foreign", "corrupt", "pickle", "stage", "empty run"])
def test_load_model_errors_name_the_path(run, tmp_path, case):
    path, stage = tmp_path / "x.ckpt", "student"
    if case == "foreign":
        torch.save({"weights": torch.zeros(2)}, path)
    elif case == "corrupt":
        path.write_bytes(b"not a checkpoint" * 64)
    elif case == "pickle":
        torch.save({"hyper_parameters": {"model_name": "wrn_16_1"}, "x": _NotAWeight()}, path)
    elif case == "stage":
        path, stage = run[2], "teacher_2"
    elif case == "empty run":
        path = tmp_path / "run"
        path.mkdir()
    message = {
        "missing": "does not exist",
        "foreign": "is not a checkpoint written by this toolkit",
        "corrupt": "cannot be read",
        "pickle": "refused: .*Unsupported global",
        "stage": "unknown stage 'teacher_2'",
        "empty run": "holds no student checkpoint",
    }[case]
    with pytest.raises(CheckpointError, match=message) as info:
        load_model(path, stage)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def _break_teacher(path: Path) -> None:
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    checkpoint["state_dict"]["model.fc.bias"] += 0.01
    torch.save(checkpoint, path)


class _CrashInStudentEpoch1(L.Callback):
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if "distiller" in dict(pl_module.named_children()) and trainer.current_epoch == 1:
            raise RuntimeError("crash")


def test_student_run_resumes_and_refuses_a_changed_teacher(tiny_overrides, tmp_path, monkeypatch):
    with pytest.raises(RuntimeError, match="crash"):
        train(
            load_config("quickstart", [*tiny_overrides, "student.epochs=2"]),
            callbacks=[_CrashInStudentEpoch1()],
        )
    (run_dir,) = (tmp_path / "runs" / "quickstart").iterdir()
    config = str(run_dir / "config.yaml")
    last = run_dir / "student" / "last.ckpt"
    before = last.read_bytes()
    teacher = run_dir / "teacher" / "best.ckpt"
    kept = teacher.read_bytes()
    recorded = weights_sha256(load_model(teacher))
    _break_teacher(teacher)
    monkeypatch.delenv(RUN_DIR_ENV, raising=False)
    with pytest.raises(CheckpointError, match="teacher changed") as info:
        train(load_config(config), resume_dir=run_dir)
    assert recorded in str(info.value)
    assert weights_sha256(load_model(teacher)) in str(info.value)
    assert last.read_bytes() == before  # nothing trained on the wrong teacher

    teacher.write_bytes(kept)
    monkeypatch.delenv(RUN_DIR_ENV, raising=False)
    summary, result = train(load_config(config), resume_dir=run_dir)
    assert summary["student"]["epochs"] == 2
    selected = summary["student"]["checkpoint"]  # the weights the test loaded last
    assert torch.equal(_logits(load_model(selected)), _logits(result.student.eval()))
    assert "teacher" in torch.load(last, map_location="cpu", weights_only=True)
    monkeypatch.delenv(RUN_DIR_ENV, raising=False)


def _image_folder(root: Path) -> list[Path]:
    """Images of several sizes and modes, plus a file that is not an image."""
    rng = np.random.default_rng(0)
    images = {
        "rgb.jpg": Image.fromarray(rng.integers(0, 255, (50, 40, 3), dtype=np.uint8)),
        "gray.png": Image.fromarray(rng.integers(0, 255, (20, 33), dtype=np.uint8), "L"),
        "rgba.png": Image.fromarray(rng.integers(0, 255, (64, 64, 4), dtype=np.uint8), "RGBA"),
        "sub/palette.bmp": Image.new("P", (31, 17), 3),
    }
    if features.check("webp"):
        images["sub/small.webp"] = Image.new("RGB", (8, 8), (200, 10, 10))
    for name, image in images.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        image.save(root / name)
    (root / "notes.txt").write_text("not an image")
    return [root / name for name in images]


def _explained(out: Path) -> dict[str, tuple[int, int]]:
    return {p.name: Image.open(p).size for p in sorted(out.glob("*.png"))}


def test_explain_writes_one_captioned_png_per_image(run, tmp_path, capsys):
    summary, _, run_dir = run
    images = _image_folder(tmp_path / "images")
    names = {f"{p.stem}.png" for p in images}
    panel = math.ceil(MIN_PANEL / 32) * 32
    student_ckpt, teacher_ckpt = summary["student"]["checkpoint"], summary["teacher"]["checkpoint"]
    cases = {  # arguments -> panels per row (image, student[, teacher])
        "teacher given": ([student_ckpt, "--teacher", teacher_ckpt], 3),
        "teacher the run records": ([str(run_dir)], 3),
        "no teacher": ([teacher_ckpt, "--target", "2"], 2),
    }
    for case, (args, panels) in cases.items():
        out = tmp_path / case
        assert main([args[0], str(tmp_path / "images"), "--out", str(out), *args[1:]]) == 0
        sizes = _explained(out)
        assert set(sizes) == names, case
        assert set(sizes.values()) == {(panels * panel, CAPTION_HEIGHT + panel)}, case
        assert f"wrote {len(names)} explanations" in capsys.readouterr().out
    # Files named one by one, in batches of 2: each picture lands under its own name.
    out = tmp_path / "batched"
    args = ["--out", str(out), "--teacher", teacher_ckpt, "--batch-size", "2"]
    assert main([student_ckpt, *map(str, images), *args]) == 0
    for name in names:
        batched = np.asarray(Image.open(out / name), dtype=np.int16)
        whole = np.asarray(Image.open(tmp_path / "teacher given" / name), dtype=np.int16)
        assert (batched[:, :panel] == whole[:, :panel]).all(), name  # the image panel
        assert np.abs(batched - whole).mean() < 0.5, name  # maps: batch-size rounding only


@pytest.mark.parametrize("case", ["missing image", "empty folder", "missing checkpoint", "target"])
def test_explain_input_errors_are_one_line(run, tmp_path, capsys, case):
    """Bad arguments exit with 2; a checkpoint that cannot be used with 1, as in train.py."""
    summary = run[0]
    checkpoint, inputs, extra = summary["student"]["checkpoint"], [str(tmp_path / "nope.png")], []
    if case == "empty folder":
        inputs = [str(tmp_path)]
    elif case == "missing checkpoint":
        checkpoint, inputs = str(tmp_path / "none.ckpt"), [str(_image_folder(tmp_path / "i")[0])]
    elif case == "target":
        inputs, extra = [str(_image_folder(tmp_path / "i")[0])], ["--target", "6"]
    code = 1 if case == "missing checkpoint" else 2
    assert main([checkpoint, *inputs, "--out", str(tmp_path / "out"), *extra]) == code
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("crop", ["pad", "random_resized"])
def test_explain_resizes_new_images_as_evaluation_did(tmp_path, crop):
    """A 40x64 photo is shown to the model as the evaluation split showed it: stretched
    (``pad``), or resized to 27 on the shorter side and center-cropped to 24
    (``random_resized``)."""
    rng = np.random.default_rng(0)
    path = tmp_path / "wide.png"
    Image.fromarray(rng.integers(0, 256, (40, 64, 3), dtype=np.uint8)).save(path)
    evaluation = ImageTransforms(
        image_size=24, crop=crop, augment=False, padding=4, mean=(0, 0, 0), std=(1, 1, 1), seed=0
    ).sample(train=False, native_hw=(40, 64))
    with Image.open(path) as image:
        expected = evaluation(image.convert("RGB"))
    got = read_images([path], (24, 24), crop)
    assert got.shape == (1, 3, 24, 24)
    torch.testing.assert_close(got[0], expected, rtol=0, atol=1e-6)
    other = read_images([path], (24, 24), "pad" if crop == "random_resized" else "random_resized")
    assert (other - got).abs().max() > 0.1  # the two resizes differ on this picture
