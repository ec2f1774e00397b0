"""How a run stops other than by completing: SIGTERM/SIGINT in any phase, a full disk, a lost rank,
and the ``status.json`` it leaves (:func:`tuneforge.training.run.train` uses these)."""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import sys
import threading
from pathlib import Path
from typing import Optional

from tuneforge.context import RunContext
from tuneforge.errors import TuneforgeError, is_disk_full
from tuneforge.training.run_dir import write_status

log = logging.getLogger("tuneforge")


class RunInterrupted(Exception):
    """The run stopped on SIGTERM/SIGINT: during training after saving a checkpoint, or in another
    phase (``phase``: loading the model, loading the data, the base evaluation ...), where the
    checkpoint is the last one saved (None: nothing trained yet)."""

    def __init__(self, signal_name: str, step: int, checkpoint: Optional[Path], run_dir: Path,
                 phase: Optional[str] = None):
        self.signal_name, self.step, self.checkpoint, self.run_dir = signal_name, step, checkpoint, run_dir
        self.phase = phase
        if phase is None:
            where = f"checkpoint {checkpoint}" if checkpoint else "no checkpoint (stopped before training)"
            super().__init__(f"interrupted by {signal_name} at step {step}; saved {where}")
        else:
            where = f"the last checkpoint is {checkpoint}" if checkpoint else "nothing was trained yet"
            super().__init__(f"interrupted by {signal_name} while {phase} (step {step}); {where}")


class DiskFull(TuneforgeError):
    """A write of the run failed because the disk (or the quota) is full."""


class StopSignal(BaseException):
    """Raised by the SIGTERM/SIGINT handler outside the training loop (which checkpoints first)."""

    def __init__(self, signal_name: str):
        super().__init__(signal_name)
        self.signal_name = signal_name


