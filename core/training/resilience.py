"""Lightning pieces that make a run survive crashes and preemption.

* :class:`ResumableSampler` / :class:`ResumableDataLoader` - a data order that
  depends only on (seed, epoch) and a loader whose position (epoch, batches
  consumed) is saved in every checkpoint, so a resumed run sees exactly the
  examples an uninterrupted run would have seen.  It shards by rank itself
  under DDP (rank and world size are given to it: the trainer's), and can group
  items of similar length into the same batches (``loader.group_by_length``);
  the items may be packed rows (``loader.packing``).
* :class:`CheckpointAndInterrupt` - saves a checkpoint every N optimizer steps
  and at the end, keeps the last K, and turns SIGTERM/SIGINT into "finish this
  step, checkpoint, stop".
"""

from __future__ import annotations

import logging
import random
import signal
import threading
from pathlib import Path
from typing import Callable, Optional, Sequence

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Sampler

from tuneforge.data.packing import length_grouped_order
from tuneforge.training.checkpoint import CHECKPOINT_DIR, CheckpointError, checkpoint_name, prune_checkpoints

log = logging.getLogger("tuneforge")


class ResumableSampler(Sampler):
    """Indices for one epoch: a permutation seeded by ``seed + epoch`` (or the identity),
    padded to a multiple of ``world_size`` and strided by ``rank``; can start mid-epoch.

    ``rank``/``world_size`` are this process's global rank and the number of
    processes (``trainer.global_rank`` / ``trainer.world_size``).

    With ``lengths`` (one per item) the epoch's order is length-grouped
    (:func:`tuneforge.data.packing.length_grouped_order` over global batches of
    ``batch_size x world_size``): each rank's k-th batch is its slice of the
    same group of similar lengths.  The order still depends only on
    (seed, epoch), so resuming skips exactly the batches already done.
    """

    def __init__(self, length: int, seed: int, shuffle: bool, batch_size: int, rank: int = 0,
                 world_size: int = 1, lengths: Optional[Sequence[int]] = None):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in a world of {world_size} process(es)")
        if lengths is not None and len(lengths) != length:
            raise ValueError(f"{len(lengths)} lengths for {length} items")
        self.length, self.seed, self.shuffle, self.batch_size = length, seed, shuffle, batch_size
        self.rank, self.world_size = rank, world_size
        self.lengths = None if lengths is None else list(lengths)
        self.epoch = 0
        self._resume: Optional[tuple[int, int]] = None  # (epoch, batches to skip)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def resume_at(self, epoch: int, batches_done: int) -> None:
        self.epoch = epoch
        self._resume = (epoch, batches_done)

    def epoch_indices(self, epoch: int) -> list[int]:
        if self.shuffle:
            order = torch.randperm(self.length, generator=torch.Generator().manual_seed(self.seed + epoch)).tolist()
        else:
            order = list(range(self.length))
        world = self.world_size
        if self.lengths is not None:
            order = length_grouped_order(order, self.lengths, self.batch_size * world, seed=self.seed + epoch,
                                         shuffle=self.shuffle)
        padded = order + order[: (-len(order)) % world]
        return padded[self.rank::world]

    def __iter__(self):
        indices = self.epoch_indices(self.epoch)
        if self._resume is not None:
            epoch, batches_done = self._resume
            self._resume = None
            if epoch == self.epoch:
                indices = indices[batches_done * self.batch_size:]
        return iter(indices)

    def __len__(self) -> int:
        return -(-self.length // self.world_size)


class ResumableDataLoader(DataLoader):
    """A DataLoader Lightning treats as stateful: its position goes into checkpoints.

    ``position_fn`` returns how many batches of the current epoch have been
    consumed (the datamodule wires it to the fit loop's progress).  ``layout``
    names what a batch is made of (``examples``, or packed rows, grouped by
    length or not); it is saved with the position, and a checkpoint written
    with another layout is refused, since its position counts other batches.
    """

    position_fn: Optional[Callable[[], int]] = None
    layout: str = "examples"

    def state_dict(self) -> dict:
        consumed = int(self.position_fn()) if self.position_fn else 0
        return {"epoch": int(self.sampler.epoch), "batches": consumed, "layout": self.layout}

    def load_state_dict(self, state: dict) -> None:
        saved = state.get("layout", "examples")
        if saved != self.layout:
            raise CheckpointError(f"the checkpoint's data position counts batches of {saved}, but this run "
                                  f"makes batches of {self.layout}; resume with the loader.packing / "
                                  "loader.pack_length / loader.group_by_length the run started with, or "
                                  "start over with resume=never")
        self.sampler.resume_at(int(state["epoch"]), int(state["batches"]))


def rng_states() -> dict:
    """All RNG states that influence training (dropout, sampling)."""
    import numpy as np

    states = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict) -> None:
    import numpy as np

    torch.set_rng_state(states["torch"])
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    np.random.set_state(tuple(states["numpy"]))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(states["cuda"]))


class CheckpointAndInterrupt(pl.Callback):
    """Checkpoint every ``every_n_steps`` optimizer steps (0: only at the end) into
    ``<run_dir>/checkpoints/step-N``, keep the newest ``keep_last``, and stop
    gracefully on SIGTERM/SIGINT after saving one.

    ``identity`` (the run's model/adapter/data config) is stored in each
    checkpoint so a resume with another config is refused.
    """

    def __init__(self, run_dir: Path, every_n_steps: int, keep_last: int, identity: dict):
        self.run_dir = Path(run_dir)
        self.every_n_steps = every_n_steps
        self.keep_last = keep_last
        self.identity = identity
        self.interrupted_by: Optional[str] = None
        self.last_saved: Optional[Path] = None
        self._last_step: Optional[int] = None
        self._saved_step: Optional[int] = None
        self._signal_name: Optional[str] = None
        self._previous_handlers: dict = {}

    # -- signals ---------------------------------------------------------
    def _handle(self, signum, frame) -> None:
        self._signal_name = signal.Signals(signum).name
        log.warning("received %s: finishing this step, then saving a checkpoint", self._signal_name)

    def on_train_start(self, trainer, pl_module) -> None:
        self._last_step = trainer.global_step
        self._saved_step = None
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                self._previous_handlers[signum] = signal.signal(signum, self._handle)

    def teardown(self, trainer, pl_module, stage) -> None:
        for signum, handler in self._previous_handlers.items():
            signal.signal(signum, handler)
        self._previous_handlers.clear()

    # -- saving ----------------------------------------------------------
    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        checkpoint["tuneforge"] = {"identity": self.identity, "global_step": trainer.global_step}

    def save(self, trainer) -> Path:
        path = self.run_dir / CHECKPOINT_DIR / checkpoint_name(trainer.global_step)
        trainer.save_checkpoint(str(path))
        self._saved_step = trainer.global_step
        self.last_saved = path
        if trainer.is_global_zero:
            prune_checkpoints(self.run_dir, self.keep_last)
        return path

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self._last_step:
            return  # inside a gradient-accumulation window: no consistent state to save
        self._last_step = trainer.global_step
        stop = trainer.strategy.reduce_boolean_decision(self._signal_name is not None, all=False)
        if stop or (self.every_n_steps and trainer.global_step % self.every_n_steps == 0):
            self.save(trainer)
        if stop:
            self.interrupted_by = self._signal_name or "signal on another rank"
            trainer.should_stop = True

    def on_train_end(self, trainer, pl_module) -> None:
        if self._saved_step != trainer.global_step:
            self.save(trainer)
