"""A data order that survives a restart: :class:`ResumableSampler` and :class:`ResumableDataLoader`.

The order depends only on (seed, epoch), and the loader's position (epoch,
batches consumed) is saved in every checkpoint, so a resumed run sees exactly
the examples an uninterrupted run would have seen.  The sampler shards by rank
itself under DDP (rank and world size are given to it: the trainer's), and can
group items of similar length into the same batches (``loader.group_by_length``);
the items may be packed rows (``loader.packing``).
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
from torch.utils.data import DataLoader, Sampler

from tuneforge.data.packing import MEGABATCH_BATCHES, length_grouped_order
from tuneforge.training.checkpoint import CheckpointError


class ResumableSampler(Sampler):
    """Indices for one epoch: a permutation seeded by ``seed + epoch`` (or the identity),
    padded to a multiple of ``world_size`` and strided by ``rank``; can start mid-epoch.

    ``rank``/``world_size`` are this process's global rank and the number of
    processes (``trainer.global_rank`` / ``trainer.world_size``).  Every rank
    gets exactly ``ceil(length / world_size)`` indices (``len(self)``), so
    every rank runs the same number of batches, even with fewer examples than
    ranks.  As in torch's ``DistributedSampler`` the epoch's order is repeated
    to fill the last round: ``world_size * ceil(length / world_size) - length``
    examples (fewer than ``world_size``) are seen twice per epoch under DDP.
    With ``lengths`` (one per item) the epoch's order is length-grouped
    (:func:`tuneforge.data.packing.length_grouped_order` over global batches of
    ``batch_size x world_size``): each rank's k-th batch is its slice of the
    same group of similar lengths; ``group_batches`` global batches are sorted
    together.  The order still depends only on (seed, epoch), so resuming skips
    exactly the batches already done.
    """

    def __init__(self, length: int, seed: int, shuffle: bool, batch_size: int, rank: int = 0,
                 world_size: int = 1, lengths: Optional[Sequence[int]] = None,
                 group_batches: int = MEGABATCH_BATCHES):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in a world of {world_size} process(es)")
        if lengths is not None and len(lengths) != length:
            raise ValueError(f"{len(lengths)} lengths for {length} items")
        self.length, self.seed, self.shuffle, self.batch_size = length, seed, shuffle, batch_size
        self.rank, self.world_size = rank, world_size
        self.lengths = None if lengths is None else list(lengths)
        self.group_batches = group_batches
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
                                         shuffle=self.shuffle, megabatch=self.group_batches)
        total = len(self) * world
        repeats = -(-total // len(order)) if order else 0
        padded = (order * repeats)[:total]  # the order again (and again, with fewer examples than ranks)
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
