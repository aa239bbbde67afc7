"""The imagenet_resnet recipe: its protocol as written, and a run on a tiny generated folder.

Random weights and 64x64 inputs stand in for torchvision's weights and 224x224: no downloads.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image

from distill.config import load_config


def test_the_recipe_is_torchvisions_resnet_protocol():
    cfg = load_config("imagenet_resnet", ["data.root=/data/imagenet"])
    assert (cfg.teacher.name, cfg.teacher.weights, cfg.student.name) == (
        "resnet34",
        "IMAGENET1K_V1",
        "resnet18",
    )
    assert cfg.stage == "student"  # distils from the pretrained weights as they are
    assert (cfg.data.name, cfg.data.in_memory, cfg.data.val_fraction) == ("imagefolder", False, 0)
    assert (cfg.data.image_size, cfg.data.crop, cfg.data.batch_size) == (224, "random_resized", 256)
    assert list(cfg.data.mean) == [0.485, 0.456, 0.406]
    assert (cfg.data.imagefolder.train_dir, cfg.data.imagefolder.val_dir) == ("train", "val")
    optim = cfg.optim
    assert (optim.lr, optim.momentum, optim.nesterov, optim.weight_decay) == (0.1, 0.9, False, 1e-4)
    assert cfg.student.epochs == 90 and optim.gamma == 0.1
    assert [round(m * 90) for m in optim.milestones] == [30, 60]
    assert (cfg.trainer.strategy, cfg.trainer.devices) == ("ddp", 8)


def _tiny_imagenet(root: Path) -> None:
    """3 classes x 4 images per split, of varied sizes and modes."""
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for label, wnid in enumerate(("n01440764", "n01443537", "n01484850")):
            (root / split / wnid).mkdir(parents=True)
            for i in range(4):
                w, h = (int(v) for v in rng.integers(40, 120, 2))
                rgb = np.full((h, w, 3), 70 * label, np.uint8) + rng.integers(
                    0, 50, (h, w, 3), np.uint8
                )
                image = Image.fromarray(rgb).convert("L" if i == 3 else "RGB")
                image.save(root / split / wnid / f"{i}.JPEG", format="JPEG")


def test_the_recipe_runs_on_a_tiny_folder(tmp_path, tiny_overrides):
    from distill.tools.train import train

    _tiny_imagenet(tmp_path / "imagenet")
    cfg = load_config(
        "imagenet_resnet",
        [
            f"output_dir={tmp_path / 'runs'}",
            f"data.root={tmp_path / 'imagenet'}",
            "data.image_size=64",
            "data.batch_size=4",
            "data.num_workers=0",
            "stage=all",  # no torchvision weights here: train a random teacher first
            "teacher.weights=null",
            "teacher.epochs=1",
            "student.epochs=1",
            "trainer.accelerator=cpu",
            "trainer.devices=1",
            "trainer.strategy=auto",
            "trainer.enable_progress_bar=false",
            "logging.wandb=disabled",
            "logging.map_images=3",
        ],
    )
    summary, result = train(cfg)
    for stage in ("teacher", "student"):
        assert not math.isnan(summary[stage]["test_acc"])
        assert summary[stage]["selected_on"] == "last"
    dm = result.trainers["student"].datamodule
    assert dm.image_shape == (3, 64, 64) and dm.num_classes == 3
    assert dm.mean == (0.485, 0.456, 0.406)
