"""The base of every error a user can fix, and the one way the command lines print it.

Why a leaf module: the packages' own error types (``ConfigError``, ``WeightsError``,
``DatasetNotFoundError`` ...) derive from :class:`UserError` and keep their older bases, so
code that catches ``ValueError`` or ``RuntimeError`` still works, while every ``__main__``
catches :class:`UserError` in one place and prints one line with :func:`report`. Anything
else (a bug) keeps its traceback.
"""

from __future__ import annotations

import sys
from typing import TextIO

__all__ = ["ConfigError", "UserError", "one_line", "report"]


class UserError(Exception):
    """An error the user can fix (bad config, missing file, unreadable image ...); its message
    names what is wrong and what to do.

    ``exit_code``: 2 for configuration and usage errors (the command line or the config is
    wrong), 1 for the rest (files, data, training that cannot go on).
    """

    exit_code: int = 1


class ConfigError(UserError, ValueError):
    """An invalid configuration; the message is one line that names the key.

    Here rather than in :mod:`distill.config`: the data, training and model code that checks a
    value raises it without importing the config package, which imports them.
    """

    exit_code = 2


def one_line(error: BaseException | str) -> str:
    """The message of ``error`` on one line (runs of whitespace, newlines included, to one
    space)."""
    return " ".join(str(error).split())


def report(error: UserError, file: TextIO | None = None) -> int:
    """Print ``error: <message on one line>`` to stderr; returns the exit code to use."""
    print(f"error: {one_line(error)}", file=file or sys.stderr, flush=True)
    return error.exit_code
