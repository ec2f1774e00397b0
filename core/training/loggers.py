"""The loggers of a run: the run's own ``metrics.csv`` plus the trackers selected with ``loggers=[...]``.

:func:`build_loggers` builds every selected logger (before the model loads, so
a missing tracker library stops the run early) and makes sure one of them
writes ``<run_dir>/metrics.csv``, the file the report, ``tuneforge compare``
and resume read: a selected Lightning ``CSVLogger`` writing there is that file,
otherwise the host adds one.  :class:`RunLoggers` then, in the main process
only, starts the tracker runs by sending the redacted config as hyperparameters
(also before the model loads: a bad URI or an unreachable server stops the run
early), records the tracker run ids (``trackers.json`` at once,
``metrics.json`` at the end), logs the base/tuned evaluator results and closes
the tracker runs.  A logger that cannot be built or started is a one-line
:class:`~tuneforge.errors.ConfigError`.
"""

from __future__ import annotations

import json
import logging
import numbers
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneforge.errors import ConfigError, TuneforgeError, first_line
from tuneforge.host.guard import (describe_plugin, guarded_function, is_own, origin_of, plugin_error,
                             spec_call)
from tuneforge.specs import LoggerContext, call_accepting

log = logging.getLogger("tuneforge")

#: file in the run directory with each selected logger's tracker run id (for resume)
TRACKERS_FILE = "trackers.json"
#: tuneforge's run status -> the status Lightning's ``Logger.finalize`` takes
FINALIZE_STATUS = {"completed": "success", "failed": "failed", "interrupted": "finished"}


@dataclass
class SelectedLogger:
    """One entry of ``cfg.loggers``: its key, spec, config and the logger it built."""

    key: str
    spec: Any
    context: LoggerContext
    logger: Any
    started: bool = False


def run_metrics_logger(run_dir: Path):
    """The Lightning ``CSVLogger`` writing ``<run_dir>/metrics.csv``, every row as soon as it is logged
    (a killed run keeps its history; see :func:`tuneforge.training.run_dir.save_metric_history`)."""
    from lightning.pytorch.loggers import CSVLogger

    return CSVLogger(save_dir=str(run_dir), name="", version="", flush_logs_every_n_steps=1)


def writes_run_metrics(logger, run_dir: Path) -> bool:
    """True when ``logger`` is a Lightning ``CSVLogger`` whose ``metrics.csv`` is the run's own."""
    from lightning.pytorch.loggers import CSVLogger

    return isinstance(logger, CSVLogger) and Path(logger.log_dir).resolve() == Path(run_dir).resolve()


def run_name(run_dir: Path) -> str:
    """The run directory's name; a numbered multirun job (``.../<date>/3``) gets its parent's name too."""
    run_dir = Path(run_dir).resolve()
    return f"{run_dir.parent.name}-{run_dir.name}" if run_dir.name.isdigit() else run_dir.name


def read_tracker_ids(run_dir: Path) -> dict:
    """``{logger key: tracker run id}`` recorded by an earlier attempt of this run (empty if none)."""
    path = Path(run_dir) / TRACKERS_FILE
    try:
        recorded = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return {key: entry.get("run_id") for key, entry in recorded.items() if isinstance(entry, dict)}


def build_loggers(components: dict, run_dir: Path, resuming: bool = False, is_main: bool = True) -> "RunLoggers":
    """Build the selected loggers (``{config key: Component}`` from
    :attr:`tuneforge.host.components.RunConfig.loggers`), in every process;
    Lightning's loggers write only from rank zero.

    ``resuming``: the run continues from a checkpoint, so each logger gets the
    tracker run id it recorded before as ``context.resume_run_id``.
    """
    run_dir = Path(run_dir)
    previous = read_tracker_ids(run_dir) if resuming else {}
    selected = []
    for key, component in components.items():
        spec, node = component.spec, component.config
        context = LoggerContext(run_dir=run_dir, run_name=run_name(run_dir), resume_run_id=previous.get(key),
                                is_main=is_main)
        origin = origin_of(spec)
        try:
            # build(config, context), or build(config) when it takes one parameter
            logger = call_accepting(spec.build, node, optional_args=(context,), optional_args_if_unreadable=True)
        except TuneforgeError:
            raise
        except ImportError as exc:  # a logger that does not check its library itself
            raise ConfigError(f"loggers.{key}: the '{spec.name}' logger cannot import its library "
                              f"({_first_line(exc)}); install it, or leave '{key}' out of loggers=[...]"
                              f"{_named(origin)}") from exc
        except Exception as exc:  # e.g. a tracking URI the library refuses
            if not is_own(origin) and origin is not None:
                raise plugin_error(origin, f"logger '{spec.name}', build", exc) from exc
            raise ConfigError(f"loggers.{key}: the '{spec.name}' logger could not be set up: "
                              f"{_first_line(exc)}") from exc
        selected.append(SelectedLogger(key, spec, context, guard_lightning_logger(logger, origin, spec.name)))
    own = next((s.logger for s in selected if writes_run_metrics(s.logger, run_dir)), None)
    return RunLoggers(run_dir, own if own is not None else run_metrics_logger(run_dir), selected)


