"""Adapters: ``lora`` (through peft) and ``full`` (every weight trains)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import tuneforge
from tuneforge.errors import ModelError


@dataclass
class LoraAdapterConfig:
    """Low-rank adapters (``peft.LoraConfig``; field meanings as there).

    r: rank of the update matrices.  lora_alpha: scaling numerator (scale is
    alpha/r, or alpha/sqrt(r) with ``use_rslora``).  lora_dropout: dropout on
    the adapter input.  target_modules: module names or ``all-linear``.
    bias: ``none``, ``all`` or ``lora_only``.  use_dora: weight-decomposed LoRA.
    modules_to_save: extra modules trained in full and saved (e.g. ``lm_head``).
    init_lora_weights: True (B=0, the adapter starts as a no-op), ``gaussian``,
    ``pissa`` ...
    """

    r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    target_modules: Any = "all-linear"
    bias: str = "none"
    use_dora: bool = False
    use_rslora: bool = False
    modules_to_save: Optional[list] = None
    init_lora_weights: Any = True
    layers_to_transform: Optional[list] = None


@dataclass
class FullAdapterConfig:
    """Full fine-tuning: every parameter trains; saved as safetensors weights.

    gradient_checkpointing: trade compute for activation memory.
    """

    gradient_checkpointing: bool = False


def _plain(value):
    from omegaconf import DictConfig, ListConfig, OmegaConf

    return OmegaConf.to_container(value) if isinstance(value, (DictConfig, ListConfig)) else value


def apply_lora(model, config: LoraAdapterConfig):
    from peft import LoraConfig, TaskType, get_peft_model

    lora_config = LoraConfig(
        task_type=TaskType.CAUSAL_LM, r=config.r, lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout, target_modules=_plain(config.target_modules), bias=config.bias,
        use_dora=config.use_dora, use_rslora=config.use_rslora,
        modules_to_save=_plain(config.modules_to_save), init_lora_weights=_plain(config.init_lora_weights),
        layers_to_transform=_plain(config.layers_to_transform))
    try:
        return get_peft_model(model, lora_config)
    except ValueError as exc:
        raise ModelError(f"adapter.target_modules={_plain(config.target_modules)!r} does not fit the "
                         f"model: {str(exc).splitlines()[0]}") from exc


def apply_full(model, config: FullAdapterConfig):
    for parameter in model.parameters():
        parameter.requires_grad_(True)
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    return model


@tuneforge.hookimpl
def tuneforge_adapters():
    return [
        tuneforge.AdapterSpec("lora", LoraAdapterConfig, "LoRA / DoRA / rsLoRA through peft",
                              apply=apply_lora),
        tuneforge.AdapterSpec("full", FullAdapterConfig, "train every weight", apply=apply_full),
    ]
