"""Callback ``early_stopping``: stop training when a validation metric stops improving.

A thin wrapper over ``lightning.pytorch.callbacks.EarlyStopping``.  It acts
when validation runs, so set ``trainer.val_check_interval`` (every N steps) or
``trainer.check_val_every_n_epoch``: ``callbacks=[early_stopping]
callbacks.early_stopping.patience=2 trainer.val_check_interval=10``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import math

import tuneforge
from tuneforge.validation import at_least, check, non_empty, one_of


@dataclass
class EarlyStoppingConfig:
    """monitor: logged validation metric (``val/loss``, or ``val/<metric>`` a loss logs).
    mode: ``min`` (lower is better) or ``max``.
    patience: validation checks without improvement before stopping.
    min_delta: smallest change that counts as an improvement.
    stopping_threshold: stop as soon as the metric is better than this.
    divergence_threshold: stop as soon as the metric is worse than this.
    check_finite: stop when the metric becomes NaN or infinite.
    strict: a missing ``monitor`` metric is an error (otherwise a warning).
    """

    monitor: str = "val/loss"
    mode: str = "min"
    patience: int = 3
    min_delta: float = 0.0
    stopping_threshold: Optional[float] = None
    divergence_threshold: Optional[float] = None
    check_finite: bool = True
    strict: bool = True

    def __post_init__(self) -> None:
        finite = at_least(-math.inf)
        check(self, monitor=non_empty, mode=one_of("min", "max"), patience=at_least(0), min_delta=at_least(0),
              stopping_threshold=finite, divergence_threshold=finite)


def build_early_stopping(config: EarlyStoppingConfig):
    from lightning.pytorch.callbacks import EarlyStopping

    return EarlyStopping(monitor=config.monitor, mode=config.mode, patience=config.patience,
                         min_delta=config.min_delta, stopping_threshold=config.stopping_threshold,
                         divergence_threshold=config.divergence_threshold, check_finite=config.check_finite,
                         strict=config.strict, verbose=False)


@tuneforge.hookimpl
def tuneforge_callbacks():
    return [tuneforge.CallbackSpec("early_stopping", EarlyStoppingConfig,
                                   "stop when a validation metric stops improving (Lightning EarlyStopping)",
                                   build=build_early_stopping)]
