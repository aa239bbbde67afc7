"""An ImageFolder tree optimized into litdata chunks, streamed from disk or an object store."""

from __future__ import annotations

import os
from typing import Any

from distill.data.base import ImageDataModule
from distill.data.splits import check_same_classes

__all__ = ["StreamDataModule"]


class StreamDataModule(ImageDataModule):
    """Splits written by ``python -m distill.data.stream optimize SRC OUT``, read as they train.

    ``root/<train_dir>``, ``root/<test_dir>`` and, for a validation holdout, ``root/<holdout_dir>``
    are optimized splits (:mod:`~distill.data.stream_optimize`); ``root`` is a local folder or an
    object-store URI (``s3://bucket/prefix``), passed to litdata as is. Samples are decoded and
    transformed per sample in the loader workers (:class:`~distill.data.stream.StreamSplit`).

    A streamed split cannot be subset at load time, so ``val_fraction`` must be 0 and
    ``train_fraction`` 1: the holdout is carved once when optimizing (``--holdout``). With a
    ``holdout_dir`` validation and checkpoint selection run on it; without, validation runs on
    the test split and the last checkpoint is tested, as with ``val_fraction=0`` in memory.

    Args:
        root: Folder or URI holding the optimized splits.
        train_dir: Training split, relative to ``root``.
        holdout_dir: Validation holdout split (``None``: validate on the test split).
        test_dir: Test split (ImageNet: ``val``, its labelled evaluation set).
        cache_dir: litdata's cache of remote chunks (``None``: its default).
        in_memory: Must be False: the splits are streamed.
        **kwargs: Options of :class:`~distill.data.base.ImageDataModule`.
    """

    def __init__(
        self,
        root: str | os.PathLike[str] | None,
        train_dir: str = "train",
        holdout_dir: str | None = None,
        test_dir: str = "val",
        cache_dir: str | None = None,
        in_memory: bool = False,
        **kwargs: Any,
    ) -> None:
        if in_memory:
            raise ValueError(
                "the stream dataset reads chunks as it trains; set data.in_memory=false "
                "(or use data.name=imagefolder to hold a split in memory)"
            )
        super().__init__(in_memory=False, **kwargs)
        if root is None:
            raise ValueError("the stream dataset needs root (data.root): the optimized folder")
        if self.selection.val_fraction > 0 or self.selection.train_fraction < 1:
            raise ValueError(
                "the stream dataset cannot subset a split at load time (litdata reads whole "
                "chunks): set data.val_fraction=0 and data.train_fraction=1, and carve a holdout "
                "once when optimizing (python -m distill.data.stream optimize SRC OUT --holdout "
                "0.1, then data.stream.holdout_dir=holdout)"
            )
        if self.image_size is None:
            raise ValueError(
                "the stream dataset needs data.image_size: streamed images have any size"
            )
        text = os.fspath(root)
        self.root = text.rstrip("/") if "://" in text else os.path.expanduser(text)
        self.train_dir = train_dir
        self.holdout_dir = holdout_dir
        self.test_dir = test_dir
        self.cache_dir = None if cache_dir is None else os.path.expanduser(cache_dir)
        self._classes_checked = False

    @property
    def has_holdout(self) -> bool:
        """Whether validation runs on a holdout (``holdout_dir``), not on the test split."""
        return self.holdout_dir is not None

    def _split_key(self, split: str) -> str:
        val = self.holdout_dir if self.holdout_dir is not None else self.test_dir
        return {"train": self.train_dir, "val": val, "test": self.test_dir}[split]

    def setup(self, stage: str | None = None) -> None:
        """Check that every split has the training split's classes (from their ``distill.json``
        alone), then load the splits of ``stage``: a test split with other classes is named
        before anything trains, not when it is tested."""
        if not self._classes_checked:
            from distill.data.stream import read_meta

            for key in dict.fromkeys(self._split_key(split) for split in ("val", "test")):
                path = self._path(key)
                classes = list(read_meta(path)["classes"])
                check_same_classes(self._path(self.train_dir), self.classes, path, classes)
            self._classes_checked = True
        super().setup(stage)

    def _path(self, key: str) -> str:
        return f"{self.root}/{key}"

    def _find_classes(self) -> list[str]:
        from distill.data.stream import read_meta

        return list(read_meta(self._path(self.train_dir))["classes"])

    def _storage(self, key: str) -> Any:
        if key not in self._stored:
            from distill.data.stream import StreamSplit

            split = StreamSplit(self._path(key), self.image_size, self.cache_dir)  # type: ignore[arg-type]
            train = self._path(self.train_dir)
            check_same_classes(train, self.classes, self._path(key), split.classes)
            self._check(key, split)
            self._stored[key] = split
        return self._stored[key]
