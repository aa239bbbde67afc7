"""Shared fixtures: the quickstart recipe shrunk to seconds (CPU, no wandb, tmp output)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("WANDB_SILENT", "true")


def _tiny_dotlist(output_dir: Path) -> list[str]:
    """Overrides that make the quickstart recipe run in seconds, writing under ``output_dir``."""
    return [
        f"output_dir={output_dir}",
        "data.shapes.num_train=192",
        "data.shapes.num_val=64",
        "data.batch_size=64",
        "data.num_workers=0",
        "teacher.name=wrn_16_1",
        "teacher.epochs=1",
        "student.name=wrn_16_1",
        "student.epochs=1",
        "trainer.accelerator=cpu",
        "trainer.channels_last=false",  # exact equalities below; tests/test_train.py covers it
        "trainer.enable_progress_bar=false",
        "trainer.log_every_n_steps=1",
        "logging.wandb=disabled",
        "logging.map_images=4",
        "logging.map_every_n_epochs=1",
    ]


@pytest.fixture(scope="session")
def tiny_overrides_for():
    """``output_dir -> overrides``: the ``tiny_overrides`` of module-scoped fixtures, which
    cannot use ``tmp_path``."""
    return _tiny_dotlist


@pytest.fixture
def tiny_overrides(tmp_path, monkeypatch):
    """Dot-list overrides that make the quickstart recipe run in seconds."""
    monkeypatch.delenv("DISTILL_RUN_DIR", raising=False)
    return _tiny_dotlist(tmp_path / "runs")
