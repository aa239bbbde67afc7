"""Mixed precision and memory layout: maps agree with float32 within stated tolerances.

Tolerances, on min-max normalised maps (values in [0, 1]): bf16 autocast 0.03 (bf16 keeps 8
mantissa bits, so activations differ by ~0.4% and maps by ~1% of their range); fp16 autocast on
CUDA 0.01; channels_last 1e-5 relative (same arithmetic, another order of summation).
"""

from __future__ import annotations

import pytest
import torch

from distill import ExplanationDistiller, build_model
from distill.cam import capture_activations, gradcam_pp, minmax_normalize

BF16_TOLERANCE = 0.03
FP16_TOLERANCE = 0.01


@pytest.fixture(scope="module")
def model_and_batch():
    torch.manual_seed(0)
    model = build_model("wrn_16_2", num_classes=10).eval()
    for module in model.modules():  # trained-like BN statistics
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    return model, torch.randn(16, 3, 32, 32), torch.randint(0, 10, (16,))


def _maps(model, images, targets, closed_form=True):
    with capture_activations(model, [model.cam_layer]) as acts:
        scores = model(images)
    weight = model.get_classifier().weight if closed_form else None
    return gradcam_pp(acts[model.cam_layer], scores, targets, classifier_weight=weight)


@pytest.mark.parametrize("closed_form", [True, False])
def test_bf16_autocast_maps_agree_with_float32(model_and_batch, closed_form):
    model, images, targets = model_and_batch
    reference = _maps(model, images, targets, closed_form)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        maps = _maps(model, images, targets, closed_form)
    assert maps.dtype == torch.float32  # weights and sum kept in float32 inside autocast
    diff = (minmax_normalize(maps) - minmax_normalize(reference)).abs().max().item()
    assert diff < BF16_TOLERANCE, diff


def test_bf16_autocast_distillation_step_is_finite():
    torch.manual_seed(1)
    distiller = ExplanationDistiller(build_model("wrn_16_1", 10), build_model("wrn_16_1", 10))
    images, labels = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = distiller(images, labels)
    out.loss.backward()
    assert torch.isfinite(out.loss)
    assert all(
        torch.isfinite(p.grad).all() for p in distiller.student.parameters() if p.grad is not None
    )


def test_channels_last_maps_equal_contiguous(model_and_batch):
    model, images, targets = model_and_batch
    reference = _maps(model, images, targets)
    model_cl = build_model("wrn_16_2", num_classes=10).eval()
    model_cl.load_state_dict(model.state_dict())
    model_cl = model_cl.to(memory_format=torch.channels_last)
    maps = _maps(model_cl, images.to(memory_format=torch.channels_last), targets)
    torch.testing.assert_close(maps, reference, rtol=1e-5, atol=1e-5 * reference.abs().max().item())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("closed_form", [True, False])
def test_cuda_fp16_autocast_and_grad_scaler(model_and_batch, closed_form):
    model, images, targets = model_and_batch
    reference = _maps(model, images, targets, closed_form)
    cuda_model = build_model("wrn_16_2", num_classes=10).eval()
    cuda_model.load_state_dict(model.state_dict())
    cuda_model = cuda_model.cuda()
    fp32 = _maps(cuda_model, images.cuda(), targets.cuda(), closed_form)
    torch.testing.assert_close(
        fp32.cpu(), reference, rtol=1e-3, atol=1e-3 * reference.abs().max().item()
    )
    with torch.autocast("cuda", dtype=torch.float16):
        half = _maps(cuda_model, images.cuda(), targets.cuda(), closed_form)
    assert half.dtype == torch.float32 and torch.isfinite(half).all()
    diff = (minmax_normalize(half.cpu()) - minmax_normalize(reference)).abs().max().item()
    assert diff < FP16_TOLERANCE, diff
    # A full fp16 distillation step with a gradient scaler.
    distiller = ExplanationDistiller(
        cuda_model, build_model("wrn_16_1", 10).cuda(), map_closed_form=closed_form
    )
    optimizer = torch.optim.SGD(distiller.student.parameters(), lr=0.01)
    scaler = torch.amp.GradScaler("cuda")
    with torch.autocast("cuda", dtype=torch.float16):
        out = distiller(images.cuda(), targets.cuda())
    scaler.scale(out.loss).backward()
    scaler.step(optimizer)
    scaler.update()
    assert torch.isfinite(out.loss)
