"""The documentation site: the README as a front door, the generated configuration reference,
and a strict build of the whole site."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from tests.scripts import load_script

ROOT = Path(__file__).resolve().parent.parent


def _reference():
    return load_script(ROOT / "docs" / "hooks" / "config_reference.py")


def _schema_keys(node, prefix: str = "") -> list[str]:
    keys = []
    for f in dataclasses.fields(node):
        value = getattr(node, f.name)
        if dataclasses.is_dataclass(value):
            keys += _schema_keys(value, f"{prefix}{f.name}.")
        else:
            keys.append(f"{prefix}{f.name}")
    return keys


def test_config_reference_lists_every_key_with_type_default_and_meaning():
    from distill.config import RunConfig, choices

    reference = _reference()
    page = reference.render()
    entries = {entry.key: entry for entry in reference.leaves(reference.schema())}
    for key in _schema_keys(RunConfig()):
        assert key in entries, f"{key} is missing from the configuration reference"
        entry = entries[key]
        assert entry.type and entry.default, key
        assert entry.meaning, f"{key} has no meaning: add a comment to its field in the schema"
        assert f"| `{key}` |" in page, key
    for key, values in choices().items():
        for value in values:
            assert str(value).lower() in page.split(f"| `{key}` |", 1)[1].split("\n", 1)[0].lower()


def test_config_reference_defaults_are_the_schemas():
    reference = _reference()
    entries = {entry.key: entry for entry in reference.leaves(reference.schema())}
    assert entries["loss.map_weight"].default == "0.01"
    assert entries["teacher.name"].default == "wrn_16_2"  # RunConfig's, not ModelConfig's
    assert entries["student.name"].default == "wrn_16_1"
    assert entries["data.root"].default == "null"
    assert entries["optim.milestones"].default == "[0.3, 0.6, 0.8]"
    assert entries["loss.map_layers[].student"].meaning


def test_readme_is_a_front_door():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", readme) + re.findall(
        r'src="([^"]+)"', readme
    )
    for target in links:
        if "://" not in target:
            assert (ROOT / target).exists(), f"README links to a missing file: {target}"
    nav = (ROOT / "mkdocs.yml").read_text()
    for page in sorted((ROOT / "docs").glob("*.md")):
        assert f": {page.name}" in nav, f"{page.name} is not in the site's nav"


def test_site_builds_strict(tmp_path):
    """``mkdocs build --strict``: a broken link, anchor, API reference or config page fails."""
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings")
    from mkdocs.commands.build import build
    from mkdocs.config import load_config

    config = load_config(str(ROOT / "mkdocs.yml"), site_dir=str(tmp_path / "site"), strict=True)
    build(config)
    site = tmp_path / "site"
    assert (site / "reference" / "config.html").is_file()
    config_page = (site / "reference" / "config.html").read_text()
    assert "loss.map_weight" in config_page and "data.imagefolder.cache_dir" in config_page
    api = (site / "reference" / "api" / "cam.html").read_text()
    assert "gradcam_pp" in api and "GradCAMPlusPlus" in api
    assert (site / "assets" / "katex" / "katex.min.js").is_file()


def _documents() -> dict[str, str]:
    paths = [ROOT / "README.md", ROOT / "BENCHMARKS.md", *sorted((ROOT / "docs").glob("*.md"))]
    return {str(path.relative_to(ROOT)): path.read_text() for path in paths}


def test_the_names_and_files_the_docs_give_exist():
    """Every ``distill.x.y`` and ``distill/...``, ``tests/...``, ``benchmarks/...``,
    ``configs/...`` the README and the pages name in code exists, so a move or a rename shows up
    here rather than in a reader's ImportError."""
    import importlib

    missing = []
    for name, text in _documents().items():
        for dotted in sorted(set(re.findall(r"`(distill(?:\.[A-Za-z_]\w*)+)", text))):
            parts = dotted.split(".")
            if parts[-1] in ("json", "md", "py", "yaml"):  # a file name (distill.json)
                continue
            for i in range(len(parts), 0, -1):
                try:
                    obj = importlib.import_module(".".join(parts[:i]))
                except ImportError:
                    continue
                try:
                    for attr in parts[i:]:
                        obj = getattr(obj, attr)
                except AttributeError:
                    missing.append(f"{name}: {dotted}")
                break
        for path in sorted(
            set(re.findall(r"`((?:distill|tests|benchmarks|configs)/[\w/.-]+)", text))
        ):
            if not (ROOT / path.rstrip("/")).exists():
                missing.append(f"{name}: {path}")
    assert not missing, f"the docs name what does not exist: {missing}"
