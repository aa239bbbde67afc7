"""The evidence tables' columns that a comparison's own table lacks, from its saved students.

For every student of one or more comparisons (``compare-<config>/<stamp>`` folders): test
top-1 at the last epoch beside the holdout-selected one, and the teacher-student map similarity
on the test split (the selected checkpoint) under the student's own map method and under
Grad-CAM++. Nothing here selects anything: the test split is only measured.

Writes ``OUT/results.json`` (its own command and code commit, and every row of the comparisons'
``results.json`` with the new columns and the command and commit that trained that student) and ``OUT/results.md`` (mean ± sample std per method).

Map similarity is measured on ``--images N`` test images evenly spaced over the split (default
all; the teacher's maps cost a teacher pass per student and method); top-1 at the last epoch on
the whole split (read from the row where ``compare.py`` measured it, else measured here).

With ``--reuse``, a student already measured in ``OUT/results.json`` (same run folder, same
number of images) keeps the columns measured there, with that record's commit as
``measured_at``: adding a seed to a table measures the new students only. Without it every
student is measured again.

Usage:
    python benchmarks/evidence_columns.py DIR [DIR ...] --out OUT [--title TEXT] [--images N]
        [--reuse]
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from distill import ExplanationDistiller
from distill.data import datamodule_from_config
from distill.metrics import MapAgreement
from distill.tools.compare_methods import METHODS
from distill.tools.compare_report import LABELS
from distill.training.checkpoints import load_model

COLUMNS = [  # key, header, scale
    ("test_acc", "test top-1 % (holdout-selected)", 100),
    ("test_acc_last", "test top-1 % (last epoch)", 100),
    ("val_agreement", "agreement % (holdout)", 100),
    ("test_map_similarity", "map similarity, own method (test)", 1),
    ("test_map_similarity_gradcam_pp", "map similarity, Grad-CAM++ (test)", 1),
    ("deletion_auc", "deletion AUC % (lower better)", 100),
    ("insertion_auc", "insertion AUC % (higher better)", 100),
    ("average_drop", "avg drop %", 1),
]

MEASURED = (  # what evaluate() adds to a row: the columns --reuse keeps
    "command",
    "commit",
    "test_acc_last",
    "map_similarity_images",
    "test_map_similarity",
    "test_map_similarity_gradcam_pp",
    "map_method",
    "last_epoch_is_selected",
)


def run_folder(comparison: Path, row: dict[str, Any]) -> Path:
    """The run folder of one row (compare names it ``<label>-seed<seed>``)."""
    name = row["method"].replace(" ", "-").replace("=", "") + f"-seed{row['seed']}"
    (folder,) = sorted((comparison / "runs" / name).glob("*/summary.json"))[-1:]
    return folder.parent


@torch.no_grad()
def accuracy(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    correct = sum(
        int((model(images[i : i + 256]).argmax(1) == labels[i : i + 256]).sum())
        for i in range(0, len(images), 256)
    )
    return correct / len(images)


def map_similarity(
    teacher: torch.nn.Module,
    student: torch.nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    method: str,
    target: str,
) -> float:
    """Mean cosine similarity of the two models' maps at their CAM layers, as validation
    measures it (``val/map_similarity``), on every image of ``images``."""
    distiller = ExplanationDistiller(teacher, student, map_method=method, map_target=target)
    metric = MapAgreement()
    for i in range(0, len(images), 256):
        out = distiller(images[i : i + 256], labels[i : i + 256], return_maps=True)
        metric.update(out.student_maps[0], out.teacher_maps[0])
    return float(metric.compute())


def whole_split(entry: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """The whole test split, loaded only for rows that lack compare's last-epoch top-1."""
    if "whole" not in entry:
        entry["whole"] = entry["dm"].fixed_batch(10**9, "test")
    return entry["whole"]


def evaluate(
    run: Path,
    teachers: dict[str, torch.nn.Module],
    data: dict,
    row: dict[str, Any],
    count: int | None = None,
) -> dict[str, float]:
    cfg = OmegaConf.load(run / "config.yaml")
    summary = json.loads((run / "summary.json").read_text())["student"]
    key = json.dumps(OmegaConf.to_container(cfg.data), sort_keys=True)
    if key not in data:
        dm = datamodule_from_config(OmegaConf.to_container(cfg.data), seed=cfg.seed)
        dm.setup("test")
        data[key] = {"dm": dm, "measured": dm.fixed_batch(count or 10**9, "test")}
    images, labels = data[key]["measured"]
    path = summary["teacher_checkpoint"]
    if path not in teachers:
        teachers[path] = load_model(path, stage="teacher").eval()
    teacher = teachers[path]
    selected = load_model(summary["checkpoint"]).eval()
    target = cfg.loss.map_target
    own = map_similarity(teacher, selected, images, labels, cfg.loss.map_method, target)
    gradcam_pp = (
        own
        if cfg.loss.map_method == "gradcam_pp"
        else map_similarity(teacher, selected, images, labels, "gradcam_pp", target)
    )
    meta = json.loads((run / "meta.json").read_text())
    return {
        "command": "python " + " ".join(shlex.quote(a) for a in meta["command"]),
        "commit": meta["git_commit"],
        "test_acc_last": row["test_acc_last"]
        if "test_acc_last" in row
        else accuracy(load_model(run / "student" / "last.ckpt").eval(), *whole_split(data[key])),
        "map_similarity_images": len(images),
        "test_map_similarity": own,
        "test_map_similarity_gradcam_pp": gradcam_pp,
        "map_method": cfg.loss.map_method,
        "last_epoch_is_selected": Path(summary["checkpoint"]).name == "last.ckpt",
    }


