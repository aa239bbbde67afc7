"""The valid values of every config key that takes a choice (``data.name``, ``loss.map_method``,
``optim.schedule`` ...), so that :mod:`distill.config.checks` names them in its one-line errors.

Each list stays with the code that acts on it (the CAM methods in :mod:`distill.cam`, the
optimisers in :mod:`distill.training.optim` ...); this module only gathers them.
"""

from __future__ import annotations

from distill.config.schema import STAGES

__all__ = ["choices"]


def choices() -> dict[str, tuple[str | bool, ...]]:
    """Valid values of the keys that take a choice, read from the modules that own them.

    The owners are imported on call, not with this module: ``import distill.config`` (what
    ``train.py`` needs to parse its arguments) stays free of Lightning, wandb and the models.
    """
    from distill.cam import CAM_METHODS
    from distill.data import CROPS, DATAMODULES
    from distill.losses.distiller import MAP_TARGETS
    from distill.losses.functional import AT_FORMS, MAP_DISTANCES, MAP_NORMALIZATIONS
    from distill.training.compile import COMPILE_MODES
    from distill.training.loggers import WANDB_MODES
    from distill.training.optim import OPTIMIZERS, SCHEDULES
    from distill.training.teacher_cache import STORAGE_DTYPES

    return {
        "stage": STAGES,
        "data.name": tuple(DATAMODULES),
        "data.crop": CROPS,
        "loss.map_method": tuple(CAM_METHODS),
        "loss.map_target": MAP_TARGETS,
        "loss.map_normalize": MAP_NORMALIZATIONS,
        "loss.map_distance": MAP_DISTANCES,
        "loss.at_form": AT_FORMS,
        "optim.name": OPTIMIZERS,
        "optim.schedule": SCHEDULES,
        "logging.wandb": WANDB_MODES,
        "teacher_cache.dtype": tuple(STORAGE_DTYPES),
        "trainer.compile": COMPILE_MODES,
    }
