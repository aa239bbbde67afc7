"""The streaming storage: optimized litdata chunks read as the model trains (data larger than RAM).

Why litdata: it streams chunks from a local folder or an object store (``s3://``, ``gs://``, ...)
into a bounded cache, shards them across DDP ranks, nodes and loader workers, shuffles with a
seed, and its :class:`~litdata.StreamingDataLoader` has ``state_dict``/``load_state_dict``, which
Lightning stores in every checkpoint, so a run resumes mid-epoch with the very next batch.

:class:`StreamSplit` has the interface of the other storages (:class:`~distill.data.storage.Split`).
Like :class:`~distill.data.storage.FileSplit` it decodes and transforms per sample in the loader
workers, under a torch seed derived from ``(seed, epoch, sample index)``: a sample is augmented
the same way whatever the worker layout, and a resumed run augments the remaining samples as the
uninterrupted one. Batches arrive normalised. The order of the samples is litdata's: seeded by
``(seed, epoch)``, and (unlike the in-memory path) dependent on the world size, ``num_workers``
and the batch size, which assign chunks to workers.

Write the chunks once with ``python -m distill.data.stream optimize SRC OUT`` (see
:mod:`~distill.data.stream_optimize`).
"""

from __future__ import annotations

import argparse
import io
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from PIL import Image
from torch import Tensor

from distill.data.decode import pil_rgb
from distill.data.errors import DatasetNotFoundError, UnreadableImageError
from distill.data.sampling import mix_seed
from distill.data.storage import LoaderSpec
from distill.data.stream_optimize import META_FILE

if TYPE_CHECKING:
    from torch.utils.data import DataLoader

    from distill.data.preprocess import ImageTransforms

__all__ = ["StreamSplit", "main", "read_meta"]

_HINT = "write it with: python -m distill.data.stream optimize SRC_DIR OUT_DIR"


def _import_litdata() -> Any:
    try:
        import litdata
    except ImportError as e:
        raise ImportError(
            "data.name=stream needs litdata: pip install 'distill[stream]' (or pip install litdata)"
        ) from e
    return litdata


def read_meta(split_dir: str, storage_options: dict | None = None) -> dict[str, Any]:
    """The ``distill.json`` of an optimized split (classes, labels), local or remote."""
    if "://" not in split_dir:
        path = Path(split_dir).expanduser() / META_FILE
        if not path.is_file():
            raise DatasetNotFoundError(f"'{path.parent}' is not an optimized split ({_HINT})")
        return json.loads(path.read_text())
    _import_litdata()
    from litdata.streaming.downloader import get_downloader

    buffer = io.BytesIO()
    remote = f"{split_dir.rstrip('/')}/{META_FILE}"
    try:
        get_downloader(split_dir, "", [], storage_options).download_fileobj(remote, buffer)
    except Exception as e:
        raise DatasetNotFoundError(f"cannot read '{remote}': {e} ({_HINT})") from e
    return json.loads(buffer.getvalue())


def _decode(item: dict[str, Any]) -> Image.Image:
    try:
        with Image.open(io.BytesIO(item["image"])) as im:
            return pil_rgb(im)
    except Exception as e:
        path = bytes(item["path"]).decode()
        raise UnreadableImageError(f"cannot decode image file '{path}': {e}") from e


def _streaming_dataset_class() -> type:
    """:class:`~litdata.StreamingDataset` with seeded per-sample transforms (built lazily, so
    that importing :mod:`distill.data` does not need litdata)."""
    litdata = _import_litdata()
    from litdata.streaming.sampler import ChunkedIndex

    class SeededStreamingDataset(litdata.StreamingDataset):
        """Items ``(image tensor, label[, index])``; the transform of sample ``i`` in epoch ``e``
        runs under the torch seed ``mix_seed(sample_seed, e, i)``."""

        def __init__(
            self,
            input_dir: str,
            per_sample: Callable[[Image.Image], Tensor],
            sample_seed: int,
            with_index: bool = False,
            **kwargs: Any,
        ) -> None:
            super().__init__(input_dir, **kwargs)
            self.per_sample = per_sample
            self.sample_seed = int(sample_seed)
            self.with_index = bool(with_index)

        def __getitem__(self, index: Any) -> tuple[Any, ...]:
            item = super().__getitem__(index)
            i = index.index if isinstance(index, ChunkedIndex) else int(index)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(mix_seed(self.sample_seed, self.current_epoch, i))
                image = self.per_sample(_decode(item))
            return (image, item["label"], *((i,) if self.with_index else ()))

    return SeededStreamingDataset


def _loader_class() -> type:
    litdata = _import_litdata()

    class StreamLoader(litdata.StreamingDataLoader):
        """A :class:`~litdata.StreamingDataLoader` that can start at a given epoch, and whose
        resumed epoch ends even when its iterator is not run to exhaustion.

        Why the second: litdata leaves resume mode only when a resumed iteration runs out, but
        Lightning stops drawing once it has the epoch's known number of batches; the next
        epoch would then replay the resumed position instead of starting afresh.
        """

        _resumed_epoch_started = False

        def __iter__(self) -> Any:
            if self._resumed_epoch_started:
                self.restore = False  # the resumed epoch is over: start a new one
            self._resumed_epoch_started = bool(self.restore)
            yield from super().__iter__()

        def start_at_epoch(self, epoch: int) -> None:
            """Make the next iteration be over (0-based) ``epoch``.

            Why: a run resumed from a checkpoint written at an epoch's end gets a new loader and
            no mid-epoch state; without this it would replay the first epoch's order. litdata
            counts epochs from 1 and advances its counter as an iteration starts.
            """
            self.current_epoch = int(epoch)

    return StreamLoader


