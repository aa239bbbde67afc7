"""One-shot device check: the CUDA tests, the three benchmarks and a short CIFAR-10 run, in one
markdown file.

Sized to finish in under 8 minutes on one GPU; ``--device cpu --quick`` runs every section at
toy sizes in a couple of minutes, which is how the script itself is tested. Each section runs
in a subprocess with its own time limit, so one failure is reported and the others still run.

Sections:
    tests        pytest: the ``gpu``-marked tests on CUDA (fp16 + GradScaler with the double
                 backward, bf16, channels_last, on-device augmentation, compiled step); on the
                 CPU, the CPU side of ``tests/test_device.py`` and ``tests/test_precision.py``
    bench_maps   the maps of every CAM method against the peers', forward included
    bench_step   the training step under each loss (+ torch.compile rows on CUDA)
    bench_data   the input pipeline (the JPEG copy when ``--data`` is given, else shapes)
    cifar        teacher then student with ``train.py`` on the JPEG copy: images/s, accuracy
    cifar100     timed steps of every method on the two CIFAR-100 pairs, and the projected
                 wall time of the whole reference table (``cifar100_table.py``)

Usage:
    python benchmarks/gpu_check.py [--device cuda|cpu] [--quick] [--data PATH] [--out FILE]

``--data`` is a folder with ``train/`` and ``test/`` (ImageFolder layout) or a ``.tar.gz`` of
one, unpacked into a temporary folder; without it the CIFAR section is skipped.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tarfile
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"


@dataclass
class Section:
    """One section's markdown and whether it passed."""

    title: str
    ok: bool | None  # None: skipped
    body: str
    seconds: float = 0.0


