"""The Lightning data module of a run: tokenized splits served as padded batches, resumably."""

from __future__ import annotations

from functools import partial

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Sampler

from tuneforge.data import DataSplits, pad_batch
from tuneforge.training.resilience import ResumableDataLoader, ResumableSampler


class FineTuneDataModule(pl.LightningDataModule):
    """Serves the tokenized splits as padded batches."""

    def __init__(self, splits: DataSplits, pad_token_id: int, loader_config, seed: int):
        super().__init__()
        self.splits = splits
        self.collate = partial(pad_batch, pad_token_id=pad_token_id,
                               pad_to_multiple_of=loader_config.pad_to_multiple_of)
        self.loader_config = loader_config
        self.seed = seed

    def train_dataloader(self):
        """Order depends only on (seed, epoch); the position is saved in checkpoints (exact resume).
        Each process reads its shard: the rank and world size are the trainer's."""
        sampler = ResumableSampler(len(self.splits.train), self.seed, self.loader_config.shuffle,
                                   self.loader_config.batch_size, rank=self.trainer.global_rank,
                                   world_size=self.trainer.world_size)
        loader = ResumableDataLoader(self.splits.train, batch_size=self.loader_config.batch_size,
                                     sampler=sampler, collate_fn=self.collate,
                                     num_workers=self.loader_config.num_workers,
                                     generator=torch.Generator().manual_seed(self.seed))
        loader.position_fn = self._batches_done_this_epoch
        return loader

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
                          collate_fn=self.collate, num_workers=self.loader_config.num_workers)


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
