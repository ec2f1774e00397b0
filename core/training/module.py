"""The Lightning module of a run: (model, loss), per-token normalisation over the accumulation window,
the optimizer and learning-rate schedule, non-finite loss handling and checkpoint hooks."""

from __future__ import annotations

import contextlib

import lightning.pytorch as pl
import torch

from tuneforge.errors import TuneforgeError
from tuneforge.losses import loss_weight
from tuneforge.training.rng_state import gather_rng_states, rank_rng_states, set_rng_states


class NonFiniteLossError(TuneforgeError):
    """The training loss became nan or inf."""


class FineTuneModule(pl.LightningModule):
    """Trains ``model`` with ``loss_fn``; the optimizer covers trainable parameters only.

    Loss normalisation: a loss returns the mean over ``num_tokens`` units
    (trained tokens, or preference pairs).  ``training_step`` turns it back
    into a sum (scaled by a constant fixed at the first step, to keep
    magnitudes near a per-token mean) and counts the units of the current
    accumulation window; :meth:`on_before_optimizer_step` (after the window's
    last backward, before gradient clipping) divides the gradients by the
    window's unit count summed over all devices.  So the gradient with
    ``trainer.accumulate_grad_batches=k`` (and/or several devices) equals the
    gradient of one big batch's per-token mean, not a mean of micro-batch
    means.  DeepSpeed keeps gradients in its own buffers, outside
    ``param.grad``: there the loss itself is normalised instead, by the
    micro-batch's unit count summed over all devices (one all-reduce per
    micro-batch), which is the same gradient when each optimizer step is one
    micro-batch; tuneforge refuses DeepSpeed with
    ``trainer.accumulate_grad_batches`` > 1 (see
    :func:`tuneforge.training.trainer.check_strategy`).

    Logged training loss: ``train/loss`` at each optimizer step is the
    per-unit mean over the whole accumulation window on all devices (sum of
    the per-token losses / total tokens, all-reduced), identical on every
    rank and equal to the loss one process would log for the same global
    batch.

    Checkpoints hold every rank's RNG states (a list indexed by global rank);
    each rank resumes with its own.

    Under ``strategy=fsdp`` :meth:`configure_model` shards ``model`` with FSDP2; the gradients
    are then sharded DTensors, which the rescaling above and norm clipping handle as they are.
    """

    #: checkpoints hold only trainable weights (the frozen base comes from the model source)
    strict_loading = False

    def __init__(self, model, loss_fn, optim_config, on_nonfinite_loss: str = "stop", optimizer=None):
        super().__init__()
        if on_nonfinite_loss not in ("stop", "skip"):
            from tuneforge.errors import ConfigError

            raise ConfigError(f"trainer.on_nonfinite_loss is '{on_nonfinite_loss}'; valid: stop, skip")
        self.model = model
        self.loss_fn = loss_fn
        self.optim_config = optim_config
        self.optimizer_component = optimizer
        self.on_nonfinite_loss = on_nonfinite_loss
        self.skipped_batches = 0
        self._window_units = 0.0
        self._window_loss = 0.0  # sum over the window's micro-batches of loss x units (a tensor once training)
        self._loss_scale = None
        self._pending_rng = None
        #: compiled decoder layers for the loss calls (``trainer.compile``, tuneforge.training.compiled_blocks)
        self.block_compiler = None
        #: ``trainer.cpu_attention``: ``auto`` (short bfloat16 rows as matrix products) or ``kernel``
        self.cpu_attention = "auto"
        self._loss_autocast = False  # whether the last loss call ran under autocast
        self._backward_swaps = None  # the forward swaps held open for a backward pass
        self._weight_casts = None  # the fused LoRA layers' frozen weights cast, kept between steps

    def _log_output(self, output, batch, stage: str) -> float:
        weight = loss_weight(output)
        batch_size = _batch_size(batch)
        on_step = stage == "train"
        # validation: token-weighted epoch mean (the per-token mean over the whole split)
        log_size = batch_size if on_step else max(int(weight), 1)
        if not on_step:  # train/loss: the global window mean, logged in on_before_optimizer_step
            self.log(f"{stage}/loss", output.loss.detach(), prog_bar=True, on_step=False, on_epoch=True,
                     batch_size=log_size, sync_dist=True)
        for key, value in output.metrics.items():
            self.log(f"{stage}/{key}", value, on_step=on_step, on_epoch=not on_step, batch_size=log_size,
                     sync_dist=not on_step)
        return weight

    def _loss(self, batch):
        """The loss on ``batch`` inside :meth:`_forward_swaps`."""
        from tuneforge.training.precision import autocast_is_on

        self._leave_backward_swaps()
        self._loss_autocast = autocast_is_on()
        with self._forward_swaps(self._loss_autocast):
            return self.loss_fn(self.model, batch)

    def _forward_swaps(self, autocast: bool):
        """What the model's forward runs with in a loss call: peft's LoRA layers fused on the CPU
        (:func:`tuneforge.training.lora_fused.fused_lora_layers`, their frozen weights' casts kept
        between steps until training ends) and, for those left unfused, under
        autocast (``autocast``: whether the loss call is under it) without peft's redundant input casts
        (:func:`tuneforge.training.precision.input_casts_under_autocast`); grouped-query attention
        without copies of the keys and values on the CPU
        (:func:`tuneforge.training.grouped_query_attention.grouped_query_sdpa`); the attention of short bfloat16 rows
        as matrix products on the CPU (:func:`tuneforge.training.matmul_attention.matmul_attention`,
        ``trainer.cpu_attention``); LoRA dropout's masks from random bits on the CPU
        (:func:`tuneforge.training.lora_dropout.lora_dropout_from_bits`); with ``trainer.compile``,
        the decoder layers compiled (:func:`tuneforge.training.compiled_blocks.compiled_blocks`).

        Gradient checkpointing runs parts of the forward again inside the backward pass and checks that
        they save the same tensors: so the backward pass runs inside the same swaps
        (:meth:`on_before_backward` to :meth:`on_after_backward`)."""
        from tuneforge.training.compiled_blocks import compiled_blocks
        from tuneforge.training.grouped_query_attention import grouped_query_sdpa
        from tuneforge.training.lora_dropout import lora_dropout_from_bits
        from tuneforge.training.lora_fused import WeightCasts, fused_lora_layers
        from tuneforge.training.matmul_attention import matmul_attention
        from tuneforge.training.precision import input_casts_under_autocast

        if self._weight_casts is None:
            self._weight_casts = WeightCasts()
        fused = fused_lora_layers(self.model, self._weight_casts, share_casts=self.block_compiler is None)
        with contextlib.ExitStack() as stack:  # a context that fails to enter leaves the earlier ones
            for context in (input_casts_under_autocast(self.model, autocast=autocast), fused,
                            lora_dropout_from_bits(self.model),
                            grouped_query_sdpa(self.model),
                            matmul_attention(self.model, enabled=self.cpu_attention == "auto"),
                            compiled_blocks(self.model, self.block_compiler)):
                stack.enter_context(context)
            return stack.pop_all()

    def on_before_backward(self, loss):
        """Enter the training step's forward swaps for the backward pass (see :meth:`_forward_swaps`);
        Lightning calls this for every strategy, DeepSpeed included."""
        self._leave_backward_swaps()
        self._backward_swaps = self._forward_swaps(self._loss_autocast)

    def on_after_backward(self):
        self._leave_backward_swaps()

    def _leave_backward_swaps(self):
        """Leave the backward pass's swaps, if a backward pass left them open (it raised)."""
        swaps, self._backward_swaps = self._backward_swaps, None
        if swaps is not None:
            swaps.close()

    def training_step(self, batch, batch_idx):
        output = self._loss(batch)
        weight = self._log_output(output, batch, "train")
        loss = output.loss
        if not torch.isfinite(loss):
            if self.on_nonfinite_loss == "skip":
                self.skipped_batches += 1
                self.log("train/skipped_batches", float(self.skipped_batches), on_step=True)
                return None  # Lightning skips backward and the optimizer step for this batch
            raise NonFiniteLossError(
                f"training loss is {loss.detach().item()} at step {self.global_step + 1} (batch {batch_idx} of epoch "
                f"{self.current_epoch}); the run stops here and the last checkpoint stays the good one. Lower "
                "optim.lr, check the data, or set trainer.on_nonfinite_loss=skip")
        self._window_units += weight
        self._window_loss = self._window_loss + loss.detach().double() * weight
        if self._normalise_in_loss:  # DeepSpeed: divide by this micro-batch's units on all devices now
            units = torch.tensor(weight, dtype=torch.float64, device=self.device)
            units = float(self.trainer.strategy.reduce(units, reduce_op="sum"))
            # DeepSpeed averages gradients over ranks: multiply by world_size to get the plain sum back
            return loss * (weight * self.trainer.world_size / max(units, 1.0))
        if self._loss_scale is None:  # one constant for every rank and step, so the rescale stays exact
            self._loss_scale = float(self.trainer.strategy.broadcast(max(weight, 1.0), src=0))
        # Lightning divides the returned loss by accumulate_grad_batches; undo that here and divide by
        # the window's unit count in on_before_optimizer_step instead.
        return loss * (weight * self.trainer.accumulate_grad_batches / self._loss_scale)

    @property
    def _normalise_in_loss(self) -> bool:
        """True under DeepSpeed, whose gradients are not in ``param.grad`` (see the class docstring)."""
        from lightning.pytorch.strategies import DeepSpeedStrategy

        return self._trainer is not None and isinstance(self.trainer.strategy, DeepSpeedStrategy)

    def on_before_optimizer_step(self, optimizer):
        # one all-reduce: [units, sum of loss x units] of the window over all ranks
        totals = torch.stack([torch.as_tensor(self._window_units, dtype=torch.float64, device=self.device),
                              torch.as_tensor(self._window_loss, dtype=torch.float64, device=self.device)])
        units, loss_sum = self.trainer.strategy.reduce(totals, reduce_op="sum").unbind()
        self._window_units, self._window_loss = 0.0, 0.0
        if float(units) > 0:
            self.log("train/loss", (loss_sum / units).float(), prog_bar=True, on_step=True, on_epoch=False)
        else:  # every micro-batch of the window skipped (on_nonfinite_loss=skip): no train/loss this step
            self._forget_logged("train/loss")
        if self._normalise_in_loss or self._loss_scale is None:  # (None: no finite micro-batch yet)
            return
        # DDP/FSDP average gradients over ranks: multiply by world_size to get the plain sum back
        factor = self._loss_scale * self.trainer.world_size / max(float(units), 1.0)
        if factor != 1.0:
            for group in optimizer.param_groups:
                for parameter in group["params"]:
                    if parameter.grad is not None:
                        parameter.grad.mul_(factor)

    def _forget_logged(self, name: str) -> None:
        """Drop the value of ``name`` this hook logged at an earlier step: Lightning logs (and shows in the
        progress bar) the last value of an ``on_step`` metric at every step until the epoch ends, so a
        step that logs none would repeat a stale one.  Its record is reset as at the end of an epoch and
        it leaves the progress bar; the next :meth:`log` of ``name`` fills both again.  (The run's final
        ``train/loss`` stays the last one logged.)"""
        if self._trainer is None:
            return
        results = getattr(self._trainer, "_results", None)
        for result in list((results or {}).values()):
            meta = getattr(result, "meta", None)
            if meta is not None and meta.name == name and meta.fx == "on_before_optimizer_step":
                result.reset()
        shown = getattr(getattr(self._trainer, "_logger_connector", None), "_progress_bar_metrics", None)
        if isinstance(shown, dict):
            shown.pop(name, None)

    # -- checkpoints: trainable weights, RNG states and the loss scale ---------
    def on_save_checkpoint(self, checkpoint):
        trainable = {f"model.{name}" for name, p in self.model.named_parameters() if p.requires_grad}
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in trainable}
        checkpoint["rng_states"] = gather_rng_states(self.trainer)  # every rank's, indexed by global rank
        checkpoint["loss_scale"] = self._loss_scale
        checkpoint["skipped_batches"] = self.skipped_batches

    def on_load_checkpoint(self, checkpoint):
        saved = checkpoint.get("rng_states")
        self._pending_rng = None if saved is None else rank_rng_states(saved, self.global_rank,
                                                                        self.trainer.world_size)
        self._loss_scale = checkpoint.get("loss_scale")
        self.skipped_batches = checkpoint.get("skipped_batches", 0)

    def on_train_end(self):
        """Free the frozen weights' casts kept between steps (see :meth:`_forward_swaps`): what runs after
        training (evaluation, generation) does not use them."""
        if self._weight_casts is not None:
            self._weight_casts.clear()

    def on_train_batch_start(self, batch, batch_idx):
        if self._pending_rng is not None:  # the RNG as it was right after the checkpointed step
            set_rng_states(self._pending_rng)
            self._pending_rng = None

    def configure_model(self):
        """Under ``strategy=fsdp`` shard the model (FSDP2: each decoder layer, then the root; see
        :mod:`tuneforge.training.fsdp`) before the optimizer is built; other strategies leave it whole."""
        shard = getattr(self.trainer.strategy, "shard_module", None)
        if shard is not None:
            shard(self.model)

    def validation_step(self, batch, batch_idx):
        output = self._loss(batch)
        self._log_output(output, batch, "val")
        return output.loss

    def configure_optimizers(self):
        """The selected optimizer (``optimizer``, a :class:`~tuneforge.host.components.Component` of an
        :class:`~tuneforge.specs.OptimizerSpec`) over the trainable parameters, in the ``optim.scheduler``
        schedule stepped every optimizer step (:mod:`tuneforge.training.optimization`)."""
        from tuneforge.training.optimization import build_optimizer, build_schedule, parameter_groups

        if self.optimizer_component is None:
            raise TypeError("FineTuneModule needs optimizer=<the run's optimizer component> to train "
                            "(RunConfig.optimizer, or a Component of an OptimizerSpec)")
        cfg = self.optim_config
        optimizer = build_optimizer(self.optimizer_component, parameter_groups(self.model, cfg.weight_decay), cfg)
        scheduler = build_schedule(optimizer, cfg, self.trainer.estimated_stepping_batches)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def _batch_size(batch) -> int:
    """Examples in a batch: the first dimension of its first tensor (any dataset layout)."""
    for value in batch.values():
        if isinstance(value, torch.Tensor) and value.ndim:
            return int(value.size(0))
    return 1
