"""The package's shape, checked from its source: no import circles, files of one screenful or
so, and imports that only point down the flow (data -> models -> cam -> losses -> training ->
tools), as ``docs/layout.md`` draws it.

Every ``import`` counts, the ones inside functions and under ``TYPE_CHECKING`` too: an import
deferred into a function still runs, later, so deferring it hides a circle but does not remove
it.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "distill"
MAX_LINES = 400

# What each top-level entry of distill/ may import (besides itself). ``errors`` is the leaf
# every part may raise from; the table in docs/layout.md states the same.
ALLOWED: dict[str, set[str]] = {
    "errors": set(),
    "cam": set(),
    "data": {"errors"},
    "models": {"errors", "cam"},
    "losses": {"errors", "cam"},
    "metrics": {"errors", "cam"},
    "training": {"errors", "data", "models", "cam", "losses", "metrics"},
    "config": {"errors", "data", "models", "cam", "losses", "training"},
    "tools": {"errors", "data", "models", "cam", "losses", "metrics", "training", "config"},
    "explain": {"tools"},
    "export": {"tools"},
    "__init__": {"errors", "models", "cam", "losses", "training", "tools"},
}


def _modules() -> dict[str, Path]:
    """Dotted name -> file of every module of the package (a package is its ``__init__``)."""
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _resolve(name: str, modules: dict[str, Path]) -> str:
    """The module ``name`` loads: itself, or the package it is an attribute of."""
    while name not in modules:
        name = name.rpartition(".")[0]
    return name


def _imports(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules that ``module`` imports, anywhere in its file."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
            found |= {_resolve(n, modules) for n in names if n.split(".")[0] == "distill"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            if source.split(".")[0] != "distill":
                continue
            for alias in node.names:
                submodule = f"{source}.{alias.name}"
                found.add(submodule if submodule in modules else _resolve(source, modules))
    found.discard(module)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle of ``graph`` (its modules in order, the first repeated), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return path[path.index(target) :] + [target]
            if target not in state and (found := visit(target)):
                return found
        state[node] = 2
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def _entry(module: str) -> str:
    """The top-level entry of distill/ that ``module`` belongs to."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_the_graph_sees_the_imports_it_must():
    """The parser finds relative, absolute, submodule and in-function imports (so that an
    empty answer below means no circle, not a blind parser)."""
    graph = _graph()
    assert "distill.models.wide_resnet" in graph["distill.models"]  # from . import wide_resnet
    assert "distill.models._registry" in graph["distill.models.wide_resnet"]  # from ._registry
    assert "distill.cam" in graph["distill.losses.cat"]  # from distill.cam import ...
    assert "distill.tools.export" in graph["distill"]  # inside __getattr__


def test_no_import_circles():
    circle = _cycle(_graph())
    assert circle is None, "import circle: " + " -> ".join(circle or [])


def test_a_circle_is_found_when_there_is_one():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_imports_point_down_the_flow():
    wrong = sorted(
        f"{module} imports {target}"
        for module, targets in _graph().items()
        for target in targets
        if _entry(target) != _entry(module) and _entry(target) not in ALLOWED[_entry(module)]
    )
    assert not wrong, "imports against the layout of docs/layout.md:\n" + "\n".join(wrong)


def test_the_top_level_shows_the_layout_at_a_glance():
    """Every top-level entry has its row in the table (a new one must be placed in the flow),
    and there are about ten of them."""
    entries = {
        p.stem for p in PACKAGE.iterdir() if p.suffix == ".py" or (p / "__init__.py").is_file()
    }
    assert entries == set(ALLOWED), sorted(entries ^ set(ALLOWED))
    assert len(entries) <= 12


def test_docs_layout_table_matches_the_allowed_imports():
    """docs/layout.md states the same table this test checks, so the page cannot drift."""
    rows = {}
    for line in (ROOT / "docs" / "layout.md").read_text().splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) != 3 or not line.lstrip().startswith("|"):
            continue
        entry = re.fullmatch(r"`(\w+)(?:/|\.py)`", cells[0])
        if entry:
            rows[entry.group(1)] = set(re.findall(r"`(\w+)`", cells[2]))
    assert rows == ALLOWED


def test_no_file_is_over_400_lines():
    long = {
        str(path.relative_to(ROOT)): n
        for path in PACKAGE.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
        for n in [len(path.read_text().splitlines())]
        if n > MAX_LINES
    }
    assert not long, f"files over {MAX_LINES} lines: {long}"
