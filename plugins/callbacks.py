"""Callback ``early_stopping``: stop training when a validation metric stops improving.

A thin wrapper over ``lightning.pytorch.callbacks.EarlyStopping``.  It acts
when validation runs, so set ``trainer.val_check_interval`` (every N steps) or
``trainer.check_val_every_n_epoch``: ``callbacks=[early_stopping]
callbacks.early_stopping.patience=2 trainer.val_check_interval=10``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import tuneforge


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
    restore_best: when training ends, load back the trainable weights of the
        validation with the best ``monitor`` value (kept in memory: only the
        trainable parameters, small for adapters), so the tuned evaluation
        and ``model/`` get the best step, not the last.
    """

    monitor: str = "val/loss"
    mode: str = "min"
    patience: int = 3
    min_delta: float = 0.0
    stopping_threshold: Optional[float] = None
    divergence_threshold: Optional[float] = None
    check_finite: bool = True
    strict: bool = True
    restore_best: bool = False


def _restoring_early_stopping():
    """``EarlyStopping`` that keeps the trainable state of each new best validation and loads it back at
    the end of training; the restored step goes to the run's metrics as ``early_stopping/restored_step``."""
    import torch
    from lightning.pytorch.callbacks import EarlyStopping

    class RestoringEarlyStopping(EarlyStopping):
        best_state = None
        best_step = None

        def _keep_if_improved(self, before, trainer, pl_module) -> None:
            if not torch.equal(before, self.best_score.to(before.device)):
                self.best_step = int(trainer.global_step)
                self.best_state = {name: p.detach().to("cpu", copy=True)
                                   for name, p in pl_module.named_parameters() if p.requires_grad}

        def on_validation_end(self, trainer, pl_module) -> None:
            before = self.best_score.detach().clone()
            super().on_validation_end(trainer, pl_module)
            self._keep_if_improved(before, trainer, pl_module)

        def on_train_epoch_end(self, trainer, pl_module) -> None:
            before = self.best_score.detach().clone()
            super().on_train_epoch_end(trainer, pl_module)
            self._keep_if_improved(before, trainer, pl_module)

        def on_train_end(self, trainer, pl_module) -> None:
            if self.best_state is None:
                return
            parameters = dict(pl_module.named_parameters())
            with torch.no_grad():
                for name, value in self.best_state.items():
                    parameters[name].copy_(value.to(parameters[name].device))
            trainer.callback_metrics["early_stopping/restored_step"] = torch.tensor(float(self.best_step))

    return RestoringEarlyStopping


def build_early_stopping(config: EarlyStoppingConfig):
    from lightning.pytorch.callbacks import EarlyStopping

    if config.mode not in ("min", "max"):
        raise tuneforge.ConfigError(f"callbacks.early_stopping.mode is '{config.mode}'; valid: min, max")
    callback_class = _restoring_early_stopping() if config.restore_best else EarlyStopping
    return callback_class(monitor=config.monitor, mode=config.mode, patience=config.patience,
                         min_delta=config.min_delta, stopping_threshold=config.stopping_threshold,
                         divergence_threshold=config.divergence_threshold, check_finite=config.check_finite,
                         strict=config.strict, verbose=False)


@tuneforge.hookimpl
def tuneforge_callbacks():
    return [tuneforge.CallbackSpec("early_stopping", EarlyStoppingConfig,
                                   "stop when a validation metric stops improving (Lightning EarlyStopping)",
                                   build=build_early_stopping)]
