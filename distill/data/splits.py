"""Which stored samples form the train, val and test splits.

Why its own module: the evaluation protocol depends on it. Checkpoints are selected on a
class-balanced, seeded holdout of the training split (never on the test split), and data-scarce
runs keep a class-balanced share of what the holdout leaves; both depend only on the labels and
``subset_seed``, so every method of a comparison sees the same images.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from distill.data.sampling import mix_seed
from distill.data.storage import Split

__all__ = ["SPLITS", "SplitSelection", "balanced_subset", "holdout_split", "stage_splits"]

SPLITS = ("train", "val", "test")
_STAGE_SPLITS = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",)}


def stage_splits(stage: str | None) -> tuple[str, ...]:
    """The splits a Lightning stage uses: ``predict`` runs on test; no (or another) stage, all."""
    return _STAGE_SPLITS.get("test" if stage == "predict" else stage or "", SPLITS)


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


def holdout_split(labels: Tensor, fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """Split indices ``0..N-1`` into ``(train, holdout)``: the holdout is a class-balanced,
    seeded ``fraction`` of every class (:func:`balanced_subset`), the rest trains.

    Why: checkpoints must be selected on images that are neither trained on nor tested on.
    """
    holdout = balanced_subset(labels, fraction, mix_seed(seed, 0x0DA7A))
    keep = torch.ones(len(labels), dtype=torch.bool)
    keep[holdout] = False
    return keep.nonzero().flatten(), holdout


class SplitSelection:
    """The samples of each split, as views of the stored data of the splits.

    * train: the training data minus the holdout, then a class-balanced ``train_fraction``;
    * val: the holdout, or the test data when there is none (``val_fraction == 0``);
    * test: the test data.

    Args:
        val_fraction: Class-balanced share of the training data held out for validation.
        train_fraction: Class-balanced share of the rest that trains.
        subset_seed: Seed of the holdout and of the share.
    """

    def __init__(self, val_fraction: float, train_fraction: float, subset_seed: int) -> None:
        if not 0 < train_fraction <= 1:
            raise ValueError(f"train_fraction must be in (0, 1], got {train_fraction}")
        if not 0 <= val_fraction < 1:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
        self.val_fraction = float(val_fraction)
        self.train_fraction = float(train_fraction)
        self.subset_seed = int(subset_seed)
        self._holdout: tuple[Tensor, Tensor] | None = None

    @property
    def has_holdout(self) -> bool:
        """Whether validation runs on a holdout of the training split."""
        return self.val_fraction > 0

    def holdout(self, train: Split) -> tuple[Tensor, Tensor]:
        """``(train, holdout)`` indices into the full training data (computed once)."""
        if not self.has_holdout:
            raise RuntimeError("no holdout: val_fraction is 0")
        if self._holdout is None:
            self._holdout = holdout_split(train.labels, self.val_fraction, self.subset_seed)
        return self._holdout

    def select(self, split: str, stored: Callable[[str], Split]) -> Split:
        """The samples of ``split``; ``stored(name)`` gives the data stored for a split name."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
        if split == "test" or (split == "val" and not self.has_holdout):
            return stored(split)
        data = stored("train")
        if self.has_holdout:
            train, holdout = self.holdout(data)
            data = data.take(holdout if split == "val" else train)
        if split == "train" and self.train_fraction < 1:
            data = data.take(balanced_subset(data.labels, self.train_fraction, self.subset_seed))
        return data
