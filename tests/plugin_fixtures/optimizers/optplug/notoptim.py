"""An author's mistake: ``build`` returns the parameter groups instead of an optimizer."""

from dataclasses import dataclass

import tuneforge


@dataclass
class NotOptimConfig:
    """(no keys)"""


@tuneforge.hookimpl
def tuneforge_optimizers():
    return [tuneforge.OptimizerSpec("groups_only", NotOptimConfig,
                                    build=lambda parameter_groups, settings, config: parameter_groups)]