class StreamSplit:
    """One optimized split (``input_dir``: a local folder or an object-store URI).

    Args:
        input_dir: The split's chunks and ``distill.json``.
        image_size: Side of the model input; streamed images have any size and are resized by
            the transforms, so it is required.
        cache_dir: Where litdata caches remote chunks (``None``: its default).
        storage_options: Object-store options passed to litdata.
    """

    def __init__(
        self,
        input_dir: str,
        image_size: int,
        cache_dir: str | None = None,
        storage_options: dict | None = None,
    ) -> None:
        _import_litdata()
        self.input_dir = str(input_dir)
        meta = read_meta(self.input_dir, storage_options)
        self.classes: list[str] = list(meta["classes"])
        self._labels = torch.tensor(meta["labels"], dtype=torch.long)
        self.image_size = int(image_size)
        self.cache_dir = cache_dir
        self.storage_options = storage_options

    @property
    def labels(self) -> Tensor:
        return self._labels

    @property
    def image_hw(self) -> tuple[int, int]:
        """The transforms' output size (the stored images have any size)."""
        return (self.image_size, self.image_size)

    def __len__(self) -> int:
        return int(self._labels.shape[0])

    def take(self, index: Tensor) -> StreamSplit:
        raise ValueError(
            "a streamed split cannot be subset by index (litdata reads whole chunks): carve the "
            "validation holdout when optimizing (optimize ... --holdout 0.1, then "
            "data.stream.holdout_dir=holdout) and keep data.val_fraction=0, data.train_fraction=1"
        )

    def _dataset(self, per_sample: Callable, seed: int, **kwargs: Any) -> Any:
        return _streaming_dataset_class()(
            self.input_dir,
            per_sample,
            seed,
            seed=seed,
            cache_dir=self.cache_dir,
            storage_options=self.storage_options,
            **kwargs,
        )

    def loader(self, spec: LoaderSpec, transforms: ImageTransforms) -> DataLoader:
        dataset = self._dataset(
            transforms.sample(spec.train, self.image_hw),
            spec.seed,
            shuffle=spec.train,
            with_index=spec.with_index,
            # None: litdata's default, which evens out the ranks under DDP (dropping a remainder)
            drop_last=True if spec.drop_last else None,
        )
        world = dataset.distributed_env.world_size
        if world != spec.world:
            raise RuntimeError(
                f"litdata sees {world} process(es) but the trainer has {spec.world}: the "
                "streaming loader must be built after torch.distributed is initialised"
            )
        return _loader_class()(
            dataset,
            batch_size=spec.batch_size,
            num_workers=spec.num_workers,
            pin_memory=spec.pin_memory,
        )

    def eval_batch(self, index: Tensor, transforms: ImageTransforms) -> tuple[Tensor, Tensor]:
        dataset = self._dataset(transforms.sample(False, self.image_hw), 0, shuffle=False)
        images = [dataset[i][0] for i in index.tolist()]
        if not images:
            return torch.empty(0, 3, *self.image_hw), self._labels[:0]
        return torch.stack(images), self._labels[index].clone()


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m distill.data.stream optimize SRC_DIR OUT_DIR [options]``."""
    from distill.data.stream_optimize import optimize_image_folder
    from distill.errors import UserError, report

    parser = argparse.ArgumentParser(prog="python -m distill.data.stream", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    opt = commands.add_parser(
        "optimize", help="write an ImageFolder tree (SRC/<split>/<class>/<image>) as chunks"
    )
    opt.add_argument("src", help="dataset root holding the split folders")
    opt.add_argument("out", help="local output root; each split goes to OUT/<split>")
    opt.add_argument("--splits", default=None, help="comma-separated split folders (default: all)")
    opt.add_argument(
        "--max-side",
        type=int,
        default=None,
        help="shrink each image's shorter side to this before storing (default: the files as they are)",
    )
    opt.add_argument(
        "--holdout",
        type=float,
        default=0.0,
        help="class-balanced share of train written to OUT/holdout (validation and selection)",
    )
    opt.add_argument("--subset-seed", type=int, default=0, help="seed of the holdout")
    opt.add_argument("--order-seed", type=int, default=0, help="seed of train's stored order")
    opt.add_argument("--workers", type=int, default=1, help="encoding processes")
    opt.add_argument("--chunk-bytes", default="64MB", help="target chunk size")
    args = parser.parse_args(argv)
    try:
        written = optimize_image_folder(
            args.src,
            args.out,
            splits=args.splits.split(",") if args.splits else None,
            max_side=args.max_side,
            holdout=args.holdout,
            subset_seed=args.subset_seed,
            order_seed=args.order_seed,
            num_workers=args.workers,
            chunk_bytes=args.chunk_bytes,
        )
    except UserError as error:  # a missing folder, an unreadable image
        return report(error)
    for name, folder in written.items():
        count = len(json.loads((folder / META_FILE).read_text())["labels"])
        print(f"{name}: {count} images -> {folder}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
