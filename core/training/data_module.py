"""The Lightning data module of a run: tokenized splits served as padded (or packed) batches, resumably."""

from __future__ import annotations

from functools import partial
from typing import Optional

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Sampler

from tuneforge.data import DataSplits, pad_batch
from tuneforge.data.packing import MEGABATCH_BATCHES, PackedRows, pack_batch, pack_examples
from tuneforge.training.resumable_sampler import ResumableDataLoader, ResumableSampler


class FineTuneDataModule(pl.LightningDataModule):
    """Serves the tokenized splits as padded batches.

    With ``loader.packing`` the training examples are packed once, before the
    first epoch, into rows of at most ``pack_length`` tokens
    (:func:`tuneforge.data.packing.pack_examples`, seeded by ``seed``); a
    batch is then ``loader.batch_size`` rows, and the rows are what is
    shuffled, sharded by rank, grouped by length and counted in checkpoints.
    Validation batches stay padded (one example per row).

    ``with_records``: every batch also carries ``records``, the source record of each example
    (a list of dicts, in batch order), for losses that score text against them
    (``LossSpec.needs_rewards``).
    """

    def __init__(self, splits: DataSplits, pad_token_id: int, loader_config, seed: int,
                 pack_length: Optional[int] = None, with_records: bool = False):
        super().__init__()
        self.splits = splits
        self.collate = partial(pad_batch, pad_token_id=pad_token_id,
                               pad_to_multiple_of=loader_config.pad_to_multiple_of)
        if with_records:
            self.collate = partial(_with_records, self.collate)
        self.pack_collate = partial(pack_batch, pad_token_id=pad_token_id,
                                    pad_to_multiple_of=loader_config.pad_to_multiple_of)
        self.loader_config = loader_config
        self.seed = seed
        self.pack_length = pack_length
        self._packed: Optional[PackedRows] = None

    def packed_rows(self) -> PackedRows:
        """The packed training rows (built once; the same for every epoch)."""
        if self._packed is None:
            lengths = [len(example["input_ids"]) for example in self.splits.train]
            self._packed = PackedRows(self.splits.train, pack_examples(lengths, self.packed_limit(), self.seed))
        return self._packed

    def train_dataloader(self):
        """Order depends only on (seed, epoch); the position is saved in checkpoints (exact resume).
        Each process reads its shard: the rank and world size are the trainer's."""
        config = self.loader_config
        dataset, collate, layout = self.splits.train, self.collate, "examples"
        if config.packing:
            dataset, collate = self.packed_rows(), self.pack_collate
            layout = f"packed rows of <= {self.packed_limit()} tokens"
        lengths = None
        if config.group_by_length:
            lengths = dataset.lengths() if config.packing else [len(ex["input_ids"]) for ex in dataset]
            layout += " grouped by length"
            if config.group_batches != MEGABATCH_BATCHES:  # the default's name is that of older checkpoints
                layout += f" (groups of {config.group_batches} batches)"
        sampler = ResumableSampler(len(dataset), self.seed, config.shuffle, config.batch_size,
                                   rank=self.trainer.global_rank, world_size=self.trainer.world_size,
                                   lengths=lengths, group_batches=config.group_batches)
        loader = ResumableDataLoader(dataset, batch_size=config.batch_size, sampler=sampler, collate_fn=collate,
                                     num_workers=config.num_workers,
                                     generator=torch.Generator().manual_seed(self.seed))
        loader.position_fn = self._batches_done_this_epoch
        loader.layout = layout
        return loader

    def packed_limit(self) -> int:
        """The row length packing uses: ``loader.pack_length``, else ``data.max_length``, else the longest example."""
        lengths = (len(example["input_ids"]) for example in self.splits.train)
        return self.loader_config.pack_length or self.pack_length or max(lengths)

    def _batches_done_this_epoch(self) -> int:
        return self.trainer.fit_loop.epoch_loop.batch_progress.current.processed

    def val_dataloader(self):
        """Each process validates its shard (:class:`ShardSampler`: examples ``rank, rank + N, ...``, none
        repeated); the logged ``val/loss`` is synced as the token-weighted mean over all shards."""
        if not self.splits.val:
            return []
        trainer = self.trainer
        sampler = ShardSampler(len(self.splits.val), rank=trainer.global_rank if trainer else 0,
                               world_size=trainer.world_size if trainer else 1)
        return DataLoader(self.splits.val, batch_size=self.loader_config.eval_batch_size, sampler=sampler,
                          collate_fn=self.collate, num_workers=self.loader_config.num_workers,
                          # its own generator: a validation pass must not draw from the global RNG (exact resume)
                          generator=torch.Generator().manual_seed(self.seed))


def _with_records(collate, examples) -> dict:
    """``collate(examples)`` plus ``records``: each example's source record."""
    examples = list(examples)
    batch = collate(examples)
    batch["records"] = [example.get("record") or {} for example in examples]
    return batch


class ShardSampler(Sampler):
    """Indices ``rank, rank + world_size, ...`` of ``range(length)``, in order: every example is
    seen by exactly one process (no padding, so no example counts twice)."""

    def __init__(self, length: int, rank: int = 0, world_size: int = 1):
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in a world of {world_size} process(es)")
        self.length, self.rank, self.world_size = int(length), int(rank), int(world_size)

    def __iter__(self):
        return iter(range(self.rank, self.length, self.world_size))

    def __len__(self) -> int:
        return len(range(self.rank, self.length, self.world_size))
