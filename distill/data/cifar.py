"""CIFAR-10 / CIFAR-100 from torchvision's python-pickle files."""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import torch

from distill.data.base import ImageDataModule
from distill.data.errors import DatasetNotFoundError
from distill.data.storage import FileSplit, TensorSplit
from distill.data.transforms import CIFAR10_MEAN, CIFAR10_STD, CIFAR100_MEAN, CIFAR100_STD

__all__ = ["CIFAR10_CLASSES", "DEFAULT_DATA_ROOT", "CIFARDataModule"]

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
        """The names in the dataset's meta file; CIFAR-10's known names before it exists."""
        meta = self.root / self._tv_class.base_folder / self._tv_class.meta["filename"]
        if not meta.is_file():
            if self.name == "cifar10":
                return list(CIFAR10_CLASSES)
            self._tv_dataset("test")  # downloads it, or raises the clear error
        try:
            with open(meta, "rb") as f:
                return list(pickle.load(f, encoding="latin1")[self._tv_class.meta["key"]])
        except OSError as e:
            raise self._missing(e) from e

    def _tensor_split(self, key: str) -> TensorSplit:
        ds = self._tv_dataset(key)
        images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()
        return TensorSplit(images, torch.as_tensor(ds.targets, dtype=torch.long))

    def _file_split(self, key: str) -> FileSplit:
        ds = self._tv_dataset(key)
        hw = (int(ds.data.shape[1]), int(ds.data.shape[2]))
        return FileSplit(ds, torch.as_tensor(ds.targets, dtype=torch.long), hw)
