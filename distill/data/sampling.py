"""Seeded shuffling, sharding across ranks, and resuming the index stream.

Why one module: the order of the samples is the one thing every storage shares. The per-epoch
permutation depends only on ``(seed, epoch)``; each rank takes a disjoint shard of it (and its
share of the global batch); the in-memory loader records how many batches it has yielded so a
checkpoint can resume at the very next batch, and a new loader can start at a given epoch.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, DistributedSampler

__all__ = [
    "IndexBatchSampler",
    "ResumableDataLoader",
    "ShardedIndexSampler",
    "mix_seed",
    "per_rank_batch_size",
    "start_at_epoch",
]


def mix_seed(*parts: int) -> int:
    """Combine integers into one 63-bit seed (stable across runs, unlike ``hash``)."""
    h = hashlib.blake2b(digest_size=8)
    for p in parts:
        h.update(int(p).to_bytes(16, "little", signed=True))
    return int.from_bytes(h.digest(), "little") & ((1 << 63) - 1)


def per_rank_batch_size(global_batch: int, world: int) -> int:
    """Each process's share of a GLOBAL batch size (which must split evenly across ``world``)."""
    if global_batch % world:
        raise ValueError(
            f"global batch size {global_batch} is not divisible by the world size {world}; "
            "choose a batch size that is a multiple of the number of processes"
        )
    return global_batch // world


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


def start_at_epoch(loader: DataLoader, epoch: int) -> None:
    """Make a new training loader's next iteration be over (0-based) ``epoch``.

    Why: a run resumed from a checkpoint written at an epoch's end iterates the new loader
    before Lightning calls ``set_epoch`` (and restores no mid-epoch state), so it would
    replay epoch 0's order and augmentation. Index samplers take ``set_epoch``; a streaming
    loader, which keeps its own epoch counter, takes ``start_at_epoch``.
    """
    if isinstance(loader.sampler, ShardedIndexSampler):
        loader.sampler.set_epoch(epoch)
    elif hasattr(loader, "start_at_epoch"):
        loader.start_at_epoch(epoch)
