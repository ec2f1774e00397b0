"""A plugin package as written against tuneforge 0.1 (kept unchanged: the compatibility test runs its tests)."""

from dataclasses import dataclass

import tuneforge


@dataclass
class HeadOnlyConfig:
    """scale: multiplies the initial lm_head weights (1 = unchanged)."""

    scale: float = 1.0


def apply(model, config):
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    head = model.get_output_embeddings()
    head.weight.data.mul_(config.scale)
    head.weight.requires_grad_(True)
    return model


@tuneforge.hookimpl
def tuneforge_adapters():
    return [tuneforge.AdapterSpec("head_only", HeadOnlyConfig, "trains only lm_head", apply=apply)]
