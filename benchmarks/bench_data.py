"""Input pipeline cost per training batch, against the distillation step it feeds.

Times drawing one training batch and preparing it (augmentation + normalisation) through the
in-memory path (uint8 tensor, batched augmentation) and the classic per-sample path (PIL +
torchvision transforms + loader workers), and the default distillation step (WRN-40-2 ->
WRN-16-2, CE + KD + Grad-CAM++) at the same batch size.

Batches are prepared on ``--device`` (augmentation on the GPU when there is one), and the
step runs there too.

Usage:
    python benchmarks/bench_data.py [--root ../shared/data/cifar10-jpeg] [--batch 128]
                                    [--device cpu|cuda]
    (without --root: the in-memory shapes dataset, --num-train images)
"""

from __future__ import annotations

import argparse
import itertools
import time

import torch
from _common import machine, measure, table  # benchmarks/ is on sys.path

from distill import ExplanationDistiller, build_model
from distill.data import build_datamodule


def batch_time(dm, batches: int, device: torch.device) -> float:
    """Seconds per training batch to fetch it from the loader, move it to ``device`` and
    prepare it there (after the first, which starts workers and fills caches)."""
    dm.setup("fit")
    loader = iter(dm.train_dataloader())

    def prepare(batch) -> None:
        batch = [t.to(device, non_blocking=True) if torch.is_tensor(t) else t for t in batch]
        dm.preprocess(batch, train=True)

    prepare(next(loader))
    start = time.perf_counter()
    for batch in itertools.islice(loader, batches):
        prepare(batch)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) / batches


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=None, help="ImageFolder root (train/ and test/)")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--num-train", type=int, default=5000, help="shapes images")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)

    if args.root:
        common = {"name": "imagefolder", "root": args.root}
    else:
        common = {"name": "shapes", "num_train": args.num_train, "num_val": args.num_train // 10}
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
        times[label] = batch_time(dm, args.batches, device)

    torch.manual_seed(0)
    teacher, student = build_model("wrn_40_2", 10), build_model("wrn_16_2", 10)
    distiller = ExplanationDistiller(teacher, student).to(device)
    optimizer = torch.optim.SGD(distiller.student.parameters(), lr=0.01, momentum=0.9)
    images = torch.randn(args.batch, 3, 32, 32, device=device)
    labels = torch.randint(0, 10, (args.batch,), device=device)

    def step() -> None:
        out = distiller(images, labels)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        optimizer.step()

    step_time = measure(step, repeats=5, device=device).median
    print(f"## Data path, {common['name']}, batch {args.batch}, {device.type}\n\n{machine()}\n")
    rows = [
        [label, f"{seconds * 1e3:.1f} ms", f"{seconds / step_time * 100:.1f}%"]
        for label, seconds in times.items()
    ]
    rows.append(["distillation step (WRN-40-2 -> WRN-16-2)", f"{step_time * 1e3:.0f} ms", "100%"])
    print(table(["data path", "time per batch", "share of step time"], rows))


if __name__ == "__main__":
    main()
