"""Datasets, storage, batched transforms and LightningDataModules (CIFAR-10/100, ImageFolder, shapes).

Why a package of its own: the training code only needs :func:`build_datamodule` (or
:func:`datamodule_from_config`); everything about where images come from, how they are stored,
decoded and augmented lives here, one module per concern:

* :mod:`~distill.data.sampling`: seeded, sharded, resumable index streams;
* :mod:`~distill.data.splits`: the holdout and class-balanced subsets;
* :mod:`~distill.data.storage`: a uint8 tensor split and a per-sample file split, one interface;
  :mod:`~distill.data.stream` a third, litdata chunks streamed from disk or an object store
  (written once by :mod:`~distill.data.stream_optimize`; needs ``distill[stream]``);
* :mod:`~distill.data.transforms` and :mod:`~distill.data.geometry` (batched ops: pad-crop,
  normalisation, resizes, random-resized crops) and :mod:`~distill.data.preprocess` (which
  transforms a datamodule runs, for either storage);
* :mod:`~distill.data.base`: the datamodule base, with its batch-transfer hooks in
  :mod:`~distill.data.transfer`; one module per dataset (:mod:`~distill.data.cifar`,
  :mod:`~distill.data.imagefolder` with :mod:`~distill.data.decode`,
  :mod:`~distill.data.shapes`, :mod:`~distill.data.streamed`);
* :mod:`~distill.data.builder`: the strict builder.
"""

from distill.data.base import ImageDataModule
from distill.data.builder import DATAMODULES, SECTIONS, build_datamodule, datamodule_from_config
from distill.data.cifar import CIFAR10_CLASSES, DEFAULT_DATA_ROOT, CIFARDataModule
from distill.data.decode import load_image_folder
from distill.data.errors import DatasetNotFoundError, UnreadableImageError
from distill.data.geometry import BatchRandomResizedCrop
from distill.data.imagefolder import ImageFolderDataModule
from distill.data.preprocess import CROPS, ImageTransforms
from distill.data.sampling import IndexBatchSampler, ResumableDataLoader, ShardedIndexSampler
from distill.data.shapes import (
    SHAPES_CLASSES,
    SHAPES_MEAN,
    SHAPES_STD,
    ShapesData,
    ShapesDataModule,
    make_shapes,
)
from distill.data.splits import balanced_subset, holdout_split
from distill.data.storage import FileSplit, TensorBatchDataset, TensorSplit
from distill.data.stream_optimize import optimize_image_folder
from distill.data.streamed import StreamDataModule
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
    "SECTIONS",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "CIFAR100_MEAN",
    "CIFAR100_STD",
    "DEFAULT_DATA_ROOT",
    "SHAPES_CLASSES",
    "SHAPES_MEAN",
    "SHAPES_STD",
    "CROPS",
    "BatchAugment",
    "BatchRandomResizedCrop",
    "CIFARDataModule",
    "DatasetNotFoundError",
    "FileSplit",
    "ImageDataModule",
    "ImageFolderDataModule",
    "ImageTransforms",
    "IndexBatchSampler",
    "Normalize",
    "ResumableDataLoader",
    "ShapesData",
    "ShapesDataModule",
    "ShardedIndexSampler",
    "StreamDataModule",
    "TensorBatchDataset",
    "TensorSplit",
    "UnreadableImageError",
    "balanced_subset",
    "build_datamodule",
    "datamodule_from_config",
    "holdout_split",
    "load_image_folder",
    "make_shapes",
    "optimize_image_folder",
]
