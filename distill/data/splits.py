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

from distill.data.errors import DatasetNotFoundError
from distill.data.sampling import mix_seed
from distill.data.storage import Split
from distill.errors import ConfigError

__all__ = [
    "SPLITS",
    "SplitSelection",
    "balanced_subset",
    "capped_classes",
    "check_same_classes",
    "holdout_split",
    "stage_splits",
]

SPLITS = ("train", "val", "test")
_STAGE_SPLITS = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",)}


def stage_splits(stage: str | None) -> tuple[str, ...]:
    """The splits a Lightning stage uses: ``predict`` runs on test; no (or another) stage, all."""
    return _STAGE_SPLITS.get("test" if stage == "predict" else stage or "", SPLITS)


def balanced_subset(labels: Tensor, fraction: float, seed: int, leave: int = 0) -> Tensor:
    """Sorted indices of ``round(fraction * n_c)`` random samples of every class ``c`` (at
    least one per class, at most ``n_c - leave``), drawn with ``seed``."""
    g = torch.Generator().manual_seed(int(seed))
    keep = []
    for cls in labels.unique(sorted=True):
        members = (labels == cls).nonzero().flatten()
        count = min(max(1, round(fraction * len(members))), len(members) - leave)
        keep.append(members[torch.randperm(len(members), generator=g)[:count]])
    return torch.cat(keep).sort().values


def holdout_split(labels: Tensor, fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """Split indices ``0..N-1`` into ``(train, holdout)``: the holdout is a class-balanced,
    seeded ``fraction`` of every class (:func:`balanced_subset`), the rest trains. A class never
    gives the holdout its last image: it keeps one to train (a class of one image holds out
    none), so no class is trained on nothing.

    Why: checkpoints must be selected on images that are neither trained on nor tested on.
    """
    holdout = balanced_subset(labels, fraction, mix_seed(seed, 0x0DA7A), leave=1)
    keep = torch.ones(len(labels), dtype=torch.bool)
    keep[holdout] = False
    return keep.nonzero().flatten(), holdout


def capped_classes(labels: Tensor, fraction: float) -> list[tuple[int, int]]:
    """``(label, images)`` of the classes whose holdout :func:`holdout_split` capped so that
    they keep one image to train (``fraction`` of them rounds to all of them)."""
    values, counts = labels.unique(sorted=True, return_counts=True)
    return [
        (int(c), int(n))
        for c, n in zip(values.tolist(), counts.tolist(), strict=True)
        if max(1, round(fraction * n)) >= n
    ]


def _names(names: list[str], limit: int = 5) -> str:
    shown = ", ".join(repr(n) for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def check_same_classes(reference: str, expected: list[str], where: str, found: list[str]) -> None:
    """Refuse, in one line naming the classes that differ, a split whose classes are not the
    training split's: its labels would mean other classes.

    Raises:
        DatasetNotFoundError: ``found`` (the classes of ``where``) differs from ``expected``
            (those of ``reference``).
    """
    if found == expected:
        return
    extra = [c for c in found if c not in set(expected)]
    missing = [c for c in expected if c not in set(found)]
    parts = [f"only in '{where}': {_names(extra)}"] if extra else []
    parts += [f"only in '{reference}': {_names(missing)}"] if missing else []
    if not parts:
        parts = ["the same names in another order"]
    raise DatasetNotFoundError(
        f"the classes of '{where}' differ from those of '{reference}' ({'; '.join(parts)}); "
        "every split needs the same class folders"
    )


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
        self.capped: list[tuple[int, int]] = []  # see capped_classes, once the holdout is drawn

    @property
    def has_holdout(self) -> bool:
        """Whether validation runs on a holdout of the training split."""
        return self.val_fraction > 0

    def holdout(self, train: Split) -> tuple[Tensor, Tensor]:
        """``(train, holdout)`` indices into the full training data (computed once)."""
        if not self.has_holdout:
            raise RuntimeError("no holdout: val_fraction is 0")
        if self._holdout is None:
            labels = train.labels
            self._holdout = holdout_split(labels, self.val_fraction, self.subset_seed)
            self.capped = capped_classes(labels, self.val_fraction)
            if len(labels) and not len(self._holdout[1]):
                raise ConfigError(
                    f"data.val_fraction={self.val_fraction} leaves nothing to validate on: "
                    "every class has a single training image, which it keeps to train; set "
                    "data.val_fraction=0 (validation on the test split) or add images"
                )
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
