"""Every rank stops when one rank cannot go on.

When a cluster launcher (``srun``, ``torchrun``, ``jsrun``, ``mpirun``) starts the processes of a
``ddp``/``fsdp`` run, they start together and independently.  Some decisions are taken by rank 0
alone: the run directory is writable, its lock (a second job on the same directory), the resume
decision, ``config.yaml`` and ``status.json``.  If rank 0 stopped there while the other ranks went
on into ``init_process_group``, they would wait for a rank 0 that is gone (torch's default: 30
minutes, holding the allocation).

So before any collective the ranks *meet* (:func:`meet_ranks`) at the job's key-value store -- the
``TCPStore`` at ``MASTER_ADDR:MASTER_PORT`` that the process group is then built on -- and each rank
posts the outcome of its start (:meth:`RankMeeting.agree`): ``ok``, or its one-line error.  Every
rank reads all outcomes; a failure on any rank stops every rank at once, each with one line (the
failing rank with its own error, the others naming that rank and its error).

Every wait is bounded by ``trainer.collective_timeout_s``: a rank that never arrives (killed,
stuck, started on the wrong port) is named in one line by the ranks that did, instead of a hang.

A process meets once per run: the runs of ``evidence.seeds=N`` and the jobs of a ``-m`` sweep meet again,
at the same store (rank 0 keeps hosting it: a second store on its port would stand beside the first, and
the other ranks would find the old one), each run under keys of its own (the outcomes, and the process
group that is built on the run's store), so that no run reads an earlier run's outcomes.  A rank that
stops before it met the others (its run directory cannot be made, its config is refused on that node
alone) still posts its line there (:func:`tell_the_other_ranks`), so that the others stop at once too.
"""

from __future__ import annotations

import logging
import time
from datetime import timedelta
from typing import Optional

from tuneforge.errors import TuneforgeError

log = logging.getLogger("tuneforge")

#: the key a rank posts its start outcome under (the process group's own keys are prefixed elsewhere)
_OUTCOME = "tuneforge/start/{rank}"
#: counts the ranks that have read every outcome (rank 0 hosts the store and waits for them before leaving)
_READ = "tuneforge/start/read"
OK = "ok"

#: the job's store of each launch this process met at (address, rank, world size), kept for its later runs
_STORES: dict = {}
#: the meetings this process held; the n-th run meets under the keys ``tuneforge/run-<n>/``
_MEETINGS = [0]


class RanksDisagree(TuneforgeError):
    """Another rank of the run stopped it, or did not arrive within ``trainer.collective_timeout_s``."""


def meets_before_collectives(strategy, context) -> bool:
    """True for a multi-process ``ddp``/``fsdp`` run (``strategy``: its strategy settings) whose
    processes a cluster launcher started: the run whose process group is formed before training
    (:func:`tuneforge.evaluation.sharding.init_process_group`) by processes that start independently.  (Processes that tuneforge starts itself are started by rank 0
    after its decisions; Lightning's own launcher starts them inside ``fit``.)"""
    from tuneforge.context import CLUSTER_ENVIRONMENTS

    return (context.world_size > 1 and context.cluster_environment in CLUSTER_ENVIRONMENTS
            and str(strategy.name) in ("ddp", "fsdp"))


def meet_ranks(context, timeout_s: float) -> "RankMeeting":
    """Connect this process to the job's store (rank 0 hosts it), waiting at most ``timeout_s``."""
    import torch.distributed as dist

    address = context.set_main_address()
    _MEETINGS[0] += 1
    launch = (address, context.global_rank, context.world_size)
    store = _STORES.get(launch)
    if store is None:
        try:
            store, _, _ = next(dist.rendezvous(f"env://?rank={context.global_rank}&world_size={context.world_size}",
                                               timeout=timedelta(seconds=timeout_s)))
        except Exception as exc:  # DistStoreError / TimeoutError / RuntimeError, by torch version
            raise RanksDisagree(_not_met(context, address, timeout_s, exc)) from None
        _STORES[launch] = store
    store.set_timeout(timedelta(seconds=timeout_s))
    # this run's keys (its outcomes, and the process group built on this store) apart from earlier runs'
    return RankMeeting(dist.PrefixStore(f"tuneforge/run-{_MEETINGS[0]}", store), context.global_rank,
                       context.world_size, timeout_s)