def run(command: list[str], timeout: float, cwd: Path = ROOT) -> tuple[int, str, str]:
    """Run a command with the repository on ``PYTHONPATH``; rc 124 on timeout."""
    env = os.environ | {
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        "WANDB_MODE": "disabled",
        "PYTHONUNBUFFERED": "1",
    }
    try:
        done = subprocess.run(
            command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired as error:
        out = error.stdout.decode() if isinstance(error.stdout, bytes) else error.stdout or ""
        return 124, out, f"timed out after {timeout:.0f} s"
    return done.returncode, done.stdout, done.stderr


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def _failure(rc: int, out: str, err: str) -> str:
    return f"exit code {rc}\n\n```\n{_tail(out + chr(10) + err)}\n```"


# ---- sections ----------------------------------------------------------------------------------


def tests_section(device: str, quick: bool, timeout: float) -> Section:
    """pytest with a JUnit report: one row per test."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.xml"
        if device == "cuda":
            selection = ["tests", "-m", "gpu"]
        else:
            selection = ["tests/test_device.py", "tests/test_precision.py", "-m", "not slow"]
            selection += ["-k", "cpu and (closed_form or augmentation)"] if quick else []
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
        command += ["-o", "addopts=", f"--junitxml={report}", *selection]
        rc, out, err = run(command, timeout)
        rows = _junit_rows(report) if report.is_file() else []
    counts = {o: sum(r[1] == o for r in rows) for o in ("passed", "failed", "skipped")}
    ok = rc in (0, 5) and counts["failed"] == 0 and counts["passed"] > 0
    body = f"`{' '.join(['pytest', *selection])}`: " + ", ".join(
        f"{n} {o}" for o, n in counts.items()
    )
    body += "\n\n" + _table(["test", "outcome", "seconds"], rows)
    if not ok:
        body += "\n\n" + _failure(rc, out, err)
    return Section("CUDA tests" if device == "cuda" else "Device tests (CPU side)", ok, body)


def _junit_rows(report: Path) -> list[tuple[str, str, str]]:
    rows = []
    for case in ET.parse(report).getroot().iter("testcase"):
        outcome = "passed"
        for child in case:
            if child.tag in ("failure", "error"):
                outcome = "failed"
            elif child.tag == "skipped":
                outcome = "skipped"
        name = f"{case.get('classname', '').rsplit('.', 1)[-1]}::{case.get('name')}"
        rows.append((name, outcome, f"{float(case.get('time', 0)):.1f}"))
    return rows


def bench_section(script: str, args: list[str], timeout: float) -> Section:
    """A benchmark script's own markdown output."""
    rc, out, err = run([sys.executable, str(BENCH / script), *args], timeout)
    body = f"`python benchmarks/{script} {' '.join(args)}`\n\n"
    body += out.strip().replace("## ", "#### ", 1) if rc == 0 else _failure(rc, out, err)
    return Section(script, rc == 0, body)


def unpack(data: Path, into: Path) -> Path:
    """The ImageFolder root (holding ``train/`` and ``test/``) in ``data`` or its tarball."""
    if data.is_file():
        with tarfile.open(data) as archive:
            archive.extractall(into, filter="data")
        data = into
    for candidate in [data, *sorted(p for p in data.iterdir() if p.is_dir())]:
        if (candidate / "train").is_dir() and (candidate / "test").is_dir():
            return candidate
    raise FileNotFoundError(f"{data}: no folder with train/ and test/ inside")


def cifar_overrides(root: Path, out_dir: Path, device: str, quick: bool) -> list[str]:
    """``cifar_wrn_cpu`` on the JPEG copy, written under ``out_dir`` (tiny with ``quick``)."""
    overrides = [
        "data.name=imagefolder",
        f"data.root={root}",
        f"output_dir={out_dir}",
        f"teacher.checkpoint={out_dir / 'teacher.ckpt'}",
        "logging.wandb=disabled",
        "trainer.enable_progress_bar=false",
        f"data.imagefolder.cache_dir={out_dir / 'cache'}",  # the student stage reuses the decoded tensor
        f"trainer.accelerator={'gpu' if device == 'cuda' else 'cpu'}",
    ]
    if quick:
        overrides += [
            "teacher.name=wrn_16_1",
            "teacher.epochs=1",
            "student.epochs=1",
            "data.batch_size=16",
            "data.num_workers=0",
            "trainer.check_val_every_n_epoch=1",
            "trainer.limit_train_batches=4",
            "trainer.limit_val_batches=2",
            "logging.map_images=2",
        ]
    return overrides


def cifar_section(root: Path | None, device: str, quick: bool, timeout: float) -> Section:
    """Teacher, then student, each timed: training images/s and test accuracy."""
    title = "CIFAR-10 distillation (JPEG copy, cifar_wrn_cpu)"
    if root is None:
        return Section(title, None, "skipped: no data (`--data` not given or not found)")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        out_dir = Path(tmp) / "runs"
        overrides = cifar_overrides(root, out_dir, device, quick)
        for stage in ("teacher", "student"):
            command = [sys.executable, "train.py", "--config", "cifar_wrn_cpu", f"stage={stage}"]
            command += [*overrides, f"name={stage}"]
            start = time.perf_counter()
            rc, out, err = run(command, timeout)
            seconds = time.perf_counter() - start
            if rc != 0:
                return Section(
                    title, False, f"`{' '.join(command[1:])}`\n\n{_failure(rc, out, err)}"
                )
            (summary_path,) = (out_dir / stage).glob("*/summary.json")
            result = json.loads(summary_path.read_text())[stage]
            batch = 16 if quick else 128
            rows.append(
                [
                    stage,
                    result["epochs"],
                    result["steps"],
                    f"{seconds:.0f} s",
                    f"{result['steps'] * batch / seconds:.0f}",
                    f"{result['test_acc'] * 100:.2f}%",
                ]
            )
    header = ["stage", "epochs", "steps", "wall time", "training images/s", "test top-1"]
    body = f"`python train.py --config cifar_wrn_cpu stage=... {' '.join(overrides[:2])} ...`\n\n"
    body += _table(header, rows)
    body += (
        "\n\nimages/s = steps x batch / the stage's wall time, which includes start-up, data "
        "decoding, validation and the test pass."
    )
    return Section(title, True, body)


# ---- report ------------------------------------------------------------------------------------


def _table(header: list[str], rows: list) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows])


def environment(device: str) -> str:
    name = torch.cuda.get_device_name() if device == "cuda" else platform.processor() or "CPU"
    if device == "cpu":
        try:
            with open("/proc/cpuinfo") as info:
                name = next(
                    (line.split(":", 1)[1].strip() for line in info if "model name" in line), name
                )
        except OSError:
            pass
        name += f", {torch.get_num_threads()} threads"
    return _table(
        ["device", "torch", "CUDA", "Python"],
        [[name, torch.__version__, torch.version.cuda or "-", platform.python_version()]],
    )