@contextlib.contextmanager
def _stop_signals_handled_by(handler):
    """SIGTERM and SIGINT handled by ``handler`` for the time of the ``with`` block, then the handlers
    they had before (signal handlers can only be set from the main thread: elsewhere nothing changes)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.signal(signum, handler) for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for signum, earlier in previous.items():
            signal.signal(signum, earlier)


@contextlib.contextmanager
def signals_stop_the_run():
    """SIGTERM and SIGINT stop the run in any phase: outside ``fit`` (whose checkpointing callback
    installs its own handlers for the time it trains) they raise :class:`StopSignal` at once.

    Python drops an exception raised while it runs a ``__del__``, a weak-reference or a garbage-collection
    callback ("Exception ignored in ...", through ``sys.unraisablehook``): a signal arriving then would be
    lost, and the run would train to the end.  For the time of the outermost such block, a dropped
    :class:`StopSignal` is noted instead (:class:`_DroppedStops`), and raised again on entering a nested
    block and wherever :func:`raise_dropped_stop` is called (between the run's phases; the training
    loop's checkpointing callback takes it as its own signal: :func:`take_dropped_stop`)."""
    def stop(signum, frame):
        raise StopSignal(signal.Signals(signum).name)

    with _stop_signals_handled_by(stop), _DROPPED.noting():
        raise_dropped_stop()
        yield


class _DroppedStops:
    """The stop signal whose :class:`StopSignal` Python dropped, noted by a ``sys.unraisablehook`` that is
    installed while a :func:`signals_stop_the_run` block is open, and forgotten when the outermost one
    closes (a later run in the same process starts clean)."""

    def __init__(self):
        self.signal_name: Optional[str] = None
        self._depth = 0
        self._previous_hook = None

    @contextlib.contextmanager
    def noting(self):
        if self._depth == 0:
            self._previous_hook, sys.unraisablehook = sys.unraisablehook, self._hook
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1
            if self._depth == 0:
                sys.unraisablehook, self._previous_hook = self._previous_hook, None
                self.signal_name = None

    def _hook(self, unraisable) -> None:
        if isinstance(unraisable.exc_value, StopSignal):
            self.signal_name = unraisable.exc_value.signal_name
            return
        (self._previous_hook or sys.__unraisablehook__)(unraisable)


_DROPPED = _DroppedStops()


def take_dropped_stop() -> Optional[str]:
    """The name of a stop signal whose exception Python dropped (see :func:`signals_stop_the_run`), forgetting
    it; None when there is none."""
    name, _DROPPED.signal_name = _DROPPED.signal_name, None
    return name


def raise_dropped_stop() -> None:
    """Raise, once, the :class:`StopSignal` that Python dropped (see :func:`signals_stop_the_run`), if any."""
    name = take_dropped_stop()
    if name is not None:
        raise StopSignal(name)


def signals_end_the_process():
    """SIGTERM and SIGINT with the system's default action for a while (the process ends at once): around
    a blocking wait in C code (the store rendezvous of a cluster launch), where a Python handler would
    only run when the wait returns, up to ``trainer.collective_timeout_s`` later."""
    return _stop_signals_handled_by(signal.SIG_DFL)


def one_line_disk_full(exc: BaseException, run_dir: Path) -> Optional[DiskFull]:
    """A :class:`DiskFull` for an ``OSError`` (or safetensors' error) saying no space / quota; else None."""
    if isinstance(exc, TuneforgeError) or not is_disk_full(exc):
        return None
    where = getattr(exc, "filename", None) or run_dir
    then = ("then run the same command again to resume" if last_checkpoint(run_dir) is not None else
            "then run the same command again: no checkpoint was written yet, so it starts over (this run's files "
            "are kept in previous-<n>/; checkpoint.every_n_steps=N saves progress every N steps)")
    return DiskFull(f"no space left on the device while writing {where}: free some space (or choose another "
                    f"run_dir), {then}")


def lost_ranks(exc: BaseException, context: RunContext, phase: str, timeout_s: float,
               watch=None) -> Optional[TuneforgeError]:
    """One line for a collective that failed because another rank is gone (it stopped, was killed, or did
    not arrive within ``trainer.collective_timeout_s``); None for any other error.  ``watch`` (this rank's
    :class:`~tuneforge.training.rank_watch.RankWatch`) names the rank that is gone, where it can tell."""
    if context.world_size <= 1 or isinstance(exc, TuneforgeError):
        return None
    import torch.distributed as dist

    text = str(exc)
    lost = isinstance(exc, getattr(dist, "DistError", ())) or any(
        sign in text for sign in ("Connection closed by peer", "Connection reset by peer", "Timed out waiting",
                                  "gloo/transport", "NCCL communicator was aborted", "Socket Timeout"))
    if not lost:
        return None
    from tuneforge.training.rank_agreement import RanksDisagree

    first = (text.strip().splitlines() or [type(exc).__name__])[0]
    named = watch.describe_lost() if watch is not None else None
    if named:
        return RanksDisagree(f"rank {context.global_rank} of {context.world_size} stops while {phase}: {named}; "
                             f"see its output ({first})")
    return RanksDisagree(f"rank {context.global_rank} of {context.world_size} stops while {phase}: another rank "
                         f"stopped, or did not answer within {timeout_s:g} s (trainer.collective_timeout_s); see "
                         f"the other ranks' output ({first})")


def final_status(run_dir: Path, value: dict) -> None:
    """Write the run's final ``status.json``; when even that fails (a full disk, see
    :func:`~tuneforge.training.run_dir.write_status`) say so in one log line instead of hiding the run's
    own error, and the next start reports it."""
    try:
        write_status(run_dir, value)
    except OSError as exc:
        log.error("could not write %s (%s): it still says 'running'; the next start reports this run as "
                  "interrupted", run_dir / "status.json", exc.strerror or exc)


def record_stop_while_preparing(state) -> None:
    """``status.json`` of a main process stopped by SIGTERM/SIGINT before its run started (``state``: the
    run's :class:`~tuneforge.training.run_state.RunState`, whose ``error`` holds the one line): ``interrupted``
    with the ``phase`` and the steps of the checkpoint it was to resume from (0: nothing trained, so the
    directory may be reused with other settings, :func:`~tuneforge.training.run_dir.trained_nothing`).

    Written when this start had marked the run ``running``, or when the directory holds no ``status.json``
    at all (the signal came before that, e.g. while the data files were hashed) and no other process holds
    its lock; a ``status.json`` an earlier run left is kept as it is: it still describes what the directory
    holds."""
    import time

    value = {"status": "interrupted", "error": state.error, "phase": state.phase, "steps": state.resumed_step,
             "resumed_from": None if state.resume_from is None else str(state.resume_from),
             "segments": state.earlier_segments, "wall_time_s": time.time() - state.started}
    if state.wrote_running:
        final_status(state.run_dir, value)
        return
    if not Path(state.run_dir).is_dir() or (Path(state.run_dir) / "status.json").exists():
        return
    with _holding_the_lock(state) as held:
        if held:
            final_status(state.run_dir, value)


@contextlib.contextmanager
def _holding_the_lock(state):
    """Yields True while this process holds the run directory's lock: the run's own (``state.lock``), else
    one taken now and released after (False: another process holds it, or it cannot be taken)."""
    if state.lock is not None:
        yield True
        return
    from tuneforge.training.run_lock import RunLock

    try:
        lock = RunLock(state.run_dir, "train").acquire()
    except (TuneforgeError, OSError):
        yield False
        return
    try:
        yield True
    finally:
        lock.release()


def mark_failed(run_dir: Path, error: str) -> None:
    """Turn a completed ``status.json`` into ``failed`` with ``error`` (a callback's ``on_run_end`` or a
    ``tuneforge_run_end`` hook raised after the run's outputs were written)."""
    path = run_dir / "status.json"
    try:
        status = json.loads(path.read_text())
    except (OSError, ValueError):
        status = {}
    write_status(run_dir, dict(status, status="failed", error=error))


def last_checkpoint(run_dir: Path) -> Optional[Path]:
    """The newest valid checkpoint of ``run_dir`` (None: none, or the directory cannot be read)."""
    from tuneforge.training.checkpoint import latest_valid_checkpoint

    try:
        return latest_valid_checkpoint(run_dir)
    except OSError:
        return None


def checkpoint_step_row(checkpoint: Optional[Path]) -> Optional[dict]:
    """The metrics row of a checkpoint's own step, as kept in it (None: none kept, or no checkpoint)."""
    if checkpoint is None:
        return None
    state = json.loads((checkpoint / "state.json").read_text())
    row = (state.get("tuneforge") or {}).get("step_row")
    return row if isinstance(row, dict) else None


def checkpoint_step(checkpoint: Optional[Path]) -> int:
    """The optimizer step a checkpoint was saved at (0 for None)."""
    if checkpoint is None:
        return 0
    state = json.loads((checkpoint / "state.json").read_text())
    return int(state.get("global_step", 0))
