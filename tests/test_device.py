"""Training-step checks parametrised by device: always on the CPU, also on CUDA when present.

Each check runs the distillation step the way a GPU run does (mixed precision with a gradient
scaler, bf16, channels_last, augmentation on the batch's device, torch.compile) and compares it
with the plain float32 step on the same device. The autograd map paths build a double backward
(``create_graph=True``): a mid-network layer, and the default layer with the closed form off.
``benchmarks/gpu_check.py`` runs the ``gpu``-marked ones on a GPU machine.

Tolerances are on the total loss of one step from random init (about 2.5 with the map loss at
weight 0.01): bf16 0.05 relative (8 mantissa bits), fp16 0.01 (11 bits); bf16 gradients point
the same way as float32 ones (cosine above 0.8 for every parameter tensor).
"""

from __future__ import annotations

import copy

import pytest
import torch

from distill import ExplanationDistiller, build_model
from distill.data import CIFAR10_MEAN, CIFAR10_STD, BatchAugment, Normalize

CUDA = pytest.param(
    "cuda",
    marks=[
        pytest.mark.gpu,
        pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
    ],
)
DEVICES = ["cpu", CUDA]
MAP_PATHS = {
    "closed_form": {},
    "autograd_default_layer": {"map_closed_form": False},  # double backward through the head
    "autograd_mid_layer": {"map_layers": [("block2", "block2", 1.0)]},  # and through block3
}


def _distiller(device: str, **options) -> ExplanationDistiller:
    torch.manual_seed(0)
    teacher, student = build_model("wrn_16_1", 10), build_model("wrn_16_1", 10)
    return ExplanationDistiller(teacher, student, **options).to(device).train()


def _batch(device: str, size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(size, 3, 32, 32, generator=generator)
    labels = torch.randint(0, 10, (size,), generator=generator)
    return images.to(device), labels.to(device)


def _grads(distiller: ExplanationDistiller) -> list[torch.Tensor]:
    return [p.grad for p in distiller.student.parameters() if p.grad is not None]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "path",
    [
        "closed_form",
        "autograd_default_layer",
        # 13 fp16 steps: over a minute on 2 CPU cores, where fp16 kernels are emulated
        pytest.param("autograd_mid_layer", marks=pytest.mark.slow),
    ],
)
def test_fp16_grad_scaler_steps(device, path):
    """fp16 autocast + GradScaler, including the double backward of the autograd map paths.

    The scaler starts at 2**16 and skips the steps whose scaled gradients overflow, halving the
    scale each time, until one fits. Measured on the CPU: the closed form and the autograd path
    at the default layer step at once; the mid-layer path's double backward (second-order terms
    through block3 in fp16) overflows down to a scale of 2**5 and first steps at 2**4, after 12
    skipped steps. bf16 has fp32's range and needs no scaler.
    """
    images, labels = _batch(device)
    reference = _distiller(device, **MAP_PATHS[path])(images, labels).loss.item()
    distiller = _distiller(device, **MAP_PATHS[path])
    optimizer = torch.optim.SGD(distiller.student.parameters(), lr=0.01)
    scaler = torch.amp.GradScaler(device)
    before = [p.detach().clone() for p in distiller.student.parameters()]
    losses = []
    for _ in range(16):
        with torch.autocast(device, dtype=torch.float16):
            out = distiller(images, labels)
        optimizer.zero_grad()
        scaler.scale(out.loss).backward()
        scale = scaler.get_scale()
        scaler.step(optimizer)
        scaler.update()
        losses.append(out.loss.item())
        if scaler.get_scale() == scale:  # not lowered: this step was taken
            break
    assert losses[0] == pytest.approx(reference, rel=0.01)
    assert all(torch.isfinite(torch.tensor(losses)))
    after = list(distiller.student.parameters())
    assert any(not torch.equal(b, a) for b, a in zip(before, after, strict=True)), "no step taken"
    assert all(torch.isfinite(a).all() for a in after)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("path", list(MAP_PATHS))
def test_bf16_step_close_to_float32(device, path):
    images, labels = _batch(device)
    reference = _distiller(device, **MAP_PATHS[path])
    want = reference(images, labels)
    want.loss.backward()
    distiller = _distiller(device, **MAP_PATHS[path])
    with torch.autocast(device, dtype=torch.bfloat16):
        got = distiller(images, labels)
    got.loss.backward()
    assert got.loss.item() == pytest.approx(want.loss.item(), rel=0.05)
    cosines = [
        torch.nn.functional.cosine_similarity(g.flatten().float(), r.flatten(), dim=0)
        for g, r in zip(_grads(distiller), _grads(reference), strict=True)
    ]
    assert min(cosines) > 0.8, min(cosines)  # measured 0.87 on the CPU


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("path", ["closed_form", "autograd_mid_layer"])
def test_channels_last_step_equals_contiguous(device, path):
    images, labels = _batch(device)
    reference = _distiller(device, **MAP_PATHS[path])
    want = reference(images, labels)
    want.loss.backward()
    distiller = _distiller(device, **MAP_PATHS[path]).to(memory_format=torch.channels_last)
    got = distiller(images.to(memory_format=torch.channels_last), labels)
    got.loss.backward()
    torch.testing.assert_close(got.loss, want.loss, rtol=1e-4, atol=1e-5)
    # Another summation order: the loss agrees to 1e-5, but float32 rounding grows on its way
    # back through the BN layers (batch 16, random init), the noise torch.compile shows too:
    # single elements of early-layer gradients differ by up to ~1% of the tensor's largest and
    # whole tensors by up to 0.2% in norm (measured with 2 CPU threads).
    for g, r in zip(_grads(distiller), _grads(reference), strict=True):
        assert ((g - r).norm() / r.norm()).item() < 1e-2


@pytest.mark.parametrize("device", DEVICES)
def test_augmentation_on_device_matches_cpu(device):
    """Crop + flip + normalisation run on the batch's device and equal the CPU result."""
    x = torch.randint(0, 256, (32, 3, 32, 32), dtype=torch.uint8)
    want = BatchAugment(generator=5)(x)
    got = BatchAugment(generator=5)(x.to(device))
    assert got.device.type == device and torch.equal(got.cpu(), want)
    norm = Normalize(CIFAR10_MEAN, CIFAR10_STD)
    torch.testing.assert_close(norm(got).cpu(), norm(want))


@pytest.mark.slow  # compiling on the CPU takes about a minute; on CUDA it is the point
@pytest.mark.parametrize(
    ("device", "mode"),
    [("cpu", "default"), pytest.param("cuda", "reduce-overhead", marks=CUDA.marks)],
)
def test_compiled_step_close_to_eager(device, mode):
    """Three SGD steps with ``trainer.compile``'s compilation: float32 losses agree."""
    from distill.training.compile import compile_distiller

    eager = _distiller(device)
    compiled = copy.deepcopy(eager)
    assert compile_distiller(compiled, mode) == ["student", "teacher"]
    losses = {}
    for name, distiller in (("eager", eager), ("compiled", compiled)):
        optimizer = torch.optim.SGD(distiller.student.parameters(), lr=0.01)
        losses[name] = []
        for step in range(3):
            images, labels = _batch(device, size=16 + step % 2)  # a size change recompiles
            out = distiller(images, labels)
            optimizer.zero_grad()
            out.loss.backward()
            optimizer.step()
            losses[name].append(out.loss.item())
    assert losses["compiled"] == pytest.approx(losses["eager"], rel=1e-3)
