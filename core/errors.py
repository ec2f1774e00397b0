"""User-facing errors.

Every error tuneforge raises for bad input is a :class:`TuneforgeError`: its
message is one line saying what was wrong, where (file, line, key) and what
would be valid.  The CLI prints it without a traceback (``--debug`` or
``HYDRA_FULL_ERROR=1`` shows one) and exits with status 2.
"""

from __future__ import annotations

import difflib
from typing import Iterable


class TuneforgeError(Exception):
    """Base class of errors caused by the user's input or environment."""


class PluginError(TuneforgeError):
    """A plugin failed to import, collided with another, or broke the hook API."""


class ConfigError(TuneforgeError):
    """The composed configuration is invalid."""


class DataError(TuneforgeError):
    """A dataset file or record is malformed."""


class ModelError(TuneforgeError):
    """A model cannot be loaded or does not fit the chosen adapter."""


def is_disk_full(exc: BaseException) -> bool:
    """True for "no space left" / "quota exceeded", as an ``OSError`` or as safetensors' own
    error type (which only carries the OS message, e.g. ``os error 28``)."""
    import errno

    return (getattr(exc, "errno", None) in (errno.ENOSPC, errno.EDQUOT)
            or f"os error {errno.ENOSPC}" in str(exc) or f"os error {errno.EDQUOT}" in str(exc))


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """Return ``" (did you mean 'x'?)"`` for the closest choice, or ``""``."""
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""
