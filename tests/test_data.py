"""Tests of distill.data: shapes generator, batched transforms, datamodules (no network, no real data).

Everything is generated in ``tmp_path``: a tiny ImageFolder tree, and CIFAR pickles in torchvision's
on-disk format. torchvision's CIFAR classes verify the md5 of every batch file (and of the meta
file) through ``torchvision.datasets.cifar.check_integrity``; our tiny files cannot match the real
checksums, so the ``tiny_cifar`` fixture monkeypatches that module-level function to a plain
"file exists" check. That bypasses exactly the md5 comparison and nothing else.
"""

from __future__ import annotations

import os
import pickle
import urllib.error
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from PIL import Image

import distill.data.decode as decode_module
from distill.data import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    CIFAR100_MEAN,
    SHAPES_CLASSES,
    SHAPES_MEAN,
    SHAPES_STD,
    BatchAugment,
    CIFARDataModule,
    DatasetNotFoundError,
    ImageFolderDataModule,
    IndexBatchSampler,
    Normalize,
    ShapesDataModule,
    ShardedIndexSampler,
    UnreadableImageError,
    build_datamodule,
    datamodule_from_config,
    load_image_folder,
    make_shapes,
)
from distill.data.sampling import mix_seed

# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def _fake_trainer(rank: int = 0, world: int = 1, training: bool = True, epoch: int = 0):
    """Just the trainer attributes a datamodule reads."""
    return SimpleNamespace(
        global_rank=rank, world_size=world, training=training, current_epoch=epoch
    )


def _normalise(images: torch.Tensor, mean, std) -> torch.Tensor:
    m = torch.tensor(mean).view(1, 3, 1, 1)
    s = torch.tensor(std).view(1, 3, 1, 1)
    return (images.float() / 255 - m) / s


def _first_train_batch(dm) -> tuple[torch.Tensor, torch.Tensor]:
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    return dm.preprocess(batch, train=True)[:2]


def _write_image_folder(root: Path, classes=("a", "b", "c"), per_class=4, size=32, seed=0):
    """Write ``root/<class>/<i>.png|jpg``; returns {path: uint8 HWC array as stored}."""
    rng = np.random.default_rng(seed)
    written = {}
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            arr = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            ext = "png" if i % 2 == 0 else "jpg"
            path = root / c / f"{i:02d}.{ext}"
            Image.fromarray(arr).save(path, quality=95)
            written[str(path)] = np.asarray(Image.open(path).convert("RGB"))
    return written


