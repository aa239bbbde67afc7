"""The configuration reference, generated from the schema in ``distill.config`` at build time.

Every key of :class:`distill.config.RunConfig` (recursively: ``data.imagefolder.cache_dir``) gets
its type, its default and its meaning. The meaning is the field's comment in the schema's
source: the comment at the end of its line, else the comment lines right above it. A comment
block followed by a blank line is a note for the keys below it. Valid values come from
``distill.config.choices()``, the modules that own them. Nothing here is written by hand, so
the page cannot drift from the code.

mkdocs runs :func:`on_files` (``hooks:`` in ``mkdocs.yml``), which adds the page
``reference/config.md``; ``python docs/hooks/config_reference.py`` prints it.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import io
import re
import sys
import textwrap
import tokenize
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# The checkout this file belongs to documents its own code, whatever else is installed
# (mkdocs restores sys.path after loading a hook, so this is done when the page is made).
ROOT = Path(__file__).resolve().parents[2]


def _this_checkout() -> None:
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    loaded = sys.modules.get("distill")
    if loaded is not None and Path(loaded.__file__).resolve().parent != ROOT / "distill":
        raise RuntimeError(f"distill is imported from {loaded.__file__}, not from {ROOT}")


PAGE = "reference/config.md"

INTRO = """\
# Configuration reference

Every key of a run's configuration, generated from the schema
(`distill.config.RunConfig` and its sections) when the site is built. A recipe in `configs/`
states only what differs from these defaults (or from the base recipe it names with `base:`);
`key=value` overrides on the command line come last:

```text
schema defaults < base recipe < recipe < key=value overrides
```

An unknown key, a wrong type or a value outside the listed choices stops the run with one line
naming the key and the closest valid names (exit code 2), before anything is written. Types are
Python's: `str | None` is a string or `null`. Defaults are written as in YAML.
"""


@dataclass
class Entry:
    """One key of the schema: a leaf (``type`` set) or the heading of a section."""

    key: str
    type: str = ""
    default: str = ""
    meaning: str = ""
    choices: tuple[Any, ...] = ()
    section_doc: str = ""
    note: str = ""  # a comment block above this key that introduces a group of keys
    rows: list[Entry] = field(default_factory=list)


def _comments(cls: type) -> dict[str, tuple[str, str]]:
    """``field -> (group note, meaning)`` from the comments of a dataclass's source."""
    source = textwrap.dedent(inspect.getsource(cls))
    lines = source.splitlines()
    comment_at: dict[int, str] = {}
    code_lines: set[int] = set()
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            comment_at[token.start[0]] = token.string.lstrip("#").strip()
        elif token.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT):
            code_lines.add(token.start[0])
    out: dict[str, tuple[str, str]] = {}
    (class_def,) = ast.parse(source).body
    assert isinstance(class_def, ast.ClassDef)
    for node in class_def.body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        trailing = comment_at.get(node.end_lineno or node.lineno, "")
        if node.end_lineno not in code_lines:
            trailing = ""
        above: list[str] = []
        line = node.lineno - 1
        while line >= 1 and line in comment_at and line not in code_lines:
            above.insert(0, comment_at[line])
            line -= 1
        note: list[str] = []
        if line >= 1 and not lines[line - 1].strip():  # a blank line, then maybe a group note
            line -= 1
            while line >= 1 and line in comment_at and line not in code_lines:
                note.insert(0, comment_at[line])
                line -= 1
        out[node.target.id] = (" ".join(note), " ".join([*above, trailing]).strip())
    return out


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if tp is Any:
        return "any"
    if tp is type(None):
        return "None"
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(arg) for arg in typing.get_args(tp))
    if origin is not None:
        args = ", ".join(_type_name(arg) for arg in typing.get_args(tp))
        return f"{origin.__name__}[{args}]"
    if dataclasses.is_dataclass(tp):
        return "{" + ", ".join(f.name for f in dataclasses.fields(tp)) + "}"
    return getattr(tp, "__name__", str(tp))


def _yaml(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '""' if value == "" else value
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_yaml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_yaml(v)}" for k, v in value.items()) + "}"
    return repr(value)


