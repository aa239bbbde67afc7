"""Where a split's samples live: a uint8 tensor in memory, or files read one sample at a time.

Both storages have one interface (:class:`Split`): ``labels``, ``image_hw``, ``take(indices)``,
``loader(...)`` and ``eval_batch(indices, transforms)``. The datamodule picks one storage per
dataset and never branches on it again.

* :class:`TensorSplit` (fast path): ``(uint8 images [N, C, H, W], int64 labels [N], *extras)``.
  Its loader slices the tensors with whole batches of indices (no per-sample Python work, no
  workers) and resumes mid-epoch; augmentation and normalisation run batched on the device
  afterwards (:meth:`ImageTransforms.train_batch`).
* :class:`FileSplit` (per-sample path): a dataset of ``(PIL image, label, *extras)`` items,
  transformed per sample in loader workers under a seed derived from ``(seed, epoch, index)``,
  so batches do not depend on ``num_workers``. Batches arrive normalised.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset

from distill.data.sampling import (
    IndexBatchSampler,
    ResumableDataLoader,
    ShardedIndexSampler,
    mix_seed,
)

if TYPE_CHECKING:
    from distill.data.preprocess import ImageTransforms

__all__ = [
    "FileSplit",
    "LoaderSpec",
    "SeededTransformDataset",
    "Split",
    "TensorBatchDataset",
    "TensorImageDataset",
    "TensorSplit",
]


@dataclass(frozen=True)
class LoaderSpec:
    """How one split is iterated on this process.

    Attributes:
        batch_size: Per-device batch size.
        train: Shuffle (per-epoch seeded permutation) and apply the training transforms.
        seed: Seed of the permutation and of per-sample transforms.
        rank: Global rank of this process.
        world: World size.
        drop_last: Drop this rank's last incomplete batch.
        keep: Items per batch: images, labels and the first ``keep - 2`` extras.
        num_workers: Loader workers (per-sample path only).
        pin_memory: Pin host batches.
        with_index: Append each sample's index in the split (int64) to its batch, last.
    """

    batch_size: int
    train: bool
    seed: int
    rank: int = 0
    world: int = 1
    drop_last: bool = False
    keep: int = 2
    num_workers: int = 0
    pin_memory: bool = False
    with_index: bool = False


class Split(Protocol):
    """The samples of one split, in a storage of its own."""

    @property
    def labels(self) -> Tensor:
        """int64 ``[N]`` labels, in sample order."""
        ...

    @property
    def image_hw(self) -> tuple[int, int]:
        """``(H, W)`` of the stored images."""
        ...

    def __len__(self) -> int: ...

    def take(self, index: Tensor) -> Split:
        """The samples ``index`` (int64), in that order, in the same storage."""
        ...

    def loader(self, spec: LoaderSpec, transforms: ImageTransforms) -> DataLoader:
        """A loader over the samples, sharded and seeded as ``spec`` says."""
        ...

    def eval_batch(self, index: Tensor, transforms: ImageTransforms) -> tuple[Tensor, Tensor]:
        """Normalised float images (evaluation transform) and labels of ``index``, on the CPU."""
        ...


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


class TensorSplit:
    """A split held as ``(uint8 images [N, C, H, W], int64 labels [N], *extras)`` tensors."""

    def __init__(self, images: Tensor, labels: Tensor, *extras: Tensor) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected uint8 [N,3,H,W] images, got {tuple(images.shape)}")
        self.tensors = (images, labels, *extras)

    @property
    def images(self) -> Tensor:
        """uint8 ``[N, 3, H, W]``."""
        return self.tensors[0]

    @property
    def labels(self) -> Tensor:
        return self.tensors[1]

    @property
    def extras(self) -> tuple[Tensor, ...]:
        """Per-sample tensors after the labels (e.g. boxes and masks)."""
        return self.tensors[2:]

    @property
    def image_hw(self) -> tuple[int, int]:
        return int(self.images.shape[2]), int(self.images.shape[3])

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def take(self, index: Tensor) -> TensorSplit:
        return TensorSplit(*(t[index] for t in self.tensors))

    def loader(self, spec: LoaderSpec, transforms: ImageTransforms) -> DataLoader:
        sampler = IndexBatchSampler(
            len(self),
            spec.batch_size,
            shuffle=spec.train,
            seed=spec.seed,
            num_replicas=spec.world,
            rank=spec.rank,
            drop_last=spec.drop_last,
        )
        index = (torch.arange(len(self)),) if spec.with_index else ()
        return ResumableDataLoader(
            TensorBatchDataset(*self.tensors[: spec.keep], *index),
            batch_size=None,
            sampler=sampler,
            num_workers=0,
            pin_memory=spec.pin_memory,
        )

    def eval_batch(self, index: Tensor, transforms: ImageTransforms) -> tuple[Tensor, Tensor]:
        return transforms.eval_batch(self.images[index]), self.labels[index].clone()


class FileSplit:
    """A split read one sample at a time from ``dataset`` (items ``(PIL image, label, *extras)``).

    Args:
        dataset: The samples; ``dataset[i]`` decodes sample ``i``.
        labels: int64 ``[N]`` labels of ``dataset``, known without decoding.
        image_hw: ``(H, W)`` of the images as decoded (all equal), before any transform.
    """

    def __init__(self, dataset: Dataset, labels: Tensor, image_hw: tuple[int, int]) -> None:
        if len(dataset) != len(labels):  # type: ignore[arg-type]
            raise ValueError(f"{len(dataset)} samples but {len(labels)} labels")  # type: ignore[arg-type]
        self.dataset = dataset
        self._labels = labels
        self._image_hw = (int(image_hw[0]), int(image_hw[1]))

    @property
    def labels(self) -> Tensor:
        return self._labels

    @property
    def image_hw(self) -> tuple[int, int]:
        return self._image_hw

    def __len__(self) -> int:
        return int(self._labels.shape[0])

    def take(self, index: Tensor) -> FileSplit:
        return FileSplit(Subset(self.dataset, index.tolist()), self._labels[index], self._image_hw)

    def loader(self, spec: LoaderSpec, transforms: ImageTransforms) -> DataLoader:
        dataset = SeededTransformDataset(
            self.dataset,
            transforms.sample(spec.train, self._image_hw),
            spec.seed,
            keep=spec.keep,
            with_index=spec.with_index,
        )
        sampler = ShardedIndexSampler(
            len(self), shuffle=spec.train, seed=spec.seed, num_replicas=spec.world, rank=spec.rank
        )
        return DataLoader(
            dataset,
            batch_size=spec.batch_size,
            sampler=sampler,
            num_workers=spec.num_workers,
            pin_memory=spec.pin_memory,
            drop_last=spec.drop_last,
            persistent_workers=spec.num_workers > 0,
        )

    def eval_batch(self, index: Tensor, transforms: ImageTransforms) -> tuple[Tensor, Tensor]:
        transform = transforms.sample(False, self._image_hw)
        images = [transform(self.dataset[i][0]) for i in index.tolist()]
        if not images:
            return torch.empty(0, 3, *transforms.output_hw(self._image_hw)), self._labels[:0]
        return torch.stack(images), self._labels[index].clone()


class TensorImageDataset(Dataset):
    """Per-sample view of uint8 image tensors as PIL images (per-sample path for tensor data)."""

    def __init__(self, images: Tensor, labels: Tensor, *extras: Tensor) -> None:
        self.images = images.permute(0, 2, 3, 1).contiguous().numpy()
        self.labels = labels.tolist()
        self.extras = extras

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[Any, ...]:
        return (Image.fromarray(self.images[i]), self.labels[i], *(e[i] for e in self.extras))


class SeededTransformDataset(Dataset):
    """Apply ``transform`` to item[0] under a torch seed derived from ``(seed, epoch, index)``.

    Why: torchvision's random transforms draw from the global torch RNG, whose state depends on
    the worker layout; a per-sample seed makes the augmented batches reproducible and identical
    for any ``num_workers``. Keys are ``(epoch, index)`` pairs (from
    :class:`~distill.data.sampling.ShardedIndexSampler`) or plain indices (epoch 0).
    """

    def __init__(
        self,
        base: Dataset,
        transform: Callable[[Any], Any],
        seed: int,
        keep: int | None = None,
        with_index: bool = False,
    ) -> None:
        self.base = base
        self.transform = transform
        self.seed = int(seed)
        self.keep = keep  # items per sample to return (drops extras a split does not use)
        self.with_index = with_index  # append the sample's index, last

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[Any, ...]:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        item = self.base[index]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(mix_seed(self.seed, epoch, index))
            img = self.transform(item[0])
        return (img, *item[1 : self.keep], *((index,) if self.with_index else ()))
