"""One user-error type, printed by every command line as one line with its exit code; explain's
options and inputs refused in one line; explain decoding images as training does."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from distill.config import ConfigError
from distill.data.decode import decode_file
from distill.data.errors import DatasetNotFoundError, UnreadableImageError
from distill.data.stream import main as stream_main
from distill.errors import UserError, report
from distill.models import build_model
from distill.models.weights import WeightsError
from distill.tools import explain
from distill.tools.compare import main as compare_main
from distill.tools.explain import InputError, read_images
from distill.training.callbacks import NonFiniteLossError
from distill.training.checkpoints import CheckpointError
from distill.training.run_dir import make_run_dir
from distill.training.teacher_cache import TeacherCacheError

ROOT = Path(__file__).resolve().parent.parent
CLASSES = ["café", "猫", "dog"]


def _one_line(err: str) -> str:
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err


# ---- the type -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kind, old_base, code",
    [
        (ConfigError, ValueError, 2),
        (InputError, ValueError, 2),
        (WeightsError, RuntimeError, 1),
        (CheckpointError, WeightsError, 1),
        (DatasetNotFoundError, RuntimeError, 1),
        (UnreadableImageError, RuntimeError, 1),
        (TeacherCacheError, RuntimeError, 1),
        (NonFiniteLossError, FloatingPointError, 1),
    ],
)
def test_every_user_error_type_derives_from_user_error_and_keeps_its_base(kind, old_base, code):
    error = kind("first\n   second line")
    assert isinstance(error, UserError) and isinstance(error, old_base)
    assert error.exit_code == code


def test_report_prints_one_line_and_returns_the_code(capsys):
    assert report(ConfigError("a\n  b\tc")) == 2
    assert capsys.readouterr().err == "error: a b c\n"


# ---- every command line ---------------------------------------------------------------------


def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "DISTILL_RUN_DIR"}
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=300
    )


def test_train_cli_output_dir_under_a_file_is_one_line_exit_2(tmp_path, tiny_overrides):
    """Found before the run folder exists and before anything trains (no checkpoint)."""
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where a folder should be")
    overrides = [o for o in tiny_overrides if not o.startswith("output_dir=")]
    out = _cli([str(ROOT / "train.py"), f"output_dir={blocker}/runs", *overrides], tmp_path)
    assert out.returncode == 2, out.stderr
    assert "output_dir" in _one_line(out.stderr) and str(blocker) in out.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blocker"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
def test_explain_device_cuda_without_a_gpu_is_one_line_exit_2(
    teacher_ckpt, tmp_path, picture, capsys
):
    out = tmp_path / "o"
    args = [str(teacher_ckpt), str(picture), "--out", str(out), "--device", "cuda"]
    assert explain.main(args) == 2
    err = _one_line(capsys.readouterr().err)
    assert "--device cuda" in err and "--device cpu" in err
    assert not out.exists()


def test_compare_cli_missing_data_is_one_line_exit_1(tmp_path, tiny_overrides, capsys):
    missing = tmp_path / "no_data"
    data = ["data.name=imagefolder", f"data.root={missing}"]
    assert compare_main(["--seeds", "0", "--methods", "ce", *tiny_overrides, *data]) == 1
    assert str(missing) in _one_line(capsys.readouterr().err)


def test_compare_cli_bad_seed_is_one_line_exit_2(capsys):
    assert compare_main(["--seeds", "0,x"]) == 2
    assert "--seeds" in _one_line(capsys.readouterr().err)


def test_stream_cli_missing_folder_is_one_line_exit_1(tmp_path, capsys):
    assert stream_main(["optimize", str(tmp_path / "none"), str(tmp_path / "out")]) == 1
    assert "none" in _one_line(capsys.readouterr().err)


# ---- output_dir -----------------------------------------------------------------------------


def _cfg(output_dir: Path):
    return OmegaConf.create({"output_dir": str(output_dir), "name": "quickstart"})


def test_a_read_only_output_dir_is_one_line_naming_it(tmp_path, monkeypatch):
    """Root may write anywhere, so the refusal a read-only folder gives is simulated."""
    monkeypatch.delenv("DISTILL_RUN_DIR", raising=False)
    read_only = tmp_path / "read_only"
    read_only.mkdir()
    real_mkdir = os.mkdir

    def mkdir(path, mode=0o777, **kwargs):
        if Path(path).is_relative_to(read_only):
            raise PermissionError(13, "Permission denied", str(path))
        real_mkdir(path, mode, **kwargs)

    monkeypatch.setattr(os, "mkdir", mkdir)
    with pytest.raises(ConfigError, match="Permission denied") as info:
        make_run_dir(_cfg(read_only))
    message = str(info.value)
    assert "\n" not in message and str(read_only / "quickstart") in message
    assert "output_dir" in message


def test_a_run_folder_made_at_the_same_moment_is_still_retried(tmp_path, monkeypatch):
    """The one FileExistsError that is not the user's: another run took the name."""
    monkeypatch.delenv("DISTILL_RUN_DIR", raising=False)
    (tmp_path / "quickstart").mkdir()
    taken = iter(["20990101-000000"])
    real_strftime = __import__("time").strftime
    monkeypatch.setattr(
        "distill.training.run_dir.time.strftime",
        lambda fmt, *a: next(taken, real_strftime(fmt, *a)),
    )
    monkeypatch.setattr("distill.training.run_dir.secrets.token_hex", lambda n: "0" * 2 * n)
    (tmp_path / "quickstart" / "20990101-000000-00000000").mkdir()
    run_dir = make_run_dir(_cfg(tmp_path))
    assert run_dir.is_dir() and run_dir.name != "20990101-000000-00000000"


