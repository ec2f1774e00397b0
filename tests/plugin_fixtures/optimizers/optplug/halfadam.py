"""A third-party optimizer: ``halfadam``, torch's Adam (no decoupled decay) with its own config key."""

from dataclasses import dataclass

import tuneforge


@dataclass
class HalfAdamConfig:
    """scale: multiplies optim.lr (the step size is lr * scale)."""

    scale: float = 0.5


def build(parameter_groups, settings, config):
    import torch

    return torch.optim.Adam(parameter_groups, lr=settings.lr * config.scale, betas=tuple(settings.betas),
                            eps=settings.eps)


@tuneforge.hookimpl
def tuneforge_optimizers():
    return [tuneforge.OptimizerSpec("halfadam", HalfAdamConfig, "Adam at a fraction of optim.lr", build=build,
                                    state_bytes_per_parameter=8)]
