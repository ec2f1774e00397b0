"""The bounded request queue and the one worker thread that owns the model.

Requests (:class:`~tuneforge.serving.decoding.Job`) wait in a queue of at most ``max_queue``
jobs; a request that finds it full is refused at once (:class:`QueueFull`, answered 429).  The
worker takes the oldest job, waits up to ``batch_wait_s`` for more to arrive, and generates the
oldest jobs that can share its batch (same adapter and sampling settings,
:attr:`~tuneforge.serving.decoding.Job.batch_key`) together, up to ``max_batch_size``
sequences.  Jobs whose client went away while they waited are dropped unstarted; one whose client
goes away while it generates ends at the next step.  Only this thread calls the model, so
requests never race on the active adapter.
"""

from __future__ import annotations

import collections
import itertools
import logging
import threading
import time

from tuneforge.serving.decoding import Event, Job, generate_batch

log = logging.getLogger("tuneforge.serve")


class QueueFull(Exception):
    """The queue holds ``max_queue`` jobs already."""


class ShuttingDown(Exception):
    """The worker stops and takes no more jobs."""


class BatchingWorker:
    """See the module docstring.  ``start()`` starts the thread; ``stop()`` lets it finish the jobs
    already queued and waits for it."""

    def __init__(self, registry, *, max_batch_size: int = 8, max_queue: int = 64, batch_wait_s: float = 0.01):
        self.registry = registry
        self.max_batch_size, self.max_queue, self.batch_wait_s = max_batch_size, max_queue, batch_wait_s
        self._pending: collections.deque = collections.deque()
        self._ready = threading.Condition()
        self._stopping = False
        self._ids = itertools.count(1)
        self._thread = threading.Thread(target=self._run, name="tuneforge-serve-worker", daemon=True)
        #: ``batches``: generate calls so far; ``largest_batch``: the most sequences one of them held;
        #: ``abandoned``: sequences ended (or dropped unstarted) because their client went away
        self.stats = {"batches": 0, "largest_batch": 0, "abandoned": 0}

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 60.0) -> None:
        with self._ready:
            self._stopping = True
            self._ready.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def submit(self, job: Job) -> Job:
        """Queue ``job``; raises :class:`QueueFull` or :class:`ShuttingDown` instead of waiting."""
        with self._ready:
            if self._stopping:
                raise ShuttingDown()
            if len(self._pending) >= self.max_queue:
                raise QueueFull()
            job.id = next(self._ids)
            self._pending.append(job)
            self._ready.notify_all()
        return job

    def queued(self) -> int:
        with self._ready:
            return len(self._pending)

    # ------------------------------------------------------------------ worker thread

    def _take_batch(self):
        """The next batch of jobs (oldest first), or None once stopping with nothing left."""
        with self._ready:
            while not self._pending:
                if self._stopping:
                    return None
                self._ready.wait()
            deadline = time.monotonic() + self.batch_wait_s
            while (sum(j.n for j in self._pending) < self.max_batch_size and not self._stopping
                   and (left := deadline - time.monotonic()) > 0):
                self._ready.wait(left)
            live = [job for job in self._pending if not job.cancelled]
            key, batch, size = live[0].batch_key if live else None, [], 0
            for job in live:
                if job.batch_key == key and (not batch or size + job.n <= self.max_batch_size):
                    batch.append(job)
                    size += job.n
            taken = {id(job) for job in batch}
            self.stats["abandoned"] += sum(j.n for j in self._pending if j.cancelled)
            self._pending = collections.deque(j for j in self._pending if id(j) not in taken and not j.cancelled)
            return batch

    def _run(self) -> None:
        while (batch := self._take_batch()) is not None:
            if not batch:
                continue
            self.stats["batches"] += 1
            self.stats["largest_batch"] = max(self.stats["largest_batch"], sum(j.n for j in batch))
            try:
                self.stats["abandoned"] += generate_batch(self.registry, batch)
            except Exception as exc:  # a failed generation fails its requests, not the server
                log.exception("generation failed")
                message = f"generation failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                for job in batch:
                    job.emit(Event(0, error=message))
