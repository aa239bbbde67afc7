"""Every map method in the tools: compare.py's ``kd_<method>`` students, ``explain --method``
and the map panel's ``logging.map_methods``."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import wandb
from PIL import Image

from distill.cam import CAM_METHODS, CAM_RULES, EXPLAINERS, GradCAMPlusPlus, LayerCAM
from distill.cam.visualize import CAPTION_HEIGHT, map_grid
from distill.config import ConfigError, load_config
from distill.models import build_model
from distill.tools.compare import DEFAULT_METHODS, METHODS, check_choices, check_method_configs
from distill.tools.compare import main as compare_main
from distill.tools.explain import MIN_PANEL, InputError, _methods
from distill.tools.explain import main as explain_main
from distill.tools.train import RUN_DIR_ENV, train
from distill.training.callbacks import MapImageCallback
from distill.training.loggers import read_offline_run

BLOCK2 = "loss.map_layers=[{student: block2, teacher: block2}]"
"""Map layers that do not feed the pooled heads of the quickstart's WRNs: no CAM there."""


def test_explainers_are_named_as_the_methods():
    assert list(EXPLAINERS) == list(CAM_METHODS)
    for name, explainer in EXPLAINERS.items():
        assert explainer.rule is CAM_RULES[name], name


# compare.py ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [m for m in CAM_METHODS if m != "gradcam_pp"])
def test_kd_method_adds_that_map_to_the_fields_kd(name):
    method = f"kd_{name}"
    assert METHODS[method] == [*METHODS["kd_gradcam_pp"], f"loss.map_method={name}"]
    check_choices([method], [0])  # the start-up check knows the name
    check_method_configs("quickstart", [], [method])  # and its config loads
    loss = load_config("quickstart", METHODS[method]).loss
    assert loss.map_method == name
    assert (loss.ce_weight, loss.kd_weight, loss.temperature) == (0.1, 0.9, 4.0)
    assert loss.map_weight == 0.01 and loss.at_weight == 0.0  # the recipe's map weight


def test_kd_gradcam_pp_and_the_default_methods_are_unchanged():
    assert METHODS["kd_gradcam_pp"] == [
        "loss.ce_weight=0.1",
        "loss.kd_weight=0.9",
        "loss.temperature=4",
    ]
    assert load_config("quickstart", METHODS["kd_gradcam_pp"]).loss.map_method == "gradcam_pp"
    assert DEFAULT_METHODS == ("ce", "kd", "at", "gradcam", "gradcam_pp", "kd_gradcam_pp")
    assert "kd_gradcam_pp_pp" not in METHODS and "kd_kd" not in METHODS
    with pytest.raises(ConfigError, match="unknown methods"):
        check_choices(["kd_gradcm"], [0])


def test_kd_cam_is_refused_away_from_the_pooled_head_before_anything_trains(tmp_path, capsys):
    check_method_configs("quickstart", [], ["kd_cam"])  # the WRNs' cam_layer feeds the head
    with pytest.raises(ConfigError, match=r"^--methods kd_cam: loss.map_method=cam needs"):
        check_method_configs("quickstart", [BLOCK2], ["kd", "kd_layercam", "kd_cam"])
    check_method_configs("quickstart", [BLOCK2], ["kd", "kd_layercam"])  # the others train there
    out = tmp_path / "runs"
    args = ["--methods", "kd,kd_cam", "--seeds", "0", BLOCK2, f"output_dir={out}"]
    assert compare_main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --methods kd_cam: ") and err.count("\n") == 1, err
    assert not out.exists()  # no teacher trained


