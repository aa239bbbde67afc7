"""Real image folders: any size and mode, both crops on both storages, batched random-resized
crops on the device (no Python loop over samples), evaluation resize + center crop.

Every image is generated with PIL in ``tmp_path``; no real data, no network.
"""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from distill.config import ConfigError, load_config
from distill.data import (
    BatchRandomResizedCrop,
    ImageFolderDataModule,
    UnreadableImageError,
    load_image_folder,
)
from distill.data.geometry import center_crop, eval_resize_size, resize_uint8

# (PIL mode, file extension, (width, height)): every mode a photo folder holds, at odd sizes.
VARIED = [
    ("RGB", "jpg", (61, 40)),
    ("L", "png", (33, 50)),
    ("RGBA", "png", (64, 64)),
    ("P", "png", (45, 29)),
    ("CMYK", "jpg", (40, 72)),
    ("I;16", "png", (38, 38)),
]


def _smooth(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """A smooth RGB image (random low-frequency colours): resampling differences stay small."""
    coarse = rng.integers(0, 256, (3, 3, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(coarse).resize((w, h), Image.BILINEAR))


def _save(path: Path, rgb: np.ndarray, mode: str) -> None:
    image = Image.fromarray(rgb)
    if mode == "I;16":
        gray = np.asarray(image.convert("L")).astype(np.uint16) * 257  # high byte = the gray
        image = Image.fromarray(gray)  # uint16: mode I;16
    else:
        image = image.convert(mode)
    image.save(path, quality=95)


def _write_varied(root: Path, classes=("a", "b"), seed: int = 0) -> list[Path]:
    rng = np.random.default_rng(seed)
    paths = []
    for c in classes:
        (root / c).mkdir(parents=True)
        for i, (mode, ext, (w, h)) in enumerate(VARIED):
            path = root / c / f"{i:02d}_{mode.replace(';', '')}.{ext}"
            _save(path, _smooth(rng, w, h), mode)
            paths.append(path)
    return paths


@pytest.fixture
def photos(tmp_path) -> Path:
    _write_varied(tmp_path / "train", seed=0)
    _write_varied(tmp_path / "test", seed=1)
    return tmp_path


def _fake_trainer(training: bool = True):
    return SimpleNamespace(global_rank=0, world_size=1, training=training)


# ---- decoding ---------------------------------------------------------------------------------


def test_every_mode_decodes_to_8_bit_rgb_the_same_on_both_storages(tmp_path):
    rng = np.random.default_rng(3)
    rgb = _smooth(rng, 30, 20)
    for i, (mode, ext, _) in enumerate(VARIED):
        (tmp_path / "c").mkdir(exist_ok=True)
        _save(tmp_path / "c" / f"{i}.{ext}", rgb, mode)
    images, labels, _ = load_image_folder(tmp_path)  # one size: no image_size needed
    assert images.shape == (len(VARIED), 3, 20, 30) and images.dtype == torch.uint8
    dm = ImageFolderDataModule(tmp_path, train_dir=".", val_dir=".", in_memory=False)
    per_sample = dm._split("test").dataset
    for i, (mode, _, _) in enumerate(VARIED):
        pil = torch.from_numpy(np.array(per_sample[i][0])).permute(2, 0, 1)
        assert torch.equal(pil, images[i]), mode  # torchvision.io and PIL agree
    gray = torch.from_numpy(np.array(Image.fromarray(rgb).convert("L")))
    for i, (mode, _, _) in enumerate(VARIED):
        if mode in ("L", "I;16"):  # 1-channel files become 3 equal channels
            assert all(torch.equal(images[i, c], gray) for c in range(3)), mode
        if mode in ("RGB", "RGBA", "CMYK"):  # P: PIL's 256-colour palette, checked above
            assert (
                images[i].int() - torch.from_numpy(rgb).permute(2, 0, 1)
            ).abs().float().mean() < 8


def test_varied_sizes_without_image_size_name_the_key(photos):
    with pytest.raises(UnreadableImageError, match=r"set data.image_size"):
        load_image_folder(photos / "train")
    dm = ImageFolderDataModule(photos, in_memory=False, batch_size=4)
    dm.setup("fit")
    with pytest.raises(UnreadableImageError, match=r"set data.image_size"):
        next(iter(dm.train_dataloader()))


# ---- both crops on both storages ------------------------------------------------------------


@pytest.mark.parametrize("crop", ["pad", "random_resized"])
@pytest.mark.parametrize("in_memory", [True, False])
def test_both_crops_on_both_storages(photos, crop, in_memory):
    dm = ImageFolderDataModule(
        photos, image_size=24, crop=crop, in_memory=in_memory, batch_size=4, seed=1
    )
    dm.prepare_data()
    dm.setup("fit")
    assert dm.image_shape == (3, 24, 24)
    stored = dm._split("train")
    if in_memory:  # kept at the decode size: the eval resize for random_resized
        side = eval_resize_size(24) if crop == "random_resized" else 24
        assert stored.images.shape[-2:] == (side, side)
    dm.trainer = _fake_trainer(training=True)
    batch = next(iter(dm.train_dataloader()))
    x, y = dm.on_after_batch_transfer(batch, 0)
    assert x.shape == (4, 3, 24, 24) and x.dtype == torch.float32 and y.dtype == torch.long
    dm.trainer = _fake_trainer(training=False)
    vx, vy = dm.on_after_batch_transfer(next(iter(dm.val_dataloader())), 0)
    assert vx.shape == (4, 3, 24, 24) and vy.tolist() == [0, 0, 0, 0]
    fx, fy = dm.fixed_val_batch(3)
    assert fx.shape == (3, 3, 24, 24)
    # The eval images do not depend on the seed; the training crops do.
    other = ImageFolderDataModule(
        photos, image_size=24, crop=crop, in_memory=in_memory, batch_size=4, seed=2
    )
    torch.testing.assert_close(other.fixed_val_batch(3)[0], fx)
    other.setup("fit")
    other.trainer = _fake_trainer(training=True)
    ox, _ = other.on_after_batch_transfer(next(iter(other.train_dataloader())), 0)
    assert not torch.equal(ox, x)


def test_eval_is_resize_then_center_crop(photos):
    """The 256/224 convention at any size: shorter side to round(s / 0.875), center crop s."""
    size = 24
    side = eval_resize_size(size)
    assert (side, eval_resize_size(224)) == (27, 256)
    path = sorted((photos / "test" / "a").iterdir())[0]  # 61x40 RGB
    with Image.open(path) as im:
        rgb = im.convert("RGB")
    resized = rgb.resize((int(side * 61 / 40), side), Image.BILINEAR)
    left = int(round((resized.width - size) / 2.0))
    top = int(round((resized.height - size) / 2.0))
    expected = np.asarray(resized.crop((left, top, left + size, top + size)))
    per_sample = ImageFolderDataModule(
        photos, image_size=size, crop="random_resized", in_memory=False
    )
    x, _ = per_sample.fixed_batch(12, "test")
    levels = x[0] * torch.tensor(per_sample.std).view(3, 1, 1) + torch.tensor(per_sample.mean).view(
        3, 1, 1
    )
    got = (levels * 255).permute(1, 2, 0).numpy()
    assert got.shape == (size, size, 3)
    assert np.abs(got - expected).mean() < 3  # PIL resamples with a slightly different filter
    # The in-memory path stores the central square at the eval resize and crops its center: the
    # same window up to one pixel of rounding and the resampling filter.
    in_memory = ImageFolderDataModule(photos, image_size=size, crop="random_resized")
    xm, _ = in_memory.fixed_batch(12, "test")
    assert xm.shape == x.shape
    assert (xm - x).abs().mean() < 0.15


def test_center_crop_and_center_fit_match_torchvision():
    from torchvision.transforms import functional as TF

    x = torch.randint(0, 256, (2, 3, 30, 47), dtype=torch.uint8)
    assert torch.equal(center_crop(x, 21), TF.center_crop(x, [21, 21]))
    stored = resize_uint8(x, 27, fit="center")
    ref = TF.center_crop(TF.resize(x, 27, antialias=True), [27, 27])
    assert stored.shape == (2, 3, 27, 27)
    assert (stored.int() - ref.int()).abs().max() <= 1


# ---- the batched random-resized crop --------------------------------------------------------


def test_batched_random_resized_crop_is_one_call_and_seeded(monkeypatch):
    import torchvision.ops

    calls = []
    real = torchvision.ops.roi_align

    def counting(*args, **kwargs):
        calls.append(args[1].shape[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(torchvision.ops, "roi_align", counting)
    x = torch.randint(0, 256, (64, 3, 40, 40), dtype=torch.uint8)
    out = BatchRandomResizedCrop(16, generator=5)(x)
    assert calls == [64]  # one call crops the whole batch: no loop over samples
    assert out.shape == (64, 3, 16, 16) and out.dtype == torch.uint8
    assert torch.equal(out, BatchRandomResizedCrop(16, generator=5)(x))
    assert not torch.equal(out, BatchRandomResizedCrop(16, generator=6)(x))
    seeded = BatchRandomResizedCrop(16, generator=0)
    seeded.manual_seed(5)
    assert torch.equal(seeded(x), out)


def test_batched_random_resized_crop_follows_torchvision_ranges():
    from torchvision.transforms import RandomResizedCrop

    boxes, flips = BatchRandomResizedCrop(8, generator=0).sample_params(4000, 60, 80)
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= 80).all() and (boxes[:, 3] <= 60).all()
    share, ratio = w * h / (60 * 80), w / h
    torch.manual_seed(0)
    reference = torch.tensor(
        [
            (p[2] * p[3] / (60 * 80), p[3] / p[2])
            for p in (
                RandomResizedCrop.get_params(torch.zeros(3, 60, 80), [0.08, 1], [3 / 4, 4 / 3])
                for _ in range(4000)
            )
        ]
    )
    assert abs(float(share.mean()) - float(reference[:, 0].mean())) < 0.02
    assert abs(float(share.std()) - float(reference[:, 0].std())) < 0.02
    assert share.min() >= 0.07 and share.max() <= 1.0
    assert ratio.min() > 0.7 and ratio.max() < 1.4
    assert (boxes == boxes.round()).all()  # integer pixel boxes, like torchvision
    assert 0.45 < flips.float().mean() < 0.55
    # A very wide image: no try fits some samples, which get the central crop of ratio 4/3.
    boxes, _ = BatchRandomResizedCrop(8, scale=(0.99, 1.0), generator=0).sample_params(50, 10, 100)
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    assert torch.equal(w, torch.full((50,), 13.0)) and torch.equal(h, torch.full((50,), 10.0))
    assert torch.equal(boxes[:, 0], torch.full((50,), float((100 - 13) // 2)))


def test_batched_crop_of_output_size_is_exact_and_flips():
    """A box of the output size is a plain crop: aligned roi_align samples pixel centres."""
    x = torch.randint(0, 256, (3, 3, 20, 20), dtype=torch.uint8)
    boxes = torch.tensor([[0.0, 0.0, 8.0, 8.0], [5.0, 3.0, 13.0, 11.0], [12.0, 12.0, 20.0, 20.0]])
    flips = torch.tensor([False, True, False])
    out = BatchRandomResizedCrop.apply(x, 8, boxes, flips)
    assert torch.equal(out[0], x[0, :, :8, :8])
    assert torch.equal(out[1], x[1, :, 3:11, 5:13].flip(-1))
    assert torch.equal(out[2], x[2, :, 12:, 12:])
    # A box of twice the output size averages 2x2 pixels.
    big = BatchRandomResizedCrop.apply(
        x[:1].float(), 4, torch.tensor([[0.0, 0.0, 8.0, 8.0]]), flips[:1]
    )
    torch.testing.assert_close(
        big[0], torch.nn.functional.avg_pool2d(x[:1, :, :8, :8].float(), 2)[0]
    )


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_batched_random_resized_crop_on_cuda_matches_cpu():
    x = torch.randint(0, 256, (32, 3, 37, 37), dtype=torch.uint8)
    cpu = BatchRandomResizedCrop(32, generator=3)(x)
    gpu = BatchRandomResizedCrop(32, generator=3)(x.cuda())
    assert gpu.device.type == "cuda"
    assert (gpu.cpu().int() - cpu.int()).abs().max() <= 1


def test_random_resized_resume_gives_the_same_augmented_batch(photos):
    """Per-batch seeding covers the resized crop: a loader resumed at batch k augments batch k
    exactly as the uninterrupted loader."""
    kw = dict(image_size=16, crop="random_resized", batch_size=2, seed=4)
    full = ImageFolderDataModule(photos, **kw)
    full.setup("fit")
    full.trainer = _fake_trainer()
    batches = [full.on_after_batch_transfer(b, 0)[0] for b in full.train_dataloader()]
    resumed = ImageFolderDataModule(photos, **kw)
    resumed.setup("fit")
    resumed.trainer = _fake_trainer()
    loader = resumed.train_dataloader()
    loader.load_state_dict({"epoch": 0, "batches": 3})
    again = [resumed.on_after_batch_transfer(b, 0)[0] for b in loader]
    assert len(again) == len(batches) - 3
    for a, b in zip(again, batches[3:], strict=True):
        assert torch.equal(a, b)


# ---- configuration and errors --------------------------------------------------------------


def test_unreadable_file_keeps_its_clear_error_with_random_resized(photos):
    (photos / "train" / "b" / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    for in_memory in (True, False):
        dm = ImageFolderDataModule(
            photos, image_size=16, crop="random_resized", batch_size=32, in_memory=in_memory
        )
        with pytest.raises(UnreadableImageError, match="broken.jpg"):
            dm.setup("fit")
            for _ in dm.train_dataloader():
                pass


def test_crop_options_are_checked(photos):
    with pytest.raises(ConfigError, match="data.crop=random_resized needs data.image_size"):
        load_config(
            "quickstart", ["data.name=imagefolder", "data.root=x", "data.crop=random_resized"]
        )
    with pytest.raises(ConfigError, match="does not apply to data.name=shapes"):
        load_config("quickstart", ["data.crop=random_resized", "data.image_size=32"])
    with pytest.raises(ConfigError, match="data.crop='center' is not valid"):
        load_config("quickstart", ["data.crop=center"])
    with pytest.raises(ValueError, match="needs image_size"):
        ImageFolderDataModule(photos, crop="random_resized")


def test_training_on_a_folder_of_varied_photos(photos, tiny_overrides, monkeypatch):
    """The pipeline end to end on photos of every size and mode, ImageNet-style crops."""
    from distill.tools.train import RUN_DIR_ENV, train

    cfg = load_config(
        "quickstart",
        [
            *tiny_overrides,
            "stage=teacher",
            "data.name=imagefolder",
            f"data.root={photos}",
            "data.image_size=32",
            "data.crop=random_resized",
            "data.batch_size=4",
            "data.val_fraction=0",
        ],
    )
    summary, result = train(cfg)
    assert 0.0 <= summary["teacher"]["test_acc"] <= 1.0
    assert result.trainers["teacher"].datamodule.image_shape == (3, 32, 32)
    assert not math.isnan(summary["teacher"]["test_acc"])
    monkeypatch.delenv(RUN_DIR_ENV, raising=False)
