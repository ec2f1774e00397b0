"""The checkpoint-and-signal callback: :class:`CheckpointAndInterrupt`.

It saves a checkpoint every N optimizer steps and at the end, keeps the last K,
and turns SIGTERM/SIGINT (and, for a SLURM task, the requeue signal SIGUSR1)
into "finish this step, checkpoint, stop".  Under DDP the processes agree, at
every optimizer step, on whether any of them received a signal, so all of them
checkpoint the same step; before anything is restored they check that they
resume the same checkpoint (:func:`check_resume_agreement`).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
from pathlib import Path
from typing import Optional

import lightning.pytorch as pl
import torch

from tuneforge.training.checkpoint import CHECKPOINT_DIR, CheckpointError, checkpoint_name, prune_checkpoints
from tuneforge.training.run_stop import take_dropped_stop

log = logging.getLogger("tuneforge")


class CheckpointAndInterrupt(pl.Callback):
    """Checkpoint every ``every_n_steps`` optimizer steps (0: only at the end) into
    ``<run_dir>/checkpoints/step-N``, keep the newest ``keep_last``, and stop
    gracefully on SIGTERM/SIGINT after saving one.

    ``identity`` (the run's model/adapter/data config), ``data_files`` (the
    content hashes of its data files) and the number of processes are stored in
    each checkpoint so a resume with another config, other data or another
    world size is refused.  ``resume_from`` is the checkpoint this
    process resumes (None: a fresh start); under DDP all processes must
    resume the same one, which :meth:`setup` checks before anything is
    restored.  ``requeue_job_id`` (a SLURM task's job id) makes SIGUSR1,
    SLURM's requeue signal (``#SBATCH --signal=SIGUSR1@90``), checkpoint,
    ``scontrol requeue`` the job from the main process, and stop.

    Signals are only noted in the handler; at the end of every optimizer step
    the ranks sum their "signal received" flags (one all-reduce), so all of
    them checkpoint and stop at the same step whichever rank got the signal.
    ``save_checkpoints=False`` (DeepSpeed, whose checkpoints bypass the
    pickle-free CheckpointIO) saves nothing; signals still stop the run.
    """

    def __init__(self, run_dir: Path, every_n_steps: int, keep_last: int, identity: dict,
                 resume_from: Optional[Path] = None, requeue_job_id: Optional[str] = None,
                 save_checkpoints: bool = True, data_files: Optional[dict] = None):
        self.save_checkpoints = save_checkpoints
        self.data_files = dict(data_files or {})
        self.run_dir = Path(run_dir)
        self.every_n_steps = every_n_steps
        self.keep_last = keep_last
        self.identity = identity
        self.resume_from = None if resume_from is None else Path(resume_from)
        self.requeue_job_id = requeue_job_id
        self.interrupted_by: Optional[str] = None
        self.last_saved: Optional[Path] = None
        self._last_step: Optional[int] = None
        self._saved_step: Optional[int] = None
        self._signal_name: Optional[str] = None
        self._requeue_signal: Optional[str] = None
        self._previous_handlers: dict = {}
        self._flush_pending = False

    # -- all ranks resume the same checkpoint ---------------------------------
    def setup(self, trainer, pl_module, stage) -> None:
        """Refuse (one line, on every rank) when the ranks would resume different checkpoints."""
        import torch.distributed as dist

        if trainer.world_size < 2 or not (dist.is_available() and dist.is_initialized()):
            return
        mine = (os.path.abspath(self.run_dir), None if self.resume_from is None else self.resume_from.name)
        views: list = [None] * dist.get_world_size()
        dist.all_gather_object(views, mine)
        warning = check_resume_agreement(views)
        if warning and trainer.is_global_zero:
            log.warning(warning)

    # -- signals ---------------------------------------------------------
    def _handle(self, signum, frame) -> None:
        self._signal_name = signal.Signals(signum).name
        log.warning("received %s: finishing this step, then saving a checkpoint", self._signal_name)

    def _handle_requeue(self, signum, frame) -> None:
        self._requeue_signal = signal.Signals(signum).name
        log.warning("received %s (SLURM requeue): finishing this step, then saving a checkpoint and requeueing "
                    "job %s", self._requeue_signal, self.requeue_job_id)

    def on_train_start(self, trainer, pl_module) -> None:
        self._last_step = trainer.global_step
        self._saved_step = None
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                self._previous_handlers[signum] = signal.signal(signum, self._handle)
            if self.requeue_job_id:  # replaces Lightning's handler, which saves at whatever point each rank is
                self._previous_handlers[signal.SIGUSR1] = signal.signal(signal.SIGUSR1, self._handle_requeue)
            dropped = take_dropped_stop()  # one that came before these handlers, its exception dropped by Python
            if dropped is not None:
                self._signal_name = dropped
                log.warning("received %s: finishing this step, then saving a checkpoint", dropped)

    def teardown(self, trainer, pl_module, stage) -> None:
        for signum, handler in self._previous_handlers.items():
            signal.signal(signum, handler)
        self._previous_handlers.clear()

    # -- saving ----------------------------------------------------------
    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        checkpoint["tuneforge"] = {"identity": self.identity, "global_step": trainer.global_step,
                                   "world_size": trainer.world_size, "data_files": self.data_files,
                                   "step_row": pending_step_row(trainer)}

    def save(self, trainer) -> Optional[Path]:
        if not self.save_checkpoints:
            self._saved_step = trainer.global_step
            return None
        path = self.run_dir / CHECKPOINT_DIR / checkpoint_name(trainer.global_step)
        # the metric rows logged so far go to disk before the checkpoint that a resume starts after; the
        # row of this very step is logged after this hook, and flushed at the next batch's start
        flush_loggers(trainer)
        self._flush_pending = True
        # the whole training state (optimizer, loops, RNG): said explicitly, or Lightning logs its default
        trainer.save_checkpoint(str(path), weights_only=False)
        self._saved_step = trainer.global_step
        self.last_saved = path
        if trainer.is_global_zero:
            prune_checkpoints(self.run_dir, self.keep_last)
        return path

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self._flush_pending:
            flush_loggers(trainer)
            self._flush_pending = False

    def on_validation_start(self, trainer, pl_module) -> None:
        if self._flush_pending:  # validation may take long: the step's row goes to disk first
            flush_loggers(trainer)
            self._flush_pending = False

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self._last_step:
            return  # inside a gradient-accumulation window: no consistent state to save
        self._last_step = trainer.global_step
        # one all-reduce per optimizer step: did any rank get a stop / a requeue signal?
        flags = torch.tensor([float(self._signal_name is not None), float(self._requeue_signal is not None)],
                             device=trainer.strategy.root_device)
        flags = trainer.strategy.reduce(flags, reduce_op="sum")
        stop, requeue = bool(flags[0].item() > 0), bool(flags[1].item() > 0)
        if stop or requeue or (self.every_n_steps and trainer.global_step % self.every_n_steps == 0):
            self.save(trainer)
        if requeue and trainer.is_global_zero:
            requeue_slurm_job(self.requeue_job_id)
        if stop or requeue:
            self.interrupted_by = (self._signal_name or self._requeue_signal
                                   or ("SIGUSR1" if requeue else "signal on another rank"))
            trainer.should_stop = True

    def on_train_end(self, trainer, pl_module) -> None:
        if self._saved_step != trainer.global_step:
            self.save(trainer)


def pending_step_row(trainer) -> Optional[dict]:
    """The metrics row Lightning will log for this optimizer step, or None.

    Lightning logs a step's row right after ``on_train_batch_end``, so after the
    checkpoint this callback writes in that hook.  The row is kept in the
    checkpoint: a process killed between the two loses no row, because the resume
    puts it back (:func:`tuneforge.training.run_dir.save_metric_history`).  The
    same values as Lightning's own logging (its logger connector), read the same way.
    """
    try:
        from lightning.fabric.utilities.apply_func import convert_tensors_to_scalars

        connector = trainer._logger_connector
        if not connector.should_update_logs:  # (log_every_n_steps: Lightning logs no row this step)
            return None
        metrics = convert_tensors_to_scalars(dict(connector.metrics["log"]))
        step = int(metrics.pop("step")) if "step" in metrics else int(trainer.fit_loop.epoch_loop._batches_that_stepped)
    except Exception:  # noqa: BLE001 - another Lightning version: no row kept, as before
        return None
    if not metrics:
        return None
    metrics.setdefault("epoch", trainer.current_epoch)
    return {**{key: float(value) for key, value in metrics.items()}, "step": step}


def flush_loggers(trainer) -> None:
    """Write every logger's buffered rows to disk (``Logger.save``; Lightning's loggers do it on rank 0)."""
    for logger in trainer.loggers:
        try:
            logger.save()
        except Exception as exc:  # noqa: BLE001 - a tracker's flush must not stop training
            log.warning("could not flush logger %s: %s", type(logger).__name__, str(exc).splitlines()[:1])


def check_resume_agreement(views: list) -> Optional[str]:
    """``views[rank] = (run directory, name of the checkpoint it resumes or None)``.

    Raises a one-line :class:`~tuneforge.training.checkpoint.CheckpointError`
    when the ranks would not resume one and the same checkpoint (different
    checkpoints, the same name in different directories, or some resume and
    others start over): that would train diverging copies and then hang.
    Returns a warning when all start fresh but were given different run
    directories (only rank 0's is written), else None.
    """
    def describe(view) -> str:
        directory, checkpoint = view
        return f"{checkpoint} in {directory}" if checkpoint else f"a fresh start in {directory}"

    groups: dict = {}
    for rank, view in enumerate(views):
        groups.setdefault(tuple(view), []).append(rank)
    if len(groups) > 1 and any(checkpoint for _, checkpoint in groups):
        listed = "; ".join(f"rank {_ranks(ranks)}: {describe(view)}" for view, ranks in groups.items())
        raise CheckpointError(f"the processes disagree about what to resume ({listed}): give every process the "
                              "same run_dir= on storage all of them see, or resume=never")
    if len(groups) > 1:
        return (f"the processes were given different run directories ({', '.join(sorted({d for d, _ in groups}))}); "
                f"only rank 0's, {views[0][0]}, is written")
    return None


def _ranks(ranks: list) -> str:
    return ",".join(str(r) for r in ranks) if len(ranks) < 5 else f"{ranks[0]}..{ranks[-1]} ({len(ranks)})"


def requeue_slurm_job(job_id: str) -> bool:
    """``scontrol requeue <job_id>`` (what Lightning's auto-requeue runs); False, with a warning, when
    it fails or ``scontrol`` is not installed."""
    try:
        result = subprocess.run(["scontrol", "requeue", str(job_id)], capture_output=True, text=True)
    except OSError as exc:
        log.warning("cannot requeue SLURM job %s: %s; resume by submitting the job again", job_id, exc)
        return False
    if result.returncode != 0:
        log.warning("scontrol requeue %s failed (exit %d): %s", job_id, result.returncode,
                    (result.stderr or result.stdout).strip().splitlines()[:1])
        return False
    log.warning("requeued SLURM job %s; it resumes from the checkpoint just saved", job_id)
    return True
