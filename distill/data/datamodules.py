"""LightningDataModules for CIFAR-10/100, ImageFolder trees and the procedural shapes set.

Every datamodule has two data paths, picked with ``in_memory``:

* ``in_memory=True`` (fast path): each split is decoded once into a uint8 tensor ``[N, 3, H, W]``
  kept in host memory. The dataloader only slices that tensor with batches of indices (no
  per-sample Python work, no workers), and augmentation + normalisation run batched in
  :meth:`on_after_batch_transfer`, i.e. on the GPU when training on one. Training batches are
  augmented with :class:`~distill.data.transforms.BatchAugment`; eval batches are only normalised.
* ``in_memory=False`` (classic path): torchvision datasets with per-sample PIL transforms
  (``RandomCrop(padding=4)``, ``RandomHorizontalFlip``, ``ToTensor``, ``Normalize``) in
  DataLoader workers; batches arrive already normalised.

Either way a training step receives ``(float_images_normalised, labels)``.

Batch sizes are global: with a trainer attached, each of ``trainer.world_size`` processes loads
``batch_size // world_size`` samples. Sharding across ranks is done by our own samplers (subclasses
of ``DistributedSampler``, so Lightning does not replace them): each rank gets a disjoint shard of
the same per-epoch permutation, seeded by ``seed + epoch``.

Reproducibility: the shuffling permutation depends only on ``(seed, epoch)``; in-memory
augmentation draws from a generator seeded by ``(seed, epoch, rank)``; classic-path per-sample
transforms are run under a torch seed derived from ``(seed, epoch, sample index)``, so they do not
depend on ``num_workers`` either. Two datamodules built with the same arguments therefore yield
identical batches.

Note: because the datamodule overrides ``on_after_batch_transfer``, Lightning uses it instead of
a LightningModule's own ``on_after_batch_transfer``.
"""

from __future__ import annotations

import hashlib
import inspect
import math
import os
import pickle
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

from distill.data.shapes import SHAPES_CLASSES, SHAPES_MEAN, SHAPES_STD, make_shapes
from distill.data.transforms import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    CIFAR100_MEAN,
    CIFAR100_STD,
    BatchAugment,
    Normalize,
)

__all__ = [
    "CIFAR10_CLASSES",
    "DATAMODULES",
    "DEFAULT_DATA_ROOT",
    "CIFARDataModule",
    "DatasetNotFoundError",
    "ImageDataModule",
    "ImageFolderDataModule",
    "IndexBatchSampler",
    "ShardedIndexSampler",
    "ShapesDataModule",
    "TensorBatchDataset",
    "UnreadableImageError",
    "build_datamodule",
    "load_image_folder",
]

DEFAULT_DATA_ROOT = "~/.cache/distill/data"
"""Download location of torchvision datasets when no ``root`` is given."""

CIFAR10_CLASSES: tuple[str, ...] = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)

_SPLITS = ("train", "val", "test")


class DatasetNotFoundError(RuntimeError):
    """The dataset files are missing (and could not be downloaded); the message says how to fix it."""


class UnreadableImageError(RuntimeError):
    """An image file exists but cannot be decoded; the message names the file."""


def _mix_seed(*parts: int) -> int:
    """Combine integers into one 63-bit seed (stable across runs, unlike ``hash``)."""
    h = hashlib.blake2b(digest_size=8)
    for p in parts:
        h.update(int(p).to_bytes(16, "little", signed=True))
    return int.from_bytes(h.digest(), "little") & ((1 << 63) - 1)


# --------------------------------------------------------------------------------------------
# Samplers and datasets
# --------------------------------------------------------------------------------------------


