"""A griffe extension for the API pages: the docstrings' reST roles and ``Example:`` sections.

The package's docstrings are Google style, with Sphinx roles here and there
(:func:`build_model`, :mod:`~distill.data.sampling`). Markdown has no roles, so mkdocstrings
would print ``:func:`` before each name. This extension rewrites a role to the code span Sphinx
would show (``~`` keeps the last dotted part); the source files stay as they are.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:py:)?(?:func|meth|class|mod|data|attr|obj|exc|const):`(~?)([^`]+)`")


def _code_span(match: re.Match[str]) -> str:
    tilde, target = match.groups()
    return f"`{target.rsplit('.', 1)[-1] if tilde else target}`"


EXAMPLE = re.compile(r"^(\s*)Example:[ \t]*$", re.M)


def rewrite(text: str) -> str:
    """``:func:`~a.b.c``` -> ```c```, ``:class:`A``` -> ```A```; an ``Example:`` section is
    read as griffe's ``Examples:`` section, whose ``>>>`` lines become code (as a singular it
    would be an admonition, and markdown would read ``>>>`` as nested quotes)."""
    return EXAMPLE.sub(r"\1Examples:", ROLE.sub(_code_span, text))


class RstRoles(griffe.Extension):
    """Rewrite the roles of every docstring as it is loaded."""

    def on_instance(self, *, node: Any, obj: griffe.Object, agent: Any, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = rewrite(obj.docstring.value)