def _element_dataclass(tp: Any) -> type | None:
    """The dataclass inside ``list[X] | None``, if any (``loss.map_layers``)."""
    for arg in typing.get_args(tp) or ():
        if dataclasses.is_dataclass(arg):
            return arg
        inner = _element_dataclass(arg)
        if inner is not None:
            return inner
    return None


def schema(node: Any = None, prefix: str = "", choices: dict[str, Any] | None = None) -> Entry:
    """The schema as a tree of :class:`Entry`, from a dataclass instance (its defaults)."""
    _this_checkout()
    from distill.config import RunConfig
    from distill.config import choices as config_choices

    if node is None:
        node = RunConfig()
    if choices is None:
        choices = config_choices()
    cls = type(node)
    hints = typing.get_type_hints(cls)
    comments = _comments(cls)
    doc = inspect.cleandoc(cls.__doc__ or "") if "__doc__" in vars(cls) else ""
    doc = re.sub(r"``([^`]+)``", r"`\1`", doc)  # the schema's reST literals, in markdown
    section = Entry(key=prefix.rstrip("."), section_doc=doc)
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        value = getattr(node, f.name)
        note, meaning = comments.get(f.name, ("", ""))
        if dataclasses.is_dataclass(value):
            sub = schema(value, f"{key}.", choices)
            sub.note = note
            section.rows.append(sub)
            continue
        entry = Entry(
            key=key,
            type=_type_name(hints[f.name]),
            default=_yaml(value),
            meaning=meaning,
            choices=tuple(choices.get(key, ())),
            note=note,
        )
        element = _element_dataclass(hints[f.name])
        if element is not None:
            entry.rows = schema(element(), f"{key}[].", choices).rows
        section.rows.append(entry)
    return section


def leaves(entry: Entry) -> list[Entry]:
    """Every key with a type, depth first: what the tests check for a meaning."""
    out = []
    for row in entry.rows:
        if row.type:
            out.append(row)
        out += leaves(row)
    return out


def _code(text: str) -> str:
    """A code span that survives a table cell: raw HTML, so that ``|`` cannot split the cell."""
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return f"<code>{text.replace('|', '&#124;')}</code>"


def _cell(text: str) -> str:
    text = text.replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")
    return re.sub(r"docs/(\w+)\.md", r"[docs/\1.md](../\1.md)", text)


def _row(entry: Entry) -> str:
    meaning = entry.meaning
    if entry.choices:
        listed = ", ".join(f"`{_yaml(c)}`" for c in entry.choices)
        meaning = f"{meaning.rstrip('.')}. One of {listed}." if meaning else f"One of {listed}."
    return f"| `{entry.key}` | {_code(entry.type)} | {_code(entry.default)} | {_cell(meaning)} |"


def _table(rows: list[Entry]) -> list[str]:
    out = ['<div class="config-table" markdown>', ""]
    out += ["| key | type | default | meaning |", "|---|---|---|---|"]
    for row in rows:
        out.append(_row(row))
        out += [_row(sub) for sub in row.rows]  # the fields of list-of-pairs keys
    return [*out, "", "</div>"]


def _section(entry: Entry, level: int) -> list[str]:
    out = [f"{'#' * level} `{entry.key}`", ""]
    if entry.note:
        out += [entry.note, ""]
    if entry.section_doc:
        out += [entry.section_doc.replace("\n", " "), ""]
    pending: list[Entry] = []
    for row in entry.rows:
        if row.type and not row.note:
            pending.append(row)
            continue
        if pending:
            out += [*_table(pending), ""]
            pending = []
        if row.type:  # a leaf with a group note: the note, then a new table
            out += [f"*{_cell(row.note)}*", ""]
            pending.append(row)
        else:
            out += _section(row, level + 1)
    if pending:
        out += [*_table(pending), ""]
    return out


def render() -> str:
    """The whole page, in markdown."""
    root = schema()
    top = [row for row in root.rows if row.type]
    out = [INTRO, "## Top level", "", *_table(top), ""]
    for row in root.rows:
        if not row.type:
            out += _section(row, 2)
    return "\n".join(out)


def on_files(files: Any, config: Any) -> Any:
    """mkdocs hook: add the generated page to the site's files."""
    from mkdocs.structure.files import File

    files.append(File.generated(config, PAGE, content=render()))
    return files


if __name__ == "__main__":
    print(render())
