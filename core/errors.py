"""User-facing errors.

Every error tuneforge raises for bad input is a :class:`TuneforgeError`: its
message is one line saying what was wrong, where (file, line, key) and what
would be valid.  The CLI prints it without a traceback (``--debug`` or
``HYDRA_FULL_ERROR=1`` shows one) and exits with status 2.
"""

from __future__ import annotations

import difflib
import re
from typing import Iterable, Optional


class TuneforgeError(Exception):
    """Base class of errors caused by the user's input or environment."""


class PluginError(TuneforgeError):
    """A plugin failed to import, collided with another, broke the hook API, or raised in its own code
    (one line naming the plugin, its distribution, the component and the hook or phase; see
    :mod:`tuneforge.host.guard`)."""


class ConfigError(TuneforgeError):
    """The composed configuration is invalid."""


class DataError(TuneforgeError):
    """A dataset file or record is malformed."""


class ModelError(TuneforgeError):
    """A model cannot be loaded or does not fit the chosen adapter."""


def first_line(error) -> str:
    """The first line of an exception's (or a message's) text, stripped; an exception with no text gives
    its type's name."""
    text = str(error).strip()
    if text:
        return text.splitlines()[0].strip()
    return type(error).__name__ if isinstance(error, BaseException) else ""


def os_error_number(exc: BaseException) -> Optional[int]:
    """The ``errno`` of an ``OSError``, or the OS error code in the message of safetensors' own
    error type, which wraps one: ``os error 28`` (safetensors >= 0.5) or
    ``IoError(Os { code: 28, ... })`` (0.4); ``None`` when ``exc`` carries no OS error."""
    if isinstance(exc, OSError) and exc.errno is not None:
        return exc.errno
    found = re.search(r"os error (\d+)|Os \{ code: (\d+),", str(exc))
    return int(found.group(1) or found.group(2)) if found else None


def is_disk_full(exc: BaseException) -> bool:
    """True for "no space left" / "quota exceeded", as an ``OSError`` or as safetensors' own
    error type (see :func:`os_error_number`)."""
    import errno

    return os_error_number(exc) in (errno.ENOSPC, errno.EDQUOT)


def closest(word: str, choices: Iterable[str]) -> Optional[str]:
    """The choice closest to ``word`` (difflib's closest match), or None when none is close."""
    close = difflib.get_close_matches(word, list(choices), n=1)
    return close[0] if close else None


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """Return ``" (did you mean 'x'?)"`` for the closest choice, or ``""``."""
    close = closest(word, choices)
    return f" (did you mean '{close}'?)" if close else ""
