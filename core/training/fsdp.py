"""``strategy=fsdp``: fully sharded data parallel with FSDP2 (``torch.distributed.fsdp.fully_shard``).

* :class:`FullyShardedStrategy` - Lightning's ``ModelParallelStrategy`` with a 1-D data-parallel
  mesh over all processes (gloo on CPU, nccl on CUDA), whose checkpoints go through tuneforge's
  pickle-free CheckpointIO: the trainable weights and the optimizer state are gathered whole to
  rank 0 (``get_model_state_dict`` / ``get_optimizer_state_dict`` with ``full_state_dict=True,
  cpu_offload=True``), written as safetensors + JSON, and on resume read back and sharded again
  (``set_model_state_dict`` / ``set_optimizer_state_dict``).
* :func:`shard_model` - ``fully_shard`` on each decoder layer (the classes a transformers model
  lists in ``_no_split_modules``), then on the root; called from
  :meth:`tuneforge.training.module.FineTuneModule.configure_model`.
* :func:`unsharded_model` - after training, the model whole on every rank: with FSDP2 every
  forward is a collective, so evaluation (which gives ranks different batches and generation
  lengths) and saving use a plain copy, built again through the model source and adapter and
  loaded with the gathered full state.
"""

from __future__ import annotations

import inspect
from contextlib import contextmanager
import logging
from datetime import timedelta
from typing import Any, Callable, Optional

import torch
from lightning.fabric.plugins.collectives.torch_collective import default_pg_timeout
from lightning.pytorch.strategies import ModelParallelStrategy

from tuneforge.errors import ConfigError
from tuneforge.training.checkpoint import CheckpointError

log = logging.getLogger("tuneforge")

#: Lightning's precisions that ``ModelParallelStrategy`` accepts
PRECISIONS = ("32-true", "bf16-mixed", "bf16-true", "16-true")


def _full(cpu_offload: bool = True, **extra):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=cpu_offload, **extra)


class FullyShardedStrategy(ModelParallelStrategy):
    """FSDP2 over every process of the run (``data_parallel_size`` = world size, no tensor parallelism).

    ``reshard_after_forward``: ``fully_shard``'s option for the decoder layers (None: its default,
    True: gathered again for the backward).  ``process_group_backend``: default ``gloo`` on CPU, ``nccl``
    on CUDA.  The model is sharded in the module's ``configure_model`` (:meth:`shard_module`).
    Checkpoints: see the module docstring; Lightning restores the loops, schedulers and callbacks
    from the same checkpoint dict.
    """

    def __init__(self, reshard_after_forward: Optional[bool] = None, process_group_backend: Optional[str] = None,
                 timeout: Optional[timedelta] = default_pg_timeout):
        super().__init__(data_parallel_size="auto", tensor_parallel_size=1, save_distributed_checkpoint=False,
                         process_group_backend=process_group_backend, timeout=timeout)
        self.reshard_after_forward = reshard_after_forward

    def setup_environment(self) -> None:
        self._data_parallel_size = self.num_nodes * self.num_processes  # every process shards the same model
        super().setup_environment()

    def shard_module(self, module: torch.nn.Module) -> None:
        layers = shard_model(module, self.device_mesh["data_parallel"], self.reshard_after_forward)
        if self.is_global_zero:
            log.info("fsdp: %d decoder layer(s) and the root sharded over %d process(es)", layers, self.world_size)

    @contextmanager
    def block_backward_sync(self):
        """Gradient accumulation: the micro-batches before the optimizer step keep their gradients local
        (``set_requires_gradient_sync(False)``), so one reduce-scatter per optimizer step sums every
        rank's accumulated gradient, as DDP's ``no_sync`` does: the same sums, in the same order, as DDP
        (and one collective instead of one per micro-batch)."""
        from torch.distributed.fsdp import FSDPModule

        sharded = [m for m in (self.model.modules() if self.model is not None else ()) if isinstance(m, FSDPModule)]
        for module in sharded:
            module.set_requires_gradient_sync(False, recurse=False)
        try:
            yield None
        finally:
            for module in sharded:
                module.set_requires_gradient_sync(True, recurse=False)

    # -- checkpoints: whole on rank 0, through tuneforge's CheckpointIO (safetensors + JSON) --
    def lightning_module_state_dict(self) -> dict:
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        return get_model_state_dict(self.model, options=_full(ignore_frozen_params=True))

    def optimizer_state(self, optimizer) -> dict:
        from lightning.pytorch.core.optimizer import LightningOptimizer
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

        if isinstance(optimizer, LightningOptimizer):
            optimizer = optimizer._optimizer
        return get_optimizer_state_dict(self.model, optimizer, options=_full())  # keyed by parameter name

    def save_checkpoint(self, checkpoint: dict, filepath, storage_options: Optional[Any] = None) -> None:
        if self.is_global_zero:  # the other ranks' dicts hold no weights (gathered to rank 0)
            self.checkpoint_io.save_checkpoint(checkpoint, filepath, storage_options=storage_options)

    def load_checkpoint(self, checkpoint_path, weights_only: Optional[bool] = None) -> dict:
        from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

        checkpoint = self.checkpoint_io.load_checkpoint(checkpoint_path)  # every rank reads the directory
        optimizer_states = checkpoint.get("optimizer_states") or []
        for state in optimizer_states:
            if any(not isinstance(p, str) for group in state.get("param_groups", []) for p in group["params"]):
                raise CheckpointError(f"checkpoint {checkpoint_path} was written without strategy=fsdp (its "
                                      "optimizer state is keyed by parameter index): resume it with the strategy "
                                      "it was written with, or resume=never")
        result = set_model_state_dict(self.model, checkpoint.get("state_dict") or {},
                                      options=_full(cpu_offload=False, strict=False))
        if result.unexpected_keys:
            raise CheckpointError(f"checkpoint {checkpoint_path} holds weights this model does not have: "
                                  f"{', '.join(sorted(result.unexpected_keys)[:5])}")
        for optimizer, state in zip(self.optimizers, optimizer_states):
            set_optimizer_state_dict(self.model, optimizer, state, options=_full(cpu_offload=False))
        return checkpoint


