"""Callback ``early_stopping``: stop training when a validation metric stops improving.

A thin wrapper over ``lightning.pytorch.callbacks.EarlyStopping``.  It acts
when validation runs, so set ``trainer.val_check_interval`` (every N steps) or
``trainer.check_val_every_n_epoch``: ``callbacks=[early_stopping]
callbacks.early_stopping.patience=2 trainer.val_check_interval=10``.

A run that cannot validate is refused with one line: before the model loads
when the config shows it (``tuneforge_run_start``: neither validation
setting, ``trainer.limit_val_batches=0``, or a dataset with no held-out
share), and otherwise at the first check when no validation has run yet
(e.g. ``trainer.max_steps`` ends training inside the first epoch and no
``trainer.val_check_interval`` is set), instead of Lightning's traceback.

With ``callbacks.early_stopping.restore_best=true`` the trainable weights of
the best validation are kept in memory and loaded back when training ends,
so the tuned evaluation and ``model/`` get the best step, not the last.
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
    restore_best: when training ends, load back the trainable weights of the
        validation with the best ``monitor`` value (kept in memory: only the
        trainable parameters, small for adapters); the restored step is the
        run's ``train/early_stopping/restored_step`` in metrics.json.
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

    def __post_init__(self) -> None:
        finite = at_least(-math.inf)
        check(self, monitor=non_empty, mode=one_of("min", "max"), patience=at_least(0), min_delta=at_least(0),
              stopping_threshold=finite, divergence_threshold=finite)


NO_VALIDATION = ("callbacks.early_stopping acts only when validation runs, and {why}; set "
                 "trainer.val_check_interval=<steps> (e.g. 10) or trainer.check_val_every_n_epoch=<n> with "
                 "trainer.max_epochs, and give validation data (data.val_fraction > 0, data.val_size or "
                 "data.val_path)")


def build_early_stopping(config: EarlyStoppingConfig):
    import torch
    from lightning.pytorch.callbacks import EarlyStopping

    if config.mode not in ("min", "max"):
        raise tuneforge.ConfigError(f"callbacks.early_stopping.mode is '{config.mode}'; valid: min, max")

    class ValidatedEarlyStopping(EarlyStopping):
        def _run_early_stopping_check(self, trainer) -> None:
            metrics = trainer.callback_metrics
            if self.strict and self.monitor not in metrics and not any(k.startswith("val/") for k in metrics):
                why = f"no validation had run by step {trainer.global_step}, when '{self.monitor}' was first checked"
                if trainer.val_check_interval == 1.0:  # Lightning's value for "unset"
                    why += " (with trainer.val_check_interval unset, validation runs only after a full epoch)"
                raise tuneforge.ConfigError(NO_VALIDATION.format(why=why))
            before = self.best_score.detach().clone()
            super()._run_early_stopping_check(trainer)
            if config.restore_best and not torch.equal(before, self.best_score.to(before.device)):
                self.best_step = int(trainer.global_step)  # a new best: keep the trainable state
                self.best_state = {name: p.detach().to("cpu", copy=True)
                                   for name, p in trainer.lightning_module.named_parameters() if p.requires_grad}

        def on_train_end(self, trainer, pl_module) -> None:
            super().on_train_end(trainer, pl_module)
            if getattr(self, "best_state", None) is None:
                return
            parameters = dict(pl_module.named_parameters())
            with torch.no_grad():
                for name, value in self.best_state.items():
                    parameters[name].copy_(value.to(parameters[name].device))
            trainer.callback_metrics["early_stopping/restored_step"] = torch.tensor(float(self.best_step))

    return ValidatedEarlyStopping(monitor=config.monitor, mode=config.mode, patience=config.patience,
                                  min_delta=config.min_delta, stopping_threshold=config.stopping_threshold,
                                  divergence_threshold=config.divergence_threshold,
                                  check_finite=config.check_finite, strict=config.strict, verbose=False)


def validation_problem(run_config) -> Optional[str]:
    """Why a run never validates, when its typed config (:class:`tuneforge.RunConfig`) shows it; else None.
    The trainer settings are the host's; whether the data holds out validation records is the dataset's
    own declaration (``DatasetSpec.no_validation``), not a reading of its keys."""
    trainer = run_config.settings.trainer
    if trainer.val_check_interval is None and trainer.check_val_every_n_epoch is None:
        return "trainer.val_check_interval and trainer.check_val_every_n_epoch are both null"
    if trainer.limit_val_batches == 0:
        return "trainer.limit_val_batches is 0"
    data = run_config.data
    reason = data.spec.no_validation(data.config) if data.spec.no_validation is not None else None
    if reason:
        return f"data={data.name} holds out no validation data ({reason}, no data.val_path)"
    return None


@tuneforge.hookimpl
def tuneforge_run_start(run_config):
    """Refuse early stopping without validation before the model loads (when the config shows it)."""
    if any(component.name == "early_stopping" and component.config.strict
           for component in run_config.callbacks.values()):
        problem = validation_problem(run_config)
        if problem:
            raise tuneforge.ConfigError(NO_VALIDATION.format(why=problem))


@tuneforge.hookimpl
def tuneforge_callbacks():
    return [tuneforge.CallbackSpec("early_stopping", EarlyStoppingConfig,
                                   "stop when a validation metric stops improving (Lightning EarlyStopping)",
                                   build=build_early_stopping)]
