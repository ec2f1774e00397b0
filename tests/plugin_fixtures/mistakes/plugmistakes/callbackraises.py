"""Mistake: a Lightning callback built by a plugin raises in a training hook."""

from dataclasses import dataclass

import tuneforge


@dataclass
class BoomConfig:
    """at_step: the optimizer step whose batch end raises."""

    at_step: int = 1


def build_boom(config):
    import lightning.pytorch as pl

    class Boom(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if trainer.global_step >= config.at_step:
                raise ZeroDivisionError("division by zero in the learning-rate probe")

    return Boom()


@tuneforge.hookimpl
def tuneforge_callbacks():
    return [tuneforge.CallbackSpec("boom", BoomConfig, "raises in on_train_batch_end", build=build_boom)]
