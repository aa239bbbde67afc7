"""benchmarks/evidence_columns.py: which students ``--reuse`` keeps, and the table's rows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.scripts import load_script

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "evidence_columns.py"


def _module():
    return load_script(SCRIPT)


def _row(run: str, images: int, **extra) -> dict:
    return {
        "method": "kd",
        "seed": 0,
        "run": run,
        "command": "python compare.py --seeds 0",
        "commit": "a" * 40,
        "test_acc_last": 0.5,
        "map_similarity_images": images,
        "test_map_similarity": 0.9,
        "test_map_similarity_gradcam_pp": 0.8,
        "map_method": "gradcam_pp",
        "last_epoch_is_selected": True,
        **extra,
    }


def test_reuse_keeps_students_measured_on_the_same_images_with_the_measuring_commit(tmp_path):
    columns = _module()
    rows = [
        _row("runs/a", 2000),
        _row("runs/b", 500),  # another image count: measured again
        _row("runs/c", 2000, measured_at="c" * 40),  # reused before: keeps the first commit
        {"method": "cat_kd", "seed": 0, "diverged": "NaN loss"},  # no student
    ]
    record = {"command": "python evidence_columns.py X --images 2000", "commit": "b" * 40}
    (tmp_path / "results.json").write_text(json.dumps({**record, "rows": rows}))

    found = columns.measured_before(tmp_path, 2000)

    assert sorted(found) == ["runs/a", "runs/c"]
    assert found["runs/a"]["measured_at"] == "b" * 40
    assert found["runs/c"]["measured_at"] == "c" * 40
    assert found["runs/a"]["test_map_similarity_gradcam_pp"] == 0.8
    assert "method" not in found["runs/a"]  # only the measured columns travel
    assert columns.measured_before(tmp_path, None) == {}  # whole split now, a subset then
    assert columns.measured_before(tmp_path / "absent", 2000) == {}


def test_table_gives_mean_and_sample_std_per_method_in_compare_order():
    columns = _module()
    rows = [
        {"method": m, "seed": s, "test_acc": a, "test_acc_last": a}
        for m, s, a in (("kd", 1, 0.6), ("ce", 0, 0.3), ("kd", 0, 0.4))
    ]
    lines = columns.table(rows).splitlines()
    assert lines[2].startswith("| CE | 0 | 30.00 | 30.00 | n/a")
    assert lines[3].startswith("| CE + KD | 0,1 | 50.00 ± 14.14 | 50.00 ± 14.14 | n/a")


def test_a_comparison_without_results_is_refused_before_anything_is_measured(
    tmp_path, monkeypatch, capsys
):
    columns = _module()
    done, running = tmp_path / "done", tmp_path / "running"
    done.mkdir()
    running.mkdir()
    (done / "results.json").write_text(json.dumps([{"method": "ce", "seed": 0}]))
    monkeypatch.setattr(columns, "evaluate", lambda *a, **k: pytest.fail("measured"))
    argv = ["evidence_columns.py", str(done), str(running), "--out", str(tmp_path / "out")]
    monkeypatch.setattr("sys.argv", argv)
    with pytest.raises(SystemExit) as error:
        columns.main()
    assert error.value.code == 2
    assert f"{running} has no results.json" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
