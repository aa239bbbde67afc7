"""Largest difference between distill's Grad-CAM++ and pytorch-grad-cam's, per sample, in a batch.

Both maps are min-max normalised, upsampled bilinearly to the input size and normalised again
(pytorch-grad-cam's own post-processing). pytorch-grad-cam adds eps = 1e-6 to the eq.-19
denominator, which distorts alphas when gradients are ~1e-3 (a pooled head over an 8x8 map), so
the classifier weights are scaled up (``--head-scale``, default 1e3 and 1e5) to make that eps
negligible; the difference shrinks as the scale grows, which shows the eps is its source. Scale 1
shows how much the eps changes pytorch-grad-cam's maps on an unscaled head.

Usage:
    pip install -e .[bench]
    python benchmarks/compare_pytorch_grad_cam.py [--model wrn_16_2] [--batch 32] [--seed 0]
"""

from __future__ import annotations

import argparse

import torch

from distill.cam import GradCAMPlusPlus, minmax_normalize, resize_maps
from distill.models import build_model


def reference_maps(
    model: torch.nn.Module, images: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor:
    from pytorch_grad_cam import GradCAMPlusPlus as ReferenceGradCAMPlusPlus
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    layer = dict(model.named_modules())[model.cam_layer]
    with ReferenceGradCAMPlusPlus(model=model, target_layers=[layer]) as cam:
        maps = cam(input_tensor=images, targets=[ClassifierOutputTarget(int(t)) for t in targets])
    return torch.from_numpy(maps)


def distill_maps(
    model: torch.nn.Module, images: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor:
    maps = GradCAMPlusPlus(model)(images, targets)
    return minmax_normalize(resize_maps(minmax_normalize(maps), images.shape[-2:]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="wrn_16_2")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--head-scale", type=float, nargs="+", default=[1e3, 1e5])
    parser.add_argument(
        "--float64", action="store_true", help="run both in float64 (isolates rounding)"
    )
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    model = build_model(args.model, num_classes=10).eval()
    # Non-trivial BN statistics, as after training, so that maps are not near-uniform.
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    images = torch.randn(args.batch, 3, 32, 32)
    if args.float64:
        model, images = model.double(), images.double()
    targets = torch.randint(0, 10, (args.batch,))  # per-sample targets, not the argmax
    classifier = model.get_classifier()
    original = classifier.weight.detach().clone()

    dtype = "float64" if args.float64 else "float32"
    print(f"model={args.model} batch={args.batch} dtype={dtype} targets={targets.tolist()}")
    print("| head scale | max abs diff | mean abs diff |")
    print("|---|---|---|")
    for scale in (1.0, *args.head_scale):
        with torch.no_grad():
            classifier.weight.copy_(original * scale)
        ours = distill_maps(model, images, targets)
        theirs = reference_maps(model, images, targets)
        diff = (ours.double() - theirs.double()).abs()
        print(f"| {scale:g} | {diff.max().item():.3e} | {diff.mean().item():.3e} |")


if __name__ == "__main__":
    main()
