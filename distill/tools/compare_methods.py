"""The methods a comparison trains: each one's loss overrides on top of the recipe, and the
checks that refuse an unknown method, an empty seed list or a method the recipe cannot run
before anything trains.
"""

from __future__ import annotations

from collections.abc import Sequence

from omegaconf import DictConfig

from distill.cam import CAM_METHODS
from distill.config import load_config
from distill.errors import ConfigError

__all__ = [
    "DEFAULT_METHODS",
    "METHODS",
    "check_choices",
    "check_method_configs",
    "method_overrides",
    "parse_sweep",
]

WRN_GROUPS = "[{student: block1, teacher: block1}, {student: block2, teacher: block2}, {student: block3, teacher: block3}]"
CE_ONLY = ["loss.ce_weight=1.0", "loss.kd_weight=0"]
FIELD_KD = ["loss.ce_weight=0.1", "loss.kd_weight=0.9", "loss.temperature=4"]
METHODS: dict[str, list[str]] = {
    "ce": [*CE_ONLY, "loss.map_weight=0"],
    "kd": [*FIELD_KD, "loss.map_weight=0"],
    "at": [
        *CE_ONLY,
        "loss.map_weight=0",
        "loss.at_weight=1000",
    ],
    "gradcam": [*CE_ONLY, "loss.map_method=gradcam"],
    "gradcam_pp": [*CE_ONLY],
    "kd_gradcam_pp": [*FIELD_KD],
    "dkd": [*CE_ONLY, "loss.map_weight=0", "loss.dkd_weight=1", "loss.temperature=4"],
    "kd_ls": [
        "loss.ce_weight=0.1",
        "loss.kd_weight=9",
        "loss.temperature=2",
        "loss.logit_standardize=true",
        "loss.map_weight=0",
    ],
    "dkd_ls": [
        *CE_ONLY,
        "loss.map_weight=0",
        "loss.dkd_weight=1",
        "loss.temperature=4",
        "loss.logit_standardize=true",
    ],
    "cat_kd": [*CE_ONLY, "loss.map_weight=0", "loss.cat_weight=${loss.cat_beta}"],
    "e2kd": [
        "loss.ce_weight=1.0",
        "loss.kd_weight=1.0",
        "loss.temperature=1",
        "loss.map_weight=1",
        "loss.map_method=gradcam",
        "loss.map_target=teacher",
        "loss.map_distance=cosine",
        "loss.map_normalize=none",
    ],
    **{
        f"kd_{name}": [*FIELD_KD, f"loss.map_method={name}"]
        for name in CAM_METHODS
        if name != "gradcam_pp"
    },
}
"""Loss overrides of each method (on top of the recipe's ``loss`` section). KD is the field's
(CE 0.1, KD 0.9, T=4: mdistiller, RepDistiller), and the maps are added on top of that same KD;
methods without KD train with CE at weight 1. AT is its authors' (weight 1000 beside CE, on
the layer pairs of ``loss.at_layers``; :func:`method_overrides` fills in the three WRN groups
where the recipe and the command leave them unset). The map weight and method come from the
recipe (the paper's 0.01). The field's baselines as their authors run them (docs/baselines.md):
DKD (CE 1, alpha 1, beta ``loss.dkd_beta`` from the recipe, T 4, 20-epoch warm-up); KD with
logit standardisation (CE 0.1, KD 9, base temperature 2); DKD with it; CAT-KD (CE 1 +
``loss.cat_beta`` x CAT, no logit KD); e2KD (CE 1 + KD 1 at T 1 + 1 x (1 - cos) of Grad-CAM
maps of the teacher's top-1 class, :mod:`distill.losses.e2kd`). ``kd_gradcam_pp`` keeps the
recipe's map method, ``kd_<name>`` sets ``loss.map_method=<name>`` for every other method of
:data:`distill.cam.CAM_METHODS` (``kd_cam`` only where the map layers feed the pooled heads:
:func:`check_method_configs` refuses it elsewhere)."""
DEFAULT_METHODS = ("ce", "kd", "at", "gradcam", "gradcam_pp", "kd_gradcam_pp")
"""What ``--methods`` compares when not given."""


def parse_sweep(text: str) -> tuple[str, list[str]]:
    """``"loss.map_weight=0.001,0.01"`` -> ``("loss.map_weight", ["0.001", "0.01"])``."""
    key, sep, values = text.partition("=")
    swept = [v for v in values.split(",") if v]
    if not sep or not key or not swept:
        raise ConfigError(
            f"--sweep {text!r} must look like key=v1,v2 (e.g. loss.map_weight=0,0.01)"
        )
    return key, swept


def check_choices(methods: Sequence[str], seeds: Sequence[int]) -> None:
    """Refuse, before anything trains, an empty or unknown method list and an empty seed list:
    a comparison of nothing would train the teacher, then fail at the table."""
    if not methods:
        raise ConfigError(f"--methods is empty; name one or more of {','.join(METHODS)}")
    unknown = [m for m in dict.fromkeys(methods) if m not in METHODS]
    if unknown:
        raise ConfigError(f"unknown methods {unknown}; choose from {', '.join(METHODS)}")
    if not seeds:
        raise ConfigError("--seeds is empty; name one or more seeds, e.g. --seeds 0,1,2")


def method_overrides(method: str, base: DictConfig) -> list[str]:
    """``METHODS[method]`` for a run of config ``base`` (the recipe with the command's
    overrides). AT's layer pairs are the recipe's or the command's ``loss.at_layers`` where
    either sets them (a ResNet or ViT pair names its own stages), else the three WRN groups,
    the authors' choice: a user's pairs are never replaced by the method's."""
    overrides = list(METHODS[method])
    if _default_at_layers(method, base):
        overrides.append(f"loss.at_layers={WRN_GROUPS}")
    return overrides


def _default_at_layers(method: str, base: DictConfig) -> bool:
    return method == "at" and base.loss.at_layers is None


def check_method_configs(config: str, overrides: Sequence[str], methods: Sequence[str]) -> None:
    """Load each method's config before anything trains, so that a method the recipe cannot
    run (``kd_cam`` away from the pooled-head layers, AT's WRN groups on a ResNet) is refused
    at once, in one line."""
    base = load_config(config, list(overrides))
    for method in dict.fromkeys(methods):
        try:
            load_config(config, [*overrides, *method_overrides(method, base)])
        except ConfigError as error:
            hint = (
                " (name the models' stages: loss.at_layers=[{student: ..., teacher: ...}, ...])"
                if _default_at_layers(method, base) and "loss.at_layers" in str(error)
                else ""
            )
            raise ConfigError(f"--methods {method}: {error}{hint}") from None
