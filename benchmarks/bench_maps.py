# ruff: noqa: E402  (OPENBLAS_NUM_THREADS is set before NumPy is imported)
"""Maps of every CAM method: distill vs pytorch-grad-cam vs torchcam, forward pass included.

One row per method and model, all timed round-robin in one run. Every implementation produces
maps for per-sample targets, min-max normalised and upsampled to the input size
(pytorch-grad-cam's own output). The model's plain forward is timed beside them, so a method's
own cost is ``distill - forward``. A peer that lacks a method shows "-".

``vit_tiny_p4_32`` has no prefix token (an 8x8 token grid, token-average head): the peers get a
``reshape_transform`` to that grid. torchcam's CAM there uses the raw classifier rows (it knows no
head norm), distill's the rows seen through the norm: the timings compare, the maps differ.

Usage:
    pip install -e .[bench]
    python benchmarks/bench_maps.py [--models wrn_16_2 vit_tiny_p4_32] [--batch 128]
        [--repeats 3] [--methods gradcam_pp xgradcam ...]
"""

from __future__ import annotations

import os

# pytorch-grad-cam computes in NumPy. OpenBLAS's threads keep spinning after each call and take
# the cores from whatever is timed next (a no-grad forward measured 222 ms after them, 144 ms
# without), so NumPy gets one thread: the peers lose nothing measurable, the order stops mattering.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
from collections.abc import Callable

import torch
import torch.nn.functional as F
from _common import machine, measure_interleaved, table  # benchmarks/ is on sys.path

from distill.cam import (
    CAM,
    EigenCAM,
    GradCAM,
    GradCAMElementWise,
    GradCAMPlusPlus,
    HiResCAM,
    LayerCAM,
    XGradCAM,
    minmax_normalize,
    resize_maps,
    token_layout,
)
from distill.models import build_model

OURS = {
    "gradcam": GradCAM,
    "gradcam_pp": GradCAMPlusPlus,
    "xgradcam": XGradCAM,
    "layercam": LayerCAM,
    "hirescam": HiResCAM,
    "gradcam_elementwise": GradCAMElementWise,
    "cam": CAM,
    "eigencam": EigenCAM,
}
PYTORCH_GRAD_CAM = {
    "gradcam": "GradCAM",
    "gradcam_pp": "GradCAMPlusPlus",
    "xgradcam": "XGradCAM",
    "layercam": "LayerCAM",
    "hirescam": "HiResCAM",
    "gradcam_elementwise": "GradCAMElementWise",
    "eigencam": "EigenCAM",
}
TORCHCAM = {
    "gradcam": "GradCAM",
    "gradcam_pp": "GradCAMpp",
    "xgradcam": "XGradCAM",
    "layercam": "LayerCAM",
    "cam": "CAM",
}

Maps = Callable[[torch.nn.Module, torch.Tensor, torch.Tensor], object]


def distill_maps(cam, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    maps = cam(images, targets)  # hooks exist only during the call
    return minmax_normalize(resize_maps(minmax_normalize(maps), images.shape[-2:]))


def _reshape(model: torch.nn.Module, images: torch.Tensor):
    """The peers' ``reshape_transform`` for a token model: its own layout, no guessing."""
    layout = token_layout(model, images.shape[-2:])
    if layout is None:
        return None
    height, width = layout.grid

    def reshape(x: torch.Tensor) -> torch.Tensor:
        x = x[:, layout.prefix_tokens :]
        return x.reshape(x.shape[0], height, width, -1).permute(0, 3, 1, 2)

    return reshape


def pytorch_grad_cam_maps(method: str) -> Maps:
    def run(model, images, targets):
        import pytorch_grad_cam
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        layer = dict(model.named_modules())[model.cam_layer]
        peer = getattr(pytorch_grad_cam, PYTORCH_GRAD_CAM[method])
        with peer(model, [layer], reshape_transform=_reshape(model, images)) as cam:
            return cam(images, [ClassifierOutputTarget(int(t)) for t in targets])

    return run


def torchcam_maps(method: str) -> Maps:
    def run(model, images, targets):
        from torchcam import methods

        kwargs = {}
        if method == "cam":
            classifier = model.get_classifier()
            kwargs["fc_layer"] = next(n for n, m in model.named_modules() if m is classifier)
        peer = getattr(methods, TORCHCAM[method])
        reshape = _reshape(model, images)
        with peer(model, target_layer=model.cam_layer, reshape_transform=reshape, **kwargs) as ex:
            scores = model(images)
            (maps,) = ex(class_idx=targets.tolist(), scores=scores)
        return F.interpolate(maps[:, None], size=images.shape[-2:], mode="bilinear")[:, 0]

    return run


def peers() -> dict[str, tuple[dict[str, str], Callable[[str], Maps]]]:
    found = {}
    try:
        import pytorch_grad_cam  # noqa: F401

        found["pytorch-grad-cam"] = (PYTORCH_GRAD_CAM, pytorch_grad_cam_maps)
    except ImportError:
        print("pytorch-grad-cam not installed (pip install -e .[bench]): skipped")
    try:
        import torchcam  # noqa: F401

        found["torchcam"] = (TORCHCAM, torchcam_maps)
    except ImportError:
        print("torchcam not installed (pip install -e .[bench]): skipped")
    return found


def bench_model(name: str, args: argparse.Namespace, device: torch.device) -> str:
    torch.manual_seed(0)
    model = build_model(name, num_classes=10).to(device).eval()
    images = torch.randn(args.batch, 3, 32, 32, device=device)
    targets = torch.randint(0, 10, (args.batch,), device=device)
    others = peers()

    def forward() -> torch.Tensor:
        with torch.no_grad():
            return model(images)

    fns: dict[str, Callable[[], object]] = {"forward": forward}
    for method in args.methods:
        cam = OURS[method](model)
        fns[f"distill/{method}"] = lambda c=cam: distill_maps(c, images, targets)
        for peer, (names, make) in others.items():
            if method in names:
                run = make(method)
                fns[f"{peer}/{method}"] = lambda fn=run: fn(model, images, targets)
    timings = measure_interleaved(fns, repeats=args.repeats, warmup=1, device=device)

    header = ["method", "distill", "cost beyond forward"]
    for peer in others:
        header += [peer, f"{peer} / distill"]
    forward_time = timings["forward"].median
    rows = [["forward only", timings["forward"], "", *[""] * (2 * len(others))]]
    for method in args.methods:
        ours = timings[f"distill/{method}"]
        row = [method, ours, f"{(ours.median - forward_time) / forward_time * 100:+.0f}%"]
        for peer in others:
            theirs = timings.get(f"{peer}/{method}")
            row += [theirs, f"{theirs.median / ours.median:.2f}x"] if theirs else ["-", "-"]
        rows.append(row)
    title = f"## Maps per method, {name}, batch {args.batch}, 32x32, {device.type}"
    return f"{title}\n\n{table(header, rows)}\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["wrn_16_2", "vit_tiny_p4_32"])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--methods", nargs="+", default=list(OURS), choices=list(OURS))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    print(f"{machine()}\n", flush=True)
    for name in args.models:
        print(bench_model(name, args, device), flush=True)


if __name__ == "__main__":
    main()
