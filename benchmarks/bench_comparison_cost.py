"""What a whole comparison costs against the same students trained on CE alone, in one run.

The comparison is ``compare.py --methods ce,kd,kd_gradcam_pp`` (one seed) from an empty output
folder, so the teacher caches (the training stream and the validation split) are built inside
it. The reference is the same three students trained on CE alone, as plain classifiers
(``train.py stage=teacher teacher.name=<student>``: no teacher anywhere, the same data, epochs,
optimiser and validation schedule). Both run in this process, one after the other (the
comparison first), at the same thread count. The comparison's parts are timed by wrapping the functions that do them: the
cache builds, each student's training (fit, validations, tests) and its faithfulness pass.

Run it at one thread (``OMP_NUM_THREADS=1``) when other jobs share the cores: an intra-op pool
whose threads wait on descheduled ones makes every small operation cost a scheduler slice
(12 ms a tensor add was seen next to four busy processes), and the faithfulness passes are
thousands of small operations.

Usage:
    OMP_NUM_THREADS=1 python benchmarks/bench_comparison_cost.py --config cifar_wrn_cpu [--eval-images N] \\
        [key=value ...]   # the recipe and overrides of every run, e.g. teacher.checkpoint=...
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _common import machine  # benchmarks/ is on sys.path

import distill.tools.compare as compare_module
import distill.tools.train as train_module
import distill.training.student_stage as student_stage
from distill.config import load_config

METHODS = ["ce", "kd", "kd_gradcam_pp"]


def timed(seconds: dict[str, list[float]], name: str, function: Callable) -> Callable:
    """``function`` that adds the seconds of each call to ``seconds[name]``."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            seconds[name].append(time.perf_counter() - start)

    return wrapper


def ce_alone(config: str, overrides: list[str], out: Path) -> list[float]:
    """Seconds of each method's student architecture trained on CE alone (no teacher)."""
    cfg = load_config(config, overrides)
    seconds = []
    for index, _ in enumerate(METHODS):
        run = load_config(
            config,
            [
                *overrides,
                "stage=teacher",
                f"teacher.name={cfg.student.name}",
                f"teacher.epochs={cfg.student.epochs}",
                "teacher.weights=null",
                f"teacher.checkpoint={out / f'ce_alone_{index}.ckpt'}",
                f"output_dir={out / 'ce_alone'}",
                f"seed={index}",
            ],
        )
        start = time.perf_counter()
        train_module.train(run, print_sync=False)
        seconds.append(time.perf_counter() - start)
    return seconds


def comparison(
    config: str, overrides: list[str], out: Path, eval_images: int | None
) -> tuple[float, dict[str, list[float]], list[dict]]:
    """Wall seconds of the comparison, the seconds of its timed parts, and its rows."""
    parts: dict[str, list[float]] = defaultdict(list)
    patches = [
        (student_stage, "open_or_build_teacher_cache", "cache"),
        (compare_module, "evaluate_student", "faithfulness"),
        (train_module, "train", "student"),
    ]
    originals = [(module, name, getattr(module, name)) for module, name, _ in patches]
    for module, name, part in patches:
        setattr(module, name, timed(parts, part, getattr(module, name)))
    try:
        start = time.perf_counter()
        rows, _ = compare_module.compare(
            config,
            [*overrides, f"output_dir={out / 'comparison'}"],
            seeds=[0],
            methods=METHODS,
            eval_images=eval_images,
        )
        wall = time.perf_counter() - start
    finally:
        for module, name, original in originals:
            setattr(module, name, original)
    return wall, parts, rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="cifar_wrn_cpu")
    parser.add_argument("--eval-images", type=int, default=None)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    overrides = [*args.overrides, "logging.wandb=disabled", "trainer.enable_progress_bar=false"]
    cfg = load_config(args.config, overrides)
    if not (cfg.teacher.checkpoint and Path(cfg.teacher.checkpoint).is_file()):
        raise SystemExit("give a trained teacher: teacher.checkpoint=PATH")
    with tempfile.TemporaryDirectory(dir=".") as folder:
        out = Path(folder)
        # The comparison first: where other jobs finish while this runs, the load falls and
        # the CE-alone part, timed last, is favoured (the ratio errs high, not low).
        wall, parts, rows = comparison(args.config, overrides, out, args.eval_images)
        alone = ce_alone(args.config, overrides, out)
    cache = sum(parts["cache"])
    faithfulness = sum(parts["faithfulness"])
    students = parts["student"]
    print(f"# Whole comparison against CE alone\n\n{machine()}\n")
    print(
        f"config `{args.config}`, overrides `{' '.join(args.overrides)}`, one seed, "
        f"faithfulness on {args.eval_images or 'all'} test images\n"
    )
    print("| part | seconds |\n|---|---|")
    for method, seconds in zip(METHODS, alone, strict=True):
        print(f"| CE alone, run {method!r}'s architecture | {seconds:.1f} |")
    print(f"| **CE alone, sum** | **{sum(alone):.1f}** |")
    print(f"| comparison: teacher cache builds (train stream + validation) | {cache:.1f} |")
    for row, seconds, passes in zip(rows, students, parts["faithfulness"], strict=True):
        print(
            f"| comparison: {row['method']} student (training, validation, tests) | {seconds:.1f} |"
        )
        print(f"| comparison: {row['method']} student's faithfulness pass | {passes:.1f} |")
    print(f"| **comparison, wall** | **{wall:.1f}** |")
    print()
    print(f"ratio comparison / CE alone: {wall / sum(alone):.2f}x")
    print(f"without the faithfulness passes: {(wall - faithfulness) / sum(alone):.2f}x")
    print(f"without them and the cache builds: {(wall - faithfulness - cache) / sum(alone):.2f}x")
    print(
        "(the students' training includes the cache builds: "
        f"{sum(students):.1f} s for the three, {cache:.1f} s of it building)"
    )


if __name__ == "__main__":
    main()
