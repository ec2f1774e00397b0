"""Atomic file writes shared by the run directory and ``metrics.json``: a temporary file renamed over
the target, none left behind when the write fails."""

from __future__ import annotations

import json
from pathlib import Path


def write_json(path: Path, value) -> None:
    """Write ``value`` as JSON (indented, keys sorted) atomically (temporary file, then rename); a failed
    write (a full disk) leaves no temporary file behind when it can be removed."""
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    try:
        tmp.write_text(json.dumps(value, indent=2, sort_keys=True) + "\n")
        tmp.replace(path)
    except OSError:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        raise