def _write_cifar(root: Path, name: str, n_per_file: int = 6, seed: int = 0) -> dict:
    """Write tiny CIFAR pickles in torchvision's layout; returns the arrays written."""
    rng = np.random.default_rng(seed)
    if name == "cifar10":
        folder, files, meta_name, key = (
            "cifar-10-batches-py",
            [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"],
            "batches.meta",
            "label_names",
        )
        ncls, label_key = 10, "labels"
    else:
        folder, files, meta_name, key = (
            "cifar-100-python",
            ["train", "test"],
            "meta",
            "fine_label_names",
        )
        ncls, label_key = 100, "fine_labels"
    d = root / folder
    d.mkdir(parents=True)
    out = {}
    for f in files:
        data = rng.integers(0, 256, (n_per_file, 3072), dtype=np.uint8)
        labels = rng.integers(0, ncls, n_per_file).tolist()
        entry = {"data": data, label_key: labels}
        if name == "cifar100":
            entry["coarse_labels"] = [0] * n_per_file
        with open(d / f, "wb") as fh:
            pickle.dump(entry, fh)
        out[f] = (data, labels)
    with open(d / meta_name, "wb") as fh:
        pickle.dump({key: [f"class{i}" for i in range(ncls)]}, fh)
    return out


@pytest.fixture
def no_md5(monkeypatch):
    """Replace torchvision's CIFAR md5 check with an existence check (see module docstring)."""
    import torchvision.datasets.cifar as tv_cifar

    monkeypatch.setattr(tv_cifar, "check_integrity", lambda fpath, md5=None: os.path.isfile(fpath))


@pytest.fixture
def offline(monkeypatch):
    """Make every torchvision download attempt fail like a machine without network."""
    import torchvision.datasets.cifar as tv_cifar

    def fail(*args, **kwargs):
        raise urllib.error.URLError("no network (test)")

    monkeypatch.setattr(tv_cifar, "download_and_extract_archive", fail)


# --------------------------------------------------------------------------------------------
# shapes
# --------------------------------------------------------------------------------------------


def test_make_shapes_deterministic():
    a, b, c = make_shapes(64, seed=5), make_shapes(64, seed=5), make_shapes(64, seed=6)
    for name in ("images", "labels", "boxes", "masks"):
        assert torch.equal(getattr(a, name), getattr(b, name))
    assert not torch.equal(a.images, c.images)


def test_make_shapes_consistency():
    n, size = 300, 32
    d = make_shapes(n, seed=0, image_size=size)
    assert d.images.shape == (n, 3, size, size) and d.images.dtype == torch.uint8
    assert d.labels.shape == (n,) and d.labels.dtype == torch.long
    assert d.boxes.shape == (n, 4) and d.masks.shape == (n, size, size)
    assert d.masks.dtype == torch.bool and len(d) == n
    assert len(SHAPES_CLASSES) >= 6
    assert set(d.labels.tolist()) == set(range(len(SHAPES_CLASSES)))
    x0, y0, x1, y1 = d.boxes.unbind(1)
    assert (x0 >= 0).all() and (y0 >= 0).all() and (x1 <= size).all() and (y1 <= size).all()
    assert (x1 > x0).all() and (y1 > y0).all()
    assert d.masks.flatten(1).sum(1).min() > 10
    ys, xs = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    inside = (
        (xs >= x0[:, None, None])
        & (xs < x1[:, None, None])
        & (ys >= y0[:, None, None])
        & (ys < y1[:, None, None])
    )
    assert not (d.masks & ~inside).any(), "mask pixel outside its box"
    # boxes are tight: the mask touches all four box edges
    for i in range(0, n, 37):
        m = d.masks[i]
        b = d.boxes[i].tolist()
        assert m[:, b[0]].any() and m[:, b[2] - 1].any() and m[b[1]].any() and m[b[3] - 1].any()


def test_shapes_colour_does_not_give_away_class():
    d = make_shapes(1200, seed=1)
    m = d.masks[:, None].float()
    obj_col = (d.images.float() / 255 * m).sum((2, 3)) / m.sum((2, 3))  # [N, 3]
    per_class = torch.stack([obj_col[d.labels == k].mean(0) for k in range(len(SHAPES_CLASSES))])
    assert (per_class - per_class.mean(0)).abs().max() < 0.06


# --------------------------------------------------------------------------------------------
# transforms
# --------------------------------------------------------------------------------------------


def _naive_augment(x: torch.Tensor, pad: int, dy, dx, flip) -> torch.Tensor:
    """Per-sample reference: zero-pad, slice the crop, flip."""
    out = []
    h, w = x.shape[-2:]
    for i in range(x.shape[0]):
        p = F.pad(x[i], (pad, pad, pad, pad))
        crop = p[:, int(dy[i]) : int(dy[i]) + h, int(dx[i]) : int(dx[i]) + w]
        out.append(crop.flip(-1) if bool(flip[i]) else crop)
    return torch.stack(out)


def test_batch_augment_matches_naive_reference():
    x = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8)
    aug = BatchAugment(padding=4, generator=123)
    dy, dx, fl = BatchAugment(padding=4, generator=123).sample_params(16)
    out = aug(x)
    assert out.dtype == torch.uint8 and out.shape == x.shape
    assert torch.equal(out, _naive_augment(x, 4, dy, dx, fl))
    assert dy.min() >= 0 and dy.max() <= 8 and fl.any() and (~fl).any()
    # explicit: zero offset shift (4, 4) without flip is the identity; (0, 0) shifts down-right
    z = torch.zeros(2, dtype=torch.long)
    no = torch.zeros(2, dtype=torch.bool)
    assert torch.equal(BatchAugment.apply(x[:2], 4, z + 4, z + 4, no), x[:2])
    shifted = BatchAugment.apply(x[:2], 4, z, z, no)
    assert torch.equal(shifted[:, :, 4:, 4:], x[:2, :, :28, :28])
    assert (shifted[:, :, :4] == 0).all() and (shifted[:, :, :, :4] == 0).all()


def test_batch_augment_reproducible_and_float():
    x = torch.rand(8, 3, 32, 32)
    a1 = BatchAugment(generator=7)(x)
    a2 = BatchAugment(generator=7)(x)
    a3 = BatchAugment(generator=8)(x)
    assert torch.equal(a1, a2) and not torch.equal(a1, a3)
    g = torch.Generator().manual_seed(7)
    assert torch.equal(BatchAugment(generator=g)(x), a1)


