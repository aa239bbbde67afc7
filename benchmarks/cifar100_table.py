"""The CIFAR-100 reference table's cost, projected from timed training steps of each pair.

For the two standard pairs (``configs/cifar100_wrn40_2_wrn16_2.yaml`` and
``configs/cifar100_resnet32x4_resnet8x4.yaml``) and every method their ``compare.py`` command
runs, times ``--steps`` training steps (forward, backward, SGD step, batch 64, 100 classes,
random 32x32 images already on the device, the teacher run live) after warm-up, and projects:
one epoch = 782 steps (50,000 images / 64), one student = 240 epochs, one method = ``--seeds``
students, plus each pair's teacher trained once on the same schedule (a CE step of the
teacher). Data loading, validation and test passes are not included; a comparison that reads a
teacher cache pays the teacher's forward once, at the cache build, instead of in every step.

Usage:
    python benchmarks/cifar100_table.py [--device cuda|cpu] [--steps 50] [--seeds 5] [--quick]
"""

from __future__ import annotations

import argparse
import math
import time

import torch
import torch.nn.functional as F
from _common import machine, table  # benchmarks/ is on sys.path

from distill import build_model
from distill.config import load_config
from distill.tools.compare_methods import method_overrides
from distill.training.student_stage import build_distiller

TRAIN_IMAGES = 50_000
TABLE_METHODS = ["ce", "kd", "at", "dkd", "kd_ls", "dkd_ls", "cat_kd", "e2kd", "kd_gradcam_pp"]
PAIRS: dict[str, list[str]] = {
    "cifar100_wrn40_2_wrn16_2": TABLE_METHODS,
    "cifar100_resnet32x4_resnet8x4": TABLE_METHODS,
}
"""Each recipe and the methods of its ``compare.py`` command (AT on the WRN groups of the first
pair, and on the stages the ResNet recipe names in ``loss.at_layers``)."""


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds_per_step(step, steps: int, device: torch.device, warmup: int = 2) -> float:
    """Mean seconds per call over ``steps`` calls, after ``warmup`` untimed ones."""
    for _ in range(warmup):
        step()
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    return (time.perf_counter() - start) / steps


def time_pair(recipe: str, methods: list[str], args: argparse.Namespace) -> dict[str, float]:
    """Seconds per training step of the teacher (CE) and of each method's student."""
    device = torch.device(args.device)
    cfg = load_config(recipe)
    classes = 100
    teacher_name, student_name = cfg.teacher.name, cfg.student.name
    if args.quick:  # the script's own test: small networks of the same family (AT's layer names)
        teacher_name, student_name = (
            "wrn_16_1" if name.startswith("wrn") else "resnet20"
            for name in (teacher_name, student_name)
        )
    torch.manual_seed(0)
    teacher = build_model(teacher_name, classes).to(device)
    student = build_model(student_name, classes).to(device)
    images = torch.randn(args.batch, 3, 32, 32, device=device)
    labels = torch.randint(0, classes, (args.batch,), device=device)
    timings: dict[str, float] = {}

    teacher_opt = torch.optim.SGD(teacher.parameters(), lr=0.05, momentum=0.9)

    def teacher_step() -> None:
        loss = F.cross_entropy(teacher(images), labels)
        teacher_opt.zero_grad(set_to_none=True)
        loss.backward()
        teacher_opt.step()

    timings["teacher (CE)"] = seconds_per_step(teacher_step, args.steps, device)
    for method in methods:
        method_cfg = load_config(recipe, method_overrides(method, cfg))
        distiller = build_distiller(method_cfg, teacher, student).train()
        optimizer = torch.optim.SGD(student.parameters(), lr=0.05, momentum=0.9)

        def step(d=distiller, opt=optimizer) -> None:
            loss = d(images, labels, epoch=100).loss  # past DKD's warm-up: the same cost
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        timings[method] = seconds_per_step(step, args.steps, device)
    return timings


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=50, help="timed steps per method")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=240)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="tiny networks, batch 4, 1 step")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.batch = 1, 4
    steps_per_epoch = math.ceil(TRAIN_IMAGES / 64)  # the recipes' batch, whatever --batch is
    rows, total = [], 0.0
    for recipe, methods in PAIRS.items():
        timings = time_pair(recipe, methods, args)
        for name, seconds in timings.items():
            epoch = seconds * steps_per_epoch
            runs = 1 if name == "teacher (CE)" else args.seeds
            whole = epoch * args.epochs * runs
            total += whole
            rows.append(
                [
                    recipe,
                    name,
                    f"{seconds * 1e3:.1f} ms",
                    f"{epoch:.0f} s",
                    runs,
                    f"{whole / 3600:.2f} h",
                ]
            )
    sizes = "tiny wrn_16_1 / resnet20 stand-ins, " if args.quick else ""
    print(
        f"## CIFAR-100 table, projected: {args.device}, batch {args.batch}, {sizes}"
        f"{args.steps} timed steps per row\n"
    )
    print(machine() + "\n")
    header = [
        "recipe",
        "method",
        "step",
        "epoch (782 steps)",
        "runs",
        f"{args.epochs} epochs x runs",
    ]
    print(table(header, rows))
    print(
        f"\nProjected wall time of the whole table: {total / 3600:.1f} h on this device "
        f"({len(rows)} rows, {args.seeds} seeds, {args.epochs} epochs; no data loading, "
        "validation or test passes)."
    )


if __name__ == "__main__":
    main()