class RunLoggers:
    """The loggers of one run.  ``lightning_loggers`` go to the Trainer; the rest runs in the main process."""

    def __init__(self, run_dir: Path, run_metrics, selected: list):
        self.run_dir = Path(run_dir)
        #: the logger writing ``<run_dir>/metrics.csv`` (selected ``csv``, or the host's own)
        self.run_metrics = run_metrics
        self.selected = selected

    @property
    def trackers(self) -> list:
        """The selected loggers other than the one writing the run's ``metrics.csv``."""
        return [s for s in self.selected if s.logger is not self.run_metrics]

    def lightning_loggers(self) -> list:
        """For ``lightning.Trainer(logger=...)``: the run's ``metrics.csv`` logger first (it is
        ``trainer.log_dir``), then the trackers.

        Lightning calls ``finalize("success")`` on its loggers at the end of ``fit`` (``"failed"`` when
        fit raises); a tracker's ``finalize`` is held back until :meth:`finish`, so it is called once,
        after the last row (the base/tuned results of :meth:`log_results`)."""
        for entry in self.trackers:
            _hold_finalize(entry.logger)
        return [self.run_metrics, *(s.logger for s in self.trackers)]

    def start(self, hyperparameters: dict) -> None:
        """Main process, before the model loads: send ``hyperparameters`` (the redacted config) to
        every tracker run that is new (a resumed tracker run has them already), which starts it,
        then write ``trackers.json``.  A tracker that cannot start (bad URI, server unreachable) is
        a one-line :class:`ConfigError`."""
        from tuneforge.training.run_dir import write_json

        for entry in self.trackers:
            try:
                if entry.context.resume_run_id is None:
                    entry.logger.log_hyperparams(hyperparameters)
                entry.started = True
                _record_row(entry)  # the run id: a resumed tracker run is looked up here
            except TuneforgeError:
                raise
            except Exception as exc:
                raise ConfigError(f"loggers.{entry.key}: the '{entry.spec.name}' logger could not start its "
                                  f"run: {_first_line(exc)}") from exc
        if self.selected:
            write_json(self.run_dir / TRACKERS_FILE, self.record())

    def record(self) -> dict:
        """``{logger key: {"logger": name, "run_id": ..., "log_dir": ...}}`` (``metrics.json`` ``trackers``)."""
        return {entry.key: _record_row(entry) for entry in self.selected}

    def log_results(self, metrics: dict, step: int) -> None:
        """Main process, after the tuned evaluation: ``base/<metric>`` and ``tuned/<metric>`` to every
        tracker at ``step`` (not to the run's ``metrics.csv``: the report reads its curves there)."""
        values = {f"{state}/{name}": float(value) for state in ("base", "tuned")
                  for name, value in (metrics.get(state) or {}).items()
                  if isinstance(value, numbers.Real) and not isinstance(value, bool)}
        if not values:
            return
        for entry in self.trackers:
            if entry.started:
                entry.logger.log_metrics(values, step=step)

    def finish(self, status: str) -> None:
        """Main process, once the run ended (``completed``, ``failed`` or ``interrupted``): close every
        tracker run that was started.  A tracker that fails to close is a warning, not a new error."""
        lightning_status = FINALIZE_STATUS.get(status, "failed")
        for entry in self.trackers:
            if not entry.started:
                continue
            _release_finalize(entry.logger)
            try:
                if entry.spec.finish is not None:
                    entry.spec.finish(entry.logger, lightning_status)
                else:
                    entry.logger.finalize(lightning_status)
            except Exception as exc:  # noqa: BLE001 - the run's own outcome must stand
                log.warning("logger '%s'%s did not close cleanly: %s", entry.key, _named(origin_of(entry.spec)),
                            _first_line(exc))
            entry.started = False


#: the methods of a Lightning ``Logger`` the trainer and the host call
LOGGER_METHODS = ("log_metrics", "log_hyperparams", "log_graph", "save", "finalize", "after_save_checkpoint")


def guard_lightning_logger(logger, origin, name: str):
    """Put the Lightning methods of a plugin's logger behind the plugin guard, on the instance itself
    (:mod:`tuneforge.host.guard`); tuneforge's own loggers are left as they are."""
    if origin is None or is_own(origin):
        return logger
    for method in LOGGER_METHODS:
        bound = getattr(logger, method, None)
        if callable(bound):
            setattr(logger, method, guarded_function(origin, f"logger '{name}', {method}", bound))
    return logger


def _hold_finalize(logger) -> None:
    """Make ``logger.finalize`` a no-op until :func:`_release_finalize` (Lightning's end-of-fit call)."""
    if "_tuneforge_finalize" in vars(logger):
        return
    logger._tuneforge_finalize = vars(logger).get("finalize")  # the guard's wrapper, or None (the class's)
    logger.finalize = lambda status="success": None


def _release_finalize(logger) -> None:
    """Give ``logger`` its own ``finalize`` back (see :func:`_hold_finalize`)."""
    if "_tuneforge_finalize" not in vars(logger):
        return
    own = vars(logger).pop("_tuneforge_finalize")
    if own is None:
        del logger.finalize
    else:
        logger.finalize = own


def _named(origin) -> str:
    """`` (plugin 'x', distribution 'd 1.0')`` for a third-party plugin, else ``""``."""
    if origin is None or is_own(origin):
        return ""
    return f" ({describe_plugin(origin)})"


def _record_row(entry: SelectedLogger) -> dict:
    """One logger's ``{"logger": name, "run_id": ..., "log_dir": ...}`` (empty values left out)."""
    logger = entry.logger
    run_id = spec_call(entry.spec, "run_id", entry.spec.run_id, logger) if entry.spec.run_id \
        else getattr(logger, "version", None)
    row = {"logger": entry.spec.name}
    if run_id not in (None, ""):
        row["run_id"] = str(run_id)
    log_dir = getattr(logger, "log_dir", None) or getattr(logger, "save_dir", None)
    if log_dir:
        row["log_dir"] = str(Path(log_dir))
    return row


def _first_line(exc: BaseException) -> str:
    """The error's first line, secrets (URL credentials, secret env values) redacted."""
    from tuneforge.secrets import redact_text

    return redact_text(first_line(exc))