def measured_before(out: Path, images: int | None) -> dict[str, dict[str, Any]]:
    """The measured columns of every student in ``out/results.json`` by run folder, when they
    were measured on the same number of images (nothing when there is no such file)."""
    path = out / "results.json"
    if not path.exists():
        return {}
    record = json.loads(path.read_text())
    if images is None and "--images" in record["command"]:
        return {}  # measured on a subset then, on the whole split now
    found = {}
    for row in record["rows"]:
        if "run" not in row or (images and row["map_similarity_images"] != images):
            continue
        found[row["run"]] = {
            **{k: row[k] for k in MEASURED},
            "measured_at": row.get("measured_at", record["commit"]),
        }
    return found


def cell(values: list[float], scale: float) -> str:
    values = [v * scale for v in values if v == v]  # NaN: the column does not apply
    if not values:
        return "n/a"
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def table(rows: list[dict[str, Any]]) -> str:
    order = {name: index for index, name in enumerate(METHODS)}

    def place(row: dict[str, Any]) -> tuple[int, int]:  # compare's order; a sweep's "m k=v" as m
        return order.get(row["method"].split()[0], len(order)), row["seed"]

    by_method: dict[str, list[dict]] = defaultdict(list)
    for row in sorted(rows, key=place):
        by_method[row["method"]].append(row)
    header = ["method", "seeds", *(label for _, label, _ in COLUMNS)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for method, group in by_method.items():
        cells = [cell([float(r.get(k, "nan")) for r in group], s) for k, _, s in COLUMNS]
        seeds = ",".join(f"{r['seed']}" + (" (diverged)" if "diverged" in r else "") for r in group)
        lines.append("| " + " | ".join([LABELS.get(method, method), seeds, *cells]) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("comparisons", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--title", default="")
    parser.add_argument("--images", type=int, help="map similarity on N evenly spaced test images")
    parser.add_argument(
        "--reuse", action="store_true", help="keep the columns of students OUT already measured"
    )
    args = parser.parse_args()
    for comparison in args.comparisons:  # refused before any student is measured
        if not (comparison / "results.json").is_file():
            parser.error(f"{comparison} has no results.json (no student of it has finished)")
    earlier = measured_before(args.out, args.images) if args.reuse else {}
    teachers: dict[str, torch.nn.Module] = {}
    data: dict[str, dict[str, Any]] = {}  # per data config: its datamodule and test images
    rows: list[dict[str, Any]] = []
    seen: dict[tuple[str, int], str] = {}
    skipped: list[dict[str, Any]] = []
    for comparison in args.comparisons:
        for row in json.loads((comparison / "results.json").read_text()):
            pair = (row["method"], row["seed"])
            if pair in seen:  # one seed counted once: the first folder given keeps it
                skipped.append(
                    {**row, "skipped": f"also in {seen[pair]}", "folder": str(comparison)}
                )
                print(f"{pair} is also in {seen[pair]}: the row of {comparison} is left out")
                continue
            seen[pair] = str(comparison)
            if "diverged" in row:  # no student to measure: kept as compare recorded it
                rows.append(dict(row))
                continue
            run = run_folder(comparison, row)
            measured = earlier.get(str(run)) or evaluate(run, teachers, data, row, args.images)
            rows.append({**row, **measured, "run": str(run)})
            print(f"{row['method']} seed {row['seed']}: {measured}", flush=True)
    commit = subprocess.run(
        ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    args.out.mkdir(parents=True, exist_ok=True)
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    record = {
        "title": args.title,
        "command": command,
        "commit": commit,
        "rows": rows,
        "left_out": skipped,  # (method, seed) pairs found in an earlier folder too
    }
    (args.out / "results.json").write_text(json.dumps(record, indent=2, default=str))
    text = f"{args.title}\n\n{table(rows)}\n" if args.title else f"{table(rows)}\n"
    (args.out / "results.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
