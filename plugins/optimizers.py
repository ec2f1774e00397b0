"""Optimizers: ``adamw`` (the default), ``adamw_8bit``, ``paged_adamw_8bit`` and ``lion_8bit``
(bitsandbytes), ``adafactor`` (transformers) and ``sgd``.

Each ``build(parameter_groups, settings, config)`` returns a ``torch.optim.Optimizer`` over the
groups the host made (matrices with ``optim.weight_decay``, biases and norms without).  The learning
rate, weight decay, ``betas``, ``eps`` and the schedule come from the run's ``optim`` section
(``settings``); what only one optimizer has is in its own config (``optimizer.<key>``).  The host saves
``optimizer.state_dict()`` in every checkpoint (safetensors + JSON), 8-bit states and their
quantization maps included, and resumes it exactly.  docs/optimizers.md says which to use when.

bitsandbytes is the optional extra ``tuneforge[quantization]``: without it, selecting one of its
optimizers is refused when the config is validated, before anything loads.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import ClassVar, Optional

import tuneforge
from tuneforge.errors import ConfigError
from tuneforge.validation import at_least, between, check, greater_than

#: what to install for the bitsandbytes optimizers
QUANTIZATION_EXTRA = "pip install 'tuneforge[quantization]'"


@dataclass
class AdamWConfig:
    """amsgrad: keep the largest second moment seen so far (AMSGrad) instead of its running average."""

    amsgrad: bool = False


def build_adamw(parameter_groups, settings, config: AdamWConfig):
    import torch

    return torch.optim.AdamW(parameter_groups, lr=settings.lr, betas=tuple(settings.betas), eps=settings.eps,
                             amsgrad=config.amsgrad)


def _require_bitsandbytes(optimizer: str) -> None:
    """The one-line refusal of a bitsandbytes optimizer without bitsandbytes (checked from the config, so
    before the model loads; nothing is imported)."""
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ConfigError(f"optimizer={optimizer} needs bitsandbytes, which is not installed: "
                          f"{QUANTIZATION_EXTRA}")


@dataclass
class EightBitConfig:
    """min_8bit_size: tensors with fewer elements than this keep 32-bit state (bitsandbytes' default: 4096;
        small LoRA matrices are below it, 0 quantizes every state).
    """

    #: the optimizer's name, for the missing-bitsandbytes line
    optimizer: ClassVar[str] = ""
    min_8bit_size: int = 4096

    def __post_init__(self) -> None:
        _require_bitsandbytes(self.optimizer)
        check(self, min_8bit_size=at_least(0))


@dataclass
class AdamW8bitConfig(EightBitConfig):
    optimizer: ClassVar[str] = "adamw_8bit"


@dataclass
class PagedAdamW8bitConfig(EightBitConfig):
    optimizer: ClassVar[str] = "paged_adamw_8bit"


@dataclass
class Lion8bitConfig(EightBitConfig):
    optimizer: ClassVar[str] = "lion_8bit"


def build_adamw_8bit(parameter_groups, settings, config: AdamW8bitConfig):
    from bitsandbytes.optim import AdamW8bit

    return AdamW8bit(parameter_groups, lr=settings.lr, betas=tuple(settings.betas), eps=settings.eps,
                     weight_decay=settings.weight_decay, min_8bit_size=config.min_8bit_size)


def build_paged_adamw_8bit(parameter_groups, settings, config: PagedAdamW8bitConfig):
    from bitsandbytes.optim import PagedAdamW8bit

    return PagedAdamW8bit(parameter_groups, lr=settings.lr, betas=tuple(settings.betas), eps=settings.eps,
                          weight_decay=settings.weight_decay, min_8bit_size=config.min_8bit_size)


def build_lion_8bit(parameter_groups, settings, config: Lion8bitConfig):
    from bitsandbytes.optim import Lion8bit

    return Lion8bit(parameter_groups, lr=settings.lr, betas=tuple(settings.betas), weight_decay=settings.weight_decay,
                    min_8bit_size=config.min_8bit_size)


@dataclass
class AdafactorConfig:
    """scale_parameter: multiply the learning rate by each parameter's root mean square (off: ``optim.lr``
        is the step size, as with Adam).
    clip_threshold: clip each update to this root mean square.
    decay_rate: exponent of the second-moment decay (``1 - step ** decay_rate``).
    beta1: first-moment decay; null keeps no first moment (the memory saving), a value such as 0.9 keeps a
        full one (4 more bytes per parameter).
    eps_square: added to the squared gradients.
    eps_scale: the smallest parameter scale with ``scale_parameter``.
    """

    scale_parameter: bool = False
    clip_threshold: float = 1.0
    decay_rate: float = -0.8
    beta1: Optional[float] = None
    eps_square: float = 1e-30
    eps_scale: float = 1e-3

    def __post_init__(self) -> None:
        check(self, clip_threshold=greater_than(0), decay_rate=between(-1, 0), beta1=between(0, 1, include_high=False),
              eps_square=greater_than(0), eps_scale=greater_than(0))


def build_adafactor(parameter_groups, settings, config: AdafactorConfig):
    """Adafactor with ``relative_step=False``: its own time-dependent step size is off, so ``optim.lr`` and
    ``optim.scheduler`` drive it like every other optimizer here."""
    from transformers.optimization import Adafactor

    return Adafactor(parameter_groups, lr=settings.lr, eps=(config.eps_square, config.eps_scale),
                     clip_threshold=config.clip_threshold, decay_rate=config.decay_rate, beta1=config.beta1,
                     weight_decay=settings.weight_decay, scale_parameter=config.scale_parameter,
                     relative_step=False, warmup_init=False)


@dataclass
class SGDConfig:
    """momentum: momentum factor (0: plain SGD, no state).
    dampening: dampening of the momentum.
    nesterov: Nesterov momentum (needs momentum > 0 and dampening 0).
    """

    momentum: float = 0.9
    dampening: float = 0.0
    nesterov: bool = False

    def __post_init__(self) -> None:
        check(self, momentum=between(0, 1, include_high=False), dampening=between(0, 1))
        if self.nesterov and (self.momentum <= 0 or self.dampening != 0):
            raise ConfigError(f"optimizer.nesterov=true needs optimizer.momentum > 0 and optimizer.dampening=0, got "
                              f"momentum={self.momentum}, dampening={self.dampening}")


def build_sgd(parameter_groups, settings, config: SGDConfig):
    import torch

    return torch.optim.SGD(parameter_groups, lr=settings.lr, momentum=config.momentum, dampening=config.dampening,
                           nesterov=config.nesterov)


@tuneforge.hookimpl
def tuneforge_optimizers():
    return [
        tuneforge.OptimizerSpec("adamw", AdamWConfig, "torch AdamW, decoupled weight decay (the default)",
                                build=build_adamw, state_bytes_per_parameter=8),
        tuneforge.OptimizerSpec("adamw_8bit", AdamW8bitConfig, "AdamW with 8-bit blockwise states (bitsandbytes)",
                                build=build_adamw_8bit, state_bytes_per_parameter=2),
        tuneforge.OptimizerSpec("paged_adamw_8bit", PagedAdamW8bitConfig,
                                "8-bit AdamW whose states page out to CPU memory under GPU memory pressure "
                                "(bitsandbytes; on CPU it is adamw_8bit)",
                                build=build_paged_adamw_8bit, state_bytes_per_parameter=2),
        tuneforge.OptimizerSpec("lion_8bit", Lion8bitConfig, "Lion (sign of the momentum) with an 8-bit state "
                                "(bitsandbytes); use a 3-10x lower optim.lr than AdamW",
                                build=build_lion_8bit, state_bytes_per_parameter=1),
        # factored second moment: rows + columns per matrix, about 4 / rank bytes per parameter of a rank-8 LoRA
        # matrix; beta1 adds a full first moment (4)
        tuneforge.OptimizerSpec("adafactor", AdafactorConfig, "Adafactor with a factored second moment "
                                "(transformers; relative_step off: optim.lr and the schedule drive it)",
                                build=build_adafactor, state_bytes_per_parameter=0.5),
        tuneforge.OptimizerSpec("sgd", SGDConfig, "torch SGD with momentum / Nesterov",
                                build=build_sgd, state_bytes_per_parameter=4),
    ]
