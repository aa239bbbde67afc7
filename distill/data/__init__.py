"""Datasets, batched transforms and LightningDataModules (CIFAR-10/100, ImageFolder, shapes).

Why a package of its own: the training code only needs ``build_datamodule(name, **kwargs)``;
everything about where images come from, how they are decoded and augmented lives here.
"""

from distill.data.datamodules import (
    CIFAR10_CLASSES,
    DATAMODULES,
    DEFAULT_DATA_ROOT,
    CIFARDataModule,
    DatasetNotFoundError,
    ImageDataModule,
    ImageFolderDataModule,
    IndexBatchSampler,
    ShapesDataModule,
    ShardedIndexSampler,
    TensorBatchDataset,
    UnreadableImageError,
    build_datamodule,
    load_image_folder,
)
from distill.data.shapes import SHAPES_CLASSES, SHAPES_MEAN, SHAPES_STD, ShapesData, make_shapes
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
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "CIFAR100_MEAN",
    "CIFAR100_STD",
    "DEFAULT_DATA_ROOT",
    "SHAPES_CLASSES",
    "SHAPES_MEAN",
    "SHAPES_STD",
    "BatchAugment",
    "CIFARDataModule",
    "DatasetNotFoundError",
    "ImageDataModule",
    "ImageFolderDataModule",
    "IndexBatchSampler",
    "Normalize",
    "ShapesData",
    "ShapesDataModule",
    "ShardedIndexSampler",
    "TensorBatchDataset",
    "UnreadableImageError",
    "build_datamodule",
    "load_image_folder",
    "make_shapes",
]
