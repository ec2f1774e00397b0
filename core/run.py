"""One training run, top to bottom: build -> baseline eval -> fit -> tuned eval -> save.

:func:`train` is the single call site of the lifecycle hooks.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Optional

from omegaconf import DictConfig, OmegaConf

from tuneforge.errors import ConfigError

log = logging.getLogger("tuneforge")


def build_trainer(cfg: DictConfig, run_dir: Path, callbacks: list):
    """A ``lightning.Trainer`` from ``cfg.trainer`` and ``cfg.strategy``, logging CSV into the run dir."""
    import lightning.pytorch as pl
    from lightning.pytorch.loggers import CSVLogger

    from tuneforge.checkpoint import safe_checkpoint_io

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


def count_parameters(model) -> dict:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return {"trainable": trainable, "total": total, "fraction": trainable / max(total, 1)}


def run_evaluators(plugins, cfg: DictConfig, model, tokenizer, examples, label: str = "eval"):
    """Every selected evaluator on ``examples`` in one evaluation pass (generations are shared).

    Returns ``(metrics, pass)``: metrics are named ``<evaluator>/<metric>``, or
    just ``<evaluator>`` when it returns one metric of its own name
    (``exact_match``, ``bleu``); the pass holds the predictions.
    """
    from tuneforge.evaluation import evaluation_pass

    results = {}
    was_training = model.training
    home, device = next(model.parameters()).device, _evaluation_device(cfg)
    model.eval()
    if device is not None:
        model.to(device)
    try:
        with evaluation_pass(label, chat_template=OmegaConf.select(cfg, "data.chat_template")) as one_pass:
            for name, evaluator_cfg in cfg.evaluators.items():
                spec = plugins["evaluators"].get(evaluator_cfg.name)
                values = spec.evaluate(model, tokenizer, examples, evaluator_cfg)
                for metric, value in values.items():
                    alone = len(values) == 1 and metric == name
                    results[name if alone else f"{name}/{metric}"] = float(value)
    finally:
        model.train(was_training)
        model.to(home)
    return results, one_pass


def _evaluation_device(cfg: DictConfig):
    """The GPU to evaluate on when the trainer would use one (Lightning returns the model on CPU)."""
    import os

    import torch

    if cfg.trainer.accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return None


def write_json(path: Path, value) -> None:
    """Write JSON atomically (temporary file, then rename)."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(value, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)


