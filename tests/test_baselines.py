"""The field's baselines: each loss against its paper's formula written out here (not the
implementation's), torchdistill's value where it has the loss, the models of the standard
CIFAR-100 pairs, compare.py's methods and the teacher cache of their teacher outputs."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torchdistill.losses.mid_level import ATLoss, KDLoss, LogitStdKDLoss

from distill import ExplanationDistiller, build_model
from distill.config import load_config
from distill.losses import attention_transfer, dkd_loss, e2kd_options, kd_loss
from distill.tools.compare import METHODS
from distill.training.teacher_cache import TeacherCache

CLASSES = 5


def _pair(teacher: str = "wrn_16_1", student: str = "wrn_16_1", classes: int = CLASSES):
    torch.manual_seed(0)
    return build_model(teacher, classes), build_model(student, classes)


def _batch(n: int = 6, classes: int = CLASSES) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(1)
    return torch.randn(n, 3, 32, 32), torch.arange(n) % classes


def _logits(n: int = 7, classes: int = 10) -> tuple[torch.Tensor, ...]:
    torch.manual_seed(2)
    return 3 * torch.randn(n, classes), 3 * torch.randn(n, classes), torch.arange(n) % classes


def _io(logits: torch.Tensor) -> dict:
    return {".": {"output": logits}}


def _standardized(z: torch.Tensor) -> torch.Tensor:
    """Sun et al. eq. 9, per sample: minus the mean, over the (sample) standard deviation."""
    rows = []
    for row in z.double():
        mean = row.sum() / len(row)
        std = math.sqrt(((row - mean) ** 2).sum() / (len(row) - 1))
        rows.append((row - mean) / (std + 1e-7))
    return torch.stack(rows)


def _kd_reference(s: torch.Tensor, t: torch.Tensor, temperature: float) -> float:
    """Hinton et al.: T^2 KL(softmax(t/T) || softmax(s/T)), sample by sample, averaged."""
    total = 0.0
    for s_row, t_row in zip(s.double(), t.double(), strict=True):
        p_s, p_t = (s_row / temperature).softmax(0), (t_row / temperature).softmax(0)
        total += float((p_t * (p_t / p_s).log()).sum()) * temperature**2
    return total / len(s)


def _dkd_reference(s, t, labels, alpha, beta, temperature) -> float:
    """Zhao et al. eq. 7 sample by sample: alpha TCKD + beta NCKD with b = [p_t, 1 - p_t] and
    p_hat the other classes' probabilities renormalised, at temperature T, times T^2."""
    total = 0.0
    for s_row, t_row, k in zip(
        s.detach().double(), t.detach().double(), labels.tolist(), strict=True
    ):
        p_s, p_t = (s_row / temperature).softmax(0), (t_row / temperature).softmax(0)
        b_s = torch.stack([p_s[k], 1 - p_s[k]])
        b_t = torch.stack([p_t[k], 1 - p_t[k]])
        tckd = (b_t * (b_t / b_s).log()).sum()
        others = torch.arange(len(s_row)) != k
        q_s, q_t = p_s[others] / p_s[others].sum(), p_t[others] / p_t[others].sum()
        nckd = (q_t * (q_t / q_s).log()).sum()
        total += float(alpha * tckd + beta * nckd) * temperature**2
    return total / len(s)


# ---- KD, logit standardisation, AT: the formula and torchdistill ---------------------------------


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_kd_matches_its_formula_and_torchdistill(temperature):
    s, t, labels = _logits()
    ours = kd_loss(s, t, temperature)
    td = KDLoss(".", "output", ".", "output", temperature=temperature, alpha=0.1, beta=0.9)
    expected = _kd_reference(s, t, temperature)
    assert ours.item() == pytest.approx(expected, rel=1e-5)
    field = 0.1 * F.cross_entropy(s, labels) + 0.9 * ours
    assert field.item() == pytest.approx(td(_io(s), _io(t), labels).item(), rel=1e-5)


