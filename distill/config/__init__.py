"""Run configuration: a dataclass schema, YAML recipes on top of it, dot-list overrides.

``load_config("cifar_wrn", ["data.batch_size=64"])`` merges, in order: the schema's defaults
(:mod:`distill.config.schema`), the recipe's ``base`` file (if it names one), the recipe, the
overrides (:mod:`distill.config.compose`). Any unknown key, wrong type or invalid value raises
:class:`ConfigError` with a one-line message naming the key and the valid choices
(:mod:`distill.config.choices`), before any work starts (the checks are in
:mod:`distill.config.checks`).
"""

from distill.config.choices import choices
from distill.config.compose import CONFIG_DIR, find_config, list_configs, load_config
from distill.config.schema import (
    STAGES,
    CifarDataConfig,
    DataConfig,
    ImageFolderDataConfig,
    LayerPairConfig,
    LoggingConfig,
    LossConfig,
    ModelConfig,
    OptimConfig,
    RunConfig,
    ShapesDataConfig,
    StreamDataConfig,
    TeacherCacheConfig,
    TrainerConfig,
    stages_to_train,
)
from distill.errors import ConfigError

__all__ = [
    "ConfigError",
    "CifarDataConfig",
    "DataConfig",
    "ImageFolderDataConfig",
    "ShapesDataConfig",
    "StreamDataConfig",
    "ModelConfig",
    "LayerPairConfig",
    "LossConfig",
    "OptimConfig",
    "TeacherCacheConfig",
    "TrainerConfig",
    "LoggingConfig",
    "RunConfig",
    "CONFIG_DIR",
    "STAGES",
    "choices",
    "find_config",
    "load_config",
    "list_configs",
    "stages_to_train",
]
