"""The ``key=value`` argument parser shared by ``generate``, ``chat``, ``eval`` and ``export``.

Each command declares its keys as :class:`Option` objects (converter, default,
help); :func:`parse_key_values` turns arguments into values or raises
:class:`ArgumentError` with one line naming the key and the valid keys.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

from tuneforge.errors import TuneforgeError, did_you_mean


class ArgumentError(TuneforgeError):
    """A command argument is malformed, unknown, missing or of the wrong type."""


def parse_bool(text: str) -> bool:
    """``true/false``, ``yes/no``, ``on/off``, ``1/0`` (any case) -> bool."""
    value = text.strip().lower()
    if value in ("true", "yes", "on", "1"):
        return True
    if value in ("false", "no", "off", "0"):
        return False
    raise ValueError(f"expected true or false, got '{text}'")


@dataclass(frozen=True)
class Option:
    """One ``key=value`` argument of a command: how to convert it, its default and help."""

    help: str
    convert: Callable[[str], Any] = str
    default: Any = None
    required: bool = False


#: keys whose value is a path that ``tuneforge train`` takes through Hydra's override grammar, so it may come
#: quoted the way train needs it; one level of matching quotes is taken off (:func:`run_dir_argument`)
PATH_KEYS = ("run_dir",)


def parse_key_values(args: Sequence[str], options: dict[str, Option], command: str) -> dict:
    """Turn ``["key=value", ...]`` into ``{key: converted value}`` with every option present.

    The value is everything after the first ``=`` (so ``prompt="a=b"`` works); a ``run_dir`` value may be
    quoted as ``tuneforge train`` takes it (:data:`PATH_KEYS`).
    Unknown keys, arguments without ``=``, repeated keys, values that do not
    convert and missing required keys raise :class:`ArgumentError` with a
    one-line message naming the key and the valid keys.
    """
    valid = ", ".join(options)
    values: dict[str, Any] = {}
    for arg in args:
        key, sep, raw = arg.partition("=")
        key = key.strip()
        if not sep:
            raise ArgumentError(f"tuneforge {command}: argument '{arg}' is not key=value; valid keys: {valid}")
        if key not in options:
            raise ArgumentError(f"tuneforge {command}: unknown key '{key}'{did_you_mean(key, options)}; "
                                f"valid keys: {valid}")
        if key in values:
            raise ArgumentError(f"tuneforge {command}: key '{key}' is given twice")
        if key in PATH_KEYS:  # quoted as `tuneforge train` takes it ('run_dir="/runs/a b"') or not
            raw = run_dir_argument(raw)
        try:
            values[key] = options[key].convert(raw)
        except ValueError as exc:
            raise ArgumentError(f"tuneforge {command}: {key}={raw!r} is invalid: {exc}") from None
    missing = [key for key, option in options.items() if option.required and key not in values]
    if missing:
        raise ArgumentError(f"tuneforge {command}: missing required {', '.join(k + '=...' for k in missing)}")
    return {key: values.get(key, option.default) for key, option in options.items()}


def format_options(options: dict[str, Option], command: str, summary: str) -> str:
    """Help text for ``tuneforge <command> --help``."""
    lines = [f"usage: tuneforge {command} key=value ...", "", summary, "", "keys:"]
    for key, option in options.items():
        default = "required" if option.required else f"default: {option.default}"
        lines.append(f"  {key:<16} {option.help} ({default})")
    return "\n".join(lines) + "\n"


def wants_help(args: Sequence[str]) -> bool:
    return any(arg in ("-h", "--help") for arg in args)


def run_dir_argument(text: str) -> str:
    """A ``run_dir=`` value: quoted as ``tuneforge train`` takes it (``'run_dir="/runs/a b"'``, Hydra's
    quoting) or not; one level of matching quotes is taken off (:func:`tuneforge.host.paths.unquoted`)."""
    from tuneforge.host.paths import unquoted

    return unquoted(text)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError("must be at least 1")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError("must be >= 0")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if value < 0:
        raise ValueError("must be >= 0")
    return value


def _probability(text: str) -> float:
    value = float(text)
    if not 0 < value <= 1:
        raise ValueError("must be in (0, 1]")
    return value
