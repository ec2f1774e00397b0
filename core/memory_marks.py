"""Where a run's memory peaks: the process's resident memory after each step of the run.

A training run (:func:`tuneforge.training.run.train`) records a *mark* after every phase and after every
evaluator's pass (base, each baseline, tuned, the memorisation sample): the resident memory at that
moment and the peak so far.  ``metrics.json`` gets them as its ``memory`` section, with the step during
which the final peak was reached: the first mark whose peak-so-far is within :data:`COUNTER_SLACK_BYTES`
of it (the kernel's counts lag by a few pages).

The peak is the kernel's high-water mark of resident memory: ``VmHWM`` in ``/proc/self/status`` on
Linux, ``ru_maxrss`` elsewhere (no current figure there).  It is read, never reset: resetting it
(``/proc/self/clear_refs``) would also lower what ``/usr/bin/time -v`` or a parent's ``wait4`` reports.
On a GPU the marks also hold torch's allocated and peak-allocated bytes on the current device, read only
when torch has already initialised CUDA.

The high-water mark is the process's: when runs follow one another in one process
(``evidence.seeds``, a Hydra ``-m`` sweep), a later run whose own peak stays below an earlier one's
cannot tell its own peak, and says so (:data:`EARLIER_RUN`).

Marks are recorded by the run that :func:`recording` is active for; :func:`mark` outside one does
nothing, so evaluation code calls it unconditionally.  Resident memory is the process's, so one run at a
time per process is all there is to record.
"""

from __future__ import annotations

import contextlib
import re
import sys
import time
from typing import Iterator, Optional

__all__ = ["MemoryMarks", "mark", "read_resident", "recording"]

_STATUS_FIELD = re.compile(r"^(VmRSS|VmHWM):\s+(\d+)\s+kB", re.MULTILINE)
_active: Optional["MemoryMarks"] = None
#: how far a reading may lag: the kernel syncs each thread's resident-page count every 64 page faults, so
#: the first mark within this of the peak is where it was reached
COUNTER_SLACK_BYTES = 4 * 2 ** 20
#: ``peak_reached`` when the process's peak was set before this run started
EARLIER_RUN = ("before this run started (this run stayed below the process's earlier peak: an earlier run in "
               "the same process, e.g. evidence.seeds or a -m sweep)")


def read_resident() -> tuple:
    """``(resident bytes now, peak resident bytes so far, source)``; either figure is None where the system
    does not tell (``source`` names where they came from)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            fields = dict(_STATUS_FIELD.findall(status.read()))
        if "VmHWM" in fields:
            return (int(fields["VmRSS"]) * 1024 if "VmRSS" in fields else None, int(fields["VmHWM"]) * 1024,
                    "VmRSS/VmHWM (/proc/self/status)")
    except OSError:
        pass
    try:
        import resource
    except ImportError:  # Windows
        return None, None, "unavailable"
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return None, peak if sys.platform == "darwin" else peak * 1024, "ru_maxrss (getrusage)"


def _gpu_bytes() -> dict:
    """Torch's allocated and peak-allocated bytes on the current CUDA device, when CUDA is in use."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return {}
    return {"gpu_allocated_bytes": int(torch.cuda.memory_allocated()),
            "gpu_peak_bytes": int(torch.cuda.max_memory_allocated())}


class MemoryMarks:
    """The marks of one run: :meth:`mark` after each step, :meth:`record` for ``metrics.json``."""

    def __init__(self) -> None:
        self.started = time.time()
        self.phase = "starting"
        self.marks: list = []
        _, self.peak_before, self.source = read_resident()

    def mark(self, step: str) -> None:
        """Record the memory now, after ``step`` (within the current :attr:`phase`)."""
        resident, peak, self.source = read_resident()
        earlier = self.marks[-1]["peak_rss_bytes"] if self.marks else None
        if peak is not None and earlier is not None:  # the kernel syncs its per-thread counters lazily:
            peak = max(peak, earlier)                 # a reading may dip by a few pages; a peak only rises
        self.marks.append({"phase": self.phase, "after": step, "time_s": round(time.time() - self.started, 3),
                           "rss_bytes": resident, "peak_rss_bytes": peak, **_gpu_bytes()})

    def record(self) -> dict:
        """The ``memory`` section: the peak, the phase and step during which it was reached, every mark."""
        out: dict = {"source": self.source, "marks": list(self.marks)}
        if self.peak_before is not None:
            out["peak_before_run_bytes"] = self.peak_before
        for key, where in (("peak_rss_bytes", "peak_reached"), ("gpu_peak_bytes", "gpu_peak_reached")):
            peaks = [m.get(key) for m in self.marks if m.get(key) is not None]
            if not peaks:
                continue
            out[key] = max(peaks)
            first = next(m for m in self.marks if (m.get(key) or 0) >= out[key] - COUNTER_SLACK_BYTES)
            out[where] = f"{first['phase']}: {first['after']}"
        if self.peak_before is not None and out.get("peak_rss_bytes", 0) <= self.peak_before + COUNTER_SLACK_BYTES:
            # a high-water mark is the process's: an earlier run in it (evidence.seeds, a -m sweep) set it
            out["peak_reached"] = EARLIER_RUN
        return out


@contextlib.contextmanager
def recording() -> Iterator[MemoryMarks]:
    """Make a new :class:`MemoryMarks` the active one (what :func:`mark` records into) for the block."""
    global _active
    earlier, _active = _active, MemoryMarks()
    try:
        yield _active
    finally:
        _active = earlier


def mark(step: str) -> None:
    """Record a mark in the active run's :class:`MemoryMarks`; nothing outside a run."""
    if _active is not None:
        _active.mark(step)


def enter_phase(phase: str) -> None:
    """Name the phase the next marks belong to, marking the end of the one before."""
    if _active is not None:
        if _active.marks or _active.phase != "starting":
            _active.mark(f"end of {_active.phase}")
        _active.phase = phase
