"""The Lightning pieces: a module wrapping (model, loss) and a data module over tokenized splits."""

from __future__ import annotations

import math
from functools import partial

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader

from tuneforge.data import DataSplits, pad_batch


class FineTuneModule(pl.LightningModule):
    """Trains ``model`` with ``loss_fn``; the optimizer covers trainable parameters only."""

    def __init__(self, model, loss_fn, optim_config):
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn
        self.optim_config = optim_config

    def _step(self, batch, stage: str):
        output = self.loss_fn(self.model, batch)
        batch_size = batch["input_ids"].size(0)
        on_step = stage == "train"
        self.log(f"{stage}/loss", output.loss.detach(), prog_bar=True, on_step=on_step, on_epoch=not on_step,
                 batch_size=batch_size, sync_dist=not on_step)
        for key, value in output.metrics.items():
            self.log(f"{stage}/{key}", value, on_step=on_step, on_epoch=not on_step, batch_size=batch_size,
                     sync_dist=not on_step)
        return output.loss

    def training_step(self, batch, batch_idx):
        loss = self._step(batch, "train")
        if not torch.isfinite(loss):
            from tuneforge.errors import TuneforgeError

            raise TuneforgeError(f"training loss is {float(loss)} at step {self.global_step}; "
                                 "lower optim.lr or check the data")
        return loss

    def validation_step(self, batch, batch_idx):
        return self._step(batch, "val")

    def configure_optimizers(self):
        cfg = self.optim_config
        params = [p for p in self.model.parameters() if p.requires_grad]
        decay = [p for p in params if p.ndim >= 2]
        no_decay = [p for p in params if p.ndim < 2]
        optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps)
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        warmup = cfg.warmup_steps or int(cfg.warmup_ratio * total)
        schedule = partial(lr_factor, kind=cfg.scheduler, warmup=warmup, total=total, floor=cfg.min_lr_ratio)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def lr_factor(step: int, *, kind: str, warmup: int, total: int, floor: float) -> float:
    """Multiplier of the base learning rate at optimizer step ``step``."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    if kind == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if kind == "linear":
        return floor + (1 - floor) * (1 - progress)
    if kind == "cosine":
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
    from tuneforge.errors import ConfigError

    raise ConfigError(f"optim.scheduler is '{kind}'; valid: constant, linear, cosine")


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
        generator = torch.Generator().manual_seed(self.seed)
        return DataLoader(self.splits.train, batch_size=self.loader_config.batch_size,
                          shuffle=self.loader_config.shuffle, collate_fn=self.collate,
                          num_workers=self.loader_config.num_workers, generator=generator)

    def val_dataloader(self):
        if not self.splits.val:
            return []
        return DataLoader(self.splits.val, batch_size=self.loader_config.eval_batch_size, shuffle=False,
                          collate_fn=self.collate, num_workers=self.loader_config.num_workers)