def check_kwargs(kwargs: dict) -> None:
    """One-line error for ``strategy.kwargs`` that :class:`FullyShardedStrategy` does not take (e.g. the
    ``sharding_strategy`` / ``use_orig_params`` of Lightning's FSDP1 strategy)."""
    valid = [name for name in inspect.signature(FullyShardedStrategy.__init__).parameters
             if name not in ("self", "timeout")]  # timeout: trainer.collective_timeout_s
    unknown = sorted(set(kwargs) - set(valid))
    if unknown:
        raise ConfigError(f"strategy.kwargs {', '.join(unknown)}: not options of strategy=fsdp (FSDP2, torch's "
                          f"fully_shard); valid: {', '.join(valid)}")


def fsdp_strategy(kwargs: dict) -> FullyShardedStrategy:
    """:class:`FullyShardedStrategy` from ``strategy.kwargs`` (plus ``timeout``: trainer.collective_timeout_s)."""
    check_kwargs({key: value for key, value in kwargs.items() if key != "timeout"})
    return FullyShardedStrategy(**kwargs)


def decoder_layer_classes(model: torch.nn.Module) -> set:
    """Class names of the blocks to shard one by one: what the transformers models inside ``model``
    list in ``_no_split_modules`` (e.g. ``LlamaDecoderLayer``); empty for other models."""
    names: set = set()
    for module in model.modules():
        listed = getattr(module, "_no_split_modules", None)
        if isinstance(listed, (list, tuple, set)):
            names.update(str(name) for name in listed)
    return names


def decoder_layers(model: torch.nn.Module) -> list:
    """The decoder layers of ``model``: its modules whose class, or the class FSDP2 derived it from
    (``FSDPLlamaDecoderLayer``, :func:`unsharded_class_name`), is one of :func:`decoder_layer_classes`;
    what ``strategy=fsdp`` shards one by one and ``trainer.compile`` compiles."""
    names = decoder_layer_classes(model)
    return [module for module in model.modules() if unsharded_class_name(module) in names]


def unsharded_class_name(module: torch.nn.Module) -> str:
    """The class name of ``module``, or of the class FSDP2 derived it from (``FSDPLlamaDecoderLayer``)."""
    cls = type(module)
    if cls.__name__.startswith("FSDP") and len(cls.__bases__) > 1:
        return cls.__bases__[-1].__name__
    return cls.__name__


def shard_model(model: torch.nn.Module, mesh, reshard_after_forward: Optional[bool] = None) -> int:
    """``fully_shard`` each decoder layer of ``model``, then ``model`` itself, over ``mesh``; returns the
    number of layers sharded separately.  A model sharded already is left as it is.

    ``reshard_after_forward`` applies to the layers; the root keeps ``fully_shard``'s default (its
    weights stay gathered from its forward to the backward), so a loss may apply the output layer to
    the hidden states the forward returned (:func:`tuneforge.losses.trained_logits`)."""
    from torch.distributed.fsdp import FSDPModule, fully_shard

    if isinstance(model, FSDPModule):  # configure_model may be called again (e.g. a second fit)
        return 0
    options = {} if reshard_after_forward is None else {"reshard_after_forward": bool(reshard_after_forward)}
    layers = decoder_layers(model)  # none sharded yet: the root and its layers are sharded together
    for layer in layers:
        fully_shard(layer, mesh=mesh, **options)
    fully_shard(model, mesh=mesh)
    return len(layers)


def is_sharded(model: torch.nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return any(isinstance(module, FSDPModule) for module in model.modules())


def unsharded_model(model: torch.nn.Module, build: Callable[[], torch.nn.Module]) -> torch.nn.Module:
    """A plain (unsharded) copy of the fully sharded ``model`` on every rank: ``build()`` makes the
    same model again (model source + adapter; the global RNG is left as it was), and it is loaded
    with ``model``'s full state (every parameter and buffer, all-gathered: a collective, every
    rank must call it).  Its forward involves no other rank, so the ranks may evaluate different
    examples and generate different numbers of tokens."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    state = get_model_state_dict(model, options=_full(cpu_offload=False))
    with torch.random.fork_rng(devices=[]):
        copy = build()
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    copy.load_state_dict(state, strict=True)
    for name, parameter in copy.named_parameters():
        parameter.requires_grad_(name in trainable)
    return copy
