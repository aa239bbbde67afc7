"""The comparison runner on tiny shapes data: table, plot and per-run metrics."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from distill.cam import CAM_METHODS
from distill.tools.compare import METHODS, compare, main
from distill.tools.compare_eval import win_vs
from distill.tools.compare_report import CAM_NAMES, LABELS, summarize
from tests.scripts import load_script


def test_compare_runs_methods_over_seeds_and_writes_table_and_plot(tiny_overrides):
    rows, out = compare(
        "quickstart", tiny_overrides, seeds=[0, 1], methods=["ce", "gradcam_pp", "at"]
    )
    assert len(rows) == 6
    assert (out / "teacher.ckpt").is_file()
    for name in ("results.json", "results.md", "results.png", "settings.json"):
        assert (out / name).is_file(), name
    saved = json.loads((out / "results.json").read_text())
    assert [(r["method"], r["seed"]) for r in saved] == [
        ("ce", 0),
        ("gradcam_pp", 0),
        ("at", 0),
        ("ce", 1),
        ("gradcam_pp", 1),
        ("at", 1),
    ]
    for row in saved:
        assert 0 <= row["test_acc"] <= 1
        assert 0 <= row["average_drop"] <= 100 and 0 <= row["increase_in_confidence"] <= 100
        assert 0 <= row["deletion_auc"] <= 1 and 0 <= row["insertion_auc"] <= 1
        assert -1 <= row["road_morf"] <= 1
        assert 0 <= row["localization"] <= 1 and 0 <= row["energy_pointing"] <= 1
        assert math.isnan(row["win_vs_ce"]) == (row["method"] == "ce")
        assert (row["selected_on"], row["val_split"]) == ("holdout", "holdout")
    table = (out / "results.md").read_text()
    assert (
        "| CE + Grad-CAM++ maps | 2 | holdout |" in table and "| CE + AT | 2 | holdout |" in table
    )
    assert "measured once on the test split" in table


def test_a_sweep_shares_one_teacher_cache_and_labels_each_value(tiny_overrides):
    rows, out = compare(
        "quickstart",
        tiny_overrides,
        seeds=[0],
        methods=["ce", "kd_gradcam_pp"],
        sweep=("loss.map_weight", ["0.01", "0.1"]),
    )
    labels = [row["method"] for row in rows]
    assert labels == [
        "ce loss.map_weight=0.01",
        "ce loss.map_weight=0.1",
        "kd_gradcam_pp loss.map_weight=0.01",
        "kd_gradcam_pp loss.map_weight=0.1",
    ]
    summaries = [json.loads(p.read_text()) for p in (out / "runs").glob("*/*/summary.json")]
    caches = {s["student"]["teacher_cache"] for s in summaries if "student" in s}
    assert len(caches) == 1  # one teacher, one stream: every student read the same cache
    settings = json.loads((out / "settings.json").read_text())
    assert settings["sweep"] == ["loss.map_weight", ["0.01", "0.1"]] and settings["teacher_cache"]
    assert math.isnan(rows[0]["win_vs_ce"]) and not math.isnan(rows[2]["win_vs_ce"])
    assert "every student saw the same augmented batches" in (out / "results.md").read_text()


def test_attention_transfer_runs_the_teacher_live_in_a_cached_comparison():
    from distill.config import load_config
    from distill.tools.compare import _cache_overrides

    base = load_config("quickstart", ["output_dir=/x"])
    assert _cache_overrides(base, METHODS["at"]) == ["teacher_cache.enabled=false"]
    assert _cache_overrides(base, METHODS["kd"]) == [
        "teacher_cache.enabled=true",
        "teacher_cache.dir=/x/teacher_cache",
        "data.augment_seed=0",
    ]


def test_attention_transfer_keeps_the_users_layer_pairs_and_defaults_to_the_wrn_groups():
    from distill.config import load_config
    from distill.tools.compare_methods import WRN_GROUPS, method_overrides

    def pairs(config, overrides):
        base = load_config(config, overrides)
        layers = load_config(config, [*overrides, *method_overrides("at", base)]).loss.at_layers
        return [(p.student, p.teacher) for p in layers]

    wrn = [("block1", "block1"), ("block2", "block2"), ("block3", "block3")]
    assert pairs("cifar_wrn_cpu", []) == wrn
    assert (
        method_overrides("at", load_config("cifar_wrn_cpu"))[-1] == f"loss.at_layers={WRN_GROUPS}"
    )
    resnet = (
        "loss.at_layers=[{student: block1, teacher: layer1}, {student: block3, teacher: layer3}]"
    )
    assert pairs("cifar_wrn_cpu", ["teacher.name=resnet56", resnet]) == [
        ("block1", "layer1"),
        ("block3", "layer3"),
    ]
    assert method_overrides("kd", load_config("cifar_wrn_cpu")) == METHODS["kd"]


def test_attention_transfer_on_a_resnet_teacher_without_pairs_is_refused_with_the_fix():
    from distill.errors import ConfigError
    from distill.tools.compare_methods import check_method_configs

    with pytest.raises(ConfigError) as error:
        check_method_configs("cifar_wrn_cpu", ["teacher.name=resnet56"], ["ce", "at"])
    message = str(error.value)
    assert message.startswith("--methods at: loss.at_layers[0].teacher: CifarResNet has no layer")
    assert message.endswith(
        "(name the models' stages: loss.at_layers=[{student: ..., teacher: ...}, ...])"
    )
    assert "\n" not in message


def test_win_percentage_from_drops_and_summary_format():
    drops = torch.tensor([0.1, 0.5, 0.0, 0.3])
    baseline = torch.tensor([0.2, 0.4, 0.0, 0.6])
    assert win_vs(drops, baseline) == 50.0  # wins on samples 0 and 3; tie on 2
    rows = [
        {
            "method": "kd",
            "seed": s,
            "selected_on": "last",
            "test_acc": a,
            "test_acc_last": a - 0.1,
            "val_agreement": 0.5,
            "val_map_similarity": 0.9,
        }
        for s, a in ((0, 0.80), (1, 0.90))
    ]
    table = summarize(rows)
    assert (
        "| CE + KD | 2 | last | 85.00 ± 7.07 | 75.00 ± 7.07 | 50.00 ± 0.00 | 0.90 ± 0.00 | n/a |"
        in table
    )


def test_methods_use_the_fields_kd_and_add_maps_on_top_of_it():
    from distill.config import load_config
    from distill.tools.compare import METHODS

    def weights(method):
        loss = load_config("quickstart", METHODS[method]).loss
        return loss.ce_weight, loss.kd_weight, loss.temperature, loss.map_weight, loss.at_weight

    assert weights("ce") == (1.0, 0.0, 4.0, 0.0, 0.0)
    assert weights("kd") == (0.1, 0.9, 4.0, 0.0, 0.0)
    assert weights("kd_gradcam_pp") == (0.1, 0.9, 4.0, 0.01, 0.0)  # the same KD, plus maps
    assert weights("gradcam_pp") == (1.0, 0.0, 4.0, 0.01, 0.0)
    assert weights("at") == (1.0, 0.0, 4.0, 0.0, 1000.0)


def test_cli_rejects_bad_seeds_and_methods(capsys):
    from distill.tools.compare import main

    assert main(["--seeds", "0,x"]) == 2
    assert main(["--methods", "ce,magic"]) == 2
    assert "magic" in capsys.readouterr().err


def test_convergence_table_and_plot_from_results(tmp_path):
    from PIL import Image

    convergence = load_script(
        Path(__file__).resolve().parent.parent / "benchmarks" / "convergence.py"
    )
    folders = []
    for epochs, accs in ((40, (0.5, 0.6)), (160, (0.8, 0.9))):
        folder = tmp_path / f"e{epochs}"
        folder.mkdir()
        rows = [
            {"method": m, "seed": s, "epochs": epochs, "test_acc": a + (0.05 if m == "kd" else 0)}
            for m in ("ce", "kd")
            for s, a in enumerate(accs)
        ]
        (folder / "results.json").write_text(json.dumps(rows))
        folders.append(folder)
    assert convergence.main(["--results", *map(str, folders), "--steps-per-epoch", "3"]) == 0
    text = (folders[0] / "convergence.md").read_text()
    assert "| method | 40 epochs (120 steps) | 160 epochs (480 steps) |" in text
    assert "| CE | 55.0 ± 7.1 (n=2) | 85.0 ± 7.1 (n=2) |" in text
    assert "| CE + KD | 60.0 ± 7.1 (n=2) | 90.0 ± 7.1 (n=2) |" in text
    with Image.open(folders[0] / "convergence.png") as image:
        assert image.size == (900, 520)


def test_merge_tabulates_several_folders_and_refuses_a_seed_twice(tmp_path):
    from distill.tools.compare import main

    folders = []
    for seed in (0, 1):
        folder = tmp_path / f"seed{seed}"
        folder.mkdir()
        rows = [
            {"method": m, "seed": seed, "selected_on": "holdout", "test_acc": 0.5 + 0.1 * seed}
            for m in ("kd", "ce")
        ]
        (folder / "results.json").write_text(json.dumps(rows))
        folders.append(folder)
    out = tmp_path / "merged"
    assert main(["--merge", *map(str, folders), "--out", str(out)]) == 0
    merged = json.loads((out / "results.json").read_text())
    assert [(r["method"], r["seed"]) for r in merged] == [
        ("ce", 0),
        ("ce", 1),
        ("kd", 0),
        ("kd", 1),
    ]
    assert "| CE | 2 | holdout | 55.00 ± 7.07 |" in (out / "results.md").read_text()
    assert (out / "results.png").is_file()
    assert main(["--merge", str(folders[0]), str(folders[0]), "--out", str(out)]) == 2


def test_options_may_follow_the_overrides(capsys):
    """``compare.py a=b --methods x c=d`` parses ``--methods`` (argparse alone would stop at
    "unrecognized arguments"): here it reaches the method check."""
    assert main(["seed=1", "--methods", "nope", "--no-cache", "loss.kd_weight=0.5"]) == 2
    assert "unknown methods ['nope']" in capsys.readouterr().err


def test_a_diverged_student_is_recorded_and_the_comparison_goes_on(tiny_overrides, monkeypatch):
    import distill.tools.train as train_module
    from distill.training.callbacks import NonFiniteLossError

    real_train = train_module.train

    def train(cfg, **options):
        if cfg.name == "kd-seed0":
            raise NonFiniteLossError("training loss is nan at epoch 0, step 1")
        return real_train(cfg, **options)

    monkeypatch.setattr(train_module, "train", train)
    rows, out = compare(
        "quickstart", tiny_overrides, seeds=[0, 1], methods=["ce", "kd"], eval_images=8
    )
    assert [(r["method"], r["seed"], "diverged" in r) for r in rows] == [
        ("ce", 0, False),
        ("kd", 0, True),
        ("ce", 1, False),
        ("kd", 1, False),
    ]
    assert rows[1]["diverged"] == "training loss is nan at epoch 0, step 1"
    assert json.loads((out / "settings.json").read_text())["eval_images"] == 8
    table = (out / "results.md").read_text()
    kd_line = next(line for line in table.splitlines() if line.startswith("| CE + KD |"))
    assert "| 2 (1 diverged) | holdout |" in kd_line
    assert f"{100 * rows[3]['test_acc']:.2f} |" in kd_line  # seed 1 alone: no spread
    assert "faithfulness on 8 test images" in table
    for row in (rows[0], rows[2], rows[3]):
        assert 0 <= row["test_acc_last"] <= 1 and 0 <= row["deletion_auc"] <= 1


def test_faithfulness_on_a_subset_uses_the_evenly_spaced_images(tiny_overrides):
    from distill.config import load_config
    from distill.data import datamodule_from_config
    from distill.models import build_model
    from distill.tools.compare_eval import evaluate_student

    cfg = load_config("quickstart", tiny_overrides)
    dm = datamodule_from_config(cfg.data, seed=0)
    dm.setup("test")
    images, labels = dm.fixed_batch(10**9, "test")
    indices = dm.fixed_indices(6, "test")
    subset, subset_labels = dm.fixed_batch(6, "test")
    assert len(indices) == 6 and len(set(indices.tolist())) == 6
    assert torch.equal(subset, images[indices]) and torch.equal(subset_labels, labels[indices])
    torch.manual_seed(0)
    student = build_model(cfg.student.name, num_classes=dm.num_classes).eval()
    every, _ = evaluate_student(student, dm)
    all_by_count, _ = evaluate_student(student, dm, num_images=len(images))
    some, drops = evaluate_student(student, dm, num_images=6)
    assert every == all_by_count
    assert drops.shape == (6,) and all(math.isfinite(v) for v in some.values())


def test_every_method_has_a_table_label_and_every_map_method_a_name():
    """Tables and plots name methods as the field does ("CE + DKD"), not by their keys."""
    assert set(CAM_NAMES) == set(CAM_METHODS)
    assert set(METHODS) <= set(LABELS)
    assert LABELS["dkd_ls"] == "CE + DKD, logit standardisation"
    assert LABELS["kd_eigencam"] == "CE + KD + Eigen-CAM maps"
    assert len(set(LABELS.values())) == len(LABELS)
