"""One training run, top to bottom: build -> baseline eval -> fit -> tuned eval -> save.

:func:`train` is the single call site of the lifecycle hooks.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from tuneforge.errors import ConfigError

log = logging.getLogger("tuneforge")


def build_trainer(cfg: DictConfig, run_dir: Path, callbacks: list):
    """A ``lightning.Trainer`` from ``cfg.trainer`` and ``cfg.strategy``, logging CSV into the run dir."""
    import lightning.pytorch as pl
    from lightning.pytorch.loggers import CSVLogger

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
        num_sanity_val_steps=0, enable_model_summary=False)


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


def count_parameters(model) -> dict:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return {"trainable": trainable, "total": total, "fraction": trainable / max(total, 1)}


def run_evaluators(plugins, cfg: DictConfig, model, tokenizer, examples) -> dict:
    """Every selected evaluator on ``examples``; metrics are named ``<evaluator>/<metric>``."""
    results = {}
    was_training = model.training
    model.eval()
    try:
        for name, evaluator_cfg in cfg.evaluators.items():
            spec = plugins["evaluators"].get(evaluator_cfg.name)
            for metric, value in spec.evaluate(model, tokenizer, examples, evaluator_cfg).items():
                results[f"{name}/{metric}"] = float(value)
    finally:
        model.train(was_training)
    return results


def write_json(path: Path, value) -> None:
    """Write JSON atomically (temporary file, then rename)."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(value, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)


def save_model(adapter_spec, model, tokenizer, directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    if adapter_spec.save is not None:
        adapter_spec.save(model, str(directory))
    else:
        model.save_pretrained(str(directory), safe_serialization=True)
    tokenizer.save_pretrained(str(directory))


def train(cfg: DictConfig, plugins, run_dir: Path) -> dict:
    """Run one fine-tune described by ``cfg``; returns the final metrics.

    The run directory receives ``config.yaml`` (resolved), ``metrics.csv``,
    ``metrics.json`` (base and tuned evaluator results), ``model/`` (adapter in
    PEFT format, or full safetensors weights, plus the tokenizer) and
    ``status.json`` (``running`` -> ``completed`` or ``failed``).
    """
    import lightning.pytorch as pl
    import torch

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    rank_zero = int(_env_rank()) == 0
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    if rank_zero:
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
        write_json(run_dir / "status.json", {"status": "running"})
    plugins.hook.tuneforge_run_start(config=cfg, run_dir=run_dir)
    metrics: dict = {}
    status = "failed"
    started = time.time()
    try:
        pl.seed_everything(cfg.seed, workers=True, verbose=False)
        model, tokenizer = plugins["model"].get(cfg.model.name).load(cfg.model)
        adapter_spec = plugins["adapter"].get(cfg.adapter.name)
        model = adapter_spec.apply(model, cfg.adapter)
        params = count_parameters(model)
        log.info("adapter %s: %d trainable of %d parameters (%.4f%%)", cfg.adapter.name, params["trainable"],
                 params["total"], 100 * params["fraction"])
        metrics["parameters"] = params
        splits = plugins["data"].get(cfg.data.name).load(cfg.data, tokenizer)
        metrics["data"] = splits.stats
        loss_fn = plugins["loss"].get(cfg.loss.name).build(cfg.loss, _loss_context(plugins, tokenizer))
        callbacks = [plugins["callbacks"].get(c.name).build(c) for c in cfg.callbacks.values()]

        metrics["base"] = run_evaluators(plugins, cfg, model, tokenizer, splits.val)
        module = _fine_tune_module(model, loss_fn, cfg.optim)
        datamodule = _data_module(splits, tokenizer.pad_token_id, cfg.loader, cfg.seed)
        trainer = build_trainer(cfg, run_dir, callbacks)
        trainer.fit(module, datamodule=datamodule)
        metrics["train"] = {k: float(v) for k, v in trainer.callback_metrics.items()}
        metrics["steps"] = int(trainer.global_step)
        metrics["tuned"] = run_evaluators(plugins, cfg, model, tokenizer, splits.val)
        metrics["wall_time_s"] = time.time() - started
        if trainer.is_global_zero:
            save_model(adapter_spec, model, tokenizer, run_dir / "model")
            write_json(run_dir / "metrics.json", metrics)
        status = "completed"
        return metrics
    finally:
        if rank_zero:
            write_json(run_dir / "status.json", {"status": status, "wall_time_s": time.time() - started})
        plugins.hook.tuneforge_run_end(config=cfg, run_dir=run_dir, status=status, metrics=metrics)


def load_model_from_config(plugins, model_config):
    """``(model, tokenizer)`` from a model-source config mapping that has a ``name``."""
    from omegaconf import OmegaConf

    from tuneforge.config import named_config_class

    spec = plugins["model"].get(model_config["name"])
    typed = OmegaConf.merge(OmegaConf.structured(named_config_class(spec)), model_config)
    return spec.load(typed)


def _loss_context(plugins, tokenizer):
    from tuneforge.losses import LossContext

    return LossContext(tokenizer=tokenizer, load_model=lambda model_config: load_model_from_config(
        plugins, model_config))


def _env_rank() -> str:
    import os

    return os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0"))


def _fine_tune_module(model, loss_fn, optim_cfg):
    from tuneforge.lightning_module import FineTuneModule

    return FineTuneModule(model, loss_fn, optim_cfg)


def _data_module(splits, pad_token_id, loader_cfg, seed):
    from tuneforge.lightning_module import FineTuneDataModule

    return FineTuneDataModule(splits, pad_token_id, loader_cfg, seed)