def test_normalize_and_denormalize():
    x = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    norm = Normalize(CIFAR10_MEAN, CIFAR10_STD)
    y = norm(x)
    assert y.dtype == torch.float32
    torch.testing.assert_close(y, _normalise(x, CIFAR10_MEAN, CIFAR10_STD))
    torch.testing.assert_close(norm(x.float() / 255), y)
    torch.testing.assert_close(norm.denormalize(y), x.float() / 255)
    with pytest.raises(ValueError):
        Normalize((0.5, 0.5), (0.2, 0.2, 0.2))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_transforms_on_cuda_match_cpu():
    x = torch.randint(0, 256, (32, 3, 32, 32), dtype=torch.uint8)
    cpu = BatchAugment(generator=5)(x)
    gpu = BatchAugment(generator=5)(x.cuda())
    assert gpu.device.type == "cuda" and torch.equal(cpu, gpu.cpu())
    norm = Normalize(CIFAR10_MEAN, CIFAR10_STD)
    torch.testing.assert_close(norm(x.cuda()).cpu(), norm(x))


# --------------------------------------------------------------------------------------------
# samplers
# --------------------------------------------------------------------------------------------


def test_sharded_samplers_are_disjoint_and_reshuffle():
    n, world = 23, 2
    shards = [
        IndexBatchSampler(n, 4, shuffle=True, seed=1, num_replicas=world, rank=r)
        for r in range(world)
    ]
    idx = [torch.cat(list(s)) for s in shards]
    assert len(idx[0]) == len(idx[1]) == 12  # padded like DistributedSampler
    assert set(idx[0].tolist()) | set(idx[1].tolist()) == set(range(n))
    assert len(set(idx[0].tolist()) & set(idx[1].tolist())) <= 1  # only the wrap-around pad
    assert len(shards[0]) == 3
    # second iteration = next epoch: new permutation; set_epoch(0) replays epoch 0
    again = torch.cat(list(shards[0]))
    assert not torch.equal(again, idx[0])
    shards[0].set_epoch(0)
    assert torch.equal(torch.cat(list(shards[0])), idx[0])
    s = ShardedIndexSampler(5, shuffle=False)
    assert list(s) == [(0, i) for i in range(5)]


# --------------------------------------------------------------------------------------------
# shapes datamodule
# --------------------------------------------------------------------------------------------


def test_shapes_datamodule_batches():
    dm = ShapesDataModule(num_train=96, num_val=40, batch_size=32, seed=0)
    assert dm.num_classes == len(SHAPES_CLASSES) and dm.classes == list(SHAPES_CLASSES)
    assert dm.mean == SHAPES_MEAN and dm.std == SHAPES_STD
    dm.setup("fit")
    dm.setup("fit")  # idempotent
    assert dm.image_shape == (3, 32, 32)
    train = dm.train_dataloader()
    assert len(train) == 3
    raw = next(iter(train))
    assert raw[0].dtype == torch.uint8 and raw[0].shape == (32, 3, 32, 32)
    x, y = dm.preprocess(raw, train=True)
    assert x.dtype == torch.float32 and y.dtype == torch.long and y.shape == (32,)
    # eval batches: only normalised, in dataset order
    vx, vy = dm.preprocess(next(iter(dm.val_dataloader())), train=False)
    val = make_shapes(40, mix_seed(0, 0x5EED))
    torch.testing.assert_close(vx, _normalise(val.images[:32], SHAPES_MEAN, SHAPES_STD))
    assert torch.equal(vy, val.labels[:32])
    assert torch.equal(dm.val_boxes, val.boxes) and torch.equal(dm.val_masks, val.masks)
    # train and val sets differ
    assert not torch.equal(make_shapes(40, 0).images, val.images)