def test_the_distillers_kd_step_matches_torchdistill_on_its_logits():
    distiller = ExplanationDistiller(*_pair(), map_weight=0.0).train()
    images, labels = _batch()
    out = distiller(images, labels)
    td = KDLoss(".", "output", ".", "output", temperature=4.0, alpha=0.1, beta=0.9)
    expected = td(_io(out.logits), _io(out.teacher_logits), labels)
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_kd_with_logit_standardisation_matches_its_formula_and_torchdistill():
    s, t, labels = _logits()
    ours = kd_loss(s, t, 2.0, standardize=True)
    expected = _kd_reference(_standardized(s), _standardized(t), 2.0)
    assert ours.item() == pytest.approx(expected, rel=1e-5)
    assert ours.item() != pytest.approx(kd_loss(s, t, 2.0).item(), rel=1e-2)  # it does something
    td = LogitStdKDLoss(".", "output", ".", "output", temperature=2.0, alpha=0.1, beta=9.0)
    distiller = ExplanationDistiller(
        *_pair(),
        ce_weight=0.1,
        kd_weight=9.0,
        temperature=2.0,
        logit_standardize=True,
        map_weight=0.0,
    ).train()
    images, labels = _batch()
    out = distiller(images, labels)
    expected_step = td(_io(out.logits), _io(out.teacher_logits), labels)
    assert out.loss.item() == pytest.approx(expected_step.item(), rel=1e-5)


@pytest.mark.parametrize("form", ["code", "paper"])
def test_attention_transfer_matches_torchdistill(form):
    torch.manual_seed(3)
    student, teacher = torch.randn(4, 8, 6, 6), torch.randn(4, 16, 6, 6)
    pair = {"student": {"io": "output", "path": "x"}, "teacher": {"io": "output", "path": "x"}}
    td = ATLoss({"pair": pair}, mode=form)
    expected = td({"x": {"output": student}}, {"x": {"output": teacher}})
    assert attention_transfer(student, teacher, form=form).item() == pytest.approx(
        expected.item(), rel=1e-5
    )


# ---- DKD ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("alpha", "beta", "temperature"), [(1.0, 8.0, 4.0), (0.5, 2.0, 1.0)])
def test_dkd_matches_the_papers_decomposition(alpha, beta, temperature):
    s, t, labels = _logits()
    ours = dkd_loss(s, t, labels, alpha=alpha, beta=beta, temperature=temperature)
    expected = _dkd_reference(s, t, labels, alpha, beta, temperature)
    assert ours.item() == pytest.approx(expected, rel=1e-5)


def test_dkd_with_logit_standardisation_decouples_the_standardised_logits():
    s, t, labels = _logits()
    ours = dkd_loss(s, t, labels, beta=8.0, temperature=2.0, standardize=True)
    expected = _dkd_reference(_standardized(s), _standardized(t), labels, 1.0, 8.0, 2.0)
    assert ours.item() == pytest.approx(expected, rel=1e-5)


def test_the_dkd_term_warms_up_linearly_over_its_epochs():
    distiller = ExplanationDistiller(
        *_pair(), ce_weight=1.0, kd_weight=0.0, map_weight=0.0, dkd_weight=1.0, dkd_beta=6.0
    ).train()
    images, labels = _batch()
    assert distiller.loss_terms == ("ce", "dkd")
    for epoch, factor in [(0, 1 / 20), (9, 10 / 20), (19, 1.0), (50, 1.0)]:
        out = distiller(images, labels, epoch=epoch)
        expected_dkd = _dkd_reference(out.logits, out.teacher_logits, labels, 1.0, 6.0, 4.0)
        assert out.parts["dkd"].item() == pytest.approx(expected_dkd, rel=1e-5)
        expected = out.parts["ce"].item() + factor * expected_dkd
        assert out.loss.item() == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError, match="epoch"):
        distiller(images, labels)  # training without the epoch would skip the warm-up
    with torch.no_grad():
        distiller.eval()(images, labels)  # evaluation needs none


# ---- CAT-KD ---------------------------------------------------------------------------------------


