"""The ``lightning.Trainer`` of a run (strategy, precision, CSV logger, safe checkpoint IO) and its
token-counting callback."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from tuneforge.errors import ConfigError


def build_trainer(cfg: DictConfig, run_dir: Path, callbacks: list):
    """A ``lightning.Trainer`` from ``cfg.trainer`` and ``cfg.strategy``, logging CSV into the run dir."""
    import lightning.pytorch as pl
    from lightning.pytorch.loggers import CSVLogger

    from tuneforge.training.checkpoint import safe_checkpoint_io

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
        logger=CSVLogger(save_dir=str(run_dir), name="", version=""), callbacks=callbacks,
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
            """Tokens of all processes (summed over the process group when one is initialized; every
            rank must call it then) over the wall time ``seconds``; ``world_size`` is not used any more
            for the count (kept for callers)."""
            tokens = all_reduce_sum(self.tokens)
            return {"fit_time_s": seconds, "tokens": tokens, "tokens_per_s": tokens / max(seconds, 1e-9)}

    return TokenCounter()


def all_reduce_sum(value: int) -> int:
    """``value`` summed over the ranks of the initialized default process group (itself without one)."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() <= 1:
        return int(value)
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    total = torch.tensor([int(value)], dtype=torch.int64, device=device)
    dist.all_reduce(total)
    return int(total.item())
