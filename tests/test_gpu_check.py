"""``benchmarks/gpu_check.py --device cpu --quick``: every section runs and the report is whole.

About a minute and a half on 2 CPU cores: the sections run as subprocesses (pytest, the three
benchmarks, two ``train.py`` stages) on a generated 10-class JPEG tree packed as a tarball,
the way the CIFAR-10 copy travels to a GPU machine.
"""

from __future__ import annotations

import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"


@pytest.fixture(scope="module")
def jpeg_tarball(tmp_path_factory) -> Path:
    """A tiny ImageFolder tree (10 classes, 8 train and 3 test images each) as a .tar.gz."""
    tmp = tmp_path_factory.mktemp("jpeg")
    rng = np.random.default_rng(0)
    for split, count in (("train", 8), ("test", 3)):
        for label in range(10):
            folder = tmp / "cifar10-jpeg" / split / f"class{label}"
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i:04d}.jpg")
    tarball = tmp / "cifar10-jpeg.tar.gz"
    with tarfile.open(tarball, "w:gz") as archive:
        archive.add(tmp / "cifar10-jpeg", arcname="cifar10-jpeg")
    return tarball


def _gpu_check(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--device", "cpu", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_gpu_check_quick_on_cpu(tmp_path, jpeg_tarball):
    out = tmp_path / "report.md"
    done = _gpu_check("--quick", "--data", str(jpeg_tarball), "--out", str(out))
    assert done.returncode == 0, done.stdout + done.stderr
    report = out.read_text()
    for heading in (
        "## Device tests (CPU side): pass",
        "## bench_maps.py: pass",
        "## bench_step.py: pass",
        "## bench_data.py: pass",
        "## CIFAR-10 distillation (JPEG copy, cifar_wrn_cpu): pass",
        "## cifar100_table.py: pass",
    ):
        assert heading in report
    assert "| torch |" in report.splitlines()[2] and "Total time:" in report
    assert "| student | 1 | 4 |" in report  # epochs and steps read from summary.json
    assert "Projected wall time of the whole table:" in report


def test_gpu_check_without_data_skips_the_training_run(tmp_path):
    out = tmp_path / "report.md"
    done = _gpu_check(
        "--only", "cifar", "--data", str(tmp_path / "absent.tar.gz"), "--out", str(out)
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "skipped: no data" in out.read_text()