def _class_maps_reference(model, images, size: int) -> torch.Tensor:
    """The classifier as a 1x1 convolution on the last feature map, then average pooling."""
    features = model.forward_features(images)
    weight = model.get_classifier().weight
    if features.ndim == 3:  # a token-average ViT: its head (fc_norm, fc) on every patch token
        grid = model.grid_size
        tokens = model.get_head_norm()(features) @ weight.T
        cams = tokens.transpose(1, 2).reshape(len(images), -1, *grid)
    else:
        cams = F.conv2d(features, weight[:, :, None, None])
    return F.avg_pool2d(cams, cams.shape[-1] // size)


@pytest.mark.parametrize("student_name", ["wrn_16_1", "vit_tiny_p4_32"])
def test_cat_kd_is_ce_plus_beta_times_the_mse_of_pooled_class_maps(student_name):
    teacher, student = _pair(student=student_name)
    with torch.no_grad():  # CAMs have no bias: nonzero biases would show one
        for model in (teacher, student):
            model.get_classifier().bias.normal_()
    distiller = ExplanationDistiller(
        teacher, student, ce_weight=1.0, kd_weight=0.0, map_weight=0.0, cat_weight=12.0
    ).train()
    images, labels = _batch()
    out = distiller(images, labels)
    assert distiller.loss_terms == ("ce", "cat")
    with torch.no_grad():
        teacher_maps = _class_maps_reference(teacher, images, 2)
    student_maps = _class_maps_reference(student, images, 2)  # train mode, as the step's
    assert teacher_maps.shape == student_maps.shape == (6, CLASSES, 2, 2)
    expected = ((student_maps - teacher_maps) ** 2).mean()
    assert out.parts["cat"].item() == pytest.approx(expected.item(), rel=1e-4)
    ce = F.cross_entropy(out.logits, labels)
    assert out.loss.item() == pytest.approx((ce + 12.0 * expected).item(), rel=1e-5)
    # The student learns through its maps: the gradient is the reference's.
    ours = torch.autograd.grad(out.loss, student.get_classifier().weight)[0]
    ref_loss = F.cross_entropy(student(images), labels) + 12.0 * expected
    ref = torch.autograd.grad(ref_loss, student.get_classifier().weight)[0]
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-6)


def test_cat_kd_refuses_a_model_without_a_pooled_head():
    teacher, _ = _pair()
    vit_token = build_model("vit_tiny_p4_32", CLASSES, global_pool="token")
    with pytest.raises(ValueError, match="pooled-linear head"):
        ExplanationDistiller(teacher, vit_token, cat_weight=1.0)


# ---- e2KD -----------------------------------------------------------------------------------------


def _positive_gradcam(features, logits, classes, create_graph: bool) -> torch.Tensor:
    """relu(sum_k mean_ij(dy_c/dA_kij) A_k), as e2KD's GRAD_CAM_POS."""
    score = logits.gather(1, classes[:, None]).sum()
    (grads,) = torch.autograd.grad(score, features, create_graph=create_graph)
    return torch.relu((grads.mean(dim=(2, 3), keepdim=True) * features).sum(dim=1))


def test_e2kd_is_ce_plus_kd_plus_the_cosine_distance_of_teacher_class_gradcam_maps():
    teacher, student = _pair()
    distiller = ExplanationDistiller(
        teacher, student, **e2kd_options(explanation_weight=5.0, temperature=5.0)
    ).train()
    images, labels = _batch()
    out = distiller(images, labels)
    assert distiller.loss_terms == ("ce", "kd", "map")

    t_features = teacher.forward_features(images).detach().requires_grad_()
    t_logits = teacher.forward_head(t_features)
    top1 = t_logits.argmax(dim=1)
    t_map = _positive_gradcam(t_features, t_logits, top1, create_graph=False).detach()
    s_features = student.forward_features(images)
    s_logits = student.forward_head(s_features)
    s_map = _positive_gradcam(s_features, s_logits, top1, create_graph=True)
    cosine = F.cosine_similarity(s_map.flatten(1), t_map.flatten(1), dim=1)
    explanation = (1 - cosine).mean()
    p_t = (t_logits.detach() / 5).softmax(1)
    kd = 25 * (p_t * (p_t.log() - (s_logits / 5).log_softmax(1))).sum(1).mean()
    reference = F.cross_entropy(s_logits, labels) + kd + 5.0 * explanation

    assert out.parts["map"].item() == pytest.approx(explanation.item(), rel=1e-4)
    assert out.parts["kd"].item() == pytest.approx(kd.item(), rel=1e-5)
    assert out.loss.item() == pytest.approx(reference.item(), rel=1e-5)
    params = [p for p in student.parameters() if p.requires_grad]
    ours = torch.autograd.grad(out.loss, params)
    ref = torch.autograd.grad(reference, params)
    for a, b in zip(ours, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-6)


