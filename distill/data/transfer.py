"""The datamodule's batch-transfer hooks: teacher-cache rows before the copy, transforms after.

Why per-batch seeds: batched augmentation runs on the device, after the transfer, seeded by
``(seed, epoch, rank, batch)``; a run resumed mid-epoch then augments the remaining batches
exactly as an uninterrupted run would. Because the datamodule overrides ``on_after_batch_transfer``,
Lightning uses it instead of a LightningModule's own.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import lightning as L

from distill.data.preprocess import ImageTransforms
from distill.data.sampling import IndexBatchSampler, ShardedIndexSampler, mix_seed

__all__ = ["BatchTransferHooks"]


class BatchTransferHooks:
    """Lightning's batch-transfer hooks of :class:`~distill.data.base.ImageDataModule`.

    A mixin placed before ``L.LightningDataModule``: its methods override the datamodule's
    default hooks, so Lightning calls them. The class that uses it provides ``transforms``,
    ``stream_seed``, ``trainer`` and the training loader's sampler (``_train_sampler``).
    """

    # Provided by the datamodule; ``stream_seed`` is one of its read-only properties.
    transforms: ImageTransforms
    trainer: L.Trainer | None
    _train_sampler: ShardedIndexSampler | None

    if TYPE_CHECKING:

        @property
        def stream_seed(self) -> int: ...

    def __init__(self) -> None:
        super().__init__()
        self.teacher_cache: Any = None  # see attach_teacher_cache
        self.val_teacher_cache: Any = None

    def attach_teacher_cache(self, cache: Any, val_cache: Any = None) -> None:
        """Read the teacher's outputs for every training batch from ``cache``, and for every
        validation batch from ``val_cache``.

        Those batches then end with the cache's rows for ``(epoch, their samples)`` (epoch 0 for
        validation: its transforms are deterministic), read on the host before the transfer
        (:class:`distill.TeacherCache` objects; ``None`` detaches).
        """
        self.teacher_cache = cache
        self.val_teacher_cache = val_cache

    def preprocess(self, batch: Any, train: bool) -> Any:
        """Augment (if ``train``) and normalise the image part of an in-memory batch.

        Float batches (per-sample path: already transformed) are returned unchanged. Use this
        when iterating the dataloaders outside a Lightning trainer.
        """
        return self.transforms.batch(batch, train)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Run :meth:`preprocess` on the device; augment only while the trainer is training."""
        trainer = self.trainer
        train = bool(trainer is not None and trainer.training)
        sampler = self._train_sampler
        if train and trainer is not None and isinstance(sampler, IndexBatchSampler):
            # One seed per (epoch, rank, batch): a run resumed mid-epoch augments the remaining
            # batches exactly as an uninterrupted run would.
            epoch, rank = sampler.current_epoch, trainer.global_rank
            batch_seed = mix_seed(self.stream_seed, epoch, rank, sampler.batches_yielded)
            self.transforms.manual_seed(batch_seed)
        return self.preprocess(batch, train)

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """With a teacher cache, swap a batch's sample indices for its cached rows."""
        trainer = self.trainer
        if trainer is None:
            return batch
        if trainer.training and self.teacher_cache is not None:
            return (*batch[:-1], self.teacher_cache.rows(trainer.current_epoch, batch[-1]))
        validating = trainer.validating or trainer.sanity_checking
        if validating and self.val_teacher_cache is not None:
            return (*batch[:-1], self.val_teacher_cache.rows(0, batch[-1]))
        return batch
