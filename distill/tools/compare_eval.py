"""What a comparison measures on each trained student beyond accuracy: the faithfulness and
localisation of its Grad-CAM++ maps on the test split, and Win % against the CE student.
"""

from __future__ import annotations

from typing import Any

import torch

from distill.cam import GradCAMPlusPlus
from distill.metrics import (
    ROAD,
    AverageDrop,
    DeletionAUC,
    EnergyPointingGame,
    IncreaseInConfidence,
    InsertionAUC,
    Localization,
    WinPercentage,
    explanation_confidences,
)

__all__ = ["evaluate_student", "win_vs"]


@torch.no_grad()
def evaluate_student(
    student: torch.nn.Module,
    dm: Any,
    batch_size: int = 256,
    split: str = "test",
    num_images: int | None = None,
) -> tuple[dict[str, float], torch.Tensor]:
    """Faithfulness (and, with boxes, localisation) of the student's Grad-CAM++ maps for its
    predicted class on an evaluation split (the test split by default: these numbers select
    nothing): all of it, or ``num_images`` of its samples evenly spaced over it (class-diverse, the
    same for every student; see ``fixed_batch``).

    Returns:
        The metrics and the per-sample confidence drops (for Win %).
    """
    student = student.eval()
    device = next(student.parameters()).device
    count = 10**9 if num_images is None else num_images  # None: the whole split, in loader order
    images, labels = dm.fixed_batch(count, split)
    extras = getattr(dm, "split_extras", None)
    boxes = extras(split)[0][dm.fixed_indices(count, split)] if extras is not None else None
    drop, increase = AverageDrop(), IncreaseInConfidence()
    deletion, insertion = DeletionAUC(), InsertionAUC()  # 20 steps each, softmax, zero baseline
    road_morf = ROAD(order="morf")  # shares 0.1 ... 0.9, noise 0.01 seeded: repeatable
    loc, energy = (
        Localization(delta=0.5, image_size=images.shape[-2:]),
        EnergyPointingGame(image_size=images.shape[-2:]),
    )
    drops = []
    for start in range(0, len(images), batch_size):
        batch = images[start : start + batch_size].to(device)
        maps, scores = GradCAMPlusPlus(student).maps_and_scores(batch)  # the predicted class
        predicted = scores.argmax(1)
        y, o = explanation_confidences(student, batch, maps, predicted, mean=dm.mean, std=dm.std)
        drop.update(y, o)
        increase.update(y, o)
        deletion.update(student, batch, maps, predicted, logits=scores)
        insertion.update(student, batch, maps, predicted, logits=scores)
        road_morf.update(student, batch, maps, predicted, logits=scores)
        drops.append((y - o).clamp_min(0) / y.clamp_min(1e-12))
        if boxes is not None:
            batch_boxes = boxes[start : start + batch_size].to(device)
            loc.update(maps, batch_boxes)
            energy.update(maps, batch_boxes)
    metrics = {
        "average_drop": float(drop.compute()),
        "increase_in_confidence": float(increase.compute()),
        "deletion_auc": float(deletion.compute()),
        "insertion_auc": float(insertion.compute()),
        "road_morf": float(road_morf.compute()),
        "localization": float(loc.compute()) if boxes is not None else float("nan"),
        "energy_pointing": float(energy.compute()) if boxes is not None else float("nan"),
    }
    return metrics, torch.cat(drops).cpu()


def win_vs(drops: torch.Tensor, baseline: torch.Tensor) -> float:
    """Win % of a method over a baseline from per-sample drops (ties count for neither)."""
    win = WinPercentage()
    # Win % compares drops; pass y = 1 and o = 1 - drop so that drop = max(0, y - o) / y.
    ones = torch.ones_like(drops)
    win.update(ones, ones - drops, ones - baseline)
    return float(win.compute())
