"""The optimizer and learning-rate schedule of a run, built when Lightning asks for them
(:meth:`tuneforge.training.module.FineTuneModule.configure_optimizers`).

The optimizer comes from the selected ``optimizer`` component (an
:class:`~tuneforge.specs.OptimizerSpec`): :func:`parameter_groups` splits the trainable
parameters as every optimizer gets them (matrices with ``optim.weight_decay``,
biases and norms without), and :func:`build_optimizer` calls the spec's ``build`` as
plugin code and checks that it returned a ``torch.optim.Optimizer``.

:func:`build_schedule` wraps it in ``optim.scheduler``: ``constant``, ``linear`` and
``cosine`` are tuneforge's own (:func:`lr_factor`, with ``optim.min_lr_ratio`` as the
floor); the others are built by ``transformers.get_scheduler``.  Both are a
``LambdaLR`` whose state (the step) goes into every checkpoint.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any

from tuneforge.errors import ConfigError

#: ``optim.scheduler`` values tuneforge computes itself (:func:`lr_factor`)
OWN_SCHEDULES = ("constant", "linear", "cosine")


def parameter_groups(model, weight_decay: float) -> list[dict]:
    """The trainable parameters of ``model`` as two torch parameter groups: matrices (``ndim >= 2``)
    with ``weight_decay``, the others (biases, norms) with none.  Both groups are always there, an empty
    one too (LoRA trains matrices only), so every checkpoint's optimizer state has the same two groups."""
    params = [p for p in model.parameters() if p.requires_grad]
    return [{"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]


def build_optimizer(component, groups: list[dict], settings) -> Any:
    """``component.spec.build(groups, settings, component.config)`` as plugin code; anything other than a
    ``torch.optim.Optimizer`` coming back is a one-line :class:`PluginError` naming the plugin."""
    import torch

    from tuneforge.host.guard import instance_of, spec_call

    spec = component.spec
    return spec_call(spec, "build", spec.build, groups, settings, component.config,
                     returns=instance_of(torch.optim.Optimizer, "a torch.optim.Optimizer over the parameter "
                                                                "groups it was given"))


def build_schedule(optimizer, settings, total: int):
    """The ``LambdaLR`` of ``settings.scheduler`` over ``total`` optimizer steps (``settings``: the run's
    ``optim`` section)."""
    import torch

    total = max(int(total), 1)
    warmup = settings.warmup_steps or int(settings.warmup_ratio * total)
    if settings.scheduler in OWN_SCHEDULES:
        schedule = partial(lr_factor, kind=settings.scheduler, warmup=warmup, total=total,
                           floor=settings.min_lr_ratio)
        return torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    from transformers import get_scheduler

    arguments = transformers_schedule_arguments(settings, warmup, total)
    steps = None if "num_stable_steps" in arguments else total  # given both, transformers 5 warns and takes these
    return get_scheduler(settings.scheduler, optimizer, num_warmup_steps=warmup, num_training_steps=steps,
                         scheduler_specific_kwargs=arguments)


def transformers_schedule_arguments(settings, warmup: int, total: int) -> dict:
    """The ``scheduler_specific_kwargs`` of ``transformers.get_scheduler`` for ``settings.scheduler``, from
    the documented ``optim`` keys; a schedule that cannot fit ``total`` steps is a one-line ConfigError."""
    kind = settings.scheduler
    if kind == "cosine_with_restarts":
        return {"num_cycles": settings.num_cycles}
    if kind == "polynomial":
        if settings.min_lr_ratio >= 1:
            raise ConfigError("optim.scheduler=polynomial decays to lr * optim.min_lr_ratio, which must be below 1 "
                              f"(got {settings.min_lr_ratio}); use optim.scheduler=constant for a constant rate")
        return {"lr_end": settings.lr * settings.min_lr_ratio, "power": settings.power}
    if kind == "inverse_sqrt":
        return {"timescale": settings.timescale}
    if kind == "warmup_stable_decay":
        decay = max(int(round(settings.decay_ratio * total)), 1)
        stable = total - warmup - decay
        if stable < 0:
            raise ConfigError(f"optim.scheduler=warmup_stable_decay: {warmup} warmup + {decay} decay steps "
                              f"(optim.decay_ratio={settings.decay_ratio}) exceed the run's {total} steps; "
                              "lower optim.warmup_steps/warmup_ratio or optim.decay_ratio")
        # named, not derived from num_training_steps: the same call works on transformers 4.47 and 5.x
        return {"num_stable_steps": stable, "num_decay_steps": decay, "min_lr_ratio": settings.min_lr_ratio}
    from tuneforge.host.schema import SCHEDULERS

    raise ConfigError(f"optim.scheduler is '{kind}'; valid: {', '.join(SCHEDULERS)}")


def lr_factor(step: int, *, kind: str, warmup: int, total: int, floor: float) -> float:
    """Multiplier of the base learning rate at optimizer step ``step`` (tuneforge's own schedules)."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    if kind == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if kind == "linear":
        return floor + (1 - floor) * (1 - progress)
    if kind == "cosine":
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
    raise ConfigError(f"optim.scheduler is '{kind}'; valid: {', '.join(OWN_SCHEDULES)}")
