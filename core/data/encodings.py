"""Telling a data file saved in a wide Unicode encoding (UTF-16, UTF-32) from UTF-8, to say how to convert it.

Spreadsheet programs and Windows tools often save "Unicode text" as UTF-16.  Read as UTF-8 such a file
fails at its first byte (a byte-order mark) or, without a byte-order mark, decodes as text full of NUL
bytes that no reader can parse.  :func:`wide_encoding` recognises both from the file's first bytes, and
:func:`refuse_wide_encoding` stops with one line naming the encoding and the ``iconv`` command that
converts the file to UTF-8.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Optional

from tuneforge.errors import DataError

#: byte-order marks -> the encoding they start (the UTF-32 ones first: UTF-32LE's starts like UTF-16LE's)
BYTE_ORDER_MARKS = ((b"\xff\xfe\x00\x00", "UTF-32"), (b"\x00\x00\xfe\xff", "UTF-32"),
                    (b"\xff\xfe", "UTF-16"), (b"\xfe\xff", "UTF-16"))
#: bytes of the file's start that are looked at
SNIFF_BYTES = 512


def _mostly_zero(data: bytes, positions: tuple, width: int) -> bool:
    """Whether in every ``width`` bytes of ``data`` the bytes at ``positions`` are NUL (9 in 10 at least)
    and the others are not (9 in 10): ASCII-range text in a wide encoding."""
    units = [data[i:i + width] for i in range(0, len(data) - width + 1, width)]
    if len(units) < 2:
        return False
    zero = sum(all(unit[p] == 0 for p in positions) for unit in units)
    other = sum(any(unit[p] != 0 for p in range(width) if p not in positions) for unit in units)
    return zero >= 0.9 * len(units) and other >= 0.9 * len(units)


def wide_encoding(head: bytes) -> Optional[tuple[str, str]]:
    """``(encoding, how it shows)`` for the first bytes of a UTF-16 or UTF-32 file: its byte-order mark, or
    without one the NUL bytes of ASCII-range text (``UTF-16LE``, ``UTF-16BE``, ``UTF-32LE``, ``UTF-32BE``);
    None for anything else (UTF-8 included)."""
    for mark, encoding in BYTE_ORDER_MARKS:
        if head.startswith(mark):
            return encoding, f"it starts with a {encoding} byte-order mark"
    head = head[:SNIFF_BYTES]
    for encoding, positions, width in (("UTF-32LE", (1, 2, 3), 4), ("UTF-32BE", (0, 1, 2), 4),
                                       ("UTF-16LE", (1,), 2), ("UTF-16BE", (0,), 2)):
        if _mostly_zero(head, positions, width):
            nul = "three bytes in four of its text are" if width == 4 else "every other byte of its text is"
            return encoding, f"{encoding} without a byte-order mark: {nul} NUL"
    return None


def refuse_wide_encoding(path: Path, head: bytes, compressed: bool = False) -> None:
    """A one-line :class:`DataError` when ``head`` (the first bytes of the file's text; ``compressed``: it
    is gzip-compressed) is UTF-16 or UTF-32: what it is, and the command that converts it to UTF-8."""
    found = wide_encoding(head)
    if found is None:
        return
    encoding, sign = found
    name = Path(path).name
    plain = name[:-3] if compressed and name.endswith(".gz") else name
    stem, dot, suffix = plain.rpartition(".")
    converted = f"{stem}.utf8.{suffix}" if dot and stem else f"{plain}.utf8"
    name, converted = shlex.quote(name), shlex.quote(converted)
    command = (f"gunzip -c {name} | iconv -f {encoding} -t UTF-8 > {converted}" if compressed
               else f"iconv -f {encoding} -t UTF-8 {name} > {converted}")
    family = "UTF-16" if "16" in encoding else "UTF-32"
    raise DataError(f"{path}:1: the file is {family} text, not UTF-8 ({sign}); convert it to UTF-8, e.g. "
                    f"{command}")
