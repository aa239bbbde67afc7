"""Rename rules for the keys of a weights file written by other code (``teacher.key_map``).

Other codebases name layers differently (``linear`` where this toolkit says ``fc``). A key map
is an ordered list of rules, each applied to every key of the file, in turn:

- ``OLD:NEW`` (literal): replaces ``OLD`` where it begins the key or one of its dotted parts,
  first place only. ``linear.:fc.`` renames ``linear.weight`` and ``head.linear.bias``;
  ``module.:`` strips a prefix; ``:net.`` (empty ``OLD``) adds one.
- ``re:PATTERN:REPL``: :func:`re.sub` of the regular expression ``PATTERN`` (split at the last
  ``:``, so ``REPL`` holds none) by ``REPL`` (``\\1``, ``\\g<name>``), everywhere in the key.
  ``re:^layer(\\d)\\.:stage\\1.`` renames ``layer1.conv.weight`` to ``stage1.conv.weight``.

:func:`suggest_rules` finds the rules that would make the keys of a file fit a model, so that
an error can name them for the user to copy.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

__all__ = ["KeyRule", "apply_key_map", "format_key_map", "parse_key_map", "suggest_rules"]

_REGEX = "re:"
_CANDIDATES = 12  # candidate rules checked per round of a suggestion
_ROUNDS = 3  # rules a suggestion may combine


@dataclass(frozen=True)
class KeyRule:
    """One parsed rule; ``text`` is how the user wrote it."""

    text: str
    old: str
    new: str
    pattern: re.Pattern[str] | None = None

    def __call__(self, key: str) -> str:
        if self.pattern is not None:
            return self.pattern.sub(self.new, key)
        if key.startswith(self.old):
            return self.new + key[len(self.old) :]
        at = key.find("." + self.old) if self.old else -1
        if at < 0:
            return key
        return key[: at + 1] + self.new + key[at + 1 + len(self.old) :]


def parse_key_map(rules: Iterable[str] | None) -> list[KeyRule]:
    """Parse ``OLD:NEW`` and ``re:PATTERN:REPL`` rules.

    Raises:
        ValueError: a rule without ``:``, or with an invalid regular expression (one line).
    """
    parsed = []
    for text in rules or ():
        text = str(text)
        if text.startswith(_REGEX):
            pattern, sep, repl = text[len(_REGEX) :].rpartition(":")
            if not sep or not pattern:
                raise ValueError(f"key_map rule {text!r} must look like re:PATTERN:REPL")
            try:
                compiled = re.compile(pattern)
            except re.error as error:
                raise ValueError(
                    f"key_map rule {text!r}: invalid regular expression: {error}"
                ) from None
            parsed.append(KeyRule(text, pattern, repl, compiled))
            continue
        old, sep, new = text.partition(":")
        if not sep or ":" in new or (not old and not new):
            raise ValueError(
                f"key_map rule {text!r} must look like OLD:NEW (e.g. linear.:fc., module.: or "
                ":net.) or re:PATTERN:REPL"
            )
        parsed.append(KeyRule(text, old, new))
    return parsed


def apply_key_map(state: Mapping[str, object], rules: Sequence[KeyRule]) -> dict:
    """``state`` with every key renamed by ``rules`` in order.

    Raises:
        ValueError: two keys renamed to the same one.
    """
    if not rules:
        return dict(state)
    renamed: dict = {}
    origin: dict[str, str] = {}
    for key, value in state.items():
        new = key
        for rule in rules:
            new = rule(new)
        if new in renamed:
            raise ValueError(
                f"key_map {format_key_map(rules)} renames both {origin[new]} and {key} to {new}"
            )
        renamed[new], origin[new] = value, key
    return renamed


def format_key_map(rules: Sequence[KeyRule | str]) -> str:
    """The rules as a list to copy into an override: ``["module.:", "linear.:fc."]``."""
    texts = [rule.text if isinstance(rule, KeyRule) else rule for rule in rules]
    return "[" + ", ".join(f'"{text}"' for text in texts) + "]"


def _candidates(unexpected: Iterable[str], missing: Iterable[str], shapes: Callable) -> Counter:
    """``OLD:NEW`` rules that turn one unexpected key into a missing one of the same shape:
    the leading parts that differ, the trailing parts kept."""
    by_leaf: dict[str, list[str]] = {}
    for key in missing:
        by_leaf.setdefault(key.rsplit(".", 1)[-1], []).append(key)
    found: Counter = Counter()
    for key in unexpected:
        parts = key.split(".")
        for target in by_leaf.get(parts[-1], ()):
            if shapes(key, target) is False:
                continue
            other = target.split(".")
            kept = 0
            while kept < min(len(parts), len(other)) and parts[-1 - kept] == other[-1 - kept]:
                kept += 1
            old = ".".join(parts[: len(parts) - kept])
            new = ".".join(other[: len(other) - kept])
            old, new = (old + "." if old else ""), (new + "." if new else "")
            if old != new:
                found[f"{old}:{new}"] += 1
    return found


def suggest_rules(
    score: Callable[[list[KeyRule]], tuple[int, list[str], list[str]]],
    shapes: Callable[[str, str], bool | None],
    rules: Sequence[KeyRule] = (),
) -> list[str] | None:
    """The fewest further rules (up to three) after ``rules`` that make the file's keys fit.

    Args:
        score: ``rules -> (problems, unexpected keys, missing keys)`` after applying ``rules``
            (and the automatic prefix fitting); ``problems == 0`` means everything fits.
        shapes: ``(file key, model key) -> whether their shapes agree`` (None: unknown).
        rules: the rules the user already gave.

    Returns:
        The texts of the new rules, or None when no such rules make every key fit.
    """
    chosen = list(rules)
    problems, unexpected, missing = score(chosen)
    for _ in range(_ROUNDS):
        if problems == 0:
            break
        found = _candidates(unexpected, missing, shapes)
        best = None
        for text, _count in found.most_common(_CANDIDATES):
            trial = [*chosen, *parse_key_map([text])]
            try:
                result = score(trial)
            except ValueError:  # the rule renames two keys to one
                continue
            if result[0] < problems and (best is None or result[0] < best[1][0]):
                best = (trial, result)
        if best is None:
            return None
        chosen, (problems, unexpected, missing) = best
    if problems:
        return None
    return [rule.text for rule in chosen[len(rules) :]]