# A tiny run with two map methods, wandb offline ---------------------------------------------------


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_overrides_for):
    """One tiny two-stage run drawing Grad-CAM++ and LayerCAM maps, logged to offline wandb."""
    tmp = tmp_path_factory.mktemp("camtools")
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv(RUN_DIR_ENV, raising=False)
        patch.setenv("WANDB_MODE", "offline")
        patch.delenv("WANDB_API_KEY", raising=False)
        for variable in ("WANDB_DIR", "WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
            patch.setenv(variable, str(tmp / "wandb-home"))
        overrides = [
            *tiny_overrides_for(tmp / "runs"),
            "logging.wandb=offline",
            "logging.map_images=2",
            "logging.map_methods=[gradcam_pp,layercam]",
        ]
        summary, _ = train(load_config("quickstart", overrides))
        wandb.teardown()  # the offline files are complete once the service has stopped
        os.environ.pop(RUN_DIR_ENV, None)
    return summary, Path(summary["run_dir"])


@pytest.mark.slow  # trains a tiny teacher and student (~30 s on a busy CPU)
def test_map_panel_draws_each_method_and_wandb_gets_it(run):
    summary, run_dir = run
    tile = 128  # 32-pixel images drawn 4x
    offline_runs = [read_offline_run(f) for f in sorted((run_dir / "wandb").glob("offline-run-*"))]
    by_stage = {offline.job_type: offline for offline in offline_runs}
    assert sorted(by_stage) == ["student", "teacher"] and len(offline_runs) == 2
    for stage, models in (("teacher", ["model"]), ("student", ["teacher", "student"])):
        offline = by_stage[stage]
        files = offline.path.parent / "files"
        logged = [
            (files / name, caption)
            for row in offline.history
            if "val/maps" in row
            for name, caption in zip(
                row["val/maps"]["filenames"], row["val/maps"]["captions"], strict=True
            )
        ]
        assert len(logged) == 2, stage
        columns = 1 + 2 * len(models)  # the image, then each model under each method
        grid = np.asarray(Image.open(run_dir / stage / "maps_epoch001.png"))
        for i, (path, caption) in enumerate(logged):
            assert re.fullmatch(r"true: \w+" + "".join(rf" \| {m}: \w+" for m in models), caption)
            strip = np.asarray(Image.open(path))
            header = strip.shape[0] - tile
            assert strip.shape[1] == columns * tile, stage
            assert grid.shape[1] > columns * tile  # plus the row labels' margin
            row = grid[header + i * tile : header + (i + 1) * tile, -strip.shape[1] :]
            np.testing.assert_array_equal(strip[header:], row)
            tiles = [strip[header:, c * tile : (c + 1) * tile] for c in range(columns)]
            for c in range(1, columns):
                assert tiles[c].std() > 10, (stage, c)  # a map, not a blank
            for m in range(len(models)):  # the same model: Grad-CAM++ and LayerCAM differ
                gradcam_pp, layercam = tiles[1 + m], tiles[1 + len(models) + m]
                assert (gradcam_pp != layercam).any(), (stage, m)  # close at the last layer
    assert summary["student"]["test_acc"] >= 0  # the run finished


class _Module(torch.nn.Module):
    """What :meth:`MapImageCallback.draw` reads of a Lightning module."""

    def __init__(self, models: dict[str, torch.nn.Module]) -> None:
        super().__init__()
        self.models = torch.nn.ModuleDict(models)

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def explained_models(self) -> dict[str, torch.nn.Module]:
        return dict(self.models.items())


def test_map_callback_columns_are_each_methods_maps(tmp_path):
    torch.manual_seed(0)
    models = {name: build_model("wrn_16_1", num_classes=6) for name in ("teacher", "student")}
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([0, 4, 2])
    callback = MapImageCallback(
        images, labels, tmp_path, (0, 0, 0), (1, 1, 1), methods=["gradcam_pp", "layercam"]
    )
    grid, strips, captions = callback.draw(_Module(models))
    for model in models.values():
        model.eval()
    expected = {}
    for method, explainer in (("gradcam_pp", GradCAMPlusPlus), ("layercam", LayerCAM)):
        for name, model in models.items():
            expected[(method, name)] = explainer(model)(images, labels)
    plain = map_grid(images, expected, (0, 0, 0), (1, 1, 1))  # no titles or labels
    assert plain.shape[-1] == 5 * 128
    corner = grid[:, -plain.shape[1] :, -plain.shape[2] :]  # below the titles, right of labels
    torch.testing.assert_close(corner, plain, rtol=0, atol=0.5 / 255 + 1e-6)  # drawn as uint8
    assert len(strips) == 3 and strips[0].shape[-1] == 5 * 128
    assert captions[1].startswith("true: 4 | teacher: ")
    with pytest.raises(ValueError, match="methods must name"):
        MapImageCallback(images, labels, tmp_path, (0,) * 3, (1,) * 3, methods=["gradcm"])


def test_map_methods_are_checked_before_the_run():
    assert load_config("quickstart", []).logging.map_methods == ["gradcam_pp"]
    cases = {
        "logging.map_methods=[gradcm]": "'gradcm' is not valid (did you mean 'gradcam'?)",
        "logging.map_methods=[]": "logging.map_methods is empty",
        "logging.map_methods=[layercam,layercam]": "names a method twice",
        "teacher.cam_layer=block2": "cam needs the teacher's pooled-head layer",
    }
    for override, message in cases.items():
        extra = ["logging.map_methods=[cam]"] if override.startswith("teacher.") else []
        with pytest.raises(ConfigError, match=re.escape(message)):
            load_config("quickstart", [*extra, override])
    assert load_config("quickstart", ["logging.map_methods=[cam,eigencam]"])


# explain --method ------------------------------------------------------------------------------


def _images(folder: Path) -> list[Path]:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    paths = [folder / "a.png", folder / "b.png"]
    for path in paths:
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(path)
    return paths


def _panels(path: Path) -> list[np.ndarray]:
    picture = np.asarray(Image.open(path), dtype=np.int16)[CAPTION_HEIGHT:]
    side = picture.shape[0]
    return [picture[:, i : i + side] for i in range(0, picture.shape[1], side)]


@pytest.mark.slow  # shares the tiny run of the map-panel test
def test_explain_draws_any_method_and_all_of_them(run, tmp_path, capsys):
    summary, run_dir = run
    _images(tmp_path / "images")
    panel = MIN_PANEL  # 32-pixel images drawn 5x
    teacher_ckpt = summary["teacher"]["checkpoint"]
    cases = {  # arguments -> panels per row
        "layercam": ([str(run_dir), "--method", "layercam"], 1 + 2),
        "default": ([str(run_dir)], 1 + 2),
        "all": ([str(run_dir), "--method", "all"], 1 + 2 * len(CAM_METHODS)),
        "teacher alone, all": ([teacher_ckpt, "--method", "all"], 1 + len(CAM_METHODS)),
        "two": ([teacher_ckpt, "--method", "eigencam,cam", "--target", "1"], 1 + 2),
    }
    panels = {}
    for case, (args, count) in cases.items():
        out = tmp_path / case
        assert explain_main([args[0], str(tmp_path / "images"), "--out", str(out), *args[1:]]) == 0
        assert "wrote 2 explanations" in capsys.readouterr().out
        for name in ("a.png", "b.png"):
            assert Image.open(out / name).size == (count * panel, CAPTION_HEIGHT + panel), case
        panels[case] = _panels(out / "a.png")
    # The columns of --method all are each method's own pictures, in CAM_METHODS order
    # (student then teacher under each method).
    layercam = 1 + 2 * list(CAM_METHODS).index("layercam")
    gradcam_pp = 1 + 2 * list(CAM_METHODS).index("gradcam_pp")
    for offset in (0, 1):
        for case, column in (("layercam", layercam), ("default", gradcam_pp)):
            np.testing.assert_array_equal(panels["all"][column + offset], panels[case][1 + offset])
    assert (panels["layercam"][1] != panels["default"][1]).any()  # different maps
    eigencam = 1 + list(CAM_METHODS).index("eigencam")
    np.testing.assert_array_equal(panels["two"][1], panels["teacher alone, all"][eigencam])


@pytest.mark.slow  # shares the tiny run of the map-panel test
@pytest.mark.parametrize(
    ("method", "message"),
    [
        ("gradcm", "--method gradcm: no such method (did you mean gradcam?)"),
        ("layercam,nope", "--method nope: no such method"),
        ("", "--method : no such method"),
    ],
)
def test_explain_refuses_an_unknown_method_in_one_line(run, tmp_path, capsys, method, message):
    (image,) = _images(tmp_path / "images")[:1]
    out = tmp_path / "out"
    assert explain_main([str(run[1]), str(image), "--out", str(out), "--method", method]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {message}") and err.count("\n") == 1, err
    assert not out.exists()


def test_explain_draws_cam_only_at_the_pooled_head(capsys):
    pooled = build_model("wrn_16_1", num_classes=6)
    inner = build_model("wrn_16_1", num_classes=6, cam_layer="block2")
    assert _methods("all", {"student": pooled}) == list(CAM_METHODS)
    assert _methods("all", {"student": pooled, "teacher": inner}) == [
        m for m in CAM_METHODS if m != "cam"
    ]
    assert "note: cam not drawn" in capsys.readouterr().err
    assert _methods("cam,layercam,cam", {"student": pooled}) == ["cam", "layercam"]
    with pytest.raises(InputError, match=r"^--method cam: the teacher's cam_layer 'block2'"):
        _methods("layercam,cam", {"student": pooled, "teacher": inner})


def test_a_cam_layer_override_keeps_the_pooled_head_where_it_is():
    """``cam_layer=block2`` moves the maps, not the head: block2 does not feed the pooling, so
    its maps take the autograd path (a closed form there would use the head's weights on the
    wrong channels) and CAM is refused there."""
    torch.manual_seed(0)
    moved = build_model("wrn_16_1", num_classes=6, cam_layer="block2").eval()
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    maps = GradCAMPlusPlus(moved)(images)
    plain = build_model("wrn_16_1", num_classes=6).eval()  # explained at relu, the head's input
    plain.load_state_dict(moved.state_dict())
    torch.testing.assert_close(maps, GradCAMPlusPlus(plain, target_layer="block2")(images))
    assert maps.shape == (2, 16, 16) and maps.abs().sum() > 0
    with pytest.raises(ValueError, match="needs the layer that feeds the pooled linear head"):
        EXPLAINERS["cam"](moved)
    assert EXPLAINERS["cam"](moved, target_layer="relu")(images).shape == (2, 8, 8)
