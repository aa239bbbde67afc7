"""Grad-CAM++ maps: distill vs pytorch-grad-cam vs torchcam, forward pass included.

Every method produces maps for per-sample targets, min-max normalised and upsampled to the input
size (pytorch-grad-cam's own output). The model's plain forward is timed beside them, so the
explanation's own cost is ``distill - forward``.

Usage:
    pip install -e .[bench]
    python benchmarks/bench_maps.py [--model wrn_16_2] [--batches 8 128 512] [--repeats 7]
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
import torch.nn.functional as F
from _common import machine, measure_interleaved, table  # benchmarks/ is on sys.path

from distill.cam import GradCAMPlusPlus, minmax_normalize, resize_maps
from distill.models import build_model


def distill_maps(cam: GradCAMPlusPlus, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    maps = cam(images, targets)  # hooks exist only during the call
    return minmax_normalize(resize_maps(minmax_normalize(maps), images.shape[-2:]))


def pytorch_grad_cam_maps(model: torch.nn.Module, images: torch.Tensor, targets: torch.Tensor):
    from pytorch_grad_cam import GradCAMPlusPlus as Reference
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    layer = dict(model.named_modules())[model.cam_layer]
    with Reference(model=model, target_layers=[layer]) as cam:  # hooks removed on exit
        return cam(input_tensor=images, targets=[ClassifierOutputTarget(int(t)) for t in targets])


def torchcam_maps(model: torch.nn.Module, images: torch.Tensor, targets: torch.Tensor):
    from torchcam.methods import GradCAMpp

    with GradCAMpp(model, target_layer=model.cam_layer, enable_hooks=True) as extractor:
        scores = model(images)
        (maps,) = extractor(class_idx=targets.tolist(), scores=scores)
    return F.interpolate(maps[:, None], size=images.shape[-2:], mode="bilinear")[:, 0]


def peers() -> dict[str, Callable]:
    found = {}
    try:
        import pytorch_grad_cam  # noqa: F401

        found["pytorch-grad-cam"] = pytorch_grad_cam_maps
    except ImportError:
        print("pytorch-grad-cam not installed (pip install -e .[bench]): skipped")
    try:
        import torchcam  # noqa: F401

        found["torchcam"] = torchcam_maps
    except ImportError:
        print("torchcam not installed (pip install -e .[bench]): skipped")
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="wrn_16_2")
    parser.add_argument("--batches", type=int, nargs="+", default=[8, 128, 512])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)

    torch.manual_seed(0)
    model = build_model(args.model, num_classes=10).to(device).eval()
    others = peers()
    print(f"## Grad-CAM++ maps, {args.model}, 32x32, {device.type}\n\n{machine()}\n")
    header = ["batch", "forward only", "distill", "explanation cost / forward"]
    for name in others:
        header += [name, f"{name} / distill"]
    rows = []
    for batch in args.batches:
        images = torch.randn(batch, 3, 32, 32, device=device)
        targets = torch.randint(0, 10, (batch,), device=device)

        def forward(images=images) -> torch.Tensor:
            with torch.no_grad():
                return model(images)

        cam = GradCAMPlusPlus(model)
        fns = {
            "forward": forward,
            "distill": lambda c=cam, i=images, t=targets: distill_maps(c, i, t),
        }
        fns |= {
            name: (lambda fn=fn, i=images, t=targets: fn(model, i, t))
            for name, fn in others.items()
        }
        timings = measure_interleaved(fns, repeats=args.repeats, device=device)
        ours = timings["distill"].median
        overhead = (ours - timings["forward"].median) / timings["forward"].median
        row = [batch, timings["forward"], timings["distill"], f"{overhead * 100:+.1f}%"]
        for name in others:
            row += [timings[name], f"{timings[name].median / ours:.2f}x"]
        rows.append(row)
        print(f"batch {batch}: done", flush=True)
    print("\n" + table(header, rows))


if __name__ == "__main__":
    main()