LIMITS = {
    "tests": 75,
    "bench_maps": 30,
    "bench_step": 100,
    "bench_data": 35,
    "cifar": 240,
    "cifar100": 90,
}
"""Seconds each section may take on a GPU: 570 in all, under the 10-minute budget. On the CPU
(toy sizes, often a shared machine) each limit is five times longer."""


def plan(args: argparse.Namespace) -> dict[str, Callable[[], Section]]:
    """The sections to run, by name, at the sizes ``args`` asks for."""
    d, q = args.device, args.quick
    limit = {name: seconds * (1 if d == "cuda" else 5) for name, seconds in LIMITS.items()}
    maps = ["--device", d, "--batch", "8" if q else "128", "--repeats", "2" if q else "5"]
    if q:
        maps += ["--models", "wrn_16_1"]
    step = ["--device", d, "--batch", "8" if q else "128", "--repeats", "2" if q else "5"]
    if q:
        step += ["--teacher", "wrn_16_1", "--student", "wrn_16_1"]
    step += ["--channels-last"]
    if d == "cuda":
        step += ["--compile", "reduce-overhead"]  # CUDA graphs: small networks are launch-bound
    data = ["--device", d, "--batch", "32" if q else "128", "--batches", "3" if q else "20"]
    data += ["--workers", "0" if q else "4"]
    table = ["--device", d, *(["--quick"] if q else ["--steps", "50", "--seeds", "5"])]
    if args.data_root:
        data += ["--root", str(args.data_root)]
    elif q:
        data += ["--num-train", "256"]
    return {
        "tests": lambda: tests_section(d, q, limit["tests"]),
        "bench_maps": lambda: bench_section("bench_maps.py", maps, limit["bench_maps"]),
        "bench_step": lambda: bench_section("bench_step.py", step, limit["bench_step"]),
        "bench_data": lambda: bench_section("bench_data.py", data, limit["bench_data"]),
        "cifar": lambda: cifar_section(args.data_root, d, q, limit["cifar"] / 2),
        "cifar100": lambda: bench_section("cifar100_table.py", table, limit["cifar100"]),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="toy sizes (tests the script)")
    parser.add_argument("--data", type=Path, default=None, help="CIFAR-10 JPEG folder or .tar.gz")
    parser.add_argument("--out", type=Path, default=Path("gpu_check.md"))
    parser.add_argument("--only", nargs="*", default=None, help="run only these sections")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available (use --device cpu)")
    start = time.perf_counter()
    sections = []
    with tempfile.TemporaryDirectory() as tmp:
        args.data_root = None
        if args.data is not None and args.data.exists():
            args.data_root = unpack(args.data, Path(tmp))  # bench_data and cifar read it
        for name, section in plan(args).items():
            if args.only is not None and name not in args.only:
                continue
            begun = time.perf_counter()
            try:
                result = section()
            except Exception as error:  # a broken section must not hide the others
                result = Section(name, False, f"error: {type(error).__name__}: {error}")
            result.seconds = time.perf_counter() - begun
            sections.append(result)
            print(f"{name}: {_status(result.ok)} ({result.seconds:.0f} s)", flush=True)
    total = time.perf_counter() - start
    write_report(args, sections, total)
    print(f"wrote {args.out} ({total:.0f} s)")
    return 0 if all(s.ok is not False for s in sections) else 1


def _status(ok: bool | None) -> str:
    return {True: "pass", False: "FAIL", None: "skipped"}[ok]


def write_report(args: argparse.Namespace, sections: list[Section], total: float) -> None:
    lines = [
        f"# Device check: {args.device}{' (quick)' if args.quick else ''}",
        "",
        environment(args.device),
        "",
        _table(
            ["section", "result", "time"],
            [[s.title, _status(s.ok), f"{s.seconds:.0f} s"] for s in sections],
        ),
        "",
        f"Total time: {total:.0f} s ({total / 60:.1f} min).",
    ]
    for section in sections:
        lines += ["", f"## {section.title}: {_status(section.ok)}", "", section.body]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
