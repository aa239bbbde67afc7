"""mkdocs hook: ``::: distill.export_model`` on an API page, whatever module defines it.

``distill.export_model`` is imported on first use (the package's ``__getattr__``), so griffe,
which reads the code without running it, cannot follow the name. This hook replaces it with the
module that defines it, asked of the package itself, so the page survives the function moving.
"""

from __future__ import annotations

import importlib
import re
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
LAZY = ("export_model",)


def on_page_markdown(markdown: str, page: Any, **kwargs: Any) -> str:
    if "::: distill." not in markdown:
        return markdown
    if str(ROOT) not in sys.path:  # this checkout's code, as the configuration reference
        sys.path.insert(0, str(ROOT))
    distill = importlib.import_module("distill")
    for name in LAZY:
        module = getattr(distill, name).__module__
        markdown = re.sub(rf"^::: distill\.{name}$", f"::: {module}.{name}", markdown, flags=re.M)
    return markdown
