"""The datamodule base: storage choice, splits, global batch size, the loaders.

A dataset subclass gives its samples in either storage (:mod:`distill.data.storage`);
``in_memory`` picks one, once, and everything else goes through the storage's interface. Batch
sizes are global (each process loads ``batch_size // world_size``). Shuffling depends only on
``(seed, epoch)``, batched augmentation on ``(seed, epoch, rank, batch)`` (the batch-transfer
hooks, :mod:`distill.data.transfer`), per-sample transforms on ``(seed, epoch, index)``: batches
do not depend on ``num_workers``, and a run resumed mid-epoch continues with the same batches.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from distill.data.preprocess import ImageTransforms
from distill.data.sampling import ShardedIndexSampler, per_rank_batch_size, start_at_epoch
from distill.data.splits import SplitSelection, stage_splits
from distill.data.storage import FileSplit, LoaderSpec, Split, TensorSplit
from distill.data.transfer import BatchTransferHooks
from distill.data.transforms import CIFAR10_MEAN, CIFAR10_STD, Normalize

__all__ = ["ImageDataModule"]


class ImageDataModule(BatchTransferHooks, L.LightningDataModule):
    """Shared machinery of every dataset: splits, storage, global batch size, transforms.

    Subclasses implement ``_tensor_split(key)`` and ``_file_split(key)`` for a storage key
    returned by ``_split_key(split)``, and ``_find_classes()`` (or ``num_classes``).

    Args:
        batch_size: GLOBAL training batch size (split evenly across DDP processes).
        eval_batch_size: Global val/test batch size; defaults to ``batch_size``.
        num_workers: DataLoader workers of the per-sample and streaming paths (the in-memory
            path uses none).
        pin_memory: Pin host batches for faster host-to-GPU copies.
        in_memory: Tensor storage with batched transforms (True) or per-sample files (False).
        seed: Seed of shuffling and augmentation (not of the data itself).
        augment_seed: Seed of the training stream (order and augmentation) when it must not
            follow ``seed``: students of different seeds then see the same batches, which is
            what lets them share a :class:`distill.TeacherCache`. ``None``: ``seed``.
        augment: Random crop + flip on the training split.
        padding: Zero padding of the ``pad`` crop.
        drop_last: Drop the last incomplete training batch of each rank (as timm's loaders do):
            a batch of one sample would stop batch norm. A rank's share smaller than one
            batch is not dropped: it trains as one batch.
        image_size: Model input size (square); ``None`` keeps the native size (which then must
            be the same for all images).
        crop: Training crop, ``"pad"`` (CIFAR) or ``"random_resized"`` (ImageNet; evaluation
            then resizes and center-crops): see :mod:`distill.data.preprocess`.
        mean: Per-channel normalisation mean (``[0, 1]`` scale); subclass default if ``None``.
        std: Per-channel normalisation std; subclass default if ``None``.
        train_fraction: The class-balanced share of the training split (after the holdout)
            that trains (:class:`~distill.data.splits.SplitSelection`).
        subset_seed: Seed of the holdout and of that share.
        val_fraction: The class-balanced validation holdout. ``val_fraction=0``: validation
            runs on the test split and nothing may be selected on it.
    """

    default_mean: tuple[float, ...] = CIFAR10_MEAN
    default_std: tuple[float, ...] = CIFAR10_STD
    has_boxes: bool = False
    """Whether evaluation batches can carry object boxes and masks (``return_boxes``)."""

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
        drop_last: bool = True,
        image_size: int | None = None,
        crop: str = "pad",
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        train_fraction: float = 1.0,
        subset_seed: int = 0,
        val_fraction: float = 0.0,
        augment_seed: int | None = None,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.selection = SplitSelection(val_fraction, train_fraction, subset_seed)
        self.batch_size = int(batch_size)
        self.eval_batch_size = int(eval_batch_size or batch_size)
        self.num_workers = int(num_workers)
        self.pin_memory = bool(pin_memory)
        self.in_memory = bool(in_memory)
        self.seed = int(seed)
        self.augment_seed = None if augment_seed is None else int(augment_seed)
        self.augment = bool(augment)
        self.padding = int(padding)
        self.drop_last = bool(drop_last)
        self.image_size = None if image_size is None else int(image_size)
        self.transforms = ImageTransforms(
            image_size=self.image_size,
            crop=crop,
            augment=self.augment,
            padding=self.padding,
            mean=mean if mean is not None else self.default_mean,
            std=std if std is not None else self.default_std,
            seed=self.stream_seed,
        )
        self.index_train_batches = False  # training batches end with their sample indices
        self.index_val_batches = False  # validation batches end with their sample indices
        self._train_sampler: ShardedIndexSampler | None = None
        self._stored: dict[str, Split] = {}  # storage key -> its samples
        self._views: dict[str, Split] = {}  # split -> its samples (a view of a storage key)
        self._classes: list[str] | None = None
        self._input_hw: tuple[int, int] | None = None  # model input size, the same in every split

    # ---- properties ------------------------------------------------------------------------

    @property
    def stream_seed(self) -> int:
        """Seed of the training order and augmentation: ``augment_seed``, else ``seed``."""
        return self.seed if self.augment_seed is None else self.augment_seed

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
        return self.transforms.mean

    @property
    def std(self) -> tuple[float, ...]:
        """Normalisation std used for every split."""
        return self.transforms.std

    @property
    def normalize(self) -> Normalize:
        """The normalisation of every split (uint8 or ``[0, 1]`` batches)."""
        return self.transforms.normalize

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of the model input (after ``setup``)."""
        if self._input_hw is None:
            raise RuntimeError("image_shape is known after setup()")
        return (3, *self._input_hw)

    def _world(self) -> tuple[int, int]:
        """``(global_rank, world_size)`` from the attached trainer, else ``(0, 1)``."""
        trainer = self.trainer
        return (0, 1) if trainer is None else (int(trainer.global_rank), int(trainer.world_size))

    @property
    def batch_size_per_device(self) -> int:
        """Training batch size of each process: ``batch_size // trainer.world_size``."""
        return per_rank_batch_size(self.batch_size, self._world()[1])

    @property
    def eval_batch_size_per_device(self) -> int:
        """Val/test batch size of each process."""
        return per_rank_batch_size(self.eval_batch_size, self._world()[1])

    @property
    def has_holdout(self) -> bool:
        """Whether validation runs on a holdout of the training split (not on the test split)."""
        return self.selection.has_holdout

    def split_size(self, split: str) -> int:
        """Number of samples of ``split`` (loads it if needed)."""
        return len(self._split(split))

    def holdout_indices(self) -> tuple[Tensor, Tensor]:
        """``(train, holdout)`` indices into the full training split (``val_fraction > 0``)."""
        return self.selection.holdout(self._storage(self._split_key("train")))

    # ---- subclass hooks ----------------------------------------------------------------------

    def _split_key(self, split: str) -> str:
        """Storage key of a split; val and test share one by default (same data)."""
        return "train" if split == "train" else "test"

    def _find_classes(self) -> list[str]:
        raise NotImplementedError

    def _tensor_split(self, key: str) -> TensorSplit:
        """The samples of a storage key decoded into uint8 tensors."""
        raise NotImplementedError

    def _file_split(self, key: str) -> FileSplit:
        """The samples of a storage key, read per sample."""
        raise NotImplementedError

    def _extras(self, split: str) -> int:
        """How many extra tensors after the labels a split's batches carry."""
        return 0

    # ---- setup -------------------------------------------------------------------------------

    def setup(self, stage: str | None = None) -> None:
        """Load the splits needed for ``stage`` (idempotent: loaded splits are kept)."""
        for split in stage_splits(stage):
            self._split(split)
        self._report_capped_holdout()

    def _report_capped_holdout(self) -> None:
        """Say, once, which classes keep their only image(s) out of the holdout to train."""
        capped, self.selection.capped = self.selection.capped, []
        if capped:
            names = ", ".join(
                f"{self.classes[c]!r} ({n} image{'s' * (n > 1)})" for c, n in capped[:5]
            )
            more = f" and {len(capped) - 5} more" if len(capped) > 5 else ""
            warnings.warn(
                f"data.val_fraction={self.selection.val_fraction} would hold out every training "
                f"image of {names}{more}: each such class keeps one image to train and holds "
                "out the rest",
                UserWarning,
                stacklevel=2,
            )

    def _storage(self, key: str) -> Split:
        """The samples of a storage key in the chosen storage, loaded once."""
        if key not in self._stored:
            if self.in_memory:
                split = self._tensor_split(key)
                split = TensorSplit(self.transforms.store(split.images), *split.tensors[1:])
            else:
                split = self._file_split(key)
            self._check(key, split)
            self._stored[key] = split
        return self._stored[key]

    def _split(self, split: str) -> Split:
        """The samples of ``split`` (see :class:`~distill.data.splits.SplitSelection`)."""
        if split not in self._views:
            stored = lambda name: self._storage(self._split_key(name))  # noqa: E731
            self._views[split] = self.selection.select(split, stored)
        return self._views[split]

    def _check(self, key: str, split: Split) -> None:
        """Every split gives the same input size, and labels below ``num_classes``."""
        hw = self.transforms.output_hw(split.image_hw)
        if self._input_hw is None:
            self._input_hw = hw
        elif self._input_hw != hw:
            raise ValueError(
                f"split {key!r} has {hw[0]}x{hw[1]} images but another split has "
                f"{self._input_hw[0]}x{self._input_hw[1]}; set data.image_size to resize them"
            )
        labels = split.labels
        if labels.numel() and int(labels.max()) >= self.num_classes:
            raise ValueError(f"split {key!r} has label {int(labels.max())} >= {self.num_classes}")

    # ---- dataloaders -------------------------------------------------------------------------

    def _loader(self, split: str) -> DataLoader:
        train = split == "train"
        rank, world = self._world()
        batch_size = self.batch_size_per_device if train else self.eval_batch_size_per_device
        # A rank's share smaller than one batch trains as one (incomplete) batch, not as none.
        share = math.ceil(len(self._split(split)) / world) if train else 0  # this rank's samples
        drop_last = train and self.drop_last and share >= batch_size
        spec = LoaderSpec(
            batch_size=batch_size,
            train=train,
            seed=self.stream_seed if train else self.seed,
            rank=rank,
            world=world,
            drop_last=drop_last,
            keep=2 + self._extras(split),
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            with_index=self._indexed(split),
        )
        loader = self._split(split).loader(spec, self.transforms)
        if train:
            sampler = loader.sampler
            self._train_sampler = sampler if isinstance(sampler, ShardedIndexSampler) else None
            fit_loop = getattr(self.trainer, "fit_loop", None)
            if fit_loop is not None:  # start at the epoch a resumed fit is in
                start_at_epoch(loader, fit_loop.epoch_progress.current.processed)
        return loader

    def _indexed(self, split: str) -> bool:
        """Whether ``split``'s batches end with their sample indices (a teacher cache's rows)."""
        if split == "train":
            return self.index_train_batches or self.teacher_cache is not None
        return split == "val" and (self.index_val_batches or self.val_teacher_cache is not None)

    def train_dataloader(self) -> DataLoader:
        """Shuffled, sharded training batches (uint8 in memory, normalised float per sample)."""
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
        """A fixed, class-diverse set of ``n`` samples of an evaluation split (all if fewer).

        Evenly spaced indices over the split (class-sorted for ImageFolder and shapes, and so
        is the holdout): the same images on every call and every run.

        Returns:
            Normalised float images ``[n, 3, H, W]`` and int64 labels ``[n]``, on the CPU.
        """
        return self._split(split).eval_batch(self.fixed_indices(n, split), self.transforms)

    def fixed_indices(self, n: int, split: str = "val") -> Tensor:
        """The indices into ``split`` (loader order) of the samples :meth:`fixed_batch` returns."""
        size = len(self._split(split))
        n = max(0, min(int(n), size))
        return (torch.arange(n) * size) // max(n, 1)