class ShardedIndexSampler(DistributedSampler):
    """Per-epoch seeded permutation, sharded across ranks; yields ``(epoch, index)`` pairs.

    Why ``(epoch, index)``: the classic path seeds each sample's random transform from it, so
    augmentation is reproducible and independent of ``num_workers``. Subclassing
    ``DistributedSampler`` keeps Lightning from injecting its own sampler. Like
    ``DistributedSampler`` (``drop_last=False``) the permutation is padded by wrapping around
    so every rank gets the same number of samples.

    ``set_epoch`` is called by Lightning before each epoch; without it the epoch advances by one
    on every new iteration, so plain loops also reshuffle.

    Args:
        num_samples: Dataset length.
        shuffle: Random permutation (seeded by ``seed + epoch``) instead of ``arange``.
        seed: Base seed of the permutation, identical on all ranks.
        num_replicas: World size.
        rank: This process's global rank.
    """

    def __init__(
        self,
        num_samples: int,
        shuffle: bool = True,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        super().__init__(
            range(num_samples),  # type: ignore[arg-type]
            num_replicas=num_replicas,
            rank=rank,
            shuffle=shuffle,
            seed=seed,
            drop_last=False,
        )
        self.num_total = int(num_samples)
        self.num_samples = math.ceil(self.num_total / num_replicas) if self.num_total else 0
        self.total_size = self.num_samples * num_replicas
        self._epoch_set = False

    def set_epoch(self, epoch: int) -> None:
        """Fix the epoch used by the next iteration (called by Lightning's loops)."""
        self.epoch = int(epoch)
        self._epoch_set = True

    def shard(self) -> Tensor:
        """Indices of this rank for the current epoch (int64 tensor)."""
        n = self.num_total
        if self.shuffle:
            g = torch.Generator().manual_seed(int(self.seed) + int(self.epoch))
            idx = torch.randperm(n, generator=g)
        else:
            idx = torch.arange(n)
        pad = self.total_size - n
        if pad > 0:
            idx = torch.cat([idx, idx.repeat(math.ceil(pad / n))[:pad]])
        return idx[self.rank : self.total_size : self.num_replicas]

    def _next_epoch(self) -> tuple[int, Tensor]:
        epoch, idx = self.epoch, self.shard()
        if not self._epoch_set:
            self.epoch += 1
        self._epoch_set = False
        return epoch, idx

    def __iter__(self) -> Iterator[Any]:
        epoch, idx = self._next_epoch()
        return iter([(epoch, i) for i in idx.tolist()])

    def __len__(self) -> int:
        return self.num_samples


class IndexBatchSampler(ShardedIndexSampler):
    """Like :class:`ShardedIndexSampler` but yields whole batches as int64 index tensors.

    Used with ``DataLoader(batch_size=None)`` over a :class:`TensorBatchDataset`, so one batch
    costs one tensor gather instead of ``batch_size`` ``__getitem__`` calls.

    Args:
        num_samples: Dataset length.
        batch_size: Per-device batch size.
        shuffle: See :class:`ShardedIndexSampler`.
        seed: See :class:`ShardedIndexSampler`.
        num_replicas: World size.
        rank: Global rank.
        drop_last: Drop this rank's last incomplete batch.
    """

    def __init__(
        self,
        num_samples: int,
        batch_size: int,
        shuffle: bool = True,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
        drop_last: bool = False,
    ) -> None:
        super().__init__(num_samples, shuffle, seed, num_replicas, rank)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = int(batch_size)
        self.drop_last_batch = bool(drop_last)
        self.current_epoch = 0
        self.batches_yielded = 0  # in the current iteration: the position to resume from
        self._resume_at: tuple[int, int] | None = None

    def resume(self, epoch: int, batches: int) -> None:
        """Make the next iteration be over ``epoch``, skipping its first ``batches`` batches.

        Lightning restores this state and then creates the epoch's iterator before it calls
        ``set_epoch``, so the epoch is set here too. A state saved at an epoch's end (every
        batch yielded) continues with the next epoch.
        """
        epoch, batches = int(epoch), int(batches)
        if batches >= len(self):
            epoch, batches = epoch + 1, 0
        self._resume_at = (epoch, batches)
        self.set_epoch(epoch)

    def __iter__(self) -> Iterator[Tensor]:  # type: ignore[override]
        epoch, idx = self._next_epoch()
        batches = list(idx.split(self.batch_size))
        if self.drop_last_batch and batches and len(batches[-1]) < self.batch_size:
            batches.pop()
        skip = 0
        if self._resume_at is not None and self._resume_at[0] == epoch:
            skip = self._resume_at[1]
        self._resume_at = None
        self.current_epoch, self.batches_yielded = epoch, skip
        return self._generate(batches[skip:])

    def _generate(self, batches: list[Tensor]) -> Iterator[Tensor]:
        for batch in batches:
            self.batches_yielded += 1
            yield batch

    def __len__(self) -> int:
        if self.drop_last_batch:
            return self.num_samples // self.batch_size
        return math.ceil(self.num_samples / self.batch_size)


class ResumableDataLoader(DataLoader):
    """A loader over an :class:`IndexBatchSampler` that Lightning can checkpoint mid-epoch.

    Lightning stores ``state_dict()`` in every checkpoint and calls ``load_state_dict`` when
    resuming, so a run interrupted in the middle of an epoch continues with the very next batch
    (same order, same augmentation) instead of replaying the epoch from its start.
    """

    def state_dict(self) -> dict[str, int]:
        sampler = self.sampler
        assert isinstance(sampler, IndexBatchSampler)
        return {"epoch": sampler.current_epoch, "batches": sampler.batches_yielded}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        sampler = self.sampler
        assert isinstance(sampler, IndexBatchSampler)
        sampler.resume(state_dict["epoch"], state_dict["batches"])


class TensorBatchDataset(Dataset):
    """Tensors indexed by a whole batch of indices at once (first dim = sample)."""

    def __init__(self, *tensors: Tensor) -> None:
        if not tensors or any(t.shape[0] != tensors[0].shape[0] for t in tensors):
            raise ValueError("need tensors with the same first dimension")
        self.tensors = tensors

    def __len__(self) -> int:
        return int(self.tensors[0].shape[0])

    def __getitem__(self, index: Tensor) -> tuple[Tensor, ...]:
        return tuple(t[index] for t in self.tensors)


class _TensorImageDataset(Dataset):
    """Per-sample view of uint8 image tensors as PIL images (classic path for tensor data)."""

    def __init__(self, images: Tensor, labels: Tensor, *extras: Tensor) -> None:
        self.images = images.permute(0, 2, 3, 1).contiguous().numpy()
        self.labels = labels.tolist()
        self.extras = extras

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[Any, ...]:
        return (Image.fromarray(self.images[i]), self.labels[i], *(e[i] for e in self.extras))


class _SeededTransformDataset(Dataset):
    """Apply ``transform`` to item[0] under a torch seed derived from ``(seed, epoch, index)``.

    Why: torchvision's random transforms draw from the global torch RNG, whose state depends on
    the worker layout; a per-sample seed makes the augmented batches reproducible and identical
    for any ``num_workers``. Keys are ``(epoch, index)`` pairs (from
    :class:`ShardedIndexSampler`) or plain indices (epoch 0).
    """

    def __init__(
        self, base: Dataset, transform: Callable[[Any], Any], seed: int, keep: int | None = None
    ) -> None:
        self.base = base
        self.transform = transform
        self.seed = int(seed)
        self.keep = keep  # items per sample to return (drops extras a split does not use)

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[Any, ...]:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        item = self.base[index]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(_mix_seed(self.seed, epoch, index))
            img = self.transform(item[0])
        return (img, *item[1 : self.keep])


def balanced_subset(labels: Tensor, fraction: float, seed: int) -> Tensor:
    """Sorted indices of ``round(fraction * n_c)`` random samples of every class ``c`` (at
    least one per class), drawn with ``seed``."""
    g = torch.Generator().manual_seed(int(seed))
    keep = []
    for cls in labels.unique(sorted=True):
        members = (labels == cls).nonzero().flatten()
        count = max(1, round(fraction * len(members)))
        keep.append(members[torch.randperm(len(members), generator=g)[:count]])
    return torch.cat(keep).sort().values


# --------------------------------------------------------------------------------------------
# Base datamodule
# --------------------------------------------------------------------------------------------


def holdout_split(labels: Tensor, fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """Split indices ``0..N-1`` into ``(train, holdout)``: the holdout is a class-balanced,
    seeded ``fraction`` of every class (:func:`balanced_subset`), the rest trains.

    Why: checkpoints must be selected on images that are neither trained on nor tested on.
    """
    holdout = balanced_subset(labels, fraction, _mix_seed(seed, 0x0DA7A))
    keep = torch.ones(len(labels), dtype=torch.bool)
    keep[holdout] = False
    return keep.nonzero().flatten(), holdout


def _labels_of(data: Any) -> Tensor:
    """Labels of a split's storage: a tensor tuple, a ``Subset`` or a torchvision dataset."""
    if isinstance(data, tuple):
        return data[1]
    if isinstance(data, Subset):
        return _labels_of(data.dataset)[torch.as_tensor(data.indices, dtype=torch.long)]
    targets = getattr(data, "targets", None)
    return torch.as_tensor(targets if targets is not None else data.labels)


def _take(data: Any, index: Tensor) -> Any:
    """The samples ``index`` of a split's storage (tensors or a Dataset)."""
    if isinstance(data, tuple):
        return tuple(t[index] for t in data)
    return Subset(data, index.tolist())


def _resize_uint8(images: Tensor, size: int) -> Tensor:
    """Antialiased bilinear resize of a uint8 batch ``[N, 3, h, w]`` to ``size x size``."""
    if images.shape[-2:] == (size, size):
        return images
    out = torch.empty(images.shape[0], images.shape[1], size, size, dtype=torch.uint8)
    for s in range(0, images.shape[0], 4096):
        chunk = images[s : s + 4096].float()
        chunk = F.interpolate(chunk, size=(size, size), mode="bilinear", antialias=True)
        out[s : s + 4096] = chunk.round_().clamp_(0, 255).to(torch.uint8)
    return out


class ImageDataModule(L.LightningDataModule):
    """Shared machinery: split caching, both data paths, global batch size, batched transforms.

    Subclasses implement :meth:`_load_tensors` (in-memory path) and :meth:`_load_pil_dataset`
    (classic path) for a storage key returned by :meth:`_split_key`, plus ``num_classes``.

    Args:
        batch_size: GLOBAL training batch size (split evenly across DDP processes).
        eval_batch_size: Global val/test batch size; defaults to ``batch_size``.
        num_workers: DataLoader workers for the classic path (the in-memory path uses none).
        pin_memory: Pin host batches for faster host-to-GPU copies.
        in_memory: Fast tensor path (True) or classic per-sample PIL path (False).
        seed: Seed of shuffling and augmentation (not of the data itself).
        augment: Random crop + flip on the training split.
        padding: Zero padding of the random crop.
        drop_last: Drop the last incomplete training batch of each rank.
        image_size: Resize images to ``image_size x image_size``; ``None`` keeps the native size
            (which then must be the same for all images).
        mean: Per-channel normalisation mean (``[0, 1]`` scale); subclass default if ``None``.
        std: Per-channel normalisation std; subclass default if ``None``.
        train_fraction: Keep this share of every class of the training split (a class-balanced
            subset, the same for every run with the same ``subset_seed``): data-scarce
            experiments. Taken after the holdout is removed.
        subset_seed: Seed of that subset and of the holdout, independent of ``seed``.
        val_fraction: Hold out this class-balanced share of the training split as the
            validation split (checkpoint selection, curves); the test split is then used only
            for the final test. ``0``: no holdout, validation runs on the test split and nothing
            may be selected on it.
    """

    default_mean: tuple[float, ...] = CIFAR10_MEAN
    default_std: tuple[float, ...] = CIFAR10_STD

    def __init__(
        self,
        batch_size: int = 128,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        pin_memory: bool = False,
        in_memory: bool = True,
        seed: int = 0,
        augment: bool = True,
        padding: int = 4,
        drop_last: bool = False,
        image_size: int | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        train_fraction: float = 1.0,
        subset_seed: int = 0,
        val_fraction: float = 0.0,
    ) -> None:
        super().__init__()
        if not 0 < train_fraction <= 1:
            raise ValueError(f"train_fraction must be in (0, 1], got {train_fraction}")
        if not 0 <= val_fraction < 1:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
        self.val_fraction = float(val_fraction)
        self.train_fraction = float(train_fraction)
        self.subset_seed = int(subset_seed)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = int(batch_size)
        self.eval_batch_size = int(eval_batch_size or batch_size)
        self.num_workers = int(num_workers)
        self.pin_memory = bool(pin_memory)
        self.in_memory = bool(in_memory)
        self.seed = int(seed)
        self.augment = bool(augment)
        self.padding = int(padding)
        self.drop_last = bool(drop_last)
        self.image_size = None if image_size is None else int(image_size)
        self._mean = tuple(float(m) for m in (mean if mean is not None else self.default_mean))
        self._std = tuple(float(s) for s in (std if std is not None else self.default_std))
        self.normalize = Normalize(self._mean, self._std)
        self.batch_augment = BatchAugment(self.padding, flip=True, generator=self.seed)
        self._train_sampler: IndexBatchSampler | None = None
        self._data: dict[str, Any] = {}  # storage key -> tuple of tensors or a Dataset
        self._views: dict[str, Any] = {}  # split -> its samples (a view of a storage key)
        self._holdout: tuple[Tensor, Tensor] | None = None
        self._classes: list[str] | None = None
        self._image_hw: tuple[int, int] | None = None

    # ---- properties ------------------------------------------------------------------------

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.classes)

    @property
    def classes(self) -> list[str]:
        """Class names, index = label."""
        if self._classes is None:
            self._classes = self._find_classes()
        return self._classes

    @property
    def mean(self) -> tuple[float, ...]:
        """Normalisation mean used for every split."""
        return self._mean

    @property
    def std(self) -> tuple[float, ...]:
        """Normalisation std used for every split."""
        return self._std

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of the model input (after ``setup``)."""
        if self._image_hw is None:
            raise RuntimeError("image_shape is known after setup()")
        return (3, *self._image_hw)

    def _world(self) -> tuple[int, int]:
        """``(global_rank, world_size)`` from the attached trainer, else ``(0, 1)``."""
        trainer = self.trainer
        if trainer is None:
            return 0, 1
        return int(trainer.global_rank), int(trainer.world_size)

    def _per_device(self, global_batch: int) -> int:
        _, world = self._world()
        if global_batch % world:
            raise ValueError(
                f"global batch size {global_batch} is not divisible by the world size {world}; "
                "choose a batch size that is a multiple of the number of processes"
            )
        return global_batch // world

    @property
    def batch_size_per_device(self) -> int:
        """Training batch size of each process: ``batch_size // trainer.world_size``."""
        return self._per_device(self.batch_size)

    @property
    def eval_batch_size_per_device(self) -> int:
        """Val/test batch size of each process."""
        return self._per_device(self.eval_batch_size)

    @property
    def has_holdout(self) -> bool:
        """Whether validation runs on a holdout of the training split (not on the test split)."""
        return self.val_fraction > 0

    def holdout_indices(self) -> tuple[Tensor, Tensor]:
        """``(train, holdout)`` indices into the full training split (``val_fraction > 0``)."""
        if not self.has_holdout:
            raise RuntimeError("no holdout: val_fraction is 0")
        if self._holdout is None:
            labels = _labels_of(self._storage(self._split_key("train")))
            self._holdout = holdout_split(labels, self.val_fraction, self.subset_seed)
        return self._holdout

    # ---- subclass hooks ----------------------------------------------------------------------

    def _split_key(self, split: str) -> str:
        """Storage key of a split; val and test share one by default (same data)."""
        return "train" if split == "train" else "test"

    def _find_classes(self) -> list[str]:
        raise NotImplementedError

    def _load_tensors(self, key: str) -> tuple[Tensor, ...]:
        """Return ``(uint8 images [N,3,H,W], int64 labels [N], *extras)`` of a storage key."""
        raise NotImplementedError

    def _load_pil_dataset(self, key: str) -> Dataset:
        """Return a dataset of ``(PIL image, label, *extras)`` items for a storage key."""
        raise NotImplementedError

    def _extras(self, split: str) -> int:
        """How many extra tensors after the labels a split's batches carry."""
        return 0

    # ---- setup -------------------------------------------------------------------------------

    def setup(self, stage: str | None = None) -> None:
        """Load the splits needed for ``stage`` (idempotent: loaded splits are kept)."""
        needs = {
            "fit": ("train", "val"),
            "validate": ("val",),
            "test": ("test",),
            "predict": ("test",),
        }.get(stage or "", _SPLITS)
        for split in needs:
            self._split(split)

    def _storage(self, key: str) -> Any:
        """The decoded (in-memory) or lazily read (classic) data of a storage key, loaded once."""
        if key not in self._data:
            if self.in_memory:
                tensors = self._load_tensors(key)
                images = tensors[0]
                if self.image_size is not None:
                    images = _resize_uint8(images, self.image_size)
                self._check_tensors(key, images, tensors[1])
                self._data[key] = (images, *tensors[1:])
            else:
                self._data[key] = self._load_pil_dataset(key)
        return self._data[key]

    def _split(self, split: str) -> Any:
        """The samples of ``split``: train (minus the holdout, then ``train_fraction``), val
        (the holdout, or the test data without one) or test."""
        if split not in _SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {_SPLITS}")
        if split not in self._views:
            if split == "test" or (split == "val" and not self.has_holdout):
                data = self._storage(self._split_key(split))
            else:
                data = self._storage(self._split_key("train"))
                if self.has_holdout:
                    train, holdout = self.holdout_indices()
                    data = _take(data, holdout if split == "val" else train)
                if split == "train" and self.train_fraction < 1:
                    data = self._subset(data)
            self._views[split] = data
        return self._views[split]

    def _subset(self, data: Any) -> Any:
        """The class-balanced ``train_fraction`` of a split (tensors or a Dataset)."""
        keep = balanced_subset(_labels_of(data), self.train_fraction, self.subset_seed)
        return _take(data, keep)

    def _check_tensors(self, key: str, images: Tensor, labels: Tensor) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"split {key!r}: expected uint8 [N,3,H,W] images, got {images.shape}")
        hw = (int(images.shape[2]), int(images.shape[3]))
        if self._image_hw is None:
            self._image_hw = hw
        elif self._image_hw != hw:
            raise ValueError(
                f"split {key!r} has {hw[0]}x{hw[1]} images but another split has "
                f"{self._image_hw[0]}x{self._image_hw[1]}; set image_size to resize them"
            )
        if labels.numel() and int(labels.max()) >= self.num_classes:
            raise ValueError(f"split {key!r} has label {int(labels.max())} >= {self.num_classes}")

    # ---- dataloaders -------------------------------------------------------------------------

    def _classic_transform(self, train: bool) -> Callable[[Any], Any]:
        from torchvision import transforms as T

        steps: list[Any] = []
        if self.image_size is not None:
            steps.append(T.Resize((self.image_size, self.image_size), antialias=True))
        if train and self.augment:
            size = self.image_size or (self._image_hw or (32, 32))
            steps += [T.RandomCrop(size, padding=self.padding), T.RandomHorizontalFlip()]
        steps += [T.ToTensor(), T.Normalize(self._mean, self._std)]
        return T.Compose(steps)

    def _loader(self, split: str) -> DataLoader:
        train = split == "train"
        data = self._split(split)
        rank, world = self._world()
        bs = self.batch_size_per_device if train else self.eval_batch_size_per_device
        if self.in_memory:
            n_keep = 2 + self._extras(split)
            sampler = IndexBatchSampler(
                len(data[0]),
                bs,
                shuffle=train,
                seed=self.seed,
                num_replicas=world,
                rank=rank,
                drop_last=train and self.drop_last,
            )
            if train:
                self._train_sampler = sampler
                self._start_at_fit_epoch(sampler)
            return ResumableDataLoader(
                TensorBatchDataset(*data[:n_keep]),
                batch_size=None,
                sampler=sampler,
                num_workers=0,
                pin_memory=self.pin_memory,
            )
        dataset = _SeededTransformDataset(
            data, self._classic_transform(train), self.seed, keep=2 + self._extras(split)
        )
        sampler = ShardedIndexSampler(
            len(dataset), shuffle=train, seed=self.seed, num_replicas=world, rank=rank
        )
        if train:
            self._start_at_fit_epoch(sampler)
        return DataLoader(
            dataset,
            batch_size=bs,
            sampler=sampler,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            drop_last=train and self.drop_last,
            persistent_workers=self.num_workers > 0,
        )

    def _start_at_fit_epoch(self, sampler: ShardedIndexSampler) -> None:
        """Start a new training sampler at the epoch the trainer's fit loop is in.

        Why: a run resumed from a checkpoint written at an epoch's end iterates the new loader
        before Lightning calls ``set_epoch`` (and restores no mid-epoch state), so it would
        replay epoch 0's order and augmentation.
        """
        fit_loop = getattr(self.trainer, "fit_loop", None)
        if fit_loop is not None:
            sampler.set_epoch(fit_loop.epoch_progress.current.processed)

    def train_dataloader(self) -> DataLoader:
        """Shuffled, sharded training batches (uint8 in-memory, normalised float classic)."""
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        """Unshuffled validation batches."""
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        """Unshuffled test batches."""
        return self._loader("test")

    def predict_dataloader(self) -> DataLoader:
        """Same as :meth:`test_dataloader`."""
        return self._loader("test")

    def fixed_val_batch(self, n: int) -> tuple[Tensor, Tensor]:
        """A fixed, class-diverse set of ``n`` validation samples for plots (e.g. CAM grids)."""
        return self.fixed_batch(n, "val")

    def fixed_batch(self, n: int, split: str = "val") -> tuple[Tensor, Tensor]:
        """A fixed, class-diverse set of ``n`` samples of an evaluation split.

        Takes evenly spaced indices over the split (which is class-sorted for ImageFolder and
        shapes, and so is the holdout), so the same images come back on every call and every
        run. Loads the split if needed; ``n`` larger than the split gives the whole split.

        Returns:
            Normalised float images ``[n, 3, H, W]`` and int64 labels ``[n]``, on the CPU.
        """
        data = self._split(split)
        total = len(data[0]) if self.in_memory else len(data)
        n = max(0, min(int(n), total))
        idx = (torch.arange(n) * total) // max(n, 1)
        if self.in_memory:
            return self.normalize(data[0][idx]), data[1][idx].clone()
        transform = self._classic_transform(train=False)
        items = [data[i] for i in idx.tolist()]
        if not items:
            h, w = self._image_hw or (0, 0)
            return torch.empty(0, 3, h, w), torch.empty(0, dtype=torch.long)
        images = torch.stack([transform(it[0]) for it in items])
        return images, torch.tensor([int(it[1]) for it in items], dtype=torch.long)

    # ---- batched transforms ------------------------------------------------------------------

    def preprocess(self, batch: Any, train: bool) -> Any:
        """Augment (if ``train``) and normalise the image part of an in-memory batch.

        Float batches (classic path) are returned unchanged. Use this when iterating the
        dataloaders outside a Lightning trainer.
        """
        images = batch[0]
        if images.is_floating_point():
            return batch
        if train and self.augment:
            images = self.batch_augment(images)
        return (self.normalize(images), *batch[1:])

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Run :meth:`preprocess` on the device; augment only while the trainer is training."""
        trainer = self.trainer
        train = bool(trainer is not None and trainer.training)
        if train and trainer is not None and self._train_sampler is not None:
            # One seed per (epoch, rank, batch): a run resumed mid-epoch augments the remaining
            # batches exactly as an uninterrupted run would.
            sampler = self._train_sampler
            self.batch_augment.manual_seed(
                _mix_seed(
                    self.seed, sampler.current_epoch, trainer.global_rank, sampler.batches_yielded
                )
            )
        return self.preprocess(batch, train)


# --------------------------------------------------------------------------------------------
# CIFAR
# --------------------------------------------------------------------------------------------


class CIFARDataModule(ImageDataModule):
    """CIFAR-10 / CIFAR-100 from torchvision's python-pickle files.

    ``prepare_data`` downloads into ``root`` when ``download=True``; nothing is downloaded in
    ``__init__``. When the files are missing and cannot be downloaded (offline, or
    ``download=False``) a single :class:`DatasetNotFoundError` names the path and the fixes.

    Args:
        name: ``"cifar10"`` or ``"cifar100"``.
        root: Folder holding ``cifar-10-batches-py`` / ``cifar-100-python``; defaults to
            ``~/.cache/distill/data``.
        download: Download in ``prepare_data`` if missing.
        **kwargs: Options of :class:`ImageDataModule` (batch_size, in_memory, seed, ...).
    """

    def __init__(
        self,
        name: str = "cifar10",
        root: str | os.PathLike[str] | None = None,
        download: bool = True,
        **kwargs: Any,
    ) -> None:
        name = name.lower()
        if name not in ("cifar10", "cifar100"):
            raise ValueError(f"name must be 'cifar10' or 'cifar100', got {name!r}")
        mean, std = (
            (CIFAR10_MEAN, CIFAR10_STD) if name == "cifar10" else (CIFAR100_MEAN, CIFAR100_STD)
        )
        kwargs["mean"] = kwargs.get("mean") or mean
        kwargs["std"] = kwargs.get("std") or std
        super().__init__(**kwargs)
        self.name = name
        self.root = Path(root if root is not None else DEFAULT_DATA_ROOT).expanduser()
        self.download = bool(download)
        self._download_tried = False

    @property
    def _tv_class(self) -> type:
        from torchvision.datasets import CIFAR10, CIFAR100

        return CIFAR10 if self.name == "cifar10" else CIFAR100

    @property
    def num_classes(self) -> int:
        """10 or 100 (known without reading the data)."""
        return 10 if self.name == "cifar10" else 100

    def _missing(self, cause: BaseException | None = None) -> DatasetNotFoundError:
        folder = self.root / self._tv_class.base_folder
        pretty = "CIFAR-10" if self.name == "cifar10" else "CIFAR-100"
        why = f" ({type(cause).__name__}: {cause})" if cause is not None else ""
        how = "download failed" if self.download else "download=False"
        return DatasetNotFoundError(
            f"{pretty} not found or corrupted at '{folder}'; {how}{why}. Fix: set data.root to a "
            f"folder that contains '{self._tv_class.base_folder}' (fetch it on a machine with "
            f"internet via torchvision.datasets.{self._tv_class.__name__}(root, download=True)), "
            "or use the 'imagefolder' dataset with data.root pointing at a JPEG copy in "
            "ImageFolder layout (train/<class>/*.jpg, test/<class>/*.jpg)."
        )

    def prepare_data(self) -> None:
        """Download the archive into ``root`` if ``download=True`` (local rank 0 only)."""
        if not self.download:
            return
        self._download_tried = True
        try:
            self._tv_class(str(self.root), train=False, download=True)
        except Exception as e:  # offline (URLError/OSError), bad md5 (RuntimeError), ...
            raise self._missing(e) from e

    def _tv_dataset(self, key: str) -> Any:
        try:
            return self._tv_class(str(self.root), train=key == "train", download=False)
        except (RuntimeError, OSError) as e:
            if not self.download or self._download_tried:
                raise self._missing(e) from e
        # Used before prepare_data (e.g. fixed_val_batch() ahead of trainer.fit): download now.
        self.prepare_data()
        return self._tv_dataset(key)

    def _find_classes(self) -> list[str]:
        if self.name == "cifar10":
            return list(CIFAR10_CLASSES)
        meta = self.root / self._tv_class.base_folder / self._tv_class.meta["filename"]
        try:
            with open(meta, "rb") as f:
                return list(pickle.load(f, encoding="latin1")[self._tv_class.meta["key"]])
        except OSError as e:
            raise self._missing(e) from e

    def _load_tensors(self, key: str) -> tuple[Tensor, ...]:
        ds = self._tv_dataset(key)
        self._classes = list(ds.classes)
        images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()
        return images, torch.as_tensor(ds.targets, dtype=torch.long)

    def _load_pil_dataset(self, key: str) -> Dataset:
        ds = self._tv_dataset(key)
        self._classes = list(ds.classes)
        self._image_hw = (self.image_size,) * 2 if self.image_size else (32, 32)
        return ds


# --------------------------------------------------------------------------------------------
# ImageFolder
# --------------------------------------------------------------------------------------------


def _scan_folder(folder: Path) -> tuple[list[str], list[tuple[str, int]]]:
    """Classes and ``(path, label)`` samples exactly as torchvision's ImageFolder finds them."""
    from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

    if not folder.is_dir():
        raise DatasetNotFoundError(
            f"image folder '{folder}' does not exist; set data.root to a folder with "
            "<split>/<class>/<image> files (ImageFolder layout)"
        )
    try:
        classes, class_to_idx = find_classes(str(folder))
        samples = make_dataset(str(folder), class_to_idx, extensions=IMG_EXTENSIONS)
    except FileNotFoundError as e:
        raise DatasetNotFoundError(
            f"image folder '{folder}' holds no usable images ({e}); expected "
            "<class>/<image> files with extensions " + ", ".join(IMG_EXTENSIONS)
        ) from e
    if not samples:
        raise DatasetNotFoundError(f"image folder '{folder}' holds no images")
    return classes, samples


