"""``tuneforge status <run dir or sweep dir> ...``: how each run ended, read from its ``status.json``.

A run whose status says ``running`` while no live process holds its lock is shown as
"interrupted (the process died)" (SIGKILL, out of memory, a lost node).
"""

from __future__ import annotations

import json
from pathlib import Path

from tuneforge.errors import TuneforgeError

USAGE = """\
usage: tuneforge status <run dir or sweep dir> [more ...]
       tuneforge status run_dir=<run dir> [more ...]

How each run ended (completed, failed with its error, interrupted, running), from its
status.json; a sweep directory lists its jobs.
"""


def run_line(run_dir: Path) -> str:
    """``<run dir>  <state>[  <steps> steps][  <error>]`` for one run directory."""
    from tuneforge.training.run_lock import describe_status

    try:
        status = json.loads((run_dir / "status.json").read_text())
    except (OSError, ValueError):
        status = {}
    status = status if isinstance(status, dict) else {}
    state = describe_status(run_dir, status.get("status")) or "unknown (no readable status.json)"
    parts = [str(run_dir), state]
    if status.get("steps"):
        parts.append(f"{status['steps']} steps")
    if status.get("error"):
        parts.append(str(status["error"]))
    return "  ".join(parts)


def status_path(arg: str) -> Path:
    """The directory an argument names: a path, or ``run_dir=<path>`` as the other commands take it, quoted
    as ``tuneforge train`` takes it (``'run_dir="/runs/a b"'``) or not."""
    from tuneforge.host.paths import unquoted

    if arg.startswith("run_dir=") and not Path(arg).exists():
        return Path(unquoted(arg[len("run_dir="):])).expanduser()
    if Path(arg).expanduser().exists():
        return Path(arg).expanduser()
    return Path(unquoted(arg)).expanduser()


def status_command(args: list) -> None:
    if not args or any(a in ("-h", "--help") for a in args):
        print(USAGE, end="")
        return
    for path in map(status_path, args):
        if not path.is_dir():
            raise TuneforgeError(f"status: {path} is not a directory; give a run directory or a sweep directory "
                                 "(a path, or run_dir=<path>)")
        runs = [path] if (path / "status.json").is_file() else sorted(
            p for p in path.iterdir() if (p / "status.json").is_file())
        if not runs:
            raise TuneforgeError(f"status: no run (status.json) in {path} or its subfolders")
        for run in runs:
            print(run_line(run))
