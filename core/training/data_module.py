"""The Lightning data module of a run: tokenized splits served as padded batches, resumably."""

from __future__ import annotations

from functools import partial

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader

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
        """Order depends only on (seed, epoch); the position is saved in checkpoints (exact resume)."""
        sampler = ResumableSampler(len(self.splits.train), self.seed, self.loader_config.shuffle,
                                   self.loader_config.batch_size)
        loader = ResumableDataLoader(self.splits.train, batch_size=self.loader_config.batch_size,
                                     sampler=sampler, collate_fn=self.collate,
                                     num_workers=self.loader_config.num_workers,
                                     generator=torch.Generator().manual_seed(self.seed))
        loader.position_fn = self._batches_done_this_epoch
        return loader

    def _batches_done_this_epoch(self) -> int:
        return self.trainer.fit_loop.epoch_loop.batch_progress.current.processed

    def val_dataloader(self):
        if not self.splits.val:
            return []
        # its own generator: starting a validation pass must not draw from the global RNG, or a run resumed
        # from a checkpoint taken at an epoch's end (before that epoch's validation) would see other dropout
        return DataLoader(self.splits.val, batch_size=self.loader_config.eval_batch_size, shuffle=False,
                          collate_fn=self.collate, num_workers=self.loader_config.num_workers,
                          generator=torch.Generator().manual_seed(self.seed))
