"""Input pipeline cost per training batch, against the distillation step it feeds.

Times drawing one training batch and preparing it (augmentation + normalisation) through the
in-memory path (uint8 tensor, batched augmentation) and the classic per-sample path (PIL +
torchvision transforms + loader workers), and the default distillation step (WRN-40-2 ->
WRN-16-2, CE + KD + Grad-CAM++) at the same batch size.

Usage:
    python benchmarks/bench_data.py [--root ../shared/data/cifar10-jpeg] [--batch 128]
    (without --root: the in-memory shapes dataset)
"""

from __future__ import annotations

import argparse
import itertools
import time

import torch
from _common import machine, measure, table  # benchmarks/ is on sys.path

from distill import ExplanationDistiller, build_model
from distill.data import build_datamodule


def batch_time(dm, batches: int) -> float:
    """Seconds per training batch to fetch it from the loader and prepare it (after the first,
    which starts workers and fills caches)."""
    dm.setup("fit")
    loader = iter(dm.train_dataloader())
    dm.preprocess(next(loader), train=True)
    start = time.perf_counter()
    for batch in itertools.islice(loader, batches):
        dm.preprocess(batch, train=True)
    return (time.perf_counter() - start) / batches


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=None, help="ImageFolder root (train/ and test/)")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()

    if args.root:
        common = {"name": "imagefolder", "root": args.root}
    else:
        common = {"name": "shapes", "num_train": 5000, "num_val": 500}
    paths = {
        "in-memory (uint8 tensor, batched augmentation)": {"in_memory": True, "num_workers": 0},
        f"per-sample (PIL transforms, {args.workers} workers)": {
            "in_memory": False,
            "num_workers": args.workers,
        },
    }
    times = {}
    for label, options in paths.items():
        dm = build_datamodule(**common, batch_size=args.batch, seed=0, **options)
        times[label] = batch_time(dm, args.batches)

    torch.manual_seed(0)
    distiller = ExplanationDistiller(build_model("wrn_40_2", 10), build_model("wrn_16_2", 10))
    optimizer = torch.optim.SGD(distiller.student.parameters(), lr=0.01, momentum=0.9)
    images = torch.randn(args.batch, 3, 32, 32)
    labels = torch.randint(0, 10, (args.batch,))

    def step() -> None:
        out = distiller(images, labels)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        optimizer.step()

    step_time = measure(step, repeats=5).median
    print(f"## Data path, {common['name']}, batch {args.batch}\n\n{machine()}\n")
    rows = [
        [label, f"{seconds * 1e3:.1f} ms", f"{seconds / step_time * 100:.1f}%"]
        for label, seconds in times.items()
    ]
    rows.append(["distillation step (WRN-40-2 -> WRN-16-2)", f"{step_time * 1e3:.0f} ms", "100%"])
    print(table(["data path", "time per batch", "share of step time"], rows))


if __name__ == "__main__":
    main()