def _decode_file(path: str) -> Tensor:
    """Decode one file to uint8 ``[3, H, W]``: torchvision.io first, PIL as fallback."""
    from torchvision.io import ImageReadMode, decode_image, read_file

    try:
        return decode_image(read_file(path), mode=ImageReadMode.RGB)
    except Exception:  # unsupported by libjpeg/libpng (bmp, tiff, ...) or corrupt: try PIL
        try:
            with Image.open(path) as im:
                arr = torch.from_numpy(_pil_rgb_array(im))
            return arr.permute(2, 0, 1).contiguous()
        except Exception as e:
            raise UnreadableImageError(f"cannot decode image file '{path}': {e}") from e


def _pil_rgb_array(im: Image.Image) -> Any:
    import numpy as np

    return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()


def _cache_key(folder: Path, samples: list[tuple[str, int]], image_size: int | None) -> str:
    h = hashlib.sha1()
    h.update(f"{folder.resolve()}|{image_size}|{len(samples)}".encode())
    for path, label in samples:
        st = os.stat(path)
        h.update(f"|{path}|{label}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()


def load_image_folder(
    folder: str | os.PathLike[str],
    image_size: int | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    num_threads: int | None = None,
) -> tuple[Tensor, Tensor, list[str]]:
    """Decode a whole ImageFolder tree once into ``(uint8 [N,3,H,W], int64 labels, classes)``.

    Files are read and decoded with ``torchvision.io`` in a thread pool, straight into one
    preallocated tensor. With ``cache_dir`` the result is saved as a ``.pt`` file whose name is
    keyed by the folder path, ``image_size``, the file count and every file's size and mtime,
    so any change to the folder invalidates it; a hit loads in about a second.

    Args:
        folder: ImageFolder root (``<class>/<image>``).
        image_size: Resize every image to this square size; ``None`` requires equal sizes.
        cache_dir: Where to read/write the decoded tensor cache (``None``: no cache).
        num_threads: Decoding threads (default: ``min(16, 2 * cpu_count)``).

    Returns:
        Images, labels (ImageFolder order) and class names.

    Raises:
        DatasetNotFoundError: Missing folder or no images in it.
        UnreadableImageError: A file cannot be decoded (names the file), or sizes differ while
            ``image_size`` is ``None``.
    """
    folder = Path(folder).expanduser()
    classes, samples = _scan_folder(folder)
    cache_file = None
    if cache_dir is not None:
        key = _cache_key(folder, samples, image_size)
        cache_file = Path(cache_dir).expanduser() / f"imagefolder-{folder.name}-{key[:20]}.pt"
        if cache_file.is_file():
            try:
                blob = torch.load(cache_file, map_location="cpu", weights_only=True)
                if blob.get("key") == key:
                    return blob["images"], blob["labels"], list(blob["classes"])
            except Exception:  # unreadable/partial cache: rebuild it
                pass

    paths = [p for p, _ in samples]
    labels = torch.tensor([y for _, y in samples], dtype=torch.long)
    first = _decode_file(paths[0])
    if image_size is not None:
        h = w = int(image_size)
    else:
        h, w = int(first.shape[1]), int(first.shape[2])
    images = torch.empty(len(paths), 3, h, w, dtype=torch.uint8)

    def work(lo: int, hi: int) -> None:
        for i in range(lo, hi):
            img = _decode_file(paths[i])
            if img.shape[1:] != (h, w):
                if image_size is None:
                    raise UnreadableImageError(
                        f"image '{paths[i]}' is {img.shape[1]}x{img.shape[2]} but "
                        f"'{paths[0]}' is {h}x{w}; set image_size to resize all images"
                    )
                img = _resize_uint8(img[None], h)[0]
            images[i] = img

    threads = num_threads or min(16, 2 * (os.cpu_count() or 1))
    step = 512
    with ThreadPoolExecutor(threads) as ex:
        futures = [
            ex.submit(work, lo, min(lo + step, len(paths))) for lo in range(0, len(paths), step)
        ]
        for fut in futures:
            fut.result()  # re-raises the first decoding error

    if cache_file is not None:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_suffix(f".tmp{os.getpid()}")
        torch.save({"key": key, "images": images, "labels": labels, "classes": classes}, tmp)
        os.replace(tmp, cache_file)
    return images, labels, classes


class ImageFolderDataModule(ImageDataModule):
    """Any image-classification tree in torchvision ImageFolder layout.

    ``root/<train_dir>/<class>/<image>`` and ``root/<val_dir>/<class>/<image>``; the class
    folders must be the same in every split. Missing or empty folders raise
    :class:`DatasetNotFoundError` with the path.

    Unreadable-image policy: fail fast. A file that neither ``torchvision.io`` nor PIL can decode
    raises :class:`UnreadableImageError` naming the file (during the in-memory decode, or when
    the classic path loads it); nothing is skipped silently, so the dataset never shrinks.

    Images are resized only if ``image_size`` is set; otherwise all must have the same size.
    The default normalisation is CIFAR-10's (the intended data is a JPEG copy of CIFAR-10); pass
    ``mean``/``std`` for other data.

    Args:
        root: Dataset root holding the split folders.
        train_dir: Training split folder, relative to ``root``.
        val_dir: Validation split folder.
        test_dir: Test split folder; ``None`` uses ``val_dir``.
        cache_dir: Folder for the decoded ``.pt`` cache of the in-memory path (``None``: none).
        **kwargs: Options of :class:`ImageDataModule`.
    """

    def __init__(
        self,
        root: str | os.PathLike[str] | None,
        train_dir: str = "train",
        val_dir: str = "test",
        test_dir: str | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if root is None:
            raise ValueError(
                "the imagefolder dataset needs root (data.root): a folder holding "
                f"'{train_dir}/<class>/<image>' and '{val_dir}/<class>/<image>'"
            )
        self.root = Path(root).expanduser()
        self.train_dir = train_dir or "train"
        self.val_dir = val_dir or "test"
        self.test_dir = test_dir or self.val_dir
        self.cache_dir = None if cache_dir is None else Path(cache_dir).expanduser()
        self._prepared: dict[str, tuple[Tensor, Tensor, list[str]]] = {}

    def _split_key(self, split: str) -> str:
        return {"train": self.train_dir, "val": self.val_dir, "test": self.test_dir}[split]

    def _folder(self, key: str) -> Path:
        return self.root / key

    def _find_classes(self) -> list[str]:
        return _scan_folder(self._folder(self.train_dir))[0]

    def _check_classes(self, key: str, classes: list[str]) -> None:
        if classes != self.classes:
            raise ValueError(
                f"class folders of '{self._folder(key)}' ({len(classes)}) differ from those of "
                f"'{self._folder(self.train_dir)}' ({len(self.classes)}); every split needs the "
                "same class subfolders"
            )

    def prepare_data(self) -> None:
        """Check the folders exist; with ``cache_dir`` and in-memory, build the decode cache.

        Runs on one process per node, so under DDP only one process decodes and writes the
        cache, and the others load it in ``setup``.
        """
        keys = dict.fromkeys([self.train_dir, self.val_dir, self.test_dir])
        for key in keys:
            _scan_folder(self._folder(key))
        if self.in_memory and self.cache_dir is not None:
            for key in keys:
                self._prepared[key] = load_image_folder(
                    self._folder(key), self.image_size, self.cache_dir
                )

    def _load_tensors(self, key: str) -> tuple[Tensor, ...]:
        if key in self._prepared:  # decoded by prepare_data in this very process
            images, labels, classes = self._prepared.pop(key)
        else:
            images, labels, classes = load_image_folder(
                self._folder(key), self.image_size, self.cache_dir
            )
        self._check_classes(key, classes)
        return images, labels

    def _load_pil_dataset(self, key: str) -> Dataset:
        from torchvision.datasets import ImageFolder

        folder = self._folder(key)
        classes, samples = _scan_folder(folder)
        self._check_classes(key, classes)
        if self.image_size is not None:
            expected = None
            self._image_hw = (self.image_size, self.image_size)
        else:
            with Image.open(samples[0][0]) as im:
                expected = im.size  # (W, H)
            hw = (expected[1], expected[0])
            if self._image_hw not in (None, hw):
                raise ValueError(
                    f"'{folder}' has {hw[0]}x{hw[1]} images but another split has "
                    f"{self._image_hw[0]}x{self._image_hw[1]}; set image_size to resize them"
                )
            self._image_hw = hw
        return ImageFolder(str(folder), loader=_CheckedLoader(expected))


class _CheckedLoader:
    """PIL loader that names the file on decode errors and checks the image size (picklable)."""

    def __init__(self, size: tuple[int, int] | None) -> None:
        self.size = size

    def __call__(self, path: str) -> Image.Image:
        try:
            with Image.open(path) as im:
                img = im.convert("RGB")
        except Exception as e:
            raise UnreadableImageError(f"cannot decode image file '{path}': {e}") from e
        if self.size is not None and img.size != self.size:
            raise UnreadableImageError(
                f"image '{path}' is {img.size[1]}x{img.size[0]} but the split's images are "
                f"{self.size[1]}x{self.size[0]}; set image_size to resize all images"
            )
        return img


# --------------------------------------------------------------------------------------------
# Shapes
# --------------------------------------------------------------------------------------------


class ShapesDataModule(ImageDataModule):
    """The procedural shapes set (:func:`distill.data.shapes.make_shapes`), with boxes/masks.

    The data depends only on ``data_seed`` (train) and a seed derived from it (test), so runs
    with different ``seed`` (shuffling/augmentation) train on the same images. Validation is
    the test set, or with ``val_fraction > 0`` a holdout of the training set.

    Args:
        num_train: Training images.
        num_val: Test images (also the validation images when there is no holdout).
        data_seed: Seed of the generated images.
        image_size: Generated image size (square).
        return_boxes: Val/test batches are ``(images, labels, boxes, masks)`` instead of
            ``(images, labels)``; ``val_boxes`` / ``val_masks`` are available either way.
        **kwargs: Options of :class:`ImageDataModule` (``seed``, ``batch_size``, ...).
    """

    default_mean = SHAPES_MEAN
    default_std = SHAPES_STD

    def __init__(
        self,
        num_train: int = 10000,
        num_val: int = 2000,
        data_seed: int = 0,
        image_size: int = 32,
        return_boxes: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.num_train = int(num_train)
        self.num_val = int(num_val)
        self.data_seed = int(data_seed)
        self.shape_size = int(image_size)
        self.return_boxes = bool(return_boxes)
        self._generated: dict[str, Any] = {}

    @property
    def num_classes(self) -> int:
        """Number of shape classes."""
        return len(SHAPES_CLASSES)

    def _find_classes(self) -> list[str]:
        return list(SHAPES_CLASSES)

    def _generate(self, key: str) -> Any:
        if key not in self._generated:
            if key == "train":
                self._generated[key] = make_shapes(self.num_train, self.data_seed, self.shape_size)
            else:
                seed = _mix_seed(self.data_seed, 0x5EED)
                self._generated[key] = make_shapes(self.num_val, seed, self.shape_size)
        return self._generated[key]

    def _extras(self, split: str) -> int:
        return 2 if (self.return_boxes and split != "train") else 0

    def _load_tensors(self, key: str) -> tuple[Tensor, ...]:
        d = self._generate(key)
        return d.images, d.labels, d.boxes, d.masks

    def _load_pil_dataset(self, key: str) -> Dataset:
        d = self._generate(key)
        self._image_hw = (self.shape_size, self.shape_size)
        if self.return_boxes:  # the holdout of the training split needs them too
            return _TensorImageDataset(d.images, d.labels, d.boxes, d.masks)
        return _TensorImageDataset(d.images, d.labels)

    def split_extras(self, split: str) -> tuple[Tensor, Tensor]:
        """int64 ``[N, 4]`` boxes ``(x0, y0, x1, y1)`` and bool ``[N, H, W]`` object masks of an
        evaluation split (``"val"`` or ``"test"``), in loader order."""
        if split == "val" and self.has_holdout:
            d = self._generate("train")
            holdout = self.holdout_indices()[1]
            return d.boxes[holdout], d.masks[holdout]
        if split not in ("val", "test"):
            raise ValueError(f"boxes exist for the evaluation splits val and test, not {split!r}")
        d = self._generate("test")
        return d.boxes, d.masks

    @property
    def val_boxes(self) -> Tensor:
        """int64 ``[N, 4]`` boxes ``(x0, y0, x1, y1)`` of the validation split, in loader order."""
        return self.split_extras("val")[0]

    @property
    def val_masks(self) -> Tensor:
        """bool ``[N, H, W]`` object masks of the validation split, in loader order."""
        return self.split_extras("val")[1]


# --------------------------------------------------------------------------------------------
# Factory
# --------------------------------------------------------------------------------------------

DATAMODULES: dict[str, tuple[type[ImageDataModule], dict[str, Any]]] = {
    "cifar10": (CIFARDataModule, {"name": "cifar10"}),
    "cifar100": (CIFARDataModule, {"name": "cifar100"}),
    "imagefolder": (ImageFolderDataModule, {}),
    "shapes": (ShapesDataModule, {}),
}
"""Dataset name -> (datamodule class, fixed constructor arguments)."""


def _init_params(cls: type) -> set[str]:
    """Named constructor arguments of ``cls`` and of its bases reached through ``**kwargs``."""
    names: set[str] = set()
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if klass is L.LightningDataModule or init is None:
            continue
        params = inspect.signature(init).parameters.values()
        names |= {p.name for p in params if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            break
    names.discard("self")
    return names


def build_datamodule(name: str, **kwargs: Any) -> ImageDataModule:
    """Build a datamodule by name (``cifar10``, ``cifar100``, ``imagefolder``, ``shapes``).

    Why lenient: a flat ``data:`` config section carries the options of every dataset
    (``root`` for CIFAR/ImageFolder, ``num_train`` for shapes, ...). Arguments that belong to
    another datamodule are dropped; arguments no datamodule knows raise ``TypeError``, so typos
    still fail loudly.

    Args:
        name: Dataset name (case-insensitive).
        **kwargs: Constructor arguments of the chosen datamodule (plus, ignored, those of others).

    Raises:
        ValueError: Unknown name (the message lists the valid ones).
        TypeError: An argument that no datamodule accepts.
    """
    key = str(name).lower()
    if key not in DATAMODULES:
        raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(DATAMODULES)}")
    cls, fixed = DATAMODULES[key]
    own = _init_params(cls) - set(fixed)
    known = set().union(*(_init_params(c) for c, _ in DATAMODULES.values()))
    unknown = sorted(set(kwargs) - known)
    if unknown:
        raise TypeError(
            f"unknown datamodule argument(s) {unknown}; valid: {', '.join(sorted(known))}"
        )
    return cls(**fixed, **{k: v for k, v in kwargs.items() if k in own})