# ---- models ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "params", "blocks"), [("resnet8x4", 1_233_540, 1), ("resnet32x4", 7_433_860, 5)]
)
def test_repdistillers_wide_resnets_have_their_published_sizes(name, params, blocks):
    """RepDistiller's README: resnet8x4 1.23M, resnet32x4 7.43M parameters (100 classes)."""
    model = build_model(name, 100)
    assert sum(p.numel() for p in model.parameters()) == params
    assert [len(model.layer1), len(model.layer2), len(model.layer3)] == [blocks] * 3
    assert model.conv1.out_channels == 32 and model.fc.in_features == 256
    assert model.forward_features(torch.zeros(1, 3, 32, 32)).shape == (1, 256, 8, 8)
    assert model.cam_layer == f"layer3.{blocks - 1}"
    assert model.default_cfg.num_params == sum(
        p.numel() for p in build_model(name, 10).parameters()
    )


# ---- compare.py's methods and the recipes ---------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "terms"),
    [
        ("at", ("ce", "at")),
        ("dkd", ("ce", "dkd")),
        ("kd_ls", ("ce", "kd")),
        ("dkd_ls", ("ce", "dkd")),
        ("cat_kd", ("ce", "cat")),
        ("e2kd", ("ce", "kd", "map")),
    ],
)
def test_compare_methods_build_their_authors_losses(method, terms):
    from distill.training.student_stage import build_distiller

    cfg = load_config("cifar100_resnet32x4_resnet8x4", METHODS[method])
    distiller = build_distiller(cfg, *_pair("resnet8x4", "resnet8x4", classes=100))
    assert distiller.loss_terms == terms
    standardized = method.endswith("_ls")
    assert distiller.kd.standardize == distiller.dkd.standardize == standardized
    if method == "at":  # the recipe's stages of both ResNets, at the authors' weight
        stages = [(p.student, p.teacher) for p in distiller.at_layers]
        assert stages == [(f"layer{i}", f"layer{i}") for i in (1, 2, 3)]
        assert distiller.at_weight == 1000
    if method == "cat_kd":
        assert distiller.cat_weight == 15.0 and distiller.cat_size == 2  # the pair's beta
    if method.startswith("dkd"):
        assert (distiller.dkd.alpha, distiller.dkd.beta, distiller.dkd_warmup_epochs) == (1, 8, 20)
    if method == "kd_ls":
        assert (distiller.kd_weight, distiller.kd.temperature, distiller.ce_weight) == (9, 2, 0.1)


@pytest.mark.parametrize(
    ("recipe", "teacher", "student", "dkd_beta", "cat_beta"),
    [
        ("cifar100_wrn40_2_wrn16_2", "wrn_40_2", "wrn_16_2", 6.0, 12.0),
        ("cifar100_resnet32x4_resnet8x4", "resnet32x4", "resnet8x4", 8.0, 15.0),
    ],
)
def test_cifar100_recipes_follow_mdistillers_protocol(recipe, teacher, student, dkd_beta, cat_beta):
    from distill.training.optim import build_scheduler

    cfg = load_config(recipe)
    assert (cfg.teacher.name, cfg.student.name, cfg.data.name) == (teacher, student, "cifar100")
    assert (cfg.data.batch_size, cfg.student.epochs, cfg.data.val_fraction) == (64, 240, 0.0)
    assert (cfg.optim.name, cfg.optim.lr, cfg.optim.weight_decay) == ("sgd", 0.05, 5e-4)
    assert (cfg.loss.dkd_beta, cfg.loss.cat_beta) == (dkd_beta, cat_beta)
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=cfg.optim.lr)
    scheduler = build_scheduler(optimizer, cfg.optim, cfg.student.epochs)
    rates = []
    for _ in range(240):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    changes = [epoch for epoch in range(1, 240) if rates[epoch] != rates[epoch - 1]]
    assert changes == [150, 180, 210]
    assert rates[0] == 0.05 and rates[239] == pytest.approx(0.05e-3)


# ---- the teacher cache ----------------------------------------------------------------------------


