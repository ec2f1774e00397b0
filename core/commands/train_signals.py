"""SIGTERM/SIGINT outside a run's own handling: while ``tuneforge train`` starts (imports, Hydra composing,
validating) and after its run ended.

A run handles these signals itself from when it takes its run directory's lock (a checkpoint, the resume
command, ``status.json``: :mod:`tuneforge.training.run_stop`).  Before that, the default action would end the
process silently (exit 143, no message, an empty run directory with Hydra's ``train.log``); here the
signal ends the command with one line instead, and the run directory Hydra made for it is removed.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Optional


class RunsBegun(list):
    """The run directories whose run this command began, in order (the last one is named when a signal ends
    the command), and ``resume_sweep``: the command that resumes the ``-m`` sweep this command runs, set when
    a job of it starts (None: no sweep), printed when a signal ends the command between two of its runs."""

    resume_sweep: Optional[str] = None


@contextlib.contextmanager
def one_line_on_stop_signals(runs_begun: RunsBegun):
    """SIGTERM/SIGINT raise :class:`~tuneforge.training.run_stop.StopSignal` for the ``with`` block (a run
    installs its own handlers inside it and gives these back after); one that reaches this block ends the
    command with one line and exit status 143 (SIGTERM) or 130 (SIGINT).  ``runs_begun``: the run
    directories whose run this command began, the last one named in the message."""
    from tuneforge.training.run_stop import StopSignal, raise_dropped_stop, signals_stop_the_run

    try:
        with signals_stop_the_run():
            yield
            raise_dropped_stop()  # one whose exception Python dropped after the last phase that checks
    except StopSignal as stop:
        import logging

        # torch's exit hooks log at INFO (FakeTensor cache stats) to the run's handlers: the one line stays one
        logging.getLogger("torch").setLevel(logging.WARNING)
        print(f"tuneforge: train {_where(stop.signal_name, runs_begun)}", file=sys.stderr)
        raise SystemExit(130 if stop.signal_name == "SIGINT" else 143) from None


def _where(signal_name: str, runs_begun: RunsBegun) -> str:
    """What the signal interrupted: the start of the command (nothing trained; the new run directory
    removed), what follows a run that ended, or a ``-m`` sweep between two of its runs (how to resume it)."""
    from tuneforge.training.run_dir import read_status

    run_dir = runs_begun[-1] if runs_begun else None
    status = read_status(Path(run_dir)).get("status") if run_dir is not None else None
    resume_sweep = runs_begun.resume_sweep
    if resume_sweep is not None:
        last = f" (the last run began: {run_dir}, {status or 'not started'})" if run_dir is not None else ""
        return (f"interrupted by {signal_name} while its -m sweep was between runs{last}; the runs that completed are "
                f"kept and are skipped when the sweep resumes.\nResume with: {resume_sweep}")
    if status is not None:
        return f"interrupted by {signal_name} after its run ended ({run_dir}: {status})"
    from tuneforge.host.hydra_dirs import discard_new_run_dir

    discard_new_run_dir()
    return (f"interrupted by {signal_name} while starting, before its run began: nothing was trained or "
            "written; run the same command again")
