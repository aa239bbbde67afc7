"""Any image-classification tree in torchvision's ImageFolder layout."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from distill.data.base import ImageDataModule
from distill.data.decode import class_folders, load_image_folder, pil_rgb, scan_folder
from distill.data.errors import DatasetNotFoundError, UnreadableImageError
from distill.data.splits import check_same_classes
from distill.data.storage import FileSplit, TensorSplit

__all__ = ["ImageFolderDataModule"]


class ImageFolderDataModule(ImageDataModule):
    """Any image-classification tree in torchvision ImageFolder layout.

    ``root/<train_dir>/<class>/<image>`` and ``root/<val_dir>/<class>/<image>``; the class
    folders must be the same in every split. Missing or empty folders raise
    :class:`~distill.data.errors.DatasetNotFoundError` with the path.

    Unreadable-image policy: fail fast. A file that neither ``torchvision.io`` nor PIL can decode
    raises :class:`~distill.data.errors.UnreadableImageError` naming the file (during the
    in-memory decode, or when the per-sample path loads it); nothing is skipped silently, so the
    dataset never shrinks.

    Any size and mode (RGB, grayscale, RGBA, palette, CMYK, 16-bit grayscale) is read as 8-bit
    RGB. With ``image_size`` images of any sizes are resized (see ``crop``); without, all must
    have the same size. The default normalisation is CIFAR-10's (the intended data is a JPEG copy of CIFAR-10); pass
    ``mean``/``std`` for other data.

    Args:
        root: Dataset root holding the split folders.
        train_dir: Training split folder, relative to ``root``.
        val_dir: Validation split folder.
        test_dir: Test split folder; ``None`` uses ``val_dir``.
        cache_dir: Folder for the decoded ``.pt`` cache of the in-memory path (``None``: none).
        **kwargs: Options of :class:`~distill.data.base.ImageDataModule`.
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
        self._prepared: dict[str, tuple[torch.Tensor, torch.Tensor, list[str]]] = {}
        self._layout_checked = False

    def _split_key(self, split: str) -> str:
        return {"train": self.train_dir, "val": self.val_dir, "test": self.test_dir}[split]

    def _folder(self, key: str) -> Path:
        return self.root / key

    def _find_classes(self) -> list[str]:
        return scan_folder(self._folder(self.train_dir))[0]

    def _check_classes(self, key: str, classes: list[str]) -> None:
        reference = str(self._folder(self.train_dir))
        check_same_classes(reference, self.classes, str(self._folder(key)), classes)

    def _split_options(self) -> dict[str, str]:
        """Split folder -> the option that names it (a folder named twice: the first), train
        first."""
        folders: dict[str, str] = {}
        for option in ("train_dir", "val_dir", "test_dir"):
            folders.setdefault(getattr(self, option), option)
        return folders

    def _missing_folder(self, key: str, option: str) -> DatasetNotFoundError:
        """The folder of a split is missing: say which option names it and what ``root`` holds."""
        if not self.root.is_dir():
            return DatasetNotFoundError(
                f"data.root '{self.root}' does not exist; set data.root to a folder holding "
                f"'{self.train_dir}/<class>/<image>' and '{self.val_dir}/<class>/<image>'"
            )
        held = sorted(p.name for p in self.root.iterdir() if p.is_dir() and p.name[0] != ".")
        unused = [name for name in held if name not in self._split_options()]
        fix = (
            f"; set data.imagefolder.{option}={unused[0]}"
            if len(unused) == 1
            else f"; set data.imagefolder.{option} to one of {', '.join(unused)}"
            if unused
            else ""
        )
        return DatasetNotFoundError(
            f"split folder '{self._folder(key)}' (data.imagefolder.{option}={key}) does not "
            f"exist; '{self.root}' holds {', '.join(held) or 'no folders'}{fix}"
        )

    def _check_layout(self) -> None:
        """Every split folder exists and holds the training split's class folders: checked from
        folder names alone (cheap), before anything is decoded or trained."""
        if self._layout_checked:
            return
        options = self._split_options()
        for key, option in options.items():
            if not self._folder(key).is_dir():
                raise self._missing_folder(key, option)
        for key in options:
            self._check_classes(key, class_folders(self._folder(key)))
        self._layout_checked = True

    def setup(self, stage: str | None = None) -> None:
        """Check the split folders (:meth:`_check_layout`), then load the splits of ``stage``."""
        self._check_layout()
        super().setup(stage)

    def prepare_data(self) -> None:
        """Check the folders exist and hold images; with ``cache_dir`` and in-memory, build the
        decode cache.

        Runs on one process per node, so under DDP only one process decodes and writes the
        cache, and the others load it in ``setup``.
        """
        self._check_layout()
        keys = dict.fromkeys([self.train_dir, self.val_dir, self.test_dir])
        for key in keys:
            scan_folder(self._folder(key))
        if self.in_memory and self.cache_dir is not None:
            for key in keys:
                self._prepared[key] = self._decode(key)

    def _tensor_split(self, key: str) -> TensorSplit:
        if key in self._prepared:  # decoded by prepare_data in this very process
            images, labels, classes = self._prepared.pop(key)
        else:
            images, labels, classes = self._decode(key)
        self._check_classes(key, classes)
        return TensorSplit(images, labels)

    def _decode(self, key: str) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        """Decode a split at the size the tensor storage keeps (see ``ImageTransforms``)."""
        size, fit = self.transforms.decode_size, self.transforms.fit
        return load_image_folder(self._folder(key), size, self.cache_dir, fit=fit)

    def _file_split(self, key: str) -> FileSplit:
        from torchvision.datasets import ImageFolder

        folder = self._folder(key)
        classes, samples = scan_folder(folder)
        self._check_classes(key, classes)
        first = _CheckedLoader(None)(samples[0][0]).size  # (W, H)
        # With image_size every file is resized; without, each must have the first file's size.
        expected = None if self.image_size is not None else first
        dataset = ImageFolder(str(folder), loader=_CheckedLoader(expected))
        labels = torch.tensor([y for _, y in samples], dtype=torch.long)
        return FileSplit(dataset, labels, (first[1], first[0]))


class _CheckedLoader:
    """PIL loader that names the file on decode errors and checks the image size (picklable)."""

    def __init__(self, size: tuple[int, int] | None) -> None:
        self.size = size

    def __call__(self, path: str) -> Image.Image:
        try:
            with Image.open(path) as im:
                img = pil_rgb(im)
        except Exception as e:
            raise UnreadableImageError(f"cannot decode image file '{path}': {e}") from e
        if self.size is not None and img.size != self.size:
            raise UnreadableImageError(
                f"image '{path}' is {img.size[1]}x{img.size[0]} but the split's images are "
                f"{self.size[1]}x{self.size[0]}; set data.image_size (image_size) to resize all images"
            )
        return img
