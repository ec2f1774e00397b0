"""Mistake: registered under the entry-point group ``tuneforge.plugins`` instead of ``tuneforge``."""

from dataclasses import dataclass

import tuneforge


@dataclass
class NothingConfig:
    """(no settings)"""


@tuneforge.hookimpl
def tuneforge_adapters():
    return [tuneforge.AdapterSpec("misplaced", NothingConfig, "never loaded", apply=lambda model, config: model)]
