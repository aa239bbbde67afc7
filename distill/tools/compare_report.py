"""A comparison's results as a user reads them: the Markdown table (mean ± std over seeds; a
single seed's value alone, since no spread was measured), the bar plot, ``results.json``, and the wandb run that holds them.

Each row is one trained student: ``method``, ``seed``, ``selected_on`` and the metrics named in
:data:`COLUMNS` (fractions; NaN where a column does not apply). A student whose loss became
NaN/inf has a row with ``diverged`` (the error) and no metrics: its table cell counts it and
leaves it out of the mean.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from distill.training.loggers import wandb_mode, wandb_settings

__all__ = [
    "COLUMNS",
    "CAM_NAMES",
    "LABELS",
    "PROTOCOL_NOTE",
    "log_to_wandb",
    "mean_std",
    "plot",
    "summarize",
    "write_results",
]

CAM_NAMES = {
    "gradcam": "Grad-CAM",
    "gradcam_pp": "Grad-CAM++",
    "xgradcam": "XGrad-CAM",
    "layercam": "LayerCAM",
    "hirescam": "HiResCAM",
    "gradcam_elementwise": "element-wise Grad-CAM",
    "cam": "CAM",
    "eigencam": "Eigen-CAM",
}
"""How tables name each map method (the papers' spelling)."""

LABELS = {
    "ce": "CE",
    "kd": "CE + KD",
    "at": "CE + AT",
    "dkd": "CE + DKD",
    "kd_ls": "CE + KD, logit standardisation",
    "dkd_ls": "CE + DKD, logit standardisation",
    "cat_kd": "CE + CAT-KD",
    "e2kd": "CE + KD + e2KD (Grad-CAM, cosine)",
    **{name: f"CE + {label} maps" for name, label in CAM_NAMES.items()},
    **{f"kd_{name}": f"CE + KD + {label} maps" for name, label in CAM_NAMES.items()},
}
"""How tables and plots name each ``compare.py`` method (other names are printed as given)."""
COLUMNS = [
    ("test_acc", "test top-1 % (selected)", 100),
    ("test_acc_last", "test top-1 % (last epoch)", 100),
    ("val_agreement", "agreement %", 100),
    ("val_map_similarity", "map similarity", 1),
    ("average_drop", "avg drop % (lower better)", 1),
    ("increase_in_confidence", "increase in conf. %", 1),
    ("deletion_auc", "deletion AUC % (lower better)", 100),
    ("insertion_auc", "insertion AUC % (higher better)", 100),
    ("road_morf", "ROAD MoRF change % (lower better)", 100),
    ("win_vs_ce", "win % vs CE", 1),
    ("localization", "Loc(0.5)", 1),
    ("energy_pointing", "energy pointing", 1),
]

PROTOCOL_NOTE = (
    "Top-1 and the faithfulness columns are measured once on the test split, with the "
    "checkpoint named in 'selected on' (holdout: best validation accuracy on the holdout of "
    "the training split; last: the final epoch, nothing selected); top-1 is also given for "
    "the last epoch's weights, selected by nothing. Agreement and map "
    "similarity are the last validation's. Mean ± sample std over seeds; a cell of one seed "
    "shows its value alone (no spread was measured)."
)


def write_results(rows: list[dict[str, Any]], out: Path, note: str) -> None:
    """``results.json`` (every run), ``results.md`` (``note``, the table, the protocol) and
    ``results.png`` in ``out``."""
    (out / "results.json").write_text(json.dumps(rows, indent=2))
    (out / "results.md").write_text(f"{note}\n\n{summarize(rows)}\n\n{PROTOCOL_NOTE}\n")
    plot(rows, out / "results.png")


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation of the finite values (NaN: a column that does not
    apply); one value has std 0 (callers that print it say that no spread was measured)."""
    finite = [v for v in values if not math.isnan(v)]
    if not finite:
        return float("nan"), float("nan")
    return statistics.fmean(finite), statistics.stdev(finite) if len(finite) > 1 else 0.0


def _spread_measured(values: Sequence[float]) -> bool:
    """Whether there are two or more finite values, so that a std says something."""
    return sum(not math.isnan(v) for v in values) > 1


def _cell(values: Sequence[float]) -> str:
    """``mean ± std``; the value alone when no spread was measured (one seed)."""
    mean, std = mean_std(values)
    if math.isnan(mean):
        return "n/a"
    return f"{mean:.2f} ± {std:.2f}" if _spread_measured(values) else f"{mean:.2f}"


def summarize(rows: list[dict[str, Any]]) -> str:
    """Markdown table: mean ± std over seeds for each method (one seed: its value)."""
    methods = list(dict.fromkeys(row["method"] for row in rows))
    header = ["method", "seeds", "selected on", *(label for _, label, _ in COLUMNS)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for method in methods:
        mine = [row for row in rows if row["method"] == method]
        diverged = sum("diverged" in row for row in mine)
        selected = ", ".join(
            sorted({str(row["selected_on"]) for row in mine if "selected_on" in row}) or ["-"]
        )
        seeds = f"{len(mine)} ({diverged} diverged)" if diverged else str(len(mine))
        cells = [LABELS.get(method, method), seeds, selected]
        for key, _, scale in COLUMNS:
            cells.append(_cell([row.get(key, float("nan")) * scale for row in mine]))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: Path, key: str = "test_acc") -> None:
    """Horizontal bars of mean top-1 per method with ±1 std whiskers (none for one seed) and
    the seeds as dots."""
    from PIL import Image, ImageDraw

    finite = [row for row in rows if not math.isnan(row.get(key, float("nan")))]
    if not finite:
        return  # every student diverged: nothing to draw
    methods = list(dict.fromkeys(row["method"] for row in finite))
    values = {m: [100 * row[key] for row in finite if row["method"] == m] for m in methods}
    low = min(min(v) for v in values.values())
    high = max(max(v) for v in values.values())
    low, high = max(0.0, low - 0.15 * (high - low + 1)), min(100.0, high + 0.15 * (high - low + 1))
    width, left, bar_h, pad = 900, 260, 34, 14
    height = pad * 2 + len(methods) * (bar_h + pad) + 30
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)

    def x_of(value: float) -> float:
        return left + (value - low) / max(high - low, 1e-9) * (width - left - 40)

    for i, method in enumerate(methods):
        top = pad + i * (bar_h + pad)
        mean, std = mean_std(values[method])
        draw.text((10, top + bar_h / 3), LABELS.get(method, method), fill="black")
        draw.rectangle([left, top, x_of(mean), top + bar_h], fill=(70, 130, 180))
        if _spread_measured(values[method]):
            draw.line(
                [x_of(mean - std), top + bar_h / 2, x_of(mean + std), top + bar_h / 2],
                fill="black",
                width=2,
            )
        for v in values[method]:
            draw.ellipse(
                [x_of(v) - 3, top + bar_h / 2 - 3, x_of(v) + 3, top + bar_h / 2 + 3], fill="orange"
            )
        draw.text((x_of(mean) + 6, top + 2), f"{mean:.2f}", fill="black")
    axis_y = height - 30
    draw.line([left, axis_y, width - 40, axis_y], fill="black")
    for k in range(6):
        value = low + k * (high - low) / 5
        draw.text((x_of(value) - 12, axis_y + 6), f"{value:.1f}", fill="black")
    draw.text((10, axis_y + 6), "top-1 accuracy %", fill="black")
    image.save(path)


def log_to_wandb(
    base: DictConfig, out: Path, rows: list[dict[str, Any]], settings: dict[str, Any]
) -> None:
    """Log the comparison as a wandb run (job type ``compare``) in the group of the runs it
    summarises: the per-run results as a ``wandb.Table``, the plot as a ``wandb.Image``. Offline,
    print one ``wandb sync`` command for this run and every training run of the comparison."""
    mode = wandb_mode(base.logging.wandb)
    if mode == "disabled":
        return
    import wandb

    columns = ["method", "seed", "selected_on", *(key for key, _, _ in COLUMNS), "diverged"]
    data = [[_finite_or_none(row.get(column)) for column in columns] for row in rows]
    run = wandb.init(
        project=base.logging.project,
        dir=str(out),
        name=f"compare-{base.name}-{out.name}",
        group=out.name,
        job_type="compare",
        config={**settings, "base": OmegaConf.to_container(base, resolve=True)},
        mode=mode,
        settings=wandb_settings(mode),
    )
    logged: dict[str, Any] = {"results": wandb.Table(columns=columns, data=data)}
    if (out / "results.png").is_file():
        logged["top1_plot"] = wandb.Image(
            str(out / "results.png"), caption="test top-1 % per method"
        )
    run.log(logged)
    run.finish()
    if mode == "offline":
        runs = f"{out}/wandb/offline-run-* {out}/runs/*/*/wandb/offline-run-*"
        print(f"wandb is offline; upload this comparison with: wandb sync {runs}")


def _finite_or_none(value: Any) -> Any:
    """NaN (a column that does not apply) as an empty table cell."""
    return None if isinstance(value, float) and math.isnan(value) else value
