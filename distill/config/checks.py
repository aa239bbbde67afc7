"""Checks of a composed run config, run by :func:`distill.config.load_config` before any work
starts: values and their combinations, and the models and layers the config names (built on
the meta device)."""

from __future__ import annotations

import difflib
import warnings
from typing import Any

from omegaconf import DictConfig, OmegaConf

from distill.config.choices import choices
from distill.config.schema import stages_to_train
from distill.errors import ConfigError

__all__ = ["validate"]


def validate(cfg: DictConfig) -> None:
    """Refuse, in one line naming the key, any value that would fail later: a choice outside
    its owner's list, a negative weight, a fraction out of range, an unknown model or layer,
    options that do not go together."""
    for key, valid in choices().items():
        value = OmegaConf.select(cfg, key)
        if value not in valid:
            names = [str(v).lower() if isinstance(v, bool) else v for v in valid]
            close = difflib.get_close_matches(str(value), names, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(
                f"{key}={value!r} is not valid{hint}; choose one of {', '.join(names)}"
            )
    for key in (
        "loss.ce_weight",
        "loss.kd_weight",
        "loss.map_weight",
        "loss.at_weight",
        "loss.dkd_weight",
        "loss.dkd_alpha",
        "loss.dkd_beta",
        "loss.dkd_warmup_epochs",
        "loss.cat_weight",
        "optim.lr",
    ):
        if OmegaConf.select(cfg, key) < 0:
            raise ConfigError(f"{key}={OmegaConf.select(cfg, key)} must be >= 0")
    if cfg.teacher.epochs == 0 and cfg.stage == "teacher":
        if not (cfg.teacher.weights or cfg.teacher.checkpoint):
            raise ConfigError(
                "teacher.epochs=0 evaluates a given teacher: set teacher.weights=FILE or "
                "teacher.checkpoint=FILE"
            )
    elif cfg.teacher.epochs <= 0:
        raise ConfigError(
            f"teacher.epochs={cfg.teacher.epochs} must be > 0 (0 only with stage=teacher, "
            "to evaluate a given teacher)"
        )
    for key in (
        "loss.temperature",
        "loss.cat_size",
        "data.batch_size",
        "student.epochs",
        "trainer.check_val_every_n_epoch",
    ):
        if OmegaConf.select(cfg, key) <= 0:
            raise ConfigError(f"{key}={OmegaConf.select(cfg, key)} must be > 0")
    if not 0 <= cfg.data.val_fraction < 1:
        raise ConfigError(f"data.val_fraction={cfg.data.val_fraction} must be in [0, 1)")
    if not 0 < cfg.data.train_fraction <= 1:
        raise ConfigError(f"data.train_fraction={cfg.data.train_fraction} must be in (0, 1]")
    milestones = list(cfg.optim.milestones)
    if any(not 0 < m < 1 for m in milestones) or milestones != sorted(milestones):
        raise ConfigError(
            f"optim.milestones={milestones} must be increasing fractions of the epochs in (0, 1)"
        )
    _validate_validation_epochs(cfg)
    _validate_teacher_cache(cfg)
    if cfg.data.name in ("imagefolder", "stream") and not cfg.data.root:
        raise ConfigError(f"data.root must name the folder when data.name={cfg.data.name}")
    _validate_data(cfg.data)
    _validate_models(cfg)


def _validate_data(data: DictConfig) -> None:
    if data.name == "shapes" and data.root is not None:
        raise ConfigError("data.root does not apply to data.name=shapes (generated in memory)")
    if data.image_size is not None and data.image_size < 1:
        raise ConfigError(f"data.image_size={data.image_size} must be >= 1 (or null)")
    if data.crop == "random_resized" and data.name == "shapes":
        raise ConfigError(
            "data.crop=random_resized does not apply to data.name=shapes: its boxes and masks "
            "are in the generated pixels; use data.crop=pad"
        )
    if data.crop == "random_resized" and data.image_size is None:
        raise ConfigError(
            "data.crop=random_resized needs data.image_size (the crop's output size, e.g. 224)"
        )
    for key in ("mean", "std"):
        if data[key] is not None and len(data[key]) != 3:
            raise ConfigError(f"data.{key}={list(data[key])} must hold 3 values (R, G, B)")
    if data.std is not None and min(data.std) <= 0:
        raise ConfigError(f"data.std={list(data.std)} must be positive")
    if data.name == "stream":
        _validate_stream(data)


def _validate_stream(data: DictConfig) -> None:
    """What a streamed split cannot do, refused before anything runs."""
    if data.in_memory:
        raise ConfigError("data.name=stream reads chunks as it trains; set data.in_memory=false")
    if data.image_size is None:
        raise ConfigError("data.name=stream needs data.image_size (streamed images have any size)")
    if data.val_fraction > 0 or data.train_fraction < 1:
        raise ConfigError(
            f"data.name=stream with data.val_fraction={data.val_fraction}, "
            f"data.train_fraction={data.train_fraction}: a streamed split cannot be subset at "
            "load time; set data.val_fraction=0 data.train_fraction=1 and carve the holdout when "
            "optimizing (python -m distill.data.stream optimize SRC OUT --holdout 0.1, then "
            "data.stream.holdout_dir=holdout)"
        )


def _validate_teacher_cache(cfg: DictConfig) -> None:
    """What a cached teacher cannot stand in for is refused before anything runs."""
    if not cfg.teacher_cache.enabled:
        return
    if cfg.loss.at_weight > 0:
        raise ConfigError(
            "teacher_cache.enabled=true with loss.at_weight>0: attention transfer needs the "
            "teacher's features, which the cache does not hold; set teacher_cache.enabled=false"
        )


def _validate_validation_epochs(cfg: DictConfig) -> None:
    """Each stage that will train validates at its last epoch: the summary and the best
    checkpoint are read from validation, and Lightning skips it unless the epoch count is a
    multiple of ``trainer.check_val_every_n_epoch``."""
    every = cfg.trainer.check_val_every_n_epoch  # > 0, checked with the other counts
    for role in stages_to_train(cfg):
        epochs = cfg[role].epochs
        if epochs % every:
            raise ConfigError(
                f"{role}.epochs={epochs} is not a multiple of "
                f"trainer.check_val_every_n_epoch={every}: the last epoch would not be "
                "validated; change either"
            )


def _validate_models(cfg: DictConfig) -> None:
    """Model names and layer names exist (models are built on the meta device: no memory)."""
    import torch

    from distill.cam import resolve_layer
    from distill.models import build_model, check_weights
    from distill.models.key_map import parse_key_map

    models = {}
    for role in ("teacher", "student"):
        section = cfg[role]
        try:
            parse_key_map(section.key_map)
        except ValueError as error:
            raise ConfigError(f"{role}.key_map: {error}") from None
        layer = {"cam_layer": section.cam_layer} if section.cam_layer else {}
        try:
            with torch.device("meta"):
                models[role] = build_model(section.name, num_classes=10, **section.kwargs, **layer)
        except (ValueError, TypeError, ImportError) as error:
            message = " ".join(str(error).split())
            key = "cam_layer" if "cam_layer" in message and layer else "name"
            value = section[key]
            raise ConfigError(f"{role}.{key}={value!r}: {message}") from None
        try:
            check_weights(section.name, section.weights)
        except ValueError as error:
            raise ConfigError(f"{role}.weights={section.weights!r}: {error}") from None
    for key in ("map_layers", "at_layers"):
        for i, pair in enumerate(cfg.loss[key] or []):
            for role in ("teacher", "student"):
                try:
                    resolve_layer(models[role], pair[role])
                except ValueError as error:
                    raise ConfigError(f"loss.{key}[{i}].{role}: {error}") from None
    if cfg.loss.cat_weight > 0:
        from distill.losses.cat import cat_head

        for role in ("teacher", "student"):
            try:
                cat_head(models[role])
            except ValueError as error:
                message = f"loss.cat_weight>0, {role}.name={cfg[role].name!r}: {error}"
                raise ConfigError(message) from None
    _validate_cam_layers(cfg, models)
    _validate_map_methods(cfg, models)
    size = OmegaConf.select(cfg, "data.image_size", default=None)
    if size:  # else the size is known once the data is loaded; the run checks it then
        from distill.config.resolution import check_map_grids

        height, width = (size, size) if isinstance(size, int) else tuple(size)
        check_map_grids(cfg, (3, int(height), int(width)))
    _warn_compile_fallback(cfg, models["student"])


def _validate_map_methods(cfg: DictConfig, models: dict[str, Any]) -> None:
    """``logging.map_methods``: one or more names of ``CAM_METHODS``, each once; ``cam`` only
    where the models' ``cam_layer`` feeds their pooled heads (the maps are drawn there)."""
    from distill.cam import CAM_METHODS, CAM_RULES, pooled_head

    methods = list(cfg.logging.map_methods or [])
    if not methods:
        raise ConfigError(
            f"logging.map_methods is empty; name one or more of {', '.join(CAM_METHODS)}"
        )
    for method in methods:
        if method not in CAM_METHODS:
            close = difflib.get_close_matches(str(method), list(CAM_METHODS), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(
                f"logging.map_methods: {method!r} is not valid{hint}; choose from "
                f"{', '.join(CAM_METHODS)}"
            )
    if len(set(methods)) < len(methods):
        raise ConfigError(f"logging.map_methods={methods} names a method twice")
    drawn = ["teacher"] if cfg.stage == "teacher" else ["teacher", "student"]
    for method in methods:
        if CAM_RULES[method].gradient != "classifier":
            continue
        for role in drawn:
            layer = getattr(models[role], "cam_layer", "")
            if pooled_head(models[role], layer) is None:
                raise ConfigError(
                    f"logging.map_methods: {method} needs the {role}'s pooled-head layer; its "
                    f"cam_layer {layer!r} does not feed it: choose another method"
                )


def _validate_cam_layers(cfg: DictConfig, models: dict[str, Any]) -> None:
    """``loss.map_method=cam`` exists only at layers that feed the models' pooled heads."""
    from distill.cam import CAM_RULES, pooled_head

    if CAM_RULES[cfg.loss.map_method].gradient != "classifier" or cfg.stage == "teacher":
        return
    pairs = cfg.loss.map_layers or [
        {role: getattr(models[role], "cam_layer", "") for role in models}
    ]
    for role in ("teacher", "student"):
        for pair in pairs:
            if not cfg.loss.map_closed_form or pooled_head(models[role], pair[role]) is None:
                raise ConfigError(
                    f"loss.map_method={cfg.loss.map_method} needs the {role}'s pooled-head layer "
                    f"and loss.map_closed_form=true; {pair[role]!r} does not qualify: choose "
                    "another method"
                )


def _warn_compile_fallback(cfg: DictConfig, student: Any) -> None:
    """``trainer.compile`` with autograd student maps compiles the teacher only: say so."""
    from distill.training.compile import student_eager_reason

    if cfg.trainer.compile is False or cfg.stage == "teacher":
        return
    layers = [pair.student for pair in cfg.loss.map_layers or []] or [
        getattr(student, "cam_layer", "")
    ]
    reason = student_eager_reason(student, layers, map_closed_form=cfg.loss.map_closed_form)
    if reason is not None:
        warnings.warn(f"trainer.compile={cfg.trainer.compile}: {reason}", UserWarning, stacklevel=2)