def save_model(adapter_spec, model, tokenizer, directory: Path) -> None:
    """Save weights and tokenizer under a temporary name, then rename: never a half-written model/."""
    import shutil

    tmp = directory.with_name(directory.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        if adapter_spec.save is not None:
            adapter_spec.save(model, str(tmp))
        else:
            model.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
    except Exception as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        from tuneforge.errors import TuneforgeError, is_disk_full

        if is_disk_full(exc):

            raise TuneforgeError(f"disk full while saving the trained model to {directory}") from exc
        raise
    shutil.rmtree(directory, ignore_errors=True)
    tmp.rename(directory)


class RunInterrupted(Exception):
    """Training stopped on SIGTERM/SIGINT after saving a checkpoint."""

    def __init__(self, signal_name: str, step: int, checkpoint: Optional[Path], run_dir: Path):
        self.signal_name, self.step, self.checkpoint, self.run_dir = signal_name, step, checkpoint, run_dir
        where = f"checkpoint {checkpoint}" if checkpoint else "no checkpoint (stopped before training)"
        super().__init__(f"interrupted by {signal_name} at step {step}; saved {where}")


def resolved_config_yaml(cfg: DictConfig) -> str:
    """The resolved config as YAML with secrets (tokens, API keys) replaced by ``***``."""
    from tuneforge.secrets import redact

    return OmegaConf.to_yaml(OmegaConf.create(redact(OmegaConf.to_container(cfg, resolve=True))))


def prepare_run_dir(cfg: DictConfig, run_dir: Path) -> Optional[Path]:
    """Check the run directory against ``cfg.resume``; return the checkpoint to resume from.

    A directory that already holds another run (different model, adapter or
    data) or a completed run is refused unless ``resume=never``.
    """
    from tuneforge.checkpoint import (
        CheckpointError, check_same_run, identity_differences, resolve_resume, run_identity)

    checkpoint = resolve_resume(str(cfg.resume), run_dir)
    if checkpoint is not None:
        check_same_run(checkpoint, cfg)
        log.info("resuming from %s", checkpoint)
        return checkpoint
    if str(cfg.resume) in ("never", "none", "false"):
        return None
    saved_config, status_file = run_dir / "config.yaml", run_dir / "status.json"
    if saved_config.is_file():
        differences = identity_differences(run_identity(OmegaConf.load(saved_config)), run_identity(cfg))
        if differences:
            raise CheckpointError(f"{run_dir} holds a different run: {'; '.join(differences)}. Use another run "
                                  "directory, or resume=never to overwrite it")
    if status_file.is_file() and json.loads(status_file.read_text()).get("status") == "completed":
        raise CheckpointError(f"{run_dir} holds a completed run; use another run directory, or resume=never to "
                              "train it again from the start")
    return None


def join_predictions(base_rows: list, tuned_rows: list) -> list:
    """Add each base output (saved before training) to the tuned row of the same prompt."""
    def key(row):
        return row["set"], row["kind"], row["source"], row["prompt"]

    base_by_key = {key(row): row.get("base") for row in base_rows}
    joined = [dict(row, base=base_by_key.get(key(row))) for row in tuned_rows]
    seen = {key(row) for row in tuned_rows}
    joined += [row for row in base_rows if key(row) not in seen]
    return joined


def train(cfg: DictConfig, plugins, run_dir: Path) -> dict:
    """Run one fine-tune described by ``cfg``; returns the final metrics.

    The run directory receives ``config.yaml`` (resolved), ``metrics.csv``,
    ``metrics.json`` (data quality, base and tuned evaluator results, training
    numbers), ``predictions.jsonl`` (prompt, reference, base and tuned output),
    ``report.md`` / ``report.html`` with ``metrics.png`` and
    ``loss_curves.png``, ``model/`` (adapter in PEFT format, or full
    safetensors weights, plus the tokenizer) and ``status.json``
    (``running`` -> ``completed`` or ``failed``).
    """
    import lightning.pytorch as pl
    import torch

    from tuneforge import quality
    from tuneforge.evaluation import merge_predictions

    from tuneforge.checkpoint import run_identity
    from tuneforge.resilience import CheckpointAndInterrupt

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    rank_zero = is_rank_zero()
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    resume_from = prepare_run_dir(cfg, run_dir)
    if rank_zero:
        (run_dir / "config.yaml").write_text(resolved_config_yaml(cfg))
        write_json(run_dir / "status.json", {"status": "running", "resumed_from": _str(resume_from)})
    plugins.hook.tuneforge_run_start(config=cfg, run_dir=run_dir)
    metrics: dict = {}
    status, error = "failed", None
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

        # Data quality, before any training: serious problems stop here.
        metrics["quality"] = quality.assess(splits, cfg.quality.max_labels)
        for warning in metrics["quality"]["warnings"]:
            log.warning("data quality: %s", warning)
        quality.check(metrics["quality"], cfg.quality)

        loss_fn = plugins["loss"].get(cfg.loss.name).build(cfg.loss, _loss_context(plugins, tokenizer))
        callbacks = [plugins["callbacks"].get(c.name).build(c) for c in cfg.callbacks.values()]
        throughput = token_counter()

        # Base-model evaluation happens once per run: a resumed run reuses the saved result.
        base_file = run_dir / "base_eval.json"
        if resume_from is not None and base_file.is_file():
            saved = json.loads(base_file.read_text())
            metrics["base"], base_rows = saved["metrics"], saved["predictions"]
        else:
            metrics["base"], base_pass = run_evaluators(plugins, cfg, model, tokenizer, splits.val, "base")
            base_rows = merge_predictions({"base": base_pass})
            if rank_zero:
                write_json(base_file, {"metrics": metrics["base"], "predictions": base_rows})
        module = _fine_tune_module(model, loss_fn, cfg.optim, cfg.trainer.on_nonfinite_loss)
        datamodule = _data_module(splits, tokenizer.pad_token_id, cfg.loader, cfg.seed)
        checkpointer = CheckpointAndInterrupt(run_dir, cfg.checkpoint.every_n_steps, cfg.checkpoint.keep_last,
                                              run_identity(cfg))
        trainer = build_trainer(cfg, run_dir, [*callbacks, throughput, checkpointer])
        fit_started = time.time()
        history = read_metric_rows(run_dir / "metrics.csv") if resume_from else []
        resumed_step = _checkpoint_step(resume_from) if resume_from else 0
        trainer.fit(module, datamodule=datamodule, ckpt_path=_str(resume_from), **_no_pickle(trainer))
        if history and trainer.is_global_zero:  # Lightning's CSV logger starts a fresh file on resume
            keep_metric_history(run_dir / "metrics.csv", history, before_step=resumed_step)
        if checkpointer.interrupted_by:
            status = "interrupted"
            raise RunInterrupted(checkpointer.interrupted_by, trainer.global_step, checkpointer.last_saved, run_dir)
        metrics["skipped_nonfinite_batches"] = module.skipped_batches
        metrics["throughput"] = throughput.summary(time.time() - fit_started, trainer.world_size)
        metrics["train"] = {k: float(v) for k, v in trainer.callback_metrics.items()}
        metrics["steps"] = int(trainer.global_step)
        metrics["tuned"], tuned_pass = run_evaluators(plugins, cfg, model, tokenizer, splits.val, "tuned")
        metrics["wall_time_s"] = time.time() - started
        if trainer.is_global_zero:
            save_model(adapter_spec, model, tokenizer, run_dir / "model")
            predictions = join_predictions(base_rows, merge_predictions({"tuned": tuned_pass}))
            write_outputs(run_dir, cfg, metrics, predictions, metrics_csv=run_dir / "metrics.csv")
        status = "completed"
        return metrics
    except KeyboardInterrupt:
        status, error = "interrupted", "KeyboardInterrupt before training started or after it ended"
        raise
    except Exception as exc:
        error = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise
    finally:
        if rank_zero:
            write_json(run_dir / "status.json", {"status": status, "error": error, "steps": metrics.get("steps"),
                                                 "resumed_from": _str(resume_from),
                                                 "wall_time_s": time.time() - started})
        plugins.hook.tuneforge_run_end(config=cfg, run_dir=run_dir, status=status, metrics=metrics)


def _no_pickle(trainer) -> dict:
    """``weights_only=True`` where Lightning accepts it (>= 2.5); SafeCheckpointIO never unpickles anyway."""
    import inspect

    return {"weights_only": True} if "weights_only" in inspect.signature(trainer.fit).parameters else {}


def read_metric_rows(path: Path) -> list:
    import csv

    if not path.is_file():
        return []
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def keep_metric_history(path: Path, history: list, before_step: int) -> None:
    """Put the rows logged before a resume (steps < ``before_step``) back in front of the new ones."""
    import csv

    earlier = [row for row in history if row.get("step") and int(row["step"]) < before_step]
    later = read_metric_rows(path)
    columns = list(dict.fromkeys([*(history[0] if history else {}), *(later[0] if later else {})]))
    tmp = path.with_suffix(".csv.tmp")
    with tmp.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(earlier + later)
    tmp.replace(path)


def _checkpoint_step(checkpoint: Path) -> int:
    state = json.loads((checkpoint / "state.json").read_text())
    return int(state.get("global_step", 0))


def _str(path: Optional[Path]) -> Optional[str]:
    return None if path is None else str(path)


def write_outputs(directory: Path, cfg: DictConfig, metrics: dict, predictions: list,
                  metrics_csv: Optional[Path] = None, title: str = "tuneforge run report") -> None:
    """``metrics.json``, ``predictions.jsonl`` and the report (``report.md``, ``report.html``, PNG plots)."""
    from tuneforge.report import overfitting_signal, read_loss_curves, write_predictions, write_report

    directory.mkdir(parents=True, exist_ok=True)
    if metrics_csv is not None:
        metrics["overfitting"] = overfitting_signal(read_loss_curves(metrics_csv), metrics.get("tuned", {}))
    write_json(directory / "metrics.json", metrics)
    write_predictions(directory / "predictions.jsonl", predictions)
    write_report(directory, metrics, config_yaml=resolved_config_yaml(cfg), predictions=predictions,
                 metrics_csv=metrics_csv, title=title)


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


def load_tuned_model(base_model, model_dir: Path, trust_remote_code: bool = False):
    """The trained model of a run: a PEFT adapter over ``base_model``, or the saved full weights
    (``base_model`` may then be ``None``)."""
    from tuneforge.errors import ModelError

    if (model_dir / "adapter_config.json").is_file():
        from peft import PeftModel

        return PeftModel.from_pretrained(base_model, str(model_dir))
    if (model_dir / "config.json").is_file():
        from transformers import AutoModelForCausalLM

        dtype = base_model.dtype if base_model is not None else "auto"
        return AutoModelForCausalLM.from_pretrained(str(model_dir), torch_dtype=dtype,
                                                    trust_remote_code=trust_remote_code)
    raise ModelError(f"{model_dir}: no trained model (expected adapter_config.json of a PEFT adapter or "
                     "config.json of full weights); is the run finished?")


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


def is_rank_zero() -> bool:
    """True in the process that writes the run directory (global rank 0, or no distributed launch)."""
    import os

    return os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")) == "0"


def _fine_tune_module(model, loss_fn, optim_cfg, on_nonfinite_loss: str = "stop"):
    from tuneforge.lightning_module import FineTuneModule

    return FineTuneModule(model, loss_fn, optim_cfg, on_nonfinite_loss)


def _data_module(splits, pad_token_id, loader_cfg, seed):
    from tuneforge.lightning_module import FineTuneDataModule

    return FineTuneDataModule(splits, pad_token_id, loader_cfg, seed)
