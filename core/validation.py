"""Checks a config dataclass runs on itself in ``__post_init__``.

The host turns each selected component's config node into an instance of the
spec's config class before anything heavy runs; a ``__post_init__`` that
raises :class:`ConfigValueError` (as :func:`check` does) stops the run with one
line per problem, naming the key, e.g. ``tuneforge: error: adapter.r: must be
>= 1, got 0``.  Any other ``ValueError`` stops it too, with one line naming
only the config's group and the first line of its message
(``tuneforge: error: adapter: <message>``)::

    from dataclasses import dataclass

    from tuneforge.validation import at_least, between, check, one_of

    @dataclass
    class MyAdapterConfig:
        rank: int = 8
        dropout: float = 0.0
        mode: str = "fast"

        def __post_init__(self):
            check(self, rank=at_least(1), dropout=between(0, 1), mode=one_of("fast", "exact"))

A rule is a callable ``rule(value) -> message or None``; :func:`check` applies
each rule to the field of its keyword and raises one :class:`ConfigValueError`
listing every field that failed.  ``None`` passes every rule except
:func:`required` (``Optional`` fields use ``None`` for "off").  Values that are
not real yet -- omegaconf's ``MISSING`` (``"???"``) and interpolation strings
(``"${...}"``), which a dataclass may be built with by code that inspects it --
are skipped: the host validates the instance it builds from the resolved config.

For a check across fields, raise ``ConfigValueError(field, message)`` yourself
after :func:`check`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence

from tuneforge.errors import ConfigError, did_you_mean

#: a rule: the value -> a message saying what is wrong (``None``: the value is fine)
Rule = Callable[[Any], Optional[str]]

__all__ = ["ConfigValueError", "Rule", "at_least", "at_most", "between", "check", "each", "existing_path",
           "greater_than", "is_placeholder", "non_empty", "one_of", "required"]


class ConfigValueError(ConfigError, ValueError):
    """Config fields with bad values: ``problems`` is a list of ``(field, message)``.

    ``ConfigValueError("r", "must be >= 1, got 0")`` for one field; the host
    prefixes the field with the config's key (``adapter.r: must be >= 1, got 0``).
    A ``field`` may be a dotted path inside the config (``teacher.name``).
    """

    def __init__(self, field: str, message: str, *more: tuple[str, str]):
        self.problems = [(str(field), str(message)), *((str(f), str(m)) for f, m in more)]
        super().__init__("; ".join(f"{f}: {m}" for f, m in self.problems))

    @property
    def field(self) -> str:
        """The first field that failed."""
        return self.problems[0][0]


def is_placeholder(value: Any) -> bool:
    """True for omegaconf's ``MISSING`` (``"???"``) and interpolation strings (``"${...}"``)."""
    return isinstance(value, str) and (value == "???" or "${" in value)


def check(config: Any, **rules: Rule | Sequence[Rule]) -> None:
    """Apply ``rules`` (field name -> a rule or a list of rules) to ``config``'s fields.

    Raises one :class:`ConfigValueError` naming every field whose value fails
    its first failing rule.  ``None`` passes all rules but :func:`required`;
    placeholders (:func:`is_placeholder`) pass all rules.
    """
    problems = []
    for name, rule_or_rules in rules.items():
        value = getattr(config, name)
        if is_placeholder(value):
            continue
        for rule in (rule_or_rules if isinstance(rule_or_rules, (list, tuple)) else (rule_or_rules,)):
            if value is None and not getattr(rule, "checks_none", False):
                continue
            message = rule(value)
            if message:
                problems.append((name, message))
                break
    if problems:
        raise ConfigValueError(*problems[0], *problems[1:])


def _not_a_number(value: Any) -> Optional[str]:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"must be a number, got {value!r}"
    if not math.isfinite(value):
        return f"must be a finite number, got {value!r}"
    return None


def at_least(minimum: float) -> Rule:
    """A finite number ``>= minimum``."""
    def rule(value):
        return _not_a_number(value) or (None if value >= minimum else f"must be >= {minimum}, got {value!r}")
    return rule


def greater_than(bound: float) -> Rule:
    """A finite number ``> bound``."""
    def rule(value):
        return _not_a_number(value) or (None if value > bound else f"must be > {bound}, got {value!r}")
    return rule


def at_most(maximum: float) -> Rule:
    """A finite number ``<= maximum``."""
    def rule(value):
        return _not_a_number(value) or (None if value <= maximum else f"must be <= {maximum}, got {value!r}")
    return rule


def between(low: float, high: float, *, include_high: bool = True) -> Rule:
    """A finite number from ``low`` to ``high`` (``include_high=False``: below ``high``)."""
    def rule(value):
        problem = _not_a_number(value)
        if problem:
            return problem
        if low <= value <= high if include_high else low <= value < high:
            return None
        return (f"must be between {low} and {high}, got {value!r}" if include_high
                else f"must be >= {low} and < {high}, got {value!r}")
    return rule


def one_of(*choices: Any) -> Rule:
    """One of ``choices`` (the message suggests the closest one)."""
    def rule(value):
        if value in choices:
            return None
        hint = did_you_mean(value, [str(c) for c in choices]) if isinstance(value, str) else ""
        return f"must be one of {', '.join(map(str, choices))}, got {value!r}{hint}"
    return rule


def non_empty(value: Any) -> Optional[str]:
    """A rule: a string, list or mapping that is not empty (strings: not only whitespace)."""
    empty = not value.strip() if isinstance(value, str) else not value
    return "must not be empty" if empty else None


def required(value: Any) -> Optional[str]:
    """A rule: the value must be set (not ``None``)."""
    return "must be set" if value is None else None


required.checks_none = True  # type: ignore[attr-defined]


def existing_path(kind: str = "any") -> Rule:
    """A path that exists: ``kind`` is ``file``, ``dir`` or ``any`` (``~`` expands; relative to the cwd)."""
    if kind not in ("file", "dir", "any"):
        raise ValueError(f"existing_path(kind={kind!r}): kind must be file, dir or any")
    what = {"file": "file", "dir": "folder", "any": "file or folder"}[kind]

    def rule(value):
        if not isinstance(value, (str, Path)) or not str(value):
            return f"must be the path of a {what}, got {value!r}"
        path = Path(str(value)).expanduser()
        found = {"file": path.is_file, "dir": path.is_dir, "any": path.exists}[kind]()
        if found:
            return None
        where = "" if path.is_absolute() else f" (relative to {Path.cwd()})"
        return f"no such {what}: {value}{where}"
    return rule


def each(rule: Rule) -> Rule:
    """Every item of a list passes ``rule`` (the message names the first item that does not)."""
    def each_rule(value):
        if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
            return f"must be a list, got {value!r}"
        for index, item in enumerate(value):
            message = rule(item)
            if message:
                return f"item {index} {message}"
        return None
    return each_rule
