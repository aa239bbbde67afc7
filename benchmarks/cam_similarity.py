"""How much the CAM methods differ: mean cosine similarity between their maps on a WRN.

At the layer that feeds the pooled head (the last stage) several methods coincide (Grad-CAM =
HiResCAM = XGrad-CAM, CAM a multiple of them, LayerCAM = element-wise); at an earlier layer
(the middle stage, ``loss.map_layers``) the gradient varies over positions and they differ.
The table gives, per layer, the cosine similarity of the flattened maps of every pair of
methods, averaged over the samples where both maps are non-zero, for per-sample targets (the
labels, or random classes), and each method's share of all-zero maps.

Trained weights matter: pass ``--checkpoint`` (a state_dict or a distill checkpoint that
``distill.load_model`` reads). Without one the WRN is randomly initialised (with BN statistics
drawn as after training) and the script says so: such maps show the methods' algebra, not what
a trained network attends to.

Usage:
    python benchmarks/cam_similarity.py [--model wrn_16_2] [--checkpoint PATH] [--batch 64]
        [--config shapes_wrn | --data-root /path/to/cifar10-jpeg/test] [--middle block2]
"""

from __future__ import annotations

import argparse
import itertools

import torch
import torch.nn.functional as F
from _common import table  # benchmarks/ is on sys.path

from distill.cam import CAM_METHODS, capture_activations, pooled_head
from distill.models import build_model

LAYERS = {"last stage (pooled head)": None, "middle stage": "--middle"}


def load(model_name: str, checkpoint: str | None) -> tuple[torch.nn.Module, str]:
    if checkpoint and checkpoint.endswith((".pt", ".pth")):  # a plain state_dict
        model = build_model(model_name, num_classes=10)
        model.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True))
        return model.eval(), checkpoint
    if checkpoint:  # a run directory, a .ckpt or an export: distill.load_model reads them
        from distill.training.checkpoints import load_model

        return load_model(checkpoint, stage="student").eval(), checkpoint
    torch.manual_seed(0)
    model = build_model(model_name, num_classes=10).eval()
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    note = "NO CHECKPOINT: randomly initialised weights (the methods' algebra, not a trained WRN)"
    return model, note


def images_and_targets(
    batch: int, data_root: str | None, config: str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Test images of a recipe's data (``config``, e.g. ``shapes_wrn``: normalised as that
    recipe trains), or of a class-per-folder tree (e.g. CIFAR-10's test split as JPEGs), with
    their labels, spread over the classes; without either, Gaussian noise and random classes."""
    if config:
        from omegaconf import OmegaConf

        from distill.config import load_config
        from distill.data import datamodule_from_config

        cfg = load_config(config, [])
        dm = datamodule_from_config(OmegaConf.to_container(cfg.data), seed=cfg.seed)
        dm.setup("test")
        return dm.fixed_batch(batch, "test")
    if data_root:
        from torchvision import datasets, transforms

        mean, std = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
        tf = transforms.Compose(
            [transforms.Resize((32, 32)), transforms.ToTensor(), transforms.Normalize(mean, std)]
        )
        data = datasets.ImageFolder(data_root, transform=tf)
        step = max(1, len(data) // batch)
        pairs = [data[i] for i in range(0, step * batch, step)]
        return torch.stack([p[0] for p in pairs]), torch.tensor([p[1] for p in pairs])
    torch.manual_seed(1)
    return torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,))


def method_maps(model, layer: str, images, targets) -> dict[str, torch.Tensor]:
    head = pooled_head(model, layer)
    closed = {} if head is None else {"classifier_weight": head.classifier.weight}
    with capture_activations(model, [layer]) as acts:
        scores = model(images)
    maps = {}
    for name, fn in CAM_METHODS.items():
        if name == "cam" and head is None:
            continue  # CAM exists only at the pooled head's layer
        maps[name] = fn(acts[layer], scores, targets, **closed).detach()
    return maps


def mean_cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean cosine similarity over the samples where both maps are non-zero (an all-zero map,
    every position cut by the final relu, has no direction)."""
    a, b = a.flatten(1).double(), b.flatten(1).double()
    both = (a.norm(dim=1) > 0) & (b.norm(dim=1) > 0)
    if not both.any():
        return float("nan")
    return F.cosine_similarity(a[both], b[both], dim=1).mean().item()


def similarity_table(maps: dict[str, torch.Tensor]) -> str:
    names = list(maps)
    rows = []
    for a in names:
        zero = (maps[a].flatten(1).norm(dim=1) == 0).double().mean().item() * 100
        rows.append([a, f"{zero:.0f}%", *(f"{mean_cosine(maps[a], maps[b]):.3f}" for b in names)])
    return table(["", "all-zero maps", *names], rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="wrn_16_2")
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--data-root", default=None, help="class-per-folder images (else noise)")
    parser.add_argument("--config", default=None, help="a recipe whose test images to use")
    parser.add_argument("--middle", default="block2", help="the middle-stage layer's name")
    args = parser.parse_args()
    model, weights = load(args.model, args.checkpoint)
    images, targets = images_and_targets(args.batch, args.data_root, args.config)
    data = args.config or args.data_root or "noise"
    print(f"model={args.model} weights: {weights}; {len(images)} test images of {data}")
    for title, layer in LAYERS.items():
        layer = model.cam_layer if layer is None else args.middle
        maps = method_maps(model, layer, images, targets)
        print(f"\n## {title}: {layer}\n\n{similarity_table(maps)}")
        pairs = itertools.combinations(maps, 2)
        lowest = min(pairs, key=lambda p: mean_cosine(maps[p[0]], maps[p[1]]))
        print(f"\nleast similar pair: {lowest[0]} / {lowest[1]}")


if __name__ == "__main__":
    main()
