"""The ``lightning.Trainer`` of a run (strategy, precision, loggers, safe checkpoint IO) and its
token-counting callback."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from typing import TYPE_CHECKING

from tuneforge.errors import ConfigError

if TYPE_CHECKING:
    from tuneforge.host.schema import CheckpointConfig, StrategyConfig, TrainerConfig


def build_trainer(trainer: "TrainerConfig", strategy: "StrategyConfig", run_dir: Path, callbacks: list,
                  loggers: Optional[list] = None, precision: Optional[str] = None):
    """A ``lightning.Trainer`` from the run's ``trainer`` and ``strategy`` settings.

    ``precision``: the Lightning precision to train in, where ``trainer.precision`` is ``auto``
    (:func:`tuneforge.training.precision.run_precision` resolves it); default: ``trainer.precision``.

    ``loggers``: Lightning loggers, the one writing ``<run_dir>/metrics.csv``
    first (:meth:`tuneforge.training.loggers.RunLoggers.lightning_loggers`);
    default: only that CSV logger.
    """
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks.progress import ProgressBar

    from tuneforge.training.checkpoint import safe_checkpoint_io
    from tuneforge.training.loggers import run_metrics_logger

    import logging
    import warnings

    # tuneforge writes config.yaml etc. into the run directory first: that is expected
    warnings.filterwarnings("ignore", message="Experiment logs directory .* exists and is not empty")
    # Lightning's own use of a torch >= 2.10 deprecation, in every fit: nothing a user can change
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_not_an_advert)
    t = trainer
    if t.enable_progress_bar and not any(isinstance(c, ProgressBar) for c in callbacks):  # a plugin's bar wins
        callbacks = [*callbacks, *_progress_bar()]
    settings, strategy = strategy, strategy.name
    if settings.kwargs or shards_weights(settings) or takes_timeout(strategy):
        kwargs = strategy_kwargs(settings)
        if takes_timeout(strategy):  # every collective of the process group Lightning makes waits at most this
            from datetime import timedelta

            kwargs["timeout"] = timedelta(seconds=float(t.collective_timeout_s))
        strategy = _strategy_object(settings.name, kwargs)
    return pl.Trainer(
        max_steps=t.max_steps, max_epochs=t.max_epochs, accumulate_grad_batches=t.accumulate_grad_batches,
        precision=precision or _without_auto(t), accelerator=t.accelerator, devices=t.devices,
        num_nodes=t.num_nodes,
        strategy=strategy, val_check_interval=t.val_check_interval,
        check_val_every_n_epoch=t.check_val_every_n_epoch, limit_val_batches=t.limit_val_batches,
        gradient_clip_val=t.gradient_clip_val, gradient_clip_algorithm=t.gradient_clip_algorithm,
        log_every_n_steps=t.log_every_n_steps, enable_progress_bar=t.enable_progress_bar,
        deterministic=t.deterministic, enable_checkpointing=False, default_root_dir=str(run_dir),
        logger=loggers if loggers is not None else [run_metrics_logger(run_dir)], callbacks=callbacks,
        num_sanity_val_steps=0, enable_model_summary=False, plugins=[safe_checkpoint_io()],
        use_distributed_sampler=False)  # ResumableSampler shards by rank itself


def _without_auto(trainer: "TrainerConfig") -> str:
    """``trainer.precision`` as Lightning takes it when no run resolved ``auto`` (a trainer built without a
    model): ``auto`` as :func:`tuneforge.training.precision.choose_precision` decides it without one."""
    if trainer.precision != "auto":
        return trainer.precision
    from tuneforge.context import evaluation_device
    from tuneforge.training.precision import choose_precision

    device = evaluation_device(trainer.accelerator, trainer.devices, 0)  # (the device a run's rank 0 uses)
    return choose_precision("auto", accelerator=device.split(":")[0]).precision


def _progress_bar() -> list:
    """Lightning's rich progress bar, without its "Epoch 0/-2" for a run bounded by steps.

    Lightning shows ``Epoch <n>/<max_epochs - 1>``, and a run bounded by
    ``trainer.max_steps`` has ``max_epochs=-1``; this bar writes ``Epoch <n>``
    then.  Without ``rich`` Lightning's tqdm bar (which shows no maximum) stays.
    """
    from lightning.pytorch.callbacks import RichProgressBar
    from lightning.pytorch.utilities.imports import _RICH_AVAILABLE

    if not _RICH_AVAILABLE:
        return []

    class StepBoundedRichProgressBar(RichProgressBar):
        def _get_train_description(self, current_epoch: int) -> str:
            if self.trainer.max_epochs is not None and self.trainer.max_epochs >= 1:
                return super()._get_train_description(current_epoch)
            # padded to the validation bar's label, as Lightning does, so the bar does not flicker
            return f"{f'Epoch {current_epoch}':{len(self.validation_description)}}"

    return [StepBoundedRichProgressBar()]


def _not_an_advert(record) -> bool:
    """Lightning (>= 2.6) logs a "Tip" advertising its cloud logger when a Trainer is built: not about the run."""
    return not str(record.msg).startswith("\N{ELECTRIC LIGHT BULB} Tip:")


def check_strategy(strategy: "StrategyConfig", trainer: "TrainerConfig", checkpoint: "CheckpointConfig") -> None:
    """Refuse, in one line and before any model loads, a strategy this machine or tuneforge cannot run.

    * ``fsdp``: FSDP2 (:mod:`tuneforge.training.fsdp`) runs on CPU (gloo) and CUDA; refused with a
      precision ``ModelParallelStrategy`` does not take (``16-mixed``, ``64-true`` ...) and for
      other ``fsdp*`` names (Lightning's FSDP1 strategies, which cannot save pickle-free
      checkpoints or clip by norm).
    * ``deepspeed*``: needs the ``deepspeed`` package (``pip install
      'tuneforge[deepspeed]'``) and CUDA GPUs; ZeRO stage 1 or 2 only (stage
      3 partitions the weights that evaluation and saving need whole);
      ``trainer.accumulate_grad_batches=1`` (the per-token loss normalisation
      cannot reach DeepSpeed's gradient buffers, see
      :class:`~tuneforge.training.module.FineTuneModule`); and no periodic
      checkpoints (DeepSpeed writes its own, with pickle: see
      :func:`writes_checkpoints`).
    """
    name = str(strategy.name)
    accelerator = str(trainer.accelerator)
    if "timeout" in strategy_kwargs(strategy):
        raise ConfigError(f"strategy.kwargs.timeout: the collective timeout is trainer.collective_timeout_s=<seconds> "
                          f"(now {trainer.collective_timeout_s:g}); remove strategy.kwargs.timeout")
    if name.startswith("fsdp"):
        from tuneforge.training.fsdp import PRECISIONS, check_kwargs

        if name != "fsdp":
            raise ConfigError(f"strategy={name} is not supported: tuneforge's sharded strategy is strategy=fsdp "
                              "(FSDP2); Lightning's FSDP1 strategies write pickled checkpoints and reject norm "
                              "gradient clipping")
        precision = str(trainer.precision)
        # (32, bf16: Lightning's short names for 32-true, bf16-mixed; auto becomes 32-true or bf16-mixed)
        if precision not in (*PRECISIONS, "32", "bf16", "auto"):
            raise ConfigError(f"strategy=fsdp with trainer.precision={precision}: FSDP2 (Lightning's "
                              f"ModelParallelStrategy) takes {', '.join(PRECISIONS)}")
        check_kwargs(strategy_kwargs(strategy))
    if name.startswith("deepspeed"):
        import importlib.util

        if importlib.util.find_spec("deepspeed") is None:
            raise ConfigError(f"strategy={name} needs the deepspeed package, which is not installed: "
                              "pip install 'tuneforge[deepspeed]' (DeepSpeed runs on CUDA GPUs only)")
        if not _cuda_run(accelerator):
            raise ConfigError(f"strategy={name} needs CUDA GPUs (Lightning's DeepSpeed strategy runs only on CUDA; "
                              f"trainer.accelerator={accelerator}, no CUDA device here): on CPU use strategy=ddp")
        stage = int(strategy_kwargs(strategy).get("stage", _deepspeed_stage(name)))
        if stage >= 3:
            raise ConfigError(f"strategy={name}: ZeRO stage 3 partitions the weights, and tuneforge's evaluation and "
                              "saving after training need them whole; use strategy=deepspeed_stage_2")
        if int(trainer.accumulate_grad_batches) > 1:
            raise ConfigError(f"strategy={name} with trainer.accumulate_grad_batches="
                              f"{trainer.accumulate_grad_batches}: DeepSpeed keeps gradients in its own buffers, "
                              "so tuneforge cannot divide them by the token count of the whole accumulation window; "
                              "use trainer.accumulate_grad_batches=1 with a larger loader.batch_size, or strategy=ddp")
        if int(checkpoint.every_n_steps):
            raise ConfigError(f"strategy={name} with checkpoint.every_n_steps={checkpoint.every_n_steps}: "
                              "DeepSpeed writes its checkpoints with torch.save (pickle), which tuneforge neither "
                              "writes nor reads; set checkpoint.every_n_steps=0 (a DeepSpeed run cannot be resumed), "
                              "or use strategy=ddp")


def check_launch(context, trainer: "TrainerConfig") -> None:
    """Stop (one line, before any model loads) when a cluster launcher started other processes than the
    trainer settings make Lightning use: the total (:meth:`tuneforge.RunContext.check_process_count`), and
    what that leaves out, which Lightning would only find once the model and the base evaluation are done
    (its "the product ... does not match the world size" for ``devices=auto``, an ``IndexError`` for a
    local rank past ``trainer.devices``):

    * ``trainer.devices=auto`` (the default): one device per node on the CPU, every visible GPU on CUDA;
    * the processes on this node (``LOCAL_WORLD_SIZE``, SLURM's tasks per node; else this process's local
      rank) against ``trainer.devices``, also when the total matches (``devices=1 num_nodes=2`` with two
      processes on one node).
    """
    from tuneforge.context import LAUNCH_HINTS, device_request, processes_on_this_node

    context.check_process_count(trainer.devices, trainer.num_nodes)
    if context.cluster_environment not in LAUNCH_HINTS or context.world_size <= 1:
        return

    per_node, _ = device_request(trainer.devices)
    nodes = int(trainer.num_nodes)
    local = processes_on_this_node(context)
    launcher, hint = LAUNCH_HINTS[context.cluster_environment]
    here = f"{local} on this node" if local else f"this one has local rank {context.local_rank}"
    if per_node is None:  # auto: what Lightning takes
        per_node, what = _auto_devices(str(trainer.accelerator))
        if per_node * nodes == context.world_size and (local is None or local == per_node):
            return
        raise ConfigError(
            f"{launcher} started {context.world_size} process(es) ({here}) but trainer.devices=auto is {per_node} "
            f"per node here ({what}) x trainer.num_nodes={nodes} = {per_node * nodes}; set trainer.devices="
            f"{local or context.world_size // max(nodes, 1)} (the processes per node), or launch with "
            f"{hint.format(devices=per_node, nodes=nodes)}")
    if (local is not None and local != per_node) or context.local_rank >= per_node:
        fits = (f"trainer.devices={local} trainer.num_nodes={context.world_size // local}" if local else
                "trainer.devices to the processes per node and trainer.num_nodes to the nodes")
        raise ConfigError(
            f"{launcher} started {context.world_size} process(es) ({here}) but trainer.devices={trainer.devices} "
            f"takes {per_node} per node on trainer.num_nodes={nodes}; launch with "
            f"{hint.format(devices=per_node, nodes=nodes)}, or set {fits}")


def _auto_devices(accelerator: str) -> tuple:
    """``(devices per node, why)`` that Lightning takes for ``trainer.devices=auto``: every visible GPU on
    CUDA, else 1."""
    if accelerator in ("auto", "gpu", "cuda"):
        import torch

        if torch.cuda.is_available():
            return max(torch.cuda.device_count(), 1), f"{torch.cuda.device_count()} visible GPU(s)"
    return 1, "the CPU counts as one device"


def takes_timeout(name: str) -> bool:
    """True for the strategies tuneforge builds with ``timeout=trainer.collective_timeout_s``: ``ddp``,
    ``ddp_spawn``, ``fsdp``, ``deepspeed`` and the ``deepspeed_stage_N`` presets (without offload)."""
    name = str(name)
    return name in ("ddp", "ddp_spawn", "fsdp", "deepspeed") or (name.startswith("deepspeed_stage_")
                                                                 and "offload" not in name)


def strategy_kwargs(strategy: "StrategyConfig") -> dict:
    """``strategy.kwargs`` as a plain dict (a copy; empty when unset)."""
    from omegaconf import OmegaConf

    kwargs = strategy.kwargs
    if OmegaConf.is_config(kwargs):
        return OmegaConf.to_container(kwargs, resolve=True)
    return dict(kwargs or {})


def shards_weights(strategy: "StrategyConfig") -> bool:
    """True for ``strategy=fsdp``: the weights are sharded over the ranks during training (FSDP2), and the
    run evaluates and saves an unsharded copy afterwards (:func:`tuneforge.training.fsdp.unsharded_model`)."""
    return str(strategy.name) == "fsdp"


def writes_checkpoints(strategy: "StrategyConfig") -> bool:
    """False under DeepSpeed, whose strategy saves through its engine (pickle) rather than tuneforge's
    safetensors CheckpointIO: such runs save no checkpoints and cannot be resumed."""
    return not str(strategy.name).startswith("deepspeed")


def _deepspeed_stage(name: str) -> int:
    """ZeRO stage of a Lightning DeepSpeed strategy name (``deepspeed_stage_3_offload`` -> 3; ``deepspeed`` -> 2)."""
    import re

    found = re.search(r"stage_(\d)", name)
    return int(found.group(1)) if found else 2


def _cuda_run(accelerator: str) -> bool:
    if accelerator not in ("auto", "gpu", "cuda"):
        return False
    import torch

    return torch.cuda.is_available()


def _strategy_object(name: str, kwargs: dict):
    from lightning.pytorch import strategies

    if name == "fsdp":
        from tuneforge.training.fsdp import fsdp_strategy

        return fsdp_strategy(kwargs)
    classes = {"ddp": strategies.DDPStrategy, "deepspeed": strategies.DeepSpeedStrategy,
               "ddp_spawn": strategies.DDPStrategy}
    if name.startswith("deepspeed_stage_") and "offload" not in name:  # the presets' names, with kwargs
        kwargs, name = dict({"stage": _deepspeed_stage(name)}, **kwargs), "deepspeed"
    if name not in classes:
        raise ConfigError(f"strategy.kwargs are given but strategy.name='{name}' takes none here; "
                          f"valid with kwargs: {sorted([*classes, 'fsdp'])}")
    if name == "ddp_spawn":
        kwargs = dict(kwargs, start_method="spawn")
    return classes[name](**kwargs)


def token_counter():
    """A Lightning callback counting the real (non-padding) tokens of every training batch, for tokens/s.

    Real tokens are the ones of a batch's 2D ``attention_mask`` (1 = token,
    0 = padding; packed batches carry one too), or every ``input_ids`` entry
    when a batch has none.  The first optimizer step of the fit (warm-up:
    allocations, kernel selection, compilation) is left out of
    ``tokens_per_s``, and so is time spent in validation.  :meth:`summary`
    says so with ``excludes_warmup_steps`` (1, or 0 for a fit of one step),
    ``timed_tokens`` and ``timed_s`` being the tokens and seconds measured.
    """
    import time

    import lightning.pytorch as pl

    class TokenCounter(pl.Callback):
        def __init__(self):
            self.tokens = 0
            self._first_step = None
            self._warm = None  # (tokens, time) at the end of the first optimizer step
            self._end = None
            self._validation = 0.0
            self._validation_start = None

        def on_train_start(self, trainer, pl_module):
            self._first_step = trainer.global_step

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if not isinstance(batch, dict):
                return
            mask = batch.get("attention_mask")
            if mask is not None and mask.ndim == 2:
                self.tokens += int(mask.sum())
            elif batch.get("input_ids") is not None:
                self.tokens += int(batch["input_ids"].numel())

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if self._warm is None and self._first_step is not None and trainer.global_step > self._first_step:
                self._warm = (self.tokens, time.perf_counter())

        def on_validation_start(self, trainer, pl_module):
            self._validation_start = time.perf_counter()

        def on_validation_end(self, trainer, pl_module):
            if self._warm is not None and self._validation_start is not None:
                self._validation += time.perf_counter() - self._validation_start
            self._validation_start = None

        def on_train_end(self, trainer, pl_module):
            self._end = time.perf_counter()

        def summary(self, seconds: float, world_size: int = 1, reduce: bool = True) -> dict:
            """Real tokens of all processes over the fit: with ``reduce`` (every rank must call it then)
            summed over the initialized process group, else this process's count times ``world_size``
            (a process that summarises alone, e.g. the main one after a failure)."""
            world = max(int(world_size), 1)
            timed = self._warm is not None and self._end is not None and self.tokens > self._warm[0]
            local_measured = self.tokens - self._warm[0] if timed else 0
            if reduce:
                tokens, measured = all_reduce_sum(self.tokens), all_reduce_sum(local_measured)
            else:
                tokens, measured = self.tokens * world, local_measured * world
            result = {"fit_time_s": seconds, "tokens": tokens}
            if timed:
                elapsed = max(self._end - self._warm[1] - self._validation, 1e-9)
                return {**result, "tokens_per_s": measured / elapsed, "excludes_warmup_steps": 1,
                        "timed_tokens": measured, "timed_s": elapsed}
            return {**result, "tokens_per_s": tokens / max(seconds, 1e-9), "excludes_warmup_steps": 0}

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