def test_shapes_return_boxes_and_classic_path():
    dm = ShapesDataModule(num_train=64, num_val=20, batch_size=16, return_boxes=True)
    dm.setup()
    xb, yb, bb, mb = next(iter(dm.test_dataloader()))
    assert bb.shape == (16, 4) and mb.shape == (16, 32, 32) and mb.dtype == torch.bool
    assert torch.equal(bb, dm.val_boxes[:16])
    dc = ShapesDataModule(
        num_train=64, num_val=20, batch_size=16, return_boxes=True, in_memory=False
    )
    dc.setup()
    cx, cy, cb, cm = next(iter(dc.test_dataloader()))
    torch.testing.assert_close(cx, dm.preprocess((xb, yb), train=False)[0])
    assert torch.equal(cy, yb) and torch.equal(cb, bb) and torch.equal(cm, mb)
    tx, ty = next(iter(dc.train_dataloader()))
    assert tx.dtype == torch.float32 and tx.shape == (16, 3, 32, 32) and ty.dtype == torch.long


@pytest.mark.parametrize("in_memory", [True, False])
def test_same_seed_same_first_batch(in_memory):
    kw = dict(num_train=64, num_val=16, batch_size=16, in_memory=in_memory)
    a = _first_train_batch(ShapesDataModule(seed=3, **kw))
    b = _first_train_batch(ShapesDataModule(seed=3, **kw))
    c = _first_train_batch(ShapesDataModule(seed=4, **kw))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


def test_classic_path_reproducible_across_num_workers():
    kw = dict(num_train=32, num_val=8, batch_size=8, in_memory=False, seed=2)
    a = _first_train_batch(ShapesDataModule(num_workers=0, **kw))
    b = _first_train_batch(ShapesDataModule(num_workers=1, **kw))
    assert torch.equal(a[0], b[0])


def test_global_batch_size_split_across_ranks():
    n = 40
    seen = []
    for rank in range(2):
        dm = ShapesDataModule(num_train=n, num_val=8, batch_size=8)
        dm.trainer = _fake_trainer(rank=rank, world=2)
        assert dm.batch_size_per_device == 4
        dm.setup("fit")
        batches = list(dm.train_dataloader())
        assert all(b[0].shape[0] == 4 for b in batches) and len(batches) == 5
        images = torch.cat([b[0] for b in batches])
        seen.append({bytes(im.numpy()) for im in images})
    assert not seen[0] & seen[1] and len(seen[0] | seen[1]) == n
    dm = ShapesDataModule(num_train=n, batch_size=9)
    dm.trainer = _fake_trainer(world=2)
    with pytest.raises(ValueError, match="divisible"):
        _ = dm.batch_size_per_device


def test_on_after_batch_transfer_augments_only_when_training():
    dm = ShapesDataModule(num_train=32, num_val=16, batch_size=16)
    dm.setup()
    raw = next(iter(dm.val_dataloader()))
    dm.trainer = _fake_trainer(training=False)
    x_eval, _ = dm.on_after_batch_transfer(raw, 0)
    torch.testing.assert_close(x_eval, dm.normalize(raw[0]))
    dm.trainer = _fake_trainer(training=True)
    x_train, _ = dm.on_after_batch_transfer(raw, 0)
    assert not torch.equal(x_train, x_eval)


