"""Loggers ``csv``, ``tensorboard``, ``mlflow`` and ``wandb``: thin wrappers over Lightning's loggers.

Selected as a list, ``loggers=[csv,tensorboard]`` (default ``[csv]``).  The
tracker libraries are optional: ``pip install 'tuneforge[tensorboard]'``
(or ``[mlflow]``, ``[wandb]``); selecting a logger whose library is missing
stops the run before the model loads, naming the install command.  Every
tracker keeps its local files under the run directory unless configured
otherwise.  See docs/trackers.md.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import tuneforge


def require(logger: str, modules: tuple, extra: str) -> None:
    """Stop with a one-line :class:`tuneforge.ConfigError` unless one of ``modules`` imports."""
    problems = []
    for module in modules:
        try:
            importlib.import_module(module)
            return
        except ImportError as exc:
            problems.append((str(exc).splitlines() or [type(exc).__name__])[0])
    raise tuneforge.ConfigError(
        f"loggers=[{logger}] needs the {' or '.join(repr(m) for m in modules)} package, which cannot be imported "
        f"({'; '.join(problems)}); install it with: pip install 'tuneforge[{extra}]' "
        f"(or leave {logger} out of loggers=[...])")


@dataclass
class CSVConfig:
    """Per-step metrics as CSV (Lightning's CSVLogger).

    save_dir: null: the run directory, whose ``metrics.csv`` is the file the
        report, ``tuneforge compare`` and resume read; a folder: a separate
        ``metrics.csv`` there (the run's own is written as well).
    flush_logs_every_n_steps: write buffered rows to disk every N steps (and at the end, and
        around every checkpoint).  1: every row is on disk as soon as it is logged, so a run
        killed at any moment keeps its whole loss history.
    """

    save_dir: Optional[str] = None
    flush_logs_every_n_steps: int = 1


def build_csv(config: CSVConfig, context: tuneforge.LoggerContext):
    from lightning.pytorch.loggers import CSVLogger

    return CSVLogger(save_dir=str(config.save_dir or context.run_dir), name="", version="",
                     flush_logs_every_n_steps=config.flush_logs_every_n_steps)


@dataclass
class TensorBoardConfig:
    """TensorBoard event files (Lightning's TensorBoardLogger); ``tensorboard --logdir <run_dir>/tensorboard``.

    save_dir: the folder of the event files; null: ``<run_dir>/tensorboard``
        (a resumed run appends to the same folder).
    default_hp_metric: log Lightning's placeholder ``hp_metric`` (-1) with the
        hyperparameters, which TensorBoard's HPARAMS tab needs to list the run;
        false: the config is kept only in ``hparams.yaml`` next to the events.
    """

    save_dir: Optional[str] = None
    default_hp_metric: bool = True


def build_tensorboard(config: TensorBoardConfig, context: tuneforge.LoggerContext):
    require("tensorboard", ("tensorboard", "tensorboardX"), "tensorboard")
    from lightning.pytorch.loggers import TensorBoardLogger

    folder = config.save_dir or Path(context.run_dir) / "tensorboard"
    return TensorBoardLogger(save_dir=str(folder), name="", version="", default_hp_metric=config.default_hp_metric)


@dataclass
class MLflowConfig:
    """MLflow tracking (Lightning's MLFlowLogger).

    tracking_uri: where runs go: a ``file:`` folder, ``sqlite:///mlflow.db``
        (needs the full ``mlflow`` package) or an ``http(s)://`` server; null:
        the ``MLFLOW_TRACKING_URI`` environment variable, else
        ``file:<run_dir>/mlruns``.
    experiment_name: the MLflow experiment the run is filed under (created if missing).
    run_name: the MLflow run's name; null: the run directory's name.
    tags: extra tags of the MLflow run, e.g. ``{team: nlp}``.
    artifact_location: where a newly created experiment stores artifacts; null: MLflow's default.
    """

    tracking_uri: Optional[str] = None
    experiment_name: str = "tuneforge"
    run_name: Optional[str] = None
    tags: dict = field(default_factory=dict)
    artifact_location: Optional[str] = None


def mlflow_tracking_uri(config: MLflowConfig, run_dir) -> str:
    """The configured URI, else ``MLFLOW_TRACKING_URI``, else a file store in the run directory."""
    return (config.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
            or f"file:{(Path(run_dir) / 'mlruns').resolve()}")


def build_mlflow(config: MLflowConfig, context: tuneforge.LoggerContext):
    require("mlflow", ("mlflow",), "mlflow")
    from lightning.pytorch.loggers import MLFlowLogger

    uri = mlflow_tracking_uri(config, context.run_dir)
    if uri.startswith("file:") or "://" not in uri:
        # MLflow >= 3.x refuses its file store (maintenance mode) unless this is set; a local
        # folder store is what a run directory holds without a server or a database.
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    return MLFlowLogger(experiment_name=config.experiment_name, run_name=config.run_name or context.run_name,
                        tracking_uri=uri, tags=dict(config.tags) or None,
                        artifact_location=config.artifact_location, run_id=context.resume_run_id)


@dataclass
class WandbConfig:
    """Weights & Biases (Lightning's WandbLogger); offline unless ``loggers.wandb.offline=false``.

    offline: keep the run on disk only (upload later with ``wandb sync
        <run_dir>/wandb/offline-run-...``); false: stream it to the W&B server
        (needs ``wandb login`` or ``WANDB_API_KEY``).
    project: the W&B project.
    entity: the W&B user or team; null: your default entity.
    run_name: the W&B run's display name; null: the run directory's name.
    group: a W&B group to file the run under (e.g. one sweep); null: none.
    tags: tags of the W&B run.
    save_dir: where wandb writes its local ``wandb/`` folder; null: the run directory.
    console: wandb's copy of the terminal output (``off``, ``auto``, ``wrap``,
        ``redirect``); off by default, as a copy of the output could carry what
        tuneforge keeps out of its own files.
    """

    offline: bool = True
    project: str = "tuneforge"
    entity: Optional[str] = None
    run_name: Optional[str] = None
    group: Optional[str] = None
    tags: list = field(default_factory=list)
    save_dir: Optional[str] = None
    console: str = "off"


WANDB_CONSOLE = ("off", "auto", "wrap", "redirect", "wrap_raw", "wrap_emu")


def build_wandb(config: WandbConfig, context: tuneforge.LoggerContext):
    if config.console not in WANDB_CONSOLE:
        raise tuneforge.ConfigError(f"loggers.wandb.console is '{config.console}'; valid: {', '.join(WANDB_CONSOLE)}")
    require("wandb", ("wandb",), "wandb")
    import wandb
    from lightning.pytorch.loggers import WandbLogger

    save_dir = Path(config.save_dir or context.run_dir)
    if context.is_main:
        save_dir.mkdir(parents=True, exist_ok=True)
    # wandb's system metadata records the command line, where a token may have been typed: off.
    settings = wandb.Settings(x_disable_meta=True, console=config.console)
    # ``mode`` rather than Lightning's ``offline=``, which sets WANDB_MODE for the rest of the process
    return WandbLogger(name=config.run_name or context.run_name, project=config.project, entity=config.entity,
                       group=config.group, tags=list(config.tags) or None, save_dir=str(save_dir),
                       id=context.resume_run_id, mode="offline" if config.offline else "online", settings=settings)


def finish_wandb(logger, status: str) -> None:
    """Lightning's ``finalize``, then close the wandb run (Lightning leaves it open until the process exits,
    so the next run of a multirun sweep would log into it)."""
    logger.finalize(status)
    logger.experiment.finish(exit_code=0 if status == "success" else 1)


@tuneforge.hookimpl
def tuneforge_loggers():
    return [
        tuneforge.LoggerSpec("csv", CSVConfig, "per-step metrics as CSV: the run's metrics.csv (Lightning CSVLogger)",
                             build=build_csv),
        tuneforge.LoggerSpec("tensorboard", TensorBoardConfig,
                             "TensorBoard event files in <run_dir>/tensorboard (needs tuneforge[tensorboard])",
                             build=build_tensorboard),
        tuneforge.LoggerSpec("mlflow", MLflowConfig,
                             "MLflow tracking; a file store in <run_dir>/mlruns by default (needs tuneforge[mlflow])",
                             build=build_mlflow),
        tuneforge.LoggerSpec("wandb", WandbConfig,
                             "Weights & Biases, offline in <run_dir>/wandb by default (needs tuneforge[wandb])",
                             build=build_wandb, finish=finish_wandb),
    ]
