"""A tuneforge plugin for the benchmark: the ``bench_probe`` callback.

Registered in-process by ``tuneforge_run.py`` (``load_plugins(..., extra_plugins=[this
module])``) and selected with ``callbacks=[bench_probe]``, it watches a real ``tuneforge``
training run without changing it: the checksum of the trainable weights when training starts,
and for every training batch its digest, real-token count, positions (batch x padded length) and
trained positions (``labels[:, 1:] != -100``) when it starts, and the
``time.perf_counter()`` when its optimizer step is done (on a GPU: once its kernels have run).  The losses are read afterwards from
the run's own ``metrics.csv``.
"""

from __future__ import annotations

from dataclasses import dataclass

import tuneforge

#: the probes built in this process, newest last (the benchmark child reads ``PROBES[-1]``)
PROBES: list = []


@dataclass
class ProbeConfig:
    """The benchmark probe has no options."""


def build_probe(config: ProbeConfig):
    import lightning.pytorch as pl

    from common import batch_digest, real_tokens, step_clock, trainable_checksum

    class BenchProbe(pl.Callback):
        def __init__(self):
            self.init_checksum = None
            self.digests, self.tokens, self.step_end = [], [], []
            self.positions, self.trained = [], []

        def on_train_start(self, trainer, pl_module):
            self.init_checksum = trainable_checksum(pl_module.model)

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self.digests.append(batch_digest(batch))
            self.tokens.append(real_tokens(batch))
            self.positions.append(int(batch["input_ids"].numel()))
            self.trained.append(int((batch["labels"][..., 1:] != -100).sum()))

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.step_end.append(step_clock())

    probe = BenchProbe()
    PROBES.append(probe)
    return probe


@tuneforge.hookimpl
def tuneforge_callbacks():
    return [tuneforge.CallbackSpec("bench_probe", ProbeConfig,
                                   "benchmark probe: step clock, batch digests, initial weights checksum",
                                   build=build_probe)]