def test_cached_class_maps_give_the_live_cat_kd_step(tmp_path):
    distiller = ExplanationDistiller(*_pair(), kd_weight=0.0, map_weight=0.0, cat_weight=12.0)
    images, labels = _batch()
    outputs = distiller.teacher_outputs(images, labels)
    assert outputs.class_maps.shape == (6, CLASSES, 2, 2)
    cache = TeacherCache.create(
        tmp_path,
        {"k": 1},
        epochs=1,
        num_samples=10,
        num_classes=CLASSES,
        map_shapes=[tuple(m.shape[1:]) for m in outputs.maps],
        dtype="float32",
        class_map_shape=(CLASSES, 2, 2),
    )
    index = torch.tensor([9, 0, 4, 2, 7, 5])
    cache.write(0, index, outputs)
    read = TeacherCache.open(tmp_path, {"k": 1}).read(0, index, "cpu")
    assert torch.equal(read.class_maps, outputs.class_maps)
    live = distiller(images, labels)
    cached = distiller(images, labels, teacher=read)
    assert torch.equal(live.loss, cached.loss) and live.parts.keys() == cached.parts.keys()
    plain = ExplanationDistiller(*_pair(), kd_weight=0.0).teacher_outputs(images, labels)
    with pytest.raises(ValueError, match="class activation maps"):
        distiller(images, labels, teacher=plain)


@pytest.mark.slow  # a teacher and six 2-epoch students (minutes on 2 shared cores)
@pytest.mark.parametrize("method", ["cat_kd", "dkd", "e2kd"])
def test_a_cached_run_of_a_baseline_trains_the_same_student_as_a_live_run(
    method, tmp_path, tiny_overrides
):
    from distill.tools.train import train

    path = tmp_path / "teacher.ckpt"
    train(
        load_config("quickstart", [*tiny_overrides, "stage=teacher", f"teacher.checkpoint={path}"])
    )
    common = [
        *tiny_overrides,
        *METHODS[method],
        "stage=student",
        f"teacher.checkpoint={path}",
        "student.epochs=2",
        "data.augment_seed=7",
        "loss.dkd_warmup_epochs=4",
    ]
    live = train(load_config("quickstart", common))[0]
    cache = ["teacher_cache.enabled=true", "teacher_cache.dtype=float32"]
    cached = train(load_config("quickstart", [*common, *cache]))[0]

    def weights(summary):
        ckpt = torch.load(summary["student"]["checkpoint"], map_location="cpu", weights_only=True)
        return {k: v for k, v in ckpt["state_dict"].items() if k.startswith("distiller.student.")}

    reference, other = weights(live), weights(cached)
    assert other.keys() == reference.keys()
    assert all(torch.equal(other[k], reference[k]) for k in reference)
    assert cached["student"]["teacher_cache"]


# ---- the GPU plan ---------------------------------------------------------------------------------


@pytest.mark.slow  # 19 rows of tiny training steps: a minute alone, far more on a busy machine
def test_the_table_projection_runs_every_method_of_both_pairs_on_the_cpu():
    import re
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    done = subprocess.run(
        [sys.executable, "benchmarks/cifar100_table.py", "--device", "cpu", "--quick"],
        cwd=root,
        env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr
    rows = [line.split(" | ") for line in done.stdout.splitlines() if line.startswith("| cifar100")]
    methods = {"cifar100_wrn40_2_wrn16_2": [], "cifar100_resnet32x4_resnet8x4": []}
    for row in rows:
        methods[row[0][2:]].append(row[1])
    assert methods["cifar100_wrn40_2_wrn16_2"] == ["teacher (CE)", *METHODS_OF_TABLE]
    assert methods["cifar100_resnet32x4_resnet8x4"] == ["teacher (CE)", *METHODS_OF_TABLE]
    hours = sum(float(row[5].split()[0]) for row in rows)
    total = float(re.search(r"whole table: ([\d.]+) h", done.stdout).group(1))
    assert total == pytest.approx(hours, abs=0.1 + 0.01 * len(rows))


METHODS_OF_TABLE = ["ce", "kd", "at", "dkd", "kd_ls", "dkd_ls", "cat_kd", "e2kd", "kd_gradcam_pp"]


def test_cat_kd_on_a_class_token_model_is_refused_before_anything_trains():
    from distill.config import ConfigError

    with pytest.raises(ConfigError, match="cat_weight.*pooled-linear head"):
        load_config(
            "quickstart",
            [
                *METHODS["cat_kd"],
                "student.name=vit_tiny_p4_32",
                "student.kwargs={global_pool: token}",
            ],
        )
