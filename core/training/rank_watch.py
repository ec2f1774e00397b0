"""Which rank is gone: every rank shows a sign of life through the job's store while the run goes on.

When a rank dies in the middle of a run (SIGKILL, the out-of-memory killer, a lost node), the other
ranks learn it from a broken collective, whose error names only a network address
("Connection closed by peer [10.0.0.7]:40123").  So that their one line can name the rank, each rank
of a multi-process run starts a :class:`RankWatch` once the process group exists: a daemon thread
that adds 1 to its own counter in the job's key-value store (the ``TCPStore`` that rank 0 hosts and
the process group was built on) every :data:`BEAT_S` seconds.  A rank that stops with its own
one-line error also posts that line (:meth:`RankWatch.post_stopped`).

After a collective breaks, :meth:`RankWatch.describe_lost` reads the counters twice, a few beats
apart: a rank whose counter did not move is gone; a rank that posted its line is named with it; a
store that no longer answers means rank 0, which hosted it, is gone.  Counters rather than clocks, so
the nodes' clocks need not agree.
"""

from __future__ import annotations

import threading
import time
from typing import Optional

#: a rank's sign-of-life counter, and the one-line error a rank posts when it stops on its own
_ALIVE = "tuneforge/alive/{rank}"
_STOPPED = "tuneforge/stopped/{rank}"
#: seconds between two signs of life
BEAT_S = 0.5
#: beats without a sign of life after which a rank counts as gone
SILENT_BEATS = 6


class RankWatch:
    """This rank's signs of life in ``store``, and the reading of the others' (see the module doc)."""

    def __init__(self, store, rank: int, world_size: int, beat_s: float = BEAT_S):
        self.store, self.rank, self.world_size, self.beat_s = store, int(rank), int(world_size), float(beat_s)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"tuneforge-rank-{rank}-alive", daemon=True)

    def start(self) -> "RankWatch":
        self.store.add(_ALIVE.format(rank=self.rank), 1)  # the first sign at once
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop showing signs of life (the run has ended on this rank)."""
        self._stop.set()

    def _beat(self) -> None:
        key = _ALIVE.format(rank=self.rank)
        while not self._stop.wait(self.beat_s):
            try:
                self.store.add(key, 1)
            except Exception:  # noqa: BLE001 - the store is gone (rank 0 ended): nothing left to tell
                return

    def post_stopped(self, line: str) -> None:
        """Tell the other ranks why this rank stops (its one-line error), where the store still answers."""
        try:
            self.store.set(_STOPPED.format(rank=self.rank), line)
        except Exception:  # noqa: BLE001 - best effort: this rank is failing already
            pass

    def describe_lost(self) -> Optional[str]:
        """Which other ranks are gone, in words ("rank 1 is gone (...)"; "rank 2 stopped: <its line>"),
        or None when every other rank still shows signs of life.  Takes ``SILENT_BEATS`` beats."""
        others = [rank for rank in range(self.world_size) if rank != self.rank]
        try:
            before = self._counts(others)
            silent_s, signal_name = self._wait(self.beat_s * SILENT_BEATS)
            after = self._counts(others)
            stopped = {rank: self.store.get(_STOPPED.format(rank=rank)).decode(errors="replace")
                       for rank in others if self.store.check([_STOPPED.format(rank=rank)])}
        except Exception:  # noqa: BLE001 - the store no longer answers
            if self.rank == 0:
                return None
            return "rank 0 is gone (the job's store it hosted no longer answers)"
        parts = [f"rank {rank} stopped: {line}" for rank, line in stopped.items()]
        if signal_name is not None and silent_s < 2 * self.beat_s:  # too soon to tell a silent rank
            return "; ".join([*parts, (f"{signal_name} came while this rank looked for the rank that is gone (a "
                                       "launcher such as torchrun stops the other processes when one of them dies)")])
        why = (f"{signal_name} came meanwhile: a launcher stops the other processes when one of them dies" if
               signal_name else "killed, out of memory, or its node was lost")
        parts += [f"rank {rank} is gone (no sign of life for {silent_s:.2g} s: {why})"
                  for rank in others if after[rank] == before[rank] and rank not in stopped]
        return "; ".join(parts) or None

    @staticmethod
    def _wait(seconds: float) -> tuple:
        """Sleep ``seconds``: ``(seconds, None)``; or ``(seconds slept, "SIGTERM")`` when a stop signal ends the
        sleep.  A launcher that saw a process die (torchrun) sends SIGTERM to the others at once: their run is
        failing already, and ends with the line that names the lost rank (not 'interrupted', no error)."""
        started = time.monotonic()
        try:
            time.sleep(seconds)
        except KeyboardInterrupt:
            return time.monotonic() - started, "SIGINT"
        except BaseException as exc:  # the run's StopSignal (tuneforge.training.run_stop)
            if not getattr(exc, "signal_name", None):
                raise
            return time.monotonic() - started, exc.signal_name
        return seconds, None

    def _counts(self, ranks: list) -> dict:
        return {rank: int(self.store.add(_ALIVE.format(rank=rank), 0)) for rank in ranks}


def watch_ranks(context) -> Optional[RankWatch]:
    """A started :class:`RankWatch` on the job's store for a multi-process run whose process group exists
    (None otherwise: one process, no group yet, or a store this torch does not expose)."""
    import torch.distributed as dist

    if context.world_size <= 1 or not (dist.is_available() and dist.is_initialized()):
        return None
    try:
        store = dist.distributed_c10d._get_default_store()
        return RankWatch(store, context.global_rank, context.world_size).start()
    except Exception:  # noqa: BLE001 - no store to watch through: the lost-rank line names no rank
        return None
