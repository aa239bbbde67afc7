"""Compose a run config: the schema's defaults, a recipe's ``base`` file, the recipe, then
dot-list overrides, each merge turning omegaconf's errors into one line that names the key.
"""

from __future__ import annotations

import difflib
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from distill.config.checks import validate
from distill.config.schema import RunConfig
from distill.errors import ConfigError

__all__ = ["CONFIG_DIR", "find_config", "list_configs", "load_config"]

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"


def list_configs(config_dir: Path = CONFIG_DIR) -> list[str]:
    """Names of the recipes in ``configs/``."""
    return sorted(p.stem for p in config_dir.glob("*.yaml"))


def find_config(name_or_path: str, config_dir: Path = CONFIG_DIR) -> Path:
    """Resolve a recipe name (``cifar_wrn``) or a YAML path to an existing file."""
    candidates = [Path(name_or_path)]
    if not name_or_path.endswith((".yaml", ".yml")):
        candidates += [
            config_dir / f"{name_or_path}.yaml",
            Path("configs") / f"{name_or_path}.yaml",
        ]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    names = list_configs(config_dir)
    close = difflib.get_close_matches(Path(name_or_path).stem, names, n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise ConfigError(
        f"config {name_or_path!r} not found (looked in {config_dir}){hint} "
        f"available: {', '.join(names)}"
    )


def _schema_keys(node: Any) -> list[str]:
    return [f.name for f in fields(node)] if is_dataclass(node) else []


def _key_error(error: OmegaConfBaseException, schema: Any, source: str) -> ConfigError:
    """Turn an omegaconf error into one line naming the full key and the valid ones."""
    key = getattr(error, "full_key", None) or getattr(error, "key", None) or "?"
    parent_path, _, leaf = str(key).rpartition(".")
    node = schema
    for part in filter(None, parent_path.split(".")):
        node = getattr(node, part, None)
    valid = _schema_keys(node)
    if isinstance(error, ConfigKeyError) and valid:
        # An option of one dataset lives in its section: data.num_train -> data.shapes.num_train.
        prefix = f"{parent_path}." if parent_path else ""
        sections = [name for name in valid if leaf in _schema_keys(getattr(node, name, None))]
        close = [f"{prefix}{name}.{leaf}" for name in sections]
        close = close or difflib.get_close_matches(leaf, valid, n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        return ConfigError(
            f"{source}: unknown key {key!r}{hint}; valid keys"
            f"{' under ' + parent_path if parent_path else ''}: {', '.join(valid)}"
        )
    message = str(error).splitlines()[0]
    return ConfigError(f"{source}: invalid value for {key!r}: {message}")


def _merge(base: DictConfig, other: Any, source: str) -> DictConfig:
    try:
        merged = OmegaConf.merge(base, other)
    except OmegaConfBaseException as error:
        raise _key_error(error, RunConfig(), source) from None
    assert isinstance(merged, DictConfig)
    return merged


def _read_yaml(path: Path) -> DictConfig:
    try:
        loaded = OmegaConf.load(path)
    except Exception as error:  # yaml errors come in several types
        raise ConfigError(f"{path}: not valid YAML: {str(error).splitlines()[0]}") from None
    if not isinstance(loaded, DictConfig):
        raise ConfigError(f"{path}: a config file must hold a mapping, got {type(loaded).__name__}")
    return loaded


def load_config(name_or_path: str = "quickstart", overrides: list[str] | None = None) -> DictConfig:
    """Compose a run config: schema defaults < base recipe < recipe < dot-list overrides.

    Args:
        name_or_path: a recipe in ``configs/`` (``cifar_wrn``) or a path to a YAML file.
        overrides: omegaconf dot-list entries such as ``["loss.map_weight=0", "data.root=/x"]``.

    Returns:
        A read-only, validated ``DictConfig`` with the :class:`RunConfig` structure.

    Raises:
        ConfigError: a missing file, an unknown key, a wrong type or an invalid value.

    Example:
        >>> cfg = load_config("quickstart", ["loss.map_weight=0"])
        >>> cfg.loss.map_weight
        0.0
    """
    path = find_config(name_or_path)
    recipe = _read_yaml(path)
    cfg = OmegaConf.structured(RunConfig)
    chain = []
    base_name = recipe.pop("base", None)
    while base_name is not None:
        base_path = find_config(str(base_name), path.parent)
        base = _read_yaml(base_path)
        chain.append((base, str(base_path)))
        base_name = base.pop("base", None)
    for base, source in reversed(chain):
        cfg = _merge(cfg, base, source)
    cfg = _merge(cfg, recipe, str(path))
    if overrides:
        for item in overrides:
            if "=" not in item:
                raise ConfigError(
                    f"override {item!r} must look like key=value (e.g. data.batch_size=64)"
                )
        try:
            dotlist = OmegaConf.from_dotlist(list(overrides))
        except Exception as error:  # omegaconf's errors, and yaml's for a value it cannot parse
            detail = " ".join(str(error).split())
            raise ConfigError(
                f"overrides: {detail} (quote values holding ':', e.g. "
                '\'teacher.key_map=["module.:", "linear.:fc."]\')'
            ) from None
        cfg = _merge(cfg, dotlist, "override")
    try:
        OmegaConf.resolve(cfg)
    except OmegaConfBaseException as error:
        raise ConfigError(f"{path}: {str(error).splitlines()[0]}") from None
    validate(cfg)
    OmegaConf.set_readonly(cfg, True)
    return cfg
