"""Explanation-quality metrics: faithfulness, localisation and teacher-student agreement.

Functions (batched, pure torch) live in :mod:`distill.metrics.functional` (deletion/insertion
in :mod:`distill.metrics.deletion`, ROAD in :mod:`distill.metrics.road`, each beside its
metric class); the
:class:`torchmetrics.Metric` classes accumulate them over batches and devices::

    from distill.cam import GradCAMPlusPlus
    from distill.metrics import AverageDrop, Localization, explanation_confidences

    maps = GradCAMPlusPlus(model)(images, labels)
    y, o = explanation_confidences(model, images, maps, labels, mean=MEAN, std=STD)
    drop = AverageDrop()
    drop.update(y, o)
    loc = Localization(delta=0.5, image_size=32)
    loc.update(maps, boxes)
"""

# The submodules are imported before the functions: importing ``distill.metrics.localization``
# binds the package attribute ``localization`` to that module, and the function of the same
# name must win (``import_module("distill.metrics.localization")`` still gives the module).
from distill.metrics.agreement import MapAgreement, TopOneAgreement
from distill.metrics.deletion import (
    DeletionAUC,
    InsertionAUC,
    deletion_auc,
    insertion_auc,
    perturbation_curves,
)
from distill.metrics.faithfulness import AverageDrop, IncreaseInConfidence, WinPercentage
from distill.metrics.localization import EnergyPointingGame, Localization
from distill.metrics.road import ROAD, noisy_linear_imputation, road, road_scores

from distill.metrics.functional import (  # isort: skip
    average_drop,
    energy_pointing_game,
    explanation_confidences,
    explanation_maps,
    increase_in_confidence,
    localization,
    map_agreement,
    top1_agreement,
    win_percentage,
)

__all__ = [
    "ROAD",
    "AverageDrop",
    "DeletionAUC",
    "EnergyPointingGame",
    "IncreaseInConfidence",
    "InsertionAUC",
    "Localization",
    "MapAgreement",
    "TopOneAgreement",
    "WinPercentage",
    "average_drop",
    "deletion_auc",
    "energy_pointing_game",
    "explanation_confidences",
    "explanation_maps",
    "increase_in_confidence",
    "insertion_auc",
    "localization",
    "map_agreement",
    "noisy_linear_imputation",
    "perturbation_curves",
    "road",
    "road_scores",
    "top1_agreement",
    "win_percentage",
]
