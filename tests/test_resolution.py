"""Map grids at the run's image size: reported for every run, a 1x1 grid refused for a map loss."""

from __future__ import annotations

import pytest
import torch

from distill.config import ConfigError, load_config
from distill.config.resolution import cam_grid, check_map_grids
from distill.models import build_model
from distill.tools.train import train


@pytest.mark.parametrize(
    ("name", "size", "grid"),
    [("wrn_16_1", 32, (8, 8)), ("resnet18", 32, (1, 1)), ("resnet18", 224, (7, 7))],
)
def test_cam_grid_on_the_meta_device(name: str, size: int, grid: tuple[int, int]) -> None:
    with torch.device("meta"):
        model = build_model(name, num_classes=10)
    assert cam_grid(model, model.cam_layer, (3, size, size)) == grid


def test_report_names_each_model_and_grid() -> None:
    cfg = load_config("quickstart", ["teacher.name=resnet18", "loss.map_weight=0"])
    assert check_map_grids(cfg, (3, 32, 32)) == [
        "teacher resnet18: net.layer4 1x1 at 32x32",
        "student wrn_10_1: relu 8x8 at 32x32",
    ]
    assert check_map_grids(cfg, (3, 128, 128))[0] == "teacher resnet18: net.layer4 4x4 at 128x128"


def test_one_pixel_maps_are_refused_under_a_map_loss() -> None:
    cfg = load_config("quickstart", ["student.name=mobilenet_v3_small"])
    with pytest.raises(ConfigError) as info:
        check_map_grids(cfg, (3, 32, 32))
    message = str(info.value)
    assert "student's map layer 'net.features' (mobilenet_v3_small) is 1x1 at 32x32" in message
    assert "data.image_size=128 gives 4x4" in message
    assert "loss.map_layers" in message and "loss.map_weight=0" in message
    # Teacher-only runs have no map loss: reported, not refused.
    teacher_only = load_config("quickstart", ["student.name=mobilenet_v3_small", "stage=teacher"])
    assert "1x1" in check_map_grids(teacher_only, (3, 32, 32))[1]


def test_train_refuses_before_writing_anything(tiny_overrides, tmp_path, capsys) -> None:
    cfg = load_config("quickstart", [*tiny_overrides, "teacher.name=resnet18"])
    with pytest.raises(ConfigError, match="teacher's map layer 'net.layer4'"):
        train(cfg)
    assert not (tmp_path / "runs" / "quickstart").exists()


def test_train_prints_the_grids(tiny_overrides, capsys) -> None:
    train(load_config("quickstart", [*tiny_overrides, "stage=teacher"]))
    out = capsys.readouterr().out
    assert "explanation map grids: teacher wrn_16_1: relu 8x8 at 32x32" in out
