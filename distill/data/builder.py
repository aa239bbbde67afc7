"""Build a datamodule by name, strictly: every option must belong to the chosen dataset.

Why strict: a misspelt or misplaced option that is silently dropped trains on other data than the
user asked for. Options that only one dataset understands live in that dataset's own config
section (``data.cifar``, ``data.imagefolder``, ``data.shapes``, ``data.stream``); :func:`datamodule_from_config`
passes the shared options and the chosen dataset's section, nothing else.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

import lightning as L

from distill.data.base import ImageDataModule
from distill.data.cifar import CIFARDataModule
from distill.data.imagefolder import ImageFolderDataModule
from distill.data.shapes import ShapesDataModule
from distill.data.streamed import StreamDataModule

__all__ = ["DATAMODULES", "SECTIONS", "build_datamodule", "datamodule_from_config", "options_of"]

DATAMODULES: dict[str, tuple[type[ImageDataModule], dict[str, Any]]] = {
    "cifar10": (CIFARDataModule, {"name": "cifar10"}),
    "cifar100": (CIFARDataModule, {"name": "cifar100"}),
    "imagefolder": (ImageFolderDataModule, {}),
    "shapes": (ShapesDataModule, {}),
    "stream": (StreamDataModule, {}),
}
"""Dataset name -> (datamodule class, fixed constructor arguments)."""

SECTIONS: dict[str, str] = {
    "cifar10": "cifar",
    "cifar100": "cifar",
    "imagefolder": "imagefolder",
    "shapes": "shapes",
    "stream": "stream",
}
"""Dataset name -> its own section of the ``data`` config."""


def options_of(cls: type) -> list[str]:
    """Constructor options of a datamodule class, including those it forwards to its bases."""
    names: list[str] = []
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if klass is L.LightningDataModule or init is None:
            continue
        params = inspect.signature(init).parameters.values()
        names += [p.name for p in params if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            break
    return [n for n in dict.fromkeys(names) if n != "self"]


def build_datamodule(name: str, **kwargs: Any) -> ImageDataModule:
    """Build a datamodule by name (``cifar10``, ``cifar100``, ``imagefolder``, ``shapes``,
    ``stream``).

    Args:
        name: Dataset name (case-insensitive).
        **kwargs: Constructor options of that dataset's datamodule.

    Raises:
        ValueError: Unknown name (the message lists the valid ones).
        TypeError: An option the dataset does not take; the message names the datasets that
            do take it, or lists the valid options.

    Example:
        >>> build_datamodule("shapes", num_train=60, batch_size=16).num_classes
        6
    """
    key = str(name).lower()
    if key not in DATAMODULES:
        raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(DATAMODULES)}")
    cls, fixed = DATAMODULES[key]
    valid = [o for o in options_of(cls) if o not in fixed]
    for option in kwargs:
        if option in valid:
            continue
        owners = [
            n for n, (c, f) in DATAMODULES.items() if option in options_of(c) and option not in f
        ]
        where = (
            f"it is an option of {', '.join(owners)}" if owners else f"valid: {', '.join(valid)}"
        )
        raise TypeError(f"dataset {key!r} has no option {option!r}; {where}")
    return cls(**fixed, **kwargs)


def datamodule_from_config(
    data: Mapping[str, Any], *, seed: int, boxes: bool = False
) -> ImageDataModule:
    """The datamodule of a run's ``data`` config section.

    Args:
        data: The ``data`` section as a plain mapping: ``name``, the shared options, and one
            sub-section per dataset; only the chosen dataset's sub-section is used.
        seed: The run's seed (shuffling and augmentation).
        boxes: Evaluation batches carry object boxes and masks, where the dataset has them.
    """
    name = str(data["name"]).lower()
    if name not in DATAMODULES:
        return build_datamodule(name)  # raises the error that lists the valid names
    cls = DATAMODULES[name][0]
    options = {k: v for k, v in data.items() if k != "name" and k not in SECTIONS.values()}
    options.update(data.get(SECTIONS[name]) or {})
    if "root" in options and options["root"] is None and "root" not in options_of(cls):
        del options["root"]  # unset, for a dataset that reads no files (a set one is an error)
    if boxes and cls.has_boxes:
        options["return_boxes"] = True
    return build_datamodule(name, **options, seed=seed)