def tell_the_other_ranks(line: str, strategy, timeout_s: float) -> None:
    """A rank that stops on ``line`` before it met the other ranks of its cluster launch posts the line at
    the meeting, so that they stop at once (naming this rank and its line) instead of waiting for it until
    ``timeout_s`` (``trainer.collective_timeout_s``).  ``strategy``: the run's strategy name, where known.

    Nothing for a single process, for processes that tuneforge or Lightning started (they do not meet),
    under another strategy than ``ddp``/``fsdp`` or an unknown one (the others would not come), and once
    this process met the others: a later failure reaches them through that meeting or the process group.
    Rank 0 hosts the store: it waits (at most ``timeout_s``) until every rank has read the outcomes.
    Best effort: it never raises; this rank's own error is the one to report."""
    if _MEETINGS[0] or str(strategy) not in ("ddp", "fsdp"):
        return
    import contextlib
    from types import SimpleNamespace

    from tuneforge.context import RunContext
    from tuneforge.training.run_stop import signals_end_the_process

    with contextlib.suppress(Exception):
        context = RunContext.detect(".", None, accelerator="cpu", devices=1)
        if not meets_before_collectives(SimpleNamespace(name=str(strategy)), context):
            return
        with signals_end_the_process():  # the rendezvous blocks in C code
            meeting = meet_ranks(context, float(timeout_s))
        meeting.agree(failure=line)


def _not_met(context, address: str, timeout_s: float, exc: BaseException) -> str:
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    me = f"rank {context.global_rank} of {context.world_size}"
    if context.global_rank == 0:
        if "address already in use" in first.lower() or "EADDRINUSE" in first:
            return (f"{me}: the job's store address {address} is already in use (another job on this node?); "
                    "give this launch its own MASTER_PORT")
        return (f"{me}: the other rank(s) did not arrive at {address} within {timeout_s:g} s "
                f"(trainer.collective_timeout_s): {first}; check that all tasks started (and see their output)")
    return (f"{me}: rank 0 did not arrive at {address} within {timeout_s:g} s (trainer.collective_timeout_s); "
            "see rank 0's output (it may have stopped, or not started)")


class RankMeeting:
    """The ranks of one launch, connected to its store; :meth:`agree` once, then :attr:`store` is the
    one the process group is built on."""

    def __init__(self, store, rank: int, world_size: int, timeout_s: float):
        self.store, self.rank, self.world_size, self.timeout_s = store, rank, world_size, float(timeout_s)

    def agree(self, failure: Optional[str] = None) -> None:
        """Post this rank's outcome (None: it can go on; else its one-line error) and read everyone's.

        Returns when every rank can go on.  Raises :class:`RanksDisagree` (one line) when another
        rank failed or a rank did not post within the timeout.  A rank that failed itself
        (``failure`` given) returns after telling the others, and its caller raises its own error.
        """
        self.store.set(_OUTCOME.format(rank=self.rank), OK if failure is None else f"failed: {failure}")
        keys = [_OUTCOME.format(rank=rank) for rank in range(self.world_size)]
        if not self._wait_for(keys):  # a rank that never posted
            missing = [rank for rank, key in enumerate(keys) if not self._has(key)]
            raise RanksDisagree(f"rank {self.rank} of {self.world_size}: rank(s) {_listed(missing)} did not arrive "
                                f"within {self.timeout_s:g} s (trainer.collective_timeout_s); see their output"
                                ) from None
        outcomes = {rank: self.store.get(key).decode() for rank, key in enumerate(keys)}
        self.store.add(_READ, 1)
        if self.rank == 0:
            self._wait_until_all_have_read()
        if failure is not None:
            return
        failed = {rank: text.split(": ", 1)[1] for rank, text in outcomes.items() if text != OK}
        if failed:
            rank, error = next(iter(failed.items()))
            others = f" (and rank(s) {_listed(list(failed)[1:])})" if len(failed) > 1 else ""
            raise RanksDisagree(f"rank {self.rank} of {self.world_size} stops: rank {rank}{others} could not start "
                                f"the run: {error}")

    def _wait_for(self, keys: list) -> bool:
        """Wait until every key is set, at most ``timeout_s``; False when one is still missing then.  Polls
        the store (a non-blocking ``check`` every 50 ms) rather than one blocking ``wait``, so that a
        SIGTERM/SIGINT handler runs at once instead of when the wait returns (a timed-out ``wait`` would
        also leave the store's connection unusable)."""
        deadline = time.monotonic() + self.timeout_s
        while not self.store.check(keys):
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)
        return True

    def _has(self, key: str) -> bool:
        try:
            return bool(self.store.check([key]))
        except Exception:
            return False

    def _wait_until_all_have_read(self) -> None:
        """Rank 0 hosts the store: it stays until every rank has read the outcomes (bounded), so a rank 0
        that stops right after does not take them away unread."""
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            if int(self.store.add(_READ, 0)) >= self.world_size:
                return
            time.sleep(0.05)
        log.warning("not every rank read the start outcome within %g s", self.timeout_s)


def _listed(ranks: list) -> str:
    return ", ".join(str(rank) for rank in ranks)
