"""``trainer.compile``: valid values, which networks get compiled, and compiled == eager.

The comparisons compile for real and take about a minute on 2 CPU cores (cold caches), so they
are marked slow; the rest patches ``nn.Module.compile`` and runs in milliseconds.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

from distill import ExplanationDistiller, build_model
from distill.config import ConfigError, load_config
from distill.training.compile import (
    compile_distiller,
    compile_mode,
    is_compiled,
    student_eager_reason,
)


@pytest.fixture
def compile_calls(monkeypatch):
    """Record ``nn.Module.compile`` calls instead of compiling."""
    calls: list[tuple[nn.Module, str]] = []
    monkeypatch.setattr(nn.Module, "compile", lambda self, mode: calls.append((self, mode)))
    return calls


def _distiller(dtype: torch.dtype = torch.float32, **kwargs) -> ExplanationDistiller:
    torch.manual_seed(0)
    teacher, student = (build_model("wrn_16_1", 10).to(dtype) for _ in range(2))
    return ExplanationDistiller(teacher, student, **kwargs)


def test_compile_mode_values():
    assert compile_mode(False) is None
    assert compile_mode(True) == "default"
    assert compile_mode("reduce-overhead") == "reduce-overhead"
    with pytest.raises(ValueError, match="compile must be one of"):
        compile_mode("fast")


def test_config_accepts_modes_and_rejects_others():
    assert load_config("quickstart").trainer.compile is False
    assert load_config("quickstart", ["trainer.compile=true"]).trainer.compile is True
    cfg = load_config("quickstart", ["trainer.compile=reduce-overhead"])
    assert cfg.trainer.compile == "reduce-overhead"
    with pytest.raises(ConfigError, match=r"trainer.compile='reduce_overhead' is not valid"):
        load_config("quickstart", ["trainer.compile=reduce_overhead"])


def test_config_warns_when_the_student_stays_eager():
    with pytest.warns(UserWarning, match="student runs eagerly"):
        load_config("quickstart", ["trainer.compile=true", "loss.map_closed_form=false"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_config("quickstart", ["trainer.compile=true"])  # closed form: no warning
        load_config("quickstart", ["loss.map_closed_form=false"])  # compile off: no warning


def test_closed_form_compiles_student_and_teacher(compile_calls):
    distiller = _distiller()
    assert compile_distiller(distiller, "reduce-overhead") == ["student", "teacher"]
    assert [(m is distiller.student, mode) for m, mode in compile_calls] == [
        (True, "reduce-overhead"),
        (False, "reduce-overhead"),
    ]
    assert compile_distiller(_distiller(), False) == []


def test_autograd_maps_keep_the_student_eager_with_a_warning(compile_calls):
    distiller = _distiller(map_closed_form=False)
    with pytest.warns(UserWarning, match="double backward"):
        compiled = compile_distiller(distiller, True)
    assert compiled == []  # the teacher's maps need autograd too: nothing is compiled
    student = build_model("wrn_16_1", 10)
    assert student_eager_reason(student, ["block2"], map_closed_form=True) is not None
    assert student_eager_reason(student, [student.cam_layer], map_closed_form=True) is None


def _steps(distiller: ExplanationDistiller, batches, lr: float = 0.1) -> list[torch.Tensor]:
    optimizer = torch.optim.SGD(distiller.student.parameters(), lr=lr)
    losses = []
    for images, labels in batches:
        out = distiller(images, labels)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        losses.append(torch.stack([out.loss.detach(), *out.parts.values()]))
    return losses


@pytest.mark.slow
@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({}, ["student", "teacher"]),  # closed-form maps: both networks compiled
        ({"map_layers": [("block3", "relu")]}, ["teacher"]),  # autograd student maps
    ],
)
def test_compiled_training_steps_match_eager(options, expected):
    """Three SGD steps: the losses and the student's weights agree with the eager run.

    In float64, so that agreement is tight: in float32 inductor's fused kernels sum in another
    order, and after the map loss's backward some early-layer gradients differ by up to ~1%
    (they agree to 1e-15 in float64, and a cross-entropy-only step agrees to ~1e-4 in float32).
    """
    eager = _distiller(torch.float64, **options).train()
    compiled = copy.deepcopy(eager)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the autograd case warns that the student stays eager
        assert compile_distiller(compiled, True) == expected
    assert is_compiled(compiled.student) == ("student" in expected)
    generator = torch.Generator().manual_seed(1)
    batches = [
        (
            torch.randn(8, 3, 32, 32, generator=generator, dtype=torch.float64),
            torch.randint(0, 10, (8,), generator=generator),
        )
        for _ in range(3)
    ]
    # A plain forward first: the graph it traces has no capture hooks and must not be reused.
    with torch.no_grad():
        compiled.student.eval()(batches[0][0])
    compiled.student.train()
    for got, want in zip(_steps(compiled, batches), _steps(eager, batches), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    for got, want in zip(
        compiled.student.state_dict().values(), eager.student.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.slow
def test_train_with_compile(tiny_overrides):
    from distill.tools.train import train

    summary, result = train(load_config("quickstart", [*tiny_overrides, "trainer.compile=true"]))
    assert is_compiled(result.student) and is_compiled(result.teacher)
    assert 0 <= summary["student"]["test_acc"] <= 1
    assert set(result.student.state_dict()) == set(build_model("wrn_16_1", 4).state_dict())
