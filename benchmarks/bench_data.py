"""Input pipeline cost per training batch, against the distillation step it feeds.

Times drawing one training batch and preparing it (augmentation + normalisation) through the
in-memory path (uint8 tensor, batched augmentation) and the classic per-sample path (PIL +
torchvision transforms + loader workers), and the default distillation step (WRN-40-2 ->
WRN-16-2, CE + KD + Grad-CAM++) at the same batch size.

Batches are prepared on ``--device`` (augmentation on the GPU when there is one), and the
step runs there too.

With ``--size`` (e.g. 224) it instead compares the three storages on photo-sized JPEGs (a
generated ImageFolder of ``--images`` files, or ``--root``) with ImageNet's crops: in memory
at the decode size (uint8 tensor + batched random-resized crop), per sample with loader
workers (PIL + torchvision), and streamed from litdata chunks (``pip install 'distill[stream]'``),
in images per second against the ResNet-34 -> ResNet-18 distillation step at ``--batch``
(on the CPU).

Usage:
    python benchmarks/bench_data.py [--root ../shared/data/cifar10-jpeg] [--batch 128]
                                    [--device cpu|cuda]
    (without --root: the in-memory shapes dataset, --num-train images)
    python benchmarks/bench_data.py --size 224 --batch 32 [--images 512] [--workers 2]
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
import time
from pathlib import Path

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


def write_photos(root: Path, count: int, classes: int = 4) -> None:
    """``count`` JPEGs of ImageNet's typical size (about 500x375, varied), quality 90: smooth
    colour fields plus noise, so decoding costs about what a photo costs."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", count), ("val", classes)):
        for i in range(n):
            folder = root / split / f"c{i % classes}"
            folder.mkdir(parents=True, exist_ok=True)
            w, h = int(rng.integers(400, 600)), int(rng.integers(300, 450))
            coarse = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
            base = np.asarray(Image.fromarray(coarse).resize((w, h), Image.BICUBIC), np.int16)
            noisy = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
            Image.fromarray(noisy).save(folder / f"{i:05d}.jpg", quality=90)


def photo_paths(args: argparse.Namespace) -> None:
    """Images/s of the three storages at ``args.size`` px against the ResNet-34 -> ResNet-18 step."""
    from distill.data import optimize_image_folder

    tmp = Path(tempfile.mkdtemp(prefix="bench_data_"))
    root = Path(args.root) if args.root else tmp / "photos"
    if not args.root:
        write_photos(root, args.images)
    optimize_image_folder(root, tmp / "stream", num_workers=args.workers)
    crops = {"image_size": args.size, "crop": "random_resized", "val_fraction": 0.0}
    folder = {"name": "imagefolder", "root": str(root), "val_dir": "val", **crops}
    paths = {
        f"in memory at decode size {round(args.size / 0.875)}: uint8 tensor, batched "
        "random-resized crop": {**folder, "in_memory": True},
        f"per sample: files, PIL + torchvision, {args.workers} workers": {
            **folder,
            "in_memory": False,
            "num_workers": args.workers,
        },
        f"streamed: litdata chunks, PIL + torchvision, {args.workers} workers": {
            "name": "stream",
            "root": str(tmp / "stream"),
            "in_memory": False,
            "num_workers": args.workers,
            **crops,
        },
    }
    start = time.perf_counter()
    build_datamodule(**folder, batch_size=args.batch, seed=0).setup("fit")
    decode_s = time.perf_counter() - start
    rates = {}
    for label, options in paths.items():
        dm = build_datamodule(**options, batch_size=args.batch, seed=0)
        batches = max(1, min(args.batches, args.images // args.batch - 1))
        rates[label] = args.batch / batch_time(dm, batches)

    torch.manual_seed(0)
    teacher, student = build_model("resnet34", 1000), build_model("resnet18", 1000)
    distiller = ExplanationDistiller(teacher.eval(), student)
    optimizer = torch.optim.SGD(student.parameters(), lr=0.01, momentum=0.9)
    images = torch.randn(args.batch, 3, args.size, args.size)
    labels = torch.randint(0, 1000, (args.batch,))

    def step() -> None:
        out = distiller(images, labels)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        optimizer.step()

    step_rate = args.batch / measure(step, repeats=3, warmup=1).median
    source = args.root or f"{args.images} generated JPEGs, about 500x375"
    print(f"## Data paths at {args.size} px, batch {args.batch} ({source})\n\n{machine()}\n")
    rows = [[label, f"{rate:.0f}", f"{rate / step_rate:.1f}x"] for label, rate in rates.items()]
    rows.append(
        ["distillation step ResNet-34 -> ResNet-18 (CE + KD + maps)", f"{step_rate:.1f}", "1x"]
    )
    print(table(["path", "images/s", "against the step"], rows))
    print(f"\nIn-memory decode of the split (once, before training): {decode_s:.1f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=None, help="ImageFolder root (train/ and test/)")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--num-train", type=int, default=5000, help="shapes images")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--size", type=int, default=None, help="compare the storages at this size")
    parser.add_argument("--images", type=int, default=512, help="generated JPEGs (with --size)")
    args = parser.parse_args()
    if args.size:
        photo_paths(args)
        return
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
