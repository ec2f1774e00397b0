"""Byte sizes as people write them (``24GiB``, ``80 GB``, ``512MiB``) and as the plan prints them."""

from __future__ import annotations

import re

from tuneforge.errors import ConfigError

#: unit -> bytes; GB/MB are read as GiB/MiB (1024-based), as GPU makers' "24 GB" cards hold 24 GiB
UNITS = {"": 1, "b": 1, "k": 2 ** 10, "kb": 2 ** 10, "kib": 2 ** 10, "m": 2 ** 20, "mb": 2 ** 20, "mib": 2 ** 20,
         "g": 2 ** 30, "gb": 2 ** 30, "gib": 2 ** 30, "t": 2 ** 40, "tb": 2 ** 40, "tib": 2 ** 40}


def parse_memory(text, key: str = "--memory") -> int:
    """``text`` (``24GiB``, ``24GB``, ``24 G``, ``1.5TiB``, ``512MiB`` or a plain number of bytes) in bytes;
    a one-line :class:`~tuneforge.ConfigError` naming ``key`` for anything else."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", str(text))
    unit = match.group(2).lower() if match else None
    if match is None or unit not in UNITS or float(match.group(1)) <= 0:
        raise ConfigError(f"{key}={text!r} is not a memory size; write a number and a unit, e.g. 24GiB, 80GB, "
                          f"512MiB (units: {', '.join(u for u in ('KiB', 'MiB', 'GiB', 'TiB', 'KB', 'MB', 'GB', 'TB'))}"
                          "; GB means GiB here)")
    return int(float(match.group(1)) * UNITS[unit])


def format_bytes(size: float) -> str:
    """``size`` bytes as ``1.23 GiB`` / ``456.7 MiB`` / ``12.0 KiB`` / ``3 B``."""
    for unit, scale in (("GiB", 2 ** 30), ("MiB", 2 ** 20), ("KiB", 2 ** 10)):
        if abs(size) >= scale:
            return f"{size / scale:.2f} {unit}" if unit == "GiB" else f"{size / scale:.1f} {unit}"
    return f"{int(size)} B"


def format_count(number: float) -> str:
    """A parameter count as ``8.03B``, ``20.97M``, ``12.30K`` or ``512``."""
    for suffix, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(number) >= scale:
            return f"{number / scale:.2f}{suffix}"
    return str(int(number))
