"""A third-party adapter written from the docs alone: LoHa from peft, with only ``apply`` (no ``save``,
``load`` or ``merge``: the host's defaults for a peft model save, load and merge it)."""

from dataclasses import dataclass

import tuneforge
from tuneforge.validation import at_least, check


@dataclass
class LohaConfig:
    """LoHa (``peft.LoHaConfig``) on the attention's query and value projections.

    r: rank of the Hadamard factors.
    """

    r: int = 4

    def __post_init__(self):
        check(self, r=at_least(1))


def apply_loha(model, config):
    from peft import LoHaConfig, get_peft_model

    return get_peft_model(model, LoHaConfig(r=config.r, alpha=config.r, target_modules=["q_proj", "v_proj"]))


@tuneforge.hookimpl
def tuneforge_adapters():
    return [tuneforge.AdapterSpec("loha", LohaConfig, "LoHa through peft, apply only", apply=apply_loha)]
