"""Convergence study: test top-1 of each method against the student's training length.

Do the maps improve where training ends up, or only how fast it gets there? Run the comparison
runner at several lengths (same teacher, data, holdout and seeds), then collect the results:

    python benchmarks/convergence.py --config shapes_wrn --epochs 40,160,640 --seeds 0,1,2 \
        --methods ce,kd,kd_gradcam_pp teacher.checkpoint=T.ckpt data.train_fraction=0.1 ...
    python benchmarks/convergence.py --results DIR [DIR ...]   # tables and plot from finished runs

Every run is one ``compare`` invocation with ``student.epochs=N``; its checkpoint is selected as
the recipe's protocol says (the holdout for ``quickstart``, ``shapes_wrn`` and ``cifar_wrn_cpu``) and tested once
on the test split. Writes ``convergence.md`` (mean ± std over seeds per method and length) and
``convergence.png`` (mean top-1 against training steps, ±1 std bars, every seed as a dot).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

from distill.tools.compare import compare
from distill.tools.compare_report import LABELS, mean_std

COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189)]


def load_rows(result_dirs: list[Path], steps_per_epoch: int | None) -> list[dict[str, Any]]:
    """Rows of the ``results.json`` files, each with its training length in steps."""
    rows = []
    for folder in result_dirs:
        for row in json.loads((folder / "results.json").read_text()):
            if "steps" not in row:
                if steps_per_epoch is None:
                    raise SystemExit(f"{folder}: rows have no 'steps'; pass --steps-per-epoch")
                row["steps"] = row["epochs"] * steps_per_epoch
            rows.append(row)
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown: one row per method, one column per length, mean ± std (seeds)."""
    lengths = sorted({(row["epochs"], row["steps"]) for row in rows})
    methods = list(dict.fromkeys(row["method"] for row in rows))
    header = ["method", *(f"{e} epochs ({s} steps)" for e, s in lengths)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for method in methods:
        cells = [LABELS.get(method, method)]
        for epochs, steps in lengths:
            values = [
                100 * r["test_acc"]
                for r in rows
                if r["method"] == method and (r["epochs"], r["steps"]) == (epochs, steps)
            ]
            if values:
                mean, std = mean_std(values)
                cells.append(f"{mean:.1f} ± {std:.1f} (n={len(values)})")
            else:
                cells.append("not run")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    """Mean test top-1 against steps (log scale) per method, ±1 std bars, seeds as dots."""
    from PIL import Image, ImageDraw

    width, height, left, right, top, bottom = 900, 520, 70, 250, 40, 60
    steps = sorted({row["steps"] for row in rows})
    accs = [100 * row["test_acc"] for row in rows]
    low, high = max(0.0, min(accs) - 5), min(100.0, max(accs) + 5)
    lo_s, hi_s = math.log(min(steps)), math.log(max(steps))

    def xy(step: float, acc: float) -> tuple[float, float]:
        fx = 0.5 if hi_s == lo_s else (math.log(step) - lo_s) / (hi_s - lo_s)
        x = left + 20 + fx * (width - left - right - 40)
        y = top + (high - acc) / max(high - low, 1e-9) * (height - top - bottom)
        return x, y

    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    draw.text((left, 12), title, fill="black")
    draw.line([left, top, left, height - bottom, width - right, height - bottom], fill="black")
    for k in range(6):
        acc = low + k * (high - low) / 5
        _, y = xy(steps[0], acc)
        draw.line([left - 5, y, left, y], fill="black")
        draw.text((8, y - 6), f"{acc:.0f}%", fill="black")
    for step in steps:
        x, _ = xy(step, low)
        draw.line([x, height - bottom, x, height - bottom + 5], fill="black")
        draw.text((x - 12, height - bottom + 8), str(step), fill="black")
    draw.text((left + 150, height - 24), "student training steps (log scale)", fill="black")
    grouped: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        grouped[row["method"]][row["steps"]].append(100 * row["test_acc"])
    for i, (method, by_step) in enumerate(grouped.items()):
        colour = COLOURS[i % len(COLOURS)]
        points = []
        shift = 8 * (i - (len(grouped) - 1) / 2)  # keep the methods' bars apart
        for step in sorted(by_step):
            mean, std = mean_std(by_step[step])
            x, y = xy(step, mean)
            x += shift
            points.append((x, y))
            _, y_lo = xy(step, mean - std)
            _, y_hi = xy(step, mean + std)
            draw.line([x, y_lo, x, y_hi], fill=colour, width=2)
            for value in by_step[step]:
                _, yv = xy(step, value)
                draw.ellipse([x + 4, yv - 2, x + 8, yv + 2], fill=colour)
        if len(points) > 1:
            draw.line(points, fill=colour, width=3)
        for x, y in points:
            draw.ellipse([x - 4, y - 4, x + 4, y + 4], fill=colour)
        legend_y = top + 10 + 22 * i
        draw.rectangle(
            [width - right + 20, legend_y, width - right + 40, legend_y + 12], fill=colour
        )
        draw.text((width - right + 48, legend_y), LABELS.get(method, method), fill="black")
    image.save(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", nargs="+", type=Path, help="finished compare folders")
    parser.add_argument("--config", default="shapes_wrn")
    parser.add_argument("--epochs", default="40,160,640", help="comma-separated student epochs")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--methods", default="ce,kd,kd_gradcam_pp", help="also filters --results")
    parser.add_argument("--steps-per-epoch", type=int, help="for results without 'steps'")
    parser.add_argument("--out", type=Path, help="output folder (default: the first results)")
    parser.add_argument("--title", default="test top-1 against training length")
    parser.add_argument("overrides", nargs="*", help="key=value overrides for every run")
    args = parser.parse_intermixed_args(argv)  # options may follow the key=value overrides
    folders = list(args.results or [])
    methods = [m for m in args.methods.split(",") if m]
    if not folders:
        seeds = [int(s) for s in args.seeds.split(",") if s]
        for epochs in (int(e) for e in args.epochs.split(",") if e):
            _, out = compare(
                args.config, [*args.overrides, f"student.epochs={epochs}"], seeds, methods
            )
            folders.append(out)
    rows = [row for row in load_rows(folders, args.steps_per_epoch) if row["method"] in methods]
    out = args.out or folders[0]
    out.mkdir(parents=True, exist_ok=True)
    text = table(rows)
    sources = "\n".join(f"- {folder}" for folder in folders)
    (out / "convergence.md").write_text(f"{text}\n\nfrom:\n{sources}\n")
    plot(rows, out / "convergence.png", args.title)
    print(f"{text}\n\nwritten to {out / 'convergence.md'} and {out / 'convergence.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
