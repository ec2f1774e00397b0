"""The ``lightning.Trainer`` of a run (strategy, precision, loggers, safe checkpoint IO) and its
token-counting callback."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from omegaconf import DictConfig, OmegaConf

from tuneforge.errors import ConfigError


def build_trainer(cfg: DictConfig, run_dir: Path, callbacks: list, loggers: Optional[list] = None):
    """A ``lightning.Trainer`` from ``cfg.trainer`` and ``cfg.strategy``.

    ``loggers``: Lightning loggers, the one writing ``<run_dir>/metrics.csv``
    first (:meth:`tuneforge.training.loggers.RunLoggers.lightning_loggers`);
    default: only that CSV logger.
    """
    import lightning.pytorch as pl

    from tuneforge.training.checkpoint import safe_checkpoint_io
    from tuneforge.training.loggers import run_metrics_logger

    import warnings

    # tuneforge writes config.yaml etc. into the run directory first: that is expected
    warnings.filterwarnings("ignore", message="Experiment logs directory .* exists and is not empty")
    t = cfg.trainer
    strategy = cfg.strategy.name
    if cfg.strategy.kwargs:
        strategy = _strategy_object(cfg.strategy.name, OmegaConf.to_container(cfg.strategy.kwargs))
    return pl.Trainer(
        max_steps=t.max_steps, max_epochs=t.max_epochs, accumulate_grad_batches=t.accumulate_grad_batches,
        precision=t.precision, accelerator=t.accelerator, devices=t.devices, num_nodes=t.num_nodes,
        strategy=strategy, val_check_interval=t.val_check_interval,
        check_val_every_n_epoch=t.check_val_every_n_epoch, limit_val_batches=t.limit_val_batches,
        gradient_clip_val=t.gradient_clip_val, gradient_clip_algorithm=t.gradient_clip_algorithm,
        log_every_n_steps=t.log_every_n_steps, enable_progress_bar=t.enable_progress_bar,
        deterministic=t.deterministic, enable_checkpointing=False, default_root_dir=str(run_dir),
        logger=loggers if loggers is not None else [run_metrics_logger(run_dir)], callbacks=callbacks,
        num_sanity_val_steps=0, enable_model_summary=False, plugins=[safe_checkpoint_io()],
        use_distributed_sampler=False)  # ResumableSampler shards by rank itself


def _strategy_object(name: str, kwargs: dict):
    from lightning.pytorch import strategies

    classes = {"ddp": strategies.DDPStrategy, "fsdp": strategies.FSDPStrategy,
               "deepspeed": strategies.DeepSpeedStrategy, "ddp_spawn": strategies.DDPStrategy}
    if name not in classes:
        raise ConfigError(f"strategy.kwargs are given but strategy.name='{name}' takes none here; "
                          f"valid with kwargs: {sorted(classes)}")
    if name == "ddp_spawn":
        kwargs = dict(kwargs, start_method="spawn")
    return classes[name](**kwargs)


def token_counter():
    """A Lightning callback counting the non-padding tokens of every training batch (for tokens/s)."""
    import lightning.pytorch as pl

    class TokenCounter(pl.Callback):
        def __init__(self):
            self.tokens = 0

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            mask = batch.get("attention_mask") if isinstance(batch, dict) else None
            if mask is not None:
                self.tokens += int(mask.sum())

        def summary(self, seconds: float, world_size: int = 1) -> dict:
            tokens = self.tokens * max(int(world_size), 1)
            return {"fit_time_s": seconds, "tokens": tokens, "tokens_per_s": tokens / max(seconds, 1e-9)}

    return TokenCounter()
