"""Method comparison: one teacher, students under each loss, several seeds, one table.

``python compare.py --config quickstart --seeds 0,1,2 [key=value ...]`` trains (or loads) the
recipe's teacher once on the full training set (minus the holdout), then a student per method
and seed through ``distill.tools.train.train`` (the overrides apply to every student:
``data.train_fraction=0.1`` for scarce data, ``loss.map_normalize=l2`` for normalised maps,
``loss.map_weight=0.1``...), tests each student once on the test split with the checkpoint its
protocol selects (see :data:`distill.tools.compare_report.PROTOCOL_NOTE`), and writes ``results.json``, ``results.md``
(mean and std over seeds; one seed: its value, no spread) and ``results.png`` into ``<output_dir>/compare-<name>/<stamp>/``.
With wandb on, every training is its own run in one group named after that folder, and a last
run (job type ``compare``) holds the results table and the plot (:mod:`distill.tools.compare_report`).

The methods and the checks of a method list are in :mod:`distill.tools.compare_methods`, what is
measured on each student in :mod:`distill.tools.compare_eval`.
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from distill.config import load_config
from distill.errors import ConfigError, UserError, report
from distill.tools.compare_eval import evaluate_student, win_vs
from distill.tools.compare_methods import (
    DEFAULT_METHODS,
    METHODS,
    check_choices,
    check_method_configs,
    method_overrides,
    parse_sweep,
)
from distill.tools.compare_report import PROTOCOL_NOTE, log_to_wandb, summarize, write_results
from distill.training.callbacks import NonFiniteLossError
from distill.training.interrupt import RunInterrupted
from distill.training.run_dir import git_commit

__all__ = [
    "DEFAULT_METHODS",
    "METHODS",
    "check_choices",
    "check_method_configs",
    "compare",
    "evaluate_student",
    "main",
]


def _variants(
    methods: Sequence[str], sweep: tuple[str, list[str]] | None, base: DictConfig
) -> list[tuple[str, str, list[str]]]:
    """``(row label, method, overrides)`` of every student trained per seed."""
    if sweep is None:
        return [(method, method, method_overrides(method, base)) for method in methods]
    key, values = sweep
    return [
        (f"{method} {key}={value}", method, [*method_overrides(method, base), f"{key}={value}"])
        for method in methods
        for value in values
    ]


def _cache_overrides(base: DictConfig, method_overrides: list[str]) -> list[str]:
    """Every student reads the teacher's outputs from one cache, keyed by a fixed augmentation
    stream (``data.augment_seed``): all students see the same augmented batches, and only
    their initialisation differs between seeds. Attention transfer needs the teacher's
    features, so its students run the teacher live."""
    if any(
        o.startswith("loss.at_weight=") and float(o.split("=")[1]) > 0 for o in method_overrides
    ):
        return ["teacher_cache.enabled=false"]
    stream = base.data.augment_seed if base.data.augment_seed is not None else 0
    shared = base.teacher_cache.dir or str(Path(base.output_dir) / "teacher_cache")
    return [
        "teacher_cache.enabled=true",
        f"teacher_cache.dir={shared}",
        f"data.augment_seed={stream}",
    ]


def compare(
    config: str,
    overrides: Sequence[str],
    seeds: Sequence[int],
    methods: Sequence[str],
    sweep: tuple[str, list[str]] | None = None,
    cache: bool = True,
    eval_images: int | None = None,
) -> tuple[list[dict[str, Any]], Path]:
    """Train the teacher once, then every method (and swept value) at every seed; return the
    rows and the folder.

    Args:
        config, overrides: the recipe and the overrides of every run.
        seeds: student seeds.
        methods: names from :data:`METHODS`.
        sweep: ``(key, values)``: train each method once per value (e.g. ``loss.map_weight``).
        cache: students read the teacher's outputs from a :class:`distill.TeacherCache`
            (built by the first of them) instead of running the teacher.
        eval_images: measure faithfulness on this many test images, evenly spaced over the
            split (the same ones for every student); None: the whole split. Top-1 always
            uses the whole test split.

    A student whose loss becomes NaN/inf is recorded as diverged (the row keeps the error)
    and the comparison goes on with the next one.
    """
    from distill.tools.train import train  # heavy imports

    check_choices(methods, seeds)
    base = load_config(config, list(overrides))
    check_method_configs(config, overrides, methods)
    git_commit()  # pinned now: every student records the code this process loaded
    out = (
        Path(base.output_dir)
        / f"compare-{base.name}"
        / f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"
    )
    out.mkdir(parents=True)
    common = [*overrides, f"output_dir={out / 'runs'}", f"logging.group={out.name}"]
    teacher_ckpt = base.teacher.checkpoint
    if not (teacher_ckpt and Path(teacher_ckpt).is_file()):
        teacher_ckpt = str(out / "teacher.ckpt")
        train(
            load_config(
                config,
                [
                    *common,
                    "stage=teacher",
                    "data.train_fraction=1.0",
                    f"teacher.checkpoint={teacher_ckpt}",
                ],
            ),
            print_sync=False,
        )
    settings = {
        "config": config,
        "overrides": list(overrides),
        "seeds": list(seeds),
        "methods": list(methods),
        "sweep": list(sweep) if sweep else None,
        "teacher_cache": cache,
        "teacher": teacher_ckpt,
        "eval_images": eval_images,
    }
    (out / "settings.json").write_text(json.dumps(settings, indent=2))
    rows: list[dict[str, Any]] = []
    drops: dict[tuple[str, int], torch.Tensor] = {}
    variants = _variants(methods, sweep, base)
    for seed in seeds:
        for label, _method, variant_overrides in variants:
            run_name = label.replace(" ", "-").replace("=", "")
            cfg: DictConfig = load_config(
                config,
                [
                    *common,
                    *variant_overrides,
                    *(_cache_overrides(base, variant_overrides) if cache else []),
                    f"seed={seed}",
                    "stage=student",
                    f"teacher.checkpoint={teacher_ckpt}",
                    f"name={run_name}-seed{seed}",
                ],
            )
            try:
                summary, result = train(cfg, print_sync=False)
            except NonFiniteLossError as error:  # recorded; the other students still run
                print(f"{label} seed {seed} diverged: {error}", file=sys.stderr)
                rows.append({"method": label, "seed": seed, "diverged": str(error)})
                (out / "results.json").write_text(json.dumps(rows, indent=2))
                continue
            student = summary["student"]
            dm = result.trainers["student"].datamodule
            metrics, drops[(label, seed)] = evaluate_student(
                result.student, dm, num_images=eval_images
            )
            rows.append(
                {
                    "method": label,
                    "seed": seed,
                    **{k: v for k, v in student.items() if isinstance(v, int | float)},
                    "selected_on": student["selected_on"],
                    "val_split": student["val_split"],
                    **metrics,
                }
            )
            (out / "results.json").write_text(json.dumps(rows, indent=2))
    ce_label = next((label for label, method, _ in variants if method == "ce"), None)
    for row in rows:
        baseline = drops.get((ce_label, row["seed"]))
        row["win_vs_ce"] = (
            float("nan")
            if baseline is None or row["method"] == ce_label or "diverged" in row
            else win_vs(drops[(row["method"], row["seed"])], baseline)
        )
    note = f"config `{config}`, overrides `{' '.join(overrides) or '-'}`, seeds {list(seeds)}"
    if eval_images is not None:
        note += f"; faithfulness on {eval_images} test images evenly spaced over the split"
    if cache:
        note += (
            "; teacher outputs read from a cache: every student saw the same augmented batches "
            "(data.augment_seed), seeds vary the initialisation"
        )
    write_results(rows, out, note)
    log_to_wandb(base, out, rows, settings)
    return rows, out


def merge(folders: Sequence[Path], out: Path) -> list[dict[str, Any]]:
    """One table and plot from several comparison folders (e.g. seeds run on different
    machines, or a run stopped early: its finished students are in ``results.json``).

    Rows are taken as saved; a (method, seed) pair found twice is an error, since it would count
    one seed twice.
    """
    rows: list[dict[str, Any]] = []
    for folder in folders:
        rows += json.loads((Path(folder) / "results.json").read_text())
    seen = [(row["method"], row["seed"]) for row in rows]
    repeated = sorted({pair for pair in seen if seen.count(pair) > 1})
    if repeated:
        raise ValueError(f"(method, seed) pairs found in more than one folder: {repeated}")
    order = list(METHODS)
    rows.sort(
        key=lambda row: (order.index(row["method"]) if row["method"] in order else 99, row["seed"])
    )
    out.mkdir(parents=True, exist_ok=True)
    write_results(rows, out, f"merged from {', '.join(str(folder) for folder in folders)}")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Compare distillation methods over seeds.")
    parser.add_argument(
        "--merge", nargs="+", type=Path, metavar="DIR", help="tabulate finished comparisons"
    )
    parser.add_argument("--out", type=Path, help="output folder of --merge")
    parser.add_argument("--config", default="quickstart")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    parser.add_argument(
        "--methods",
        default=",".join(DEFAULT_METHODS),
        help=f"comma-separated, from {','.join(METHODS)}",
    )
    parser.add_argument(
        "--sweep",
        metavar="KEY=V1,V2",
        help="train each method once per value, e.g. loss.map_weight=0.001,0.01,0.1",
    )
    parser.add_argument(
        "--no-cache",
        dest="cache",
        action="store_false",
        help="run the teacher in every student step instead of reading a teacher cache",
    )
    parser.add_argument(
        "--eval-images",
        type=int,
        metavar="N",
        help="faithfulness metrics on N test images evenly spaced over the split "
        "(default: all; top-1 always uses all)",
    )
    parser.add_argument("overrides", nargs="*", help="key=value overrides for every run")
    args = parser.parse_intermixed_args(argv)  # options may follow the key=value overrides
    if args.merge:
        try:
            rows = merge(args.merge, args.out or args.merge[0] / "merged")
        except (OSError, ValueError, KeyError) as error:  # a folder without results.json ...
            return report(ConfigError(f"--merge: {error}"))
        print(f"\n{summarize(rows)}\n\n{PROTOCOL_NOTE}")
        return 0
    methods = [m for m in args.methods.split(",") if m]
    try:
        seeds = [int(seed) for seed in args.seeds.split(",") if seed]
        sweep = parse_sweep(args.sweep) if args.sweep else None
        if args.eval_images is not None and args.eval_images < 1:
            raise ConfigError(f"--eval-images must be a positive number, got {args.eval_images}")
        check_choices(methods, seeds)
        load_config(args.config, args.overrides)
        check_method_configs(args.config, args.overrides, methods)
    except ValueError as error:  # a ConfigError, or a seed that is not a number
        return report(error if isinstance(error, UserError) else ConfigError(f"--seeds: {error}"))
    try:
        rows, out = compare(
            args.config, args.overrides, seeds, methods, sweep, args.cache, args.eval_images
        )
    except UserError as error:  # bad weights or data, a NaN loss, a config found wrong late
        return report(error)
    except RunInterrupted as stopped:  # Ctrl-C or SIGTERM, at a safe point of the current run
        print(stopped, file=sys.stderr)
        return stopped.exit_code
    print(f"\n{summarize(rows)}\n\n{PROTOCOL_NOTE}\n\nwritten to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
