"""Errors of the data package; each message names the path at fault and the fix."""

from __future__ import annotations

from distill.errors import UserError

__all__ = ["DatasetNotFoundError", "UnreadableImageError"]


class DatasetNotFoundError(UserError, RuntimeError):
    """The dataset files are missing (and could not be downloaded); the message says how to fix it."""


class UnreadableImageError(UserError, RuntimeError):
    """An image file exists but cannot be decoded; the message names the file."""