# ---- explain --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def teacher_ckpt(tmp_path_factory) -> Path:
    """A teacher-stage checkpoint as the toolkit writes it, without training one."""
    torch.manual_seed(0)
    model = build_model("wrn_16_1", num_classes=len(CLASSES))
    path = tmp_path_factory.mktemp("teacher") / "teacher.ckpt"
    hparams = {
        "model_name": "wrn_16_1",
        "num_classes": len(CLASSES),
        "classes": CLASSES,
        "mean": [0.5] * 3,
        "std": [0.25] * 3,
        "image_size": [32, 32],
        "crop": "pad",
    }
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    torch.save({"hyper_parameters": hparams, "state_dict": state}, path)
    return path


@pytest.fixture
def picture(tmp_path) -> Path:
    path = tmp_path / "in" / "a.png"
    path.parent.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(path)
    return path


def test_explain_out_naming_a_file_is_one_line_exit_2(tmp_path, picture, capsys):
    out = tmp_path / "out.png"
    out.write_bytes(b"keep me")
    assert explain.main(["x.ckpt", str(picture), "--out", str(out)]) == 2
    assert str(out) in _one_line(capsys.readouterr().err)
    assert out.read_bytes() == b"keep me"


def _captions(monkeypatch) -> list[list[str]]:
    seen: list[list[str]] = []
    real = explain.captioned_row

    def spy(panels, captions, *args):
        seen.append(list(captions))
        return real(panels, captions, *args)

    monkeypatch.setattr(explain, "captioned_row", spy)
    return seen


def test_explain_captions_a_teacher_checkpoint_as_the_teacher(
    teacher_ckpt, picture, tmp_path, capsys, monkeypatch
):
    seen = _captions(monkeypatch)
    assert explain.main([str(teacher_ckpt), str(picture), "--out", str(tmp_path / "o")]) == 0
    ((_, caption),) = seen
    assert caption.startswith("teacher: ") and "student" not in caption
    assert "(teacher wrn_16_1; gradcam_pp)" in capsys.readouterr().out


@pytest.mark.parametrize("given, index", [("dog", 2), ("café", 0), ("猫", 1), ("DOG", 2), ("1", 1)])
def test_explain_target_takes_a_class_name_or_index(
    teacher_ckpt, picture, tmp_path, monkeypatch, given, index
):
    seen = _captions(monkeypatch)
    args = [str(teacher_ckpt), str(picture), "--out", str(tmp_path / "o"), "--target", given]
    assert explain.main(args) == 0
    assert seen[0][1].endswith(f"map of {CLASSES[index]}")


@pytest.mark.parametrize(
    "given, expected",
    [("dgo", "did you mean dog"), ("cafe", "did you mean café"), ("3", "3 classes (0 to 2)")],
)
def test_explain_unknown_target_is_one_line_with_the_closest_names(
    teacher_ckpt, picture, tmp_path, capsys, given, expected
):
    args = [str(teacher_ckpt), str(picture), "--out", str(tmp_path / "o"), "--target", given]
    assert explain.main(args) == 2
    assert expected in _one_line(capsys.readouterr().err)
    assert not (tmp_path / "o").exists()


def test_explain_reads_16_bit_images_as_training_does(tmp_path):
    """A 16-bit gray pixel of 40000 is 156 (its high byte) for training's decoder; explain
    read 255 (PIL's RGB conversion clips), whitening the picture."""
    path = tmp_path / "deep.png"
    values = np.full((6, 6), 40000, dtype=np.uint16)
    values[0, 0] = 1000
    Image.fromarray(values).save(path)
    with Image.open(path) as image:
        assert image.mode.startswith("I")  # really stored with 16 bits
    trained = decode_file(str(path))
    assert trained[:, 1, 1].tolist() == [156] * 3
    shown = read_images([path], (6, 6))
    torch.testing.assert_close(shown[0], trained.float() / 255, rtol=0, atol=1e-6)
