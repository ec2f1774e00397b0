"""An author's mistake: ``state_bytes_per_parameter`` given as text (a TypeError when the spec is made)."""

from dataclasses import dataclass

import tuneforge


@dataclass
class BadStateConfig:
    """(no keys)"""


@tuneforge.hookimpl
def tuneforge_optimizers():
    return [tuneforge.OptimizerSpec("textstate", BadStateConfig, build=lambda groups, settings, config: None,
                                    state_bytes_per_parameter="8 bytes")]
