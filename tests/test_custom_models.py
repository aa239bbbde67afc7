"""Architectures the toolkit does not know, by import path (``teacher.name=pkg.module:callable``):
the CAM layer found by a forward pass, the closed form only for a verified pooled-linear head,
and the whole product (train, checkpoints, load, export, explain, resume) for such models."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.utilities.exceptions import SIGTERMException

from distill.cam import GradCAMPlusPlus
from distill.config import ConfigError, load_config
from distill.models import build_model
from distill.models.imported import ImportedClassifier
from distill.tools.explain import explain_batch
from distill.tools.export import export_model
from distill.tools.train import train
from distill.training.checkpoints import load_model
from distill.training.lightning_modules import DistillModule

# The models are imported by name, as a user's would be: from the repository root (on sys.path
# under `python -m pytest`; added here for a bare `pytest`).
ROOT = str(Path(__file__).resolve().parent.parent)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

HEAD_NOT_FC = "tests.custom_models:HeadNotFc"
EXTRA_LAYER = "tests.custom_models:ExtraLayerAfterPooling"
MAP_NOT_LAST = "tests.custom_models:MapNotLast"


@pytest.mark.parametrize(
    "name, layer, closed_form, classifier",
    [
        (HEAD_NOT_FC, "net.features", True, "out"),
        ("tests.custom_models:head_not_fc", "net.features", True, "out"),  # a function
        (EXTRA_LAYER, "net.features", False, None),
        (MAP_NOT_LAST, "net.body", True, "head"),  # net.aux runs later but feeds no logits
    ],
)
def test_cam_layer_is_found_and_the_head_is_verified(name, layer, closed_form, classifier, capsys):
    model = build_model(name, num_classes=6)
    assert isinstance(model, ImportedClassifier)
    assert model.cam_layer == layer and model.has_pooled_linear_head is closed_form
    if classifier is not None:
        assert model.get_classifier() is model.net.get_submodule(classifier)
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith(f"{name}: cam_layer={layer} (found by a forward pass")
    assert ("its closed form" if closed_form else "by autograd") in line


def test_closed_form_maps_equal_autograd_maps_only_where_verified() -> None:
    torch.manual_seed(0)
    images = torch.randn(3, 3, 32, 32)
    verified = build_model(HEAD_NOT_FC, num_classes=6).eval()
    closed = GradCAMPlusPlus(verified)(images)
    verified.has_pooled_linear_head = False  # force the autograd path
    torch.testing.assert_close(closed, GradCAMPlusPlus(verified)(images), rtol=1e-4, atol=1e-5)
    # The check matters: for a hidden layer after the pooling the closed form is wrong.
    extra = build_model(EXTRA_LAYER, num_classes=6).eval()
    autograd = GradCAMPlusPlus(extra)(images)
    extra.has_pooled_linear_head = True
    assert not torch.allclose(GradCAMPlusPlus(extra)(images), autograd, atol=1e-3)


def test_cam_layer_override_and_what_is_left_unchanged(capsys) -> None:
    torch.manual_seed(0)
    model = build_model(MAP_NOT_LAST, num_classes=6, cam_layer="body.2")
    after_build = torch.rand(4)
    assert model.cam_layer == "net.body.2"
    assert "cam_layer=net.body.2 (given); Grad-CAM++ by autograd" in capsys.readouterr().out
    # The probing forward passes change neither the RNG stream nor the BatchNorm statistics.
    from tests.custom_models import MapNotLast

    torch.manual_seed(0)
    MapNotLast(num_classes=6)
    assert torch.equal(after_build, torch.rand(4))
    assert torch.equal(model.net.body[1].running_mean, torch.zeros(8))
    assert int(model.net.body[1].num_batches_tracked) == 0


@pytest.mark.parametrize(
    "override, pattern",
    [
        ("teacher.name=tests.no_such_module:Net", r"teacher.name=.*cannot import 'tests.no_such"),
        ("teacher.name=tests.custom_models:Nope", r"has no callable 'Nope'"),
        (f"teacher.name={HEAD_NOT_FC}", None),
        ("student.cam_layer=nope", r"student.cam_layer='nope': .*not a layer"),
    ],
)
def test_config_accepts_import_paths_and_names_what_is_wrong(override, pattern) -> None:
    if pattern is None:
        assert load_config("quickstart", [override]).teacher.name == HEAD_NOT_FC
        return
    with pytest.raises(ConfigError, match=pattern) as info:
        load_config("quickstart", [override])
    assert "\n" not in str(info.value)


class _TermAt(L.Callback):
    """SIGTERM after the first student batch: the stage must be resumed."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if isinstance(pl_module, DistillModule):
            os.kill(os.getpid(), signal.SIGTERM)


# Three tiny runs of about 20 s each: the first runs by default, the other two with -m slow.
@pytest.mark.parametrize(
    "teacher, student, student_layer, side",
    [
        (HEAD_NOT_FC, EXTRA_LAYER, "net.features", 16),
        pytest.param(EXTRA_LAYER, MAP_NOT_LAST, "net.body.2", 32, marks=pytest.mark.slow),
        pytest.param(MAP_NOT_LAST, HEAD_NOT_FC, "net.features", 16, marks=pytest.mark.slow),
    ],
)
def test_imported_models_train_load_export_and_explain(
    tiny_overrides, tmp_path, teacher, student, student_layer, side
) -> None:
    overrides = [*tiny_overrides, f"teacher.name={teacher}", f"student.name={student}"]
    if student_layer == "net.body.2":
        overrides.append("student.cam_layer=body.2")
    summary, result = train(load_config("quickstart", overrides))
    assert summary["teacher"]["done"] and summary["student"]["done"]
    (run_dir,) = (tmp_path / "runs" / "quickstart").iterdir()
    images = torch.rand(2, 3, 32, 32)
    for stage, name in (("teacher", teacher), ("student", student)):
        loaded = load_model(run_dir, stage)
        assert isinstance(loaded, ImportedClassifier) and loaded.model_name == name
        if stage == "student":
            assert loaded.cam_layer == student_layer  # an override is kept by the checkpoint
        exported = load_model(export_model(loaded, tmp_path / f"export_{stage}")["metadata"])
        torch.testing.assert_close(exported(images), loaded(images))
        probs, predicted, maps = explain_batch(loaded, images)
        expected = side if stage == "student" else 16
        assert maps.shape == (2, expected, expected) and torch.isfinite(maps).all()
        assert torch.equal(predicted, probs.argmax(dim=1))


@pytest.mark.slow  # a tiny run, interrupted and resumed: about 20 s alone, a minute when busy
def test_imported_student_resumes_after_an_interrupt(tiny_overrides, tmp_path) -> None:
    overrides = [
        *tiny_overrides,
        f"teacher.name={MAP_NOT_LAST}",
        f"student.name={HEAD_NOT_FC}",
        "student.epochs=2",
    ]
    with pytest.raises(SIGTERMException):
        train(load_config("quickstart", overrides), callbacks=[_TermAt()])
    (run_dir,) = (tmp_path / "runs" / "quickstart").iterdir()
    assert (run_dir / "student" / "interrupted.ckpt").is_file()
    summary, _ = train(load_config(str(run_dir / "config.yaml")), resume_dir=run_dir)
    assert summary["student"]["done"] and summary["student"]["epochs"] == 2
    assert Path(summary["student"]["checkpoint"]).is_file()
    assert isinstance(load_model(run_dir, "student"), ImportedClassifier)
