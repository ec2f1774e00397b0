"""Mistake: a config dataclass field without a default."""

from dataclasses import dataclass

import tuneforge


@dataclass
class ScaleConfig:
    """factor: multiplies nothing (the field has no default: the mistake)."""

    factor: float


@tuneforge.hookimpl
def tuneforge_adapters():
    return [tuneforge.AdapterSpec("scale", ScaleConfig, "an adapter whose config lacks a default",
                                  apply=lambda model, config: model)]
