"""Loading one of the repository's scripts (the CLIs, ``benchmarks/``, ``docs/hooks/``, the
documentation's examples) as a module, so that a test can call its functions."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType


def load_script(path: Path) -> ModuleType:
    """``path`` run as the module ``_script_<stem>``, registered in ``sys.modules`` (dataclasses
    look their module up there)."""
    name = f"_script_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
