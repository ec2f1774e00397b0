"""What one run carries from phase to phase (:func:`tuneforge.training.run.train`)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from tuneforge import memory_marks
from tuneforge.context import RunContext
from tuneforge.evaluation.metrics_file import RunMetrics


@dataclass
class RunState:
    """The state of one run, filled in by its phases in order.

    Set before the first phase: ``run`` (the :class:`~tuneforge.host.components.RunConfig`: typed settings
    and components), ``plugins``, ``run_dir``, ``context``.

    ``prepare``: ``lock`` (main process), ``meeting`` (the ranks' agreement, a cluster launch),
    ``data_files`` (``{file: sha256}``), ``resume_from`` (the checkpoint, or None), ``resumed_step``,
    ``earlier_segments``, ``wrote_running`` (this start's ``status.json`` says running).
    ``start``: ``local_processes``, ``group_started``, ``rank_watch`` (this rank's signs of life, a
    multi-process run), ``loggers``.
    ``build``: ``model``, ``tokenizer``, ``compile`` (what ``trainer.compile`` became, decided as soon as the
    model is loaded), ``splits``, ``rewards`` (the built rewards, or None), ``loss_fn``, ``callbacks``.
    ``evaluate_base``: ``base`` (the saved base evaluation: ``metrics``, ``predictions``, ``scores``,
    ``timings``, ``baselines``), ``base_rows``, ``baselines``.  ``fit``: ``trainer``, ``module``,
    ``segment``.  ``evaluate_tuned``: ``tuned_pass``, ``train_rows``.

    Throughout: ``phase`` (what the run is doing, in words: named by a one-line error or an interrupt),
    ``status`` (``failed`` until the run completes or is interrupted), ``error`` and ``metrics`` (what
    ``metrics.json`` will hold); ``memory``, the run's :class:`~tuneforge.memory_marks.MemoryMarks`: setting
    ``phase`` marks the memory at the end of the phase before.
    """

    run: Any
    plugins: Any
    run_dir: Path
    context: RunContext
    phase: str = "preparing the run"
    status: str = "failed"
    error: Optional[str] = None
    started: float = field(default_factory=time.time)
    metrics: RunMetrics = field(default_factory=dict)
    lock: Any = None
    meeting: Any = None
    data_files: dict = field(default_factory=dict)
    resume_from: Optional[Path] = None
    resumed_step: int = 0
    earlier_segments: list = field(default_factory=list)
    wrote_running: bool = False
    local_processes: Any = None
    group_started: bool = False
    rank_watch: Any = None
    loggers: Any = None
    model: Any = None
    tokenizer: Any = None
    compile: Any = None
    splits: Any = None
    loss_fn: Any = None
    rewards: Any = None
    callbacks: list = field(default_factory=list)
    base: dict = field(default_factory=dict)
    base_rows: list = field(default_factory=list)
    baselines: dict = field(default_factory=dict)
    trainer: Any = None
    module: Any = None
    segment: dict = field(default_factory=dict)
    tuned_pass: Any = None
    train_rows: list = field(default_factory=list)
    memory: Any = None

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "phase" and value != self.__dict__.get("phase"):
            memory_marks.enter_phase(value)
        super().__setattr__(name, value)

    @property
    def settings(self):
        """The run's typed settings (:class:`~tuneforge.host.components.RunSettings`)."""
        return self.run.settings

    @property
    def timeout_s(self) -> float:
        """``trainer.collective_timeout_s``: how long a rank waits for the others."""
        return float(self.run.settings.trainer.collective_timeout_s)