def test_lightning_fit_smoke():
    class Tiny(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = torch.nn.Sequential(
                torch.nn.Conv2d(3, 4, 3),
                torch.nn.AdaptiveAvgPool2d(1),
                torch.nn.Flatten(),
                torch.nn.Linear(4, 6),
            )

        def training_step(self, batch, _):
            x, y = batch
            assert x.dtype == torch.float32 and x.shape == (8, 3, 32, 32)
            return F.cross_entropy(self.net(x), y)

        def validation_step(self, batch, _):
            x, y = batch
            assert x.dtype == torch.float32 and abs(float(x.mean())) < 1.0

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    dm = ShapesDataModule(num_train=32, num_val=16, batch_size=8)
    trainer = L.Trainer(
        max_epochs=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_train_batches=2,
        limit_val_batches=1,
    )
    trainer.fit(Tiny(), datamodule=dm)
    assert trainer.global_step == 4


# --------------------------------------------------------------------------------------------
# ImageFolder
# --------------------------------------------------------------------------------------------


def test_image_folder_both_paths(tmp_path):
    written_train = _write_image_folder(tmp_path / "train")
    _write_image_folder(tmp_path / "test", per_class=2, seed=1)
    images, labels, classes = load_image_folder(tmp_path / "train")
    assert classes == ["a", "b", "c"] and images.shape == (12, 3, 32, 32)
    assert labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    for i, (path, arr) in enumerate(sorted(written_train.items())):
        assert np.array_equal(images[i].permute(1, 2, 0).numpy(), arr), path

    kw = dict(root=tmp_path, batch_size=4)
    fast = ImageFolderDataModule(in_memory=True, **kw)
    slow = ImageFolderDataModule(in_memory=False, **kw)
    for dm in (fast, slow):
        dm.prepare_data()
        dm.setup("fit")
        assert dm.num_classes == 3 and dm.classes == ["a", "b", "c"]
        assert dm.mean == CIFAR10_MEAN
        x, y = dm.preprocess(next(iter(dm.train_dataloader())), train=True)
        assert x.shape == (4, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.long
    fv = fast.preprocess(next(iter(fast.val_dataloader())), train=False)
    sv = next(iter(slow.val_dataloader()))
    torch.testing.assert_close(fv[0], sv[0])
    assert torch.equal(fv[1], sv[1])


def test_image_folder_cache(tmp_path, monkeypatch):
    _write_image_folder(tmp_path / "train", per_class=2)
    cache = tmp_path / "cache"
    a = load_image_folder(tmp_path / "train", cache_dir=cache)
    assert len(list(cache.glob("*.pt"))) == 1

    def boom(path):
        raise AssertionError("decoded although the cache is valid")

    monkeypatch.setattr(decode_module, "decode_file", boom)
    b = load_image_folder(tmp_path / "train", cache_dir=cache)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and a[2] == b[2]
    # touching a file changes the key: the cache is rebuilt (here: decode is attempted)
    f = next((tmp_path / "train" / "a").iterdir())
    os.utime(f, ns=(1, 1))
    with pytest.raises(AssertionError, match="decoded"):
        load_image_folder(tmp_path / "train", cache_dir=cache)


def test_image_folder_sizes(tmp_path):
    _write_image_folder(tmp_path / "train", per_class=2, size=40)
    _write_image_folder(tmp_path / "test", per_class=1, size=40)
    dm = ImageFolderDataModule(tmp_path, image_size=32, batch_size=2)
    dm.setup()
    assert dm.image_shape == (3, 32, 32)
    assert next(iter(dm.train_dataloader()))[0].shape == (2, 3, 32, 32)
    dc = ImageFolderDataModule(tmp_path, image_size=32, batch_size=2, in_memory=False)
    dc.setup()
    assert next(iter(dc.train_dataloader()))[0].shape == (2, 3, 32, 32)
    # mixed sizes without image_size: clear error naming the odd file
    Image.new("RGB", (24, 24)).save(tmp_path / "train" / "b" / "zz.png")
    with pytest.raises(UnreadableImageError, match="zz.png"):
        load_image_folder(tmp_path / "train")


def test_image_folder_missing_and_empty(tmp_path):
    with pytest.raises(DatasetNotFoundError, match=str(tmp_path / "nope")):
        ImageFolderDataModule(tmp_path / "nope").setup("fit")
    (tmp_path / "empty" / "train").mkdir(parents=True)
    with pytest.raises(DatasetNotFoundError, match="train"):
        ImageFolderDataModule(tmp_path / "empty").prepare_data()
    (tmp_path / "empty" / "train" / "cls").mkdir()
    (tmp_path / "empty" / "train" / "cls" / "notes.txt").write_text("not an image")
    with pytest.raises(DatasetNotFoundError, match="no usable images"):
        load_image_folder(tmp_path / "empty" / "train")


@pytest.mark.parametrize("in_memory", [True, False])
def test_image_folder_unreadable_file_fails_naming_it(tmp_path, in_memory):
    _write_image_folder(tmp_path / "train", per_class=2)
    _write_image_folder(tmp_path / "test", per_class=1, seed=3)
    (tmp_path / "train" / "b" / "broken.jpg").write_bytes(b"\xff\xd8 definitely not a jpeg")
    dm = ImageFolderDataModule(tmp_path, batch_size=8, in_memory=in_memory)
    with pytest.raises(UnreadableImageError, match="broken.jpg"):
        dm.setup("fit")
        for _ in dm.train_dataloader():
            pass


# --------------------------------------------------------------------------------------------
# CIFAR
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("in_memory", [True, False])
def test_cifar10_tiny_files(tmp_path, no_md5, offline, in_memory):
    written = _write_cifar(tmp_path, "cifar10")
    dm = CIFARDataModule(
        "cifar10", root=tmp_path, download=True, batch_size=10, in_memory=in_memory
    )
    dm.prepare_data()  # files present: no download attempted (offline would raise)
    dm.setup("fit")
    assert dm.num_classes == 10 and dm.classes == [f"class{i}" for i in range(10)]
    assert dm.mean == CIFAR10_MEAN
    assert len(dm.train_dataloader()) == 3  # 5 files x 6 images, batch 10
    x, y = dm.preprocess(next(iter(dm.val_dataloader())), train=False)
    data, labels = written["test_batch"]
    expected = torch.from_numpy(data).view(-1, 3, 32, 32)
    torch.testing.assert_close(x, _normalise(expected, CIFAR10_MEAN, CIFAR10_STD))
    assert y.tolist() == labels
    tx, ty = dm.preprocess(next(iter(dm.train_dataloader())), train=True)
    assert tx.shape == (10, 3, 32, 32) and tx.dtype == torch.float32 and ty.dtype == torch.long


def test_cifar100_tiny_files(tmp_path, no_md5):
    _write_cifar(tmp_path, "cifar100", n_per_file=5)
    dm = build_datamodule("cifar100", root=tmp_path, download=False, batch_size=5)
    dm.setup("test")
    assert dm.num_classes == 100 and dm.classes[:2] == ["class0", "class1"]
    assert dm.mean == CIFAR100_MEAN
    x, y = next(iter(dm.test_dataloader()))
    assert x.shape == (5, 3, 32, 32) and y.max() < 100


def test_cifar_missing_offline_raises_clear_error(tmp_path, offline):
    dm = CIFARDataModule("cifar10", root=tmp_path / "data", download=True)
    with pytest.raises(DatasetNotFoundError) as err:
        dm.prepare_data()
    msg = str(err.value)
    assert str(tmp_path / "data") in msg and "cifar-10-batches-py" in msg and "imagefolder" in msg
    dm = CIFARDataModule("cifar10", root=tmp_path / "data", download=False)
    dm.prepare_data()  # download=False: nothing to do here ...
    with pytest.raises(DatasetNotFoundError, match="cifar-10-batches-py"):
        dm.setup("fit")  # ... the missing data is reported by setup


def test_cifar_downloads_when_used_before_prepare_data(tmp_path, no_md5, monkeypatch):
    import torchvision.datasets.cifar as tv_cifar

    calls = []

    def fake_download(url, download_root, **kwargs):  # stands in for the network
        calls.append(url)
        _write_cifar(Path(download_root), "cifar10", n_per_file=2)

    monkeypatch.setattr(tv_cifar, "download_and_extract_archive", fake_download)
    dm = CIFARDataModule("cifar10", root=tmp_path, download=True, batch_size=4)
    images, labels = dm.fixed_val_batch(2)  # before prepare_data/setup, as a script might
    assert images.shape == (2, 3, 32, 32) and len(calls) == 1
    dm.prepare_data()  # data now present: no second download
    assert len(calls) == 1


def test_cifar_init_does_not_touch_disk(tmp_path, offline):
    CIFARDataModule("cifar100", root=tmp_path / "never")
    assert not (tmp_path / "never").exists()


# --------------------------------------------------------------------------------------------
# factory
# --------------------------------------------------------------------------------------------


def test_build_datamodule(tmp_path):
    assert isinstance(build_datamodule("shapes", num_train=8), ShapesDataModule)
    assert isinstance(build_datamodule("CIFAR10", root=tmp_path), CIFARDataModule)
    assert build_datamodule("cifar100", root=tmp_path).num_classes == 100
    assert isinstance(build_datamodule("imagefolder", root=tmp_path), ImageFolderDataModule)
    with pytest.raises(ValueError, match="cifar10, cifar100, imagefolder, shapes"):
        build_datamodule("mnist")


def test_build_datamodule_is_strict(tmp_path):
    """An option of another dataset, or of none, is an error naming it, never dropped."""
    dm = build_datamodule("shapes", batch_size=8, num_train=16, num_val=8, seed=1)
    assert isinstance(dm, ShapesDataModule) and dm.num_train == 16 and dm.seed == 1
    dm = build_datamodule("cifar100", root=tmp_path, download=False, batch_size=8)
    assert isinstance(dm, CIFARDataModule) and dm.name == "cifar100" and dm.root == tmp_path
    with pytest.raises(TypeError, match="'num_train'; it is an option of shapes"):
        build_datamodule("cifar10", root=tmp_path, num_train=16)
    with pytest.raises(TypeError, match="'download'; it is an option of cifar10, cifar100"):
        build_datamodule("imagefolder", root=tmp_path, download=True)
    with pytest.raises(TypeError, match="'root'; it is an option of"):
        build_datamodule("shapes", root=None)
    with pytest.raises(TypeError, match="no option 'batchsize'; valid: .*batch_size"):
        build_datamodule("shapes", batchsize=8)
    with pytest.raises(TypeError, match="'name'"):
        build_datamodule("cifar10", name="cifar100")  # fixed by the dataset name


def test_datamodule_from_config_uses_the_chosen_section_only(tmp_path):
    from distill.config import load_config

    cfg = load_config("quickstart", ["data.shapes.num_train=24", "data.imagefolder.train_dir=x"])
    data = dict(OmegaConf.to_container(cfg.data))
    dm = datamodule_from_config(data, seed=3, boxes=True)
    assert isinstance(dm, ShapesDataModule) and dm.num_train == 24 and dm.seed == 3
    assert dm.return_boxes
    data.update(name="imagefolder", root=str(tmp_path))
    dm = datamodule_from_config(data, seed=0, boxes=True)  # no boxes in image folders
    assert isinstance(dm, ImageFolderDataModule) and dm.train_dir == "x"
    data.update(name="cifar10", root=str(tmp_path), cifar={"download": False})
    dm = datamodule_from_config(data, seed=0)
    assert isinstance(dm, CIFARDataModule) and not dm.download


@pytest.mark.parametrize("in_memory", [True, False])
def test_fixed_val_batch(tmp_path, in_memory):
    _write_image_folder(tmp_path / "train", per_class=2)
    _write_image_folder(tmp_path / "test", per_class=2, seed=1)
    dm = ImageFolderDataModule(tmp_path, in_memory=in_memory)
    images, labels = dm.fixed_val_batch(3)
    assert images.shape == (3, 3, 32, 32) and images.dtype == torch.float32
    assert labels.tolist() == [0, 1, 2]  # evenly spaced over the class-sorted split
    again, _ = ImageFolderDataModule(tmp_path, in_memory=not in_memory).fixed_val_batch(3)
    torch.testing.assert_close(images, again)
    assert dm.fixed_val_batch(100)[0].shape[0] == 6


# --------------------------------------------------------------------------------------------
# DDP (slow: spawns two CPU processes)
# --------------------------------------------------------------------------------------------


class _DDPModel(L.LightningModule):
    """Module level so that ddp_spawn can pickle it."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(3, 6)

    def training_step(self, batch, _):
        x, y = batch
        assert x.shape[0] == 4, x.shape  # global batch 8 over 2 processes
        assert x.dtype == torch.float32
        return F.cross_entropy(self.lin(x.mean((2, 3))), y)

    def on_train_epoch_end(self) -> None:
        # spawn: only callback_metrics travel back to the parent process
        self.log("steps", float(self.global_step))
        self.log("world", float(self.trainer.world_size))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


@pytest.mark.slow
def test_ddp_two_processes(tmp_path):
    dm = ShapesDataModule(num_train=32, num_val=8, batch_size=8)
    trainer = L.Trainer(
        max_epochs=1,
        accelerator="cpu",
        devices=2,
        strategy="ddp_spawn",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        default_root_dir=tmp_path,
    )
    trainer.fit(_DDPModel(), datamodule=dm)
    assert trainer.callback_metrics["world"] == 2
    assert trainer.callback_metrics["steps"] == 4  # 32 samples / (2 ranks x 4 per step)


def test_train_fraction_is_a_fixed_class_balanced_subset():
    from distill.data import balanced_subset

    labels = torch.arange(6).repeat_interleave(torch.tensor([10, 20, 30, 40, 50, 60]))
    keep = balanced_subset(labels, 0.1, seed=3)
    assert torch.bincount(labels[keep]).tolist() == [1, 2, 3, 4, 5, 6]
    assert torch.equal(keep, balanced_subset(labels, 0.1, seed=3))
    assert not torch.equal(keep, balanced_subset(labels, 0.1, seed=4))
    for in_memory in (True, False):
        dm = ShapesDataModule(
            num_train=600, num_val=60, batch_size=32, train_fraction=0.25, in_memory=in_memory
        )
        dm.setup("fit")
        n = len(dm._split("train"))
        assert n == pytest.approx(150, abs=6)
