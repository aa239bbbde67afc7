"""Vision transformers: map cost beyond the forward, the CNN -> ViT training step, and agreement
and speed against pytorch-grad-cam's ViT path, all measured in one run.

1. Maps of ``vit_tiny_p4_32`` (32x32, 8x8 tokens): its token-average head's closed form, the
   autograd path forced at the same layer, and the class-token variant (autograd through the
   last block), each against the plain forward.
2. One training step (forward + backward + AdamW step), WRN-16-2 teacher -> ``vit_tiny_p4_32``
   student, batch 128: CE + KD against CE + KD + Grad-CAM++ maps (closed form; autograd forced;
   class-token student, which trains through a double backward of its last block).
3. pytorch-grad-cam's GradCAMPlusPlus on a DeiT with its two prefix tokens (random weights; the
   same model and layer, its ``reshape_transform`` built from our token layout): largest
   difference of the post-processed maps (min-max, bilinear upsampling, min-max) with the heads
   scaled so that its eps = 1e-6 becomes negligible (DESIGN section 2), and the time of both.

Usage:
    pip install -e ".[bench]" timm
    python benchmarks/bench_vit.py [--batch 128] [--repeats 5] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
from _common import machine, measure_interleaved, table  # benchmarks/ is on sys.path
from torch import nn

from distill import ExplanationDistiller, build_model
from distill.cam import (
    GradCAMPlusPlus,
    capture_activations,
    gradcam_pp,
    minmax_normalize,
    resize_maps,
    token_layout,
    tokens_to_grid,
)


def trained_like(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights with non-trivial norms and heads, so maps are not near-uniform or empty."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.LayerNorm) and module.weight is not None:
                module.weight.copy_(torch.rand(module.weight.shape, generator=generator) + 0.5)
                module.bias.copy_(0.1 * torch.randn(module.bias.shape, generator=generator))
            if isinstance(module, nn.Linear) and module.out_features == 10:
                module.weight.copy_(0.5 * torch.randn(module.weight.shape, generator=generator))
    return model


def autograd_maps(model: nn.Module, layer: str, images: torch.Tensor, targets: torch.Tensor):
    """Grad-CAM++ by autograd at ``layer`` (graph cut there, as the wrappers do)."""
    with capture_activations(model, [layer], detach=True) as acts, torch.enable_grad():
        scores = model(images)
    return gradcam_pp(
        acts[layer], scores, targets, layout=token_layout(model, images.shape[-2:])
    ).detach()


def _map_timings(
    avg: nn.Module, token: nn.Module, batch: int, repeats: int, device: torch.device
) -> dict:
    images = torch.randn(batch, 3, 32, 32, device=device)
    targets = torch.randint(0, 10, (batch,), device=device)

    def forward(model: nn.Module) -> None:
        with torch.no_grad():
            model(images)

    fns: dict[str, Callable[[], object]] = {
        "forward (avg head)": lambda: forward(avg),
        "closed form": lambda: GradCAMPlusPlus(avg)(images, targets),
        "autograd, same layer": lambda: autograd_maps(avg, avg.cam_layer, images, targets),
        "forward (class token)": lambda: forward(token),
        "autograd, class token": lambda: GradCAMPlusPlus(token)(images, targets),
    }
    return measure_interleaved(fns, repeats=repeats, device=device)


def map_cost(args: argparse.Namespace, device: torch.device) -> None:
    torch.manual_seed(0)
    avg = trained_like(build_model("vit_tiny_p4_32", 10)).to(device).eval()
    token = trained_like(build_model("vit_tiny_p4_32", 10, global_pool="token")).to(device).eval()
    rows = []
    for batch in args.map_batches:
        t = _map_timings(avg, token, batch, args.repeats, device)
        base, base_token = t["forward (avg head)"].median, t["forward (class token)"].median
        rows.append(
            [
                batch,
                t["forward (avg head)"],
                t["closed form"],
                f"{(t['closed form'].median - base) / base:+.1%}",
                t["autograd, same layer"],
                f"{(t['autograd, same layer'].median - base) / base:+.1%}",
                t["autograd, class token"],
                f"{(t['autograd, class token'].median - base_token) / base_token:+.1%}",
            ]
        )
    print(f"## Grad-CAM++ maps of vit_tiny_p4_32, 32x32 (8x8 tokens), {device.type}\n")
    header = [
        "batch",
        "forward",
        "closed form",
        "beyond forward",
        "autograd (same layer)",
        "beyond forward",
        "class-token head, autograd",
        "beyond its forward",
    ]
    print(table(header, rows) + "\n")


STEP_VARIANTS: dict[str, tuple[dict, dict]] = {
    "CE + KD": ({}, {"map_weight": 0.0}),
    "CE + KD + Grad-CAM++ (closed form)": ({}, {}),
    "CE + KD + Grad-CAM++ (autograd forced)": ({}, {"map_closed_form": False}),
    "CE + KD (class-token student)": ({"global_pool": "token"}, {"map_weight": 0.0}),
    "CE + KD + Grad-CAM++ (class-token student, autograd)": ({"global_pool": "token"}, {}),
}


def step_cost(args: argparse.Namespace, device: torch.device) -> None:
    torch.manual_seed(0)
    teacher = build_model("wrn_16_2", 10).to(device)
    students = {
        pool: build_model("vit_tiny_p4_32", 10, global_pool=pool).to(device)
        for pool in ("avg", "token")
    }
    optimizers = {pool: torch.optim.AdamW(s.parameters(), lr=1e-4) for pool, s in students.items()}
    images = torch.randn(args.batch, 3, 32, 32, device=device)
    labels = torch.randint(0, 10, (args.batch,), device=device)

    steps: dict[str, Callable[[], None]] = {}
    for name, (student_kwargs, loss_kwargs) in STEP_VARIANTS.items():
        pool = student_kwargs.get("global_pool", "avg")
        distiller = ExplanationDistiller(teacher, students[pool], **loss_kwargs).train()

        def step(d: ExplanationDistiller = distiller, opt=optimizers[pool]) -> None:
            loss = d(images, labels).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        steps[name] = step
    t = measure_interleaved(steps, repeats=args.repeats, device=device)
    rows = []
    for name in steps:
        reference = "CE + KD (class-token student)" if "class-token" in name else "CE + KD"
        rows.append([name, t[name], f"{t[name].median / t[reference].median:.3f}x"])
    print(
        f"## Training step, WRN-16-2 -> vit_tiny_p4_32, batch {args.batch}, AdamW, {device.type}\n"
    )
    print(table(["loss", "step time", "time / CE + KD (same student)"], rows) + "\n")


def pytorch_grad_cam_comparison(args: argparse.Namespace, device: torch.device) -> None:
    try:
        from pytorch_grad_cam import GradCAMPlusPlus as Reference
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    except ImportError:
        print("pytorch-grad-cam not installed (pip install -e .[bench]): comparison skipped")
        return
    torch.manual_seed(0)
    name = "timm/deit_tiny_distilled_patch16_224"
    model = trained_like(build_model(name, 10)).to(device).eval()
    if args.float64:
        model = model.double()
    side = args.deit_size
    images = torch.randn(args.deit_batch, 3, side, side, device=device)
    images = images.to(next(model.parameters()).dtype)
    targets = torch.randint(0, 10, (args.deit_batch,), device=device)
    layout = token_layout(model, (side, side))
    layer = dict(model.named_modules())[model.cam_layer]

    def reshape(tokens: torch.Tensor) -> torch.Tensor:  # from the model's metadata
        return tokens_to_grid(tokens, layout)

    def theirs() -> torch.Tensor:
        with Reference(model=model, target_layers=[layer], reshape_transform=reshape) as cam:
            maps = cam(images, targets=[ClassifierOutputTarget(int(t)) for t in targets])
        return torch.from_numpy(maps)

    def ours() -> torch.Tensor:
        maps = GradCAMPlusPlus(model)(images, targets)
        return minmax_normalize(resize_maps(minmax_normalize(maps), (side, side)))

    heads = [model.net.head, model.net.head_dist]
    originals = [h.weight.detach().clone() for h in heads]
    rows = []
    for scale in (1.0, *args.head_scale):
        with torch.no_grad():
            for head, original in zip(heads, originals, strict=True):
                head.weight.copy_(original * scale)
        diff = (ours().double().cpu() - theirs().double()).abs()
        rows.append([f"{scale:g}", f"{diff.max().item():.3e}", f"{diff.mean().item():.3e}"])
    t = measure_interleaved(
        {"distill": ours, "pytorch-grad-cam": theirs}, repeats=args.repeats, device=device
    )
    dtype = "float64" if args.float64 else "float32"
    print(
        f"## pytorch-grad-cam's ViT path: {name} (class + distillation token), "
        f"{side}x{side} ({layout.grid[0]}x{layout.grid[1]} tokens), layer {model.cam_layer}, "
        f"batch {args.deit_batch}, {dtype}, {device.type}\n"
    )
    print(table(["head scale", "max abs diff", "mean abs diff"], rows) + "\n")
    ratio = t["pytorch-grad-cam"].median / t["distill"].median
    print(
        table(
            ["distill", "pytorch-grad-cam", "pytorch-grad-cam / distill"],
            [[t["distill"], t["pytorch-grad-cam"], f"{ratio:.2f}x"]],
        )
        + "\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128, help="training-step batch")
    parser.add_argument("--map-batches", type=int, nargs="+", default=[32, 128])
    parser.add_argument("--deit-batch", type=int, default=8)
    parser.add_argument("--deit-size", type=int, default=224)
    parser.add_argument("--head-scale", type=float, nargs="+", default=[1e3, 1e5, 1e7])
    parser.add_argument("--float64", action="store_true", help="pytorch-grad-cam part in float64")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--parts", nargs="+", default=["maps", "step", "pytorch-grad-cam"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    print(machine() + "\n")
    if "maps" in args.parts:
        map_cost(args, device)
    if "step" in args.parts:
        step_cost(args, device)
    if "pytorch-grad-cam" in args.parts:
        pytorch_grad_cam_comparison(args, device)


if __name__ == "__main__":
    main()
