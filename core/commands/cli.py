"""The ``tuneforge`` command line.

    tuneforge train [--debug] [key=value ...]   fine-tune (Hydra overrides; -m for sweeps)
    tuneforge plugins                           installed plugins and what each contributes
    tuneforge --help | --version

This module imports nothing heavy at import time, so ``--help`` is instant.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional

USAGE = """\
usage: tuneforge <command> [options] [key=value ...]

Fine-tune pretrained language models with plugins for datasets, adapters,
losses and evaluators, composed by Hydra and run by Lightning.

commands:
  train      fine-tune; arguments are Hydra overrides, e.g.
               tuneforge train model=tiny data=jsonl data.path=train.jsonl adapter=lora adapter.r=8
             'tuneforge train --help [group=choice]' lists config groups, their choices and the fields
             (type, default, doc) of the selected choices;
             '--cfg job' prints the composed config; '-m' sweeps over values;
             'evidence.seeds=3' trains 3 seeds (<run_dir>/seed-<seed>) and folds them (seeds.json).
  plugins    list installed plugins, their versions and the components they contribute; a broken plugin
             is listed with its one-line reason, an entry point in a wrong group as 'not loaded'
  eval       run the evaluators on a finished run (base vs tuned) or on a bare model:
               tuneforge eval run_dir=runs/x [evaluators=[exact_match,rouge] data.val_path=...]
               tuneforge eval model=hf model.path=... data.path=... [out=<dir>]
  generate   answer one prompt with a run's tuned model, streaming to stdout:
               tuneforge generate run_dir=runs/x prompt="..." [max_new_tokens=256 temperature=0 top_p=1 system=...]
  chat       chat with a run's tuned model on stdin (keeps the history; /exit or EOF quits):
               tuneforge chat run_dir=runs/x [system=... temperature=0]
  export     merge the run's LoRA/IA3 adapter into the base weights and save a Hugging Face model folder:
               tuneforge export run_dir=runs/x out=merged/
             'tuneforge <generate|chat|export> --help' lists their keys.

  compare    runs side by side (e.g. a data.max_examples sweep, seeds): every column, verdicts, mean and
             spread over seeds; comparison.md and data_efficiency.png in a new compare-<date>_<time>/ (or out=)
               tuneforge compare runs/multirun/<date>
  status     how runs ended (completed, failed with its error, interrupted, running):
               tuneforge status runs/<run> | runs/multirun/<date>
  config     what can be configured: 'tuneforge config groups' (choices and the plugin providing each),
             'tuneforge config show adapter=lora' (a choice's fields with type, default and doc)
  new-plugin write a ready plugin package to start from:
               tuneforge new-plugin NAME [--kinds model,dataset,adapter,loss,evaluator,callback,baseline,logger] [--dir PATH]

options:
  -h, --help     show this help
  --version      show the version
  --debug        show full tracebacks instead of one-line errors (HYDRA_FULL_ERROR=1 does the same)

environment:
  TUNEFORGE_DISABLE_PLUGINS=a,b    never import these plugins (entry-point names)
  TUNEFORGE_PLUGINS_AUTOLOAD=0     load only tuneforge's own plugins (plus plugins.enable=[...])
"""

#: command -> "module:function"; each function takes the remaining argv list.
#: Modules are imported only when their command runs.
COMMANDS = {
    "train": "tuneforge.commands.cli:train_command",
    "plugins": "tuneforge.commands.cli:plugins_command",
    "eval": "tuneforge.commands.eval:eval_command",
    "generate": "tuneforge.commands.generate:generate_command",
    "chat": "tuneforge.commands.chat:chat_command",
    "export": "tuneforge.commands.export:export_command",
    "compare": "tuneforge.commands.compare:compare_command",
    "status": "tuneforge.commands.status:status_command",
    "config": "tuneforge.commands.config:config_command",
    "new-plugin": "tuneforge.commands.new_plugin:new_plugin_command",
}


def _fail(message: str) -> "NoReturn":  # noqa: F821
    """Print each line of ``message`` (one problem a line) as ``tuneforge: error: ...`` and exit 2."""
    for line in str(message).splitlines() or [""]:
        print(f"tuneforge: error: {line}", file=sys.stderr)
    raise SystemExit(2)


def main(argv=None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    # --debug is passed on explicitly (to commands that take ``debug``), never exported to the environment;
    # a user's own HYDRA_FULL_ERROR=1 means the same
    debug = "--debug" in argv or os.environ.get("HYDRA_FULL_ERROR") == "1"
    argv = [arg for arg in argv if arg != "--debug"]
    if argv and argv[0] in COMMANDS:
        command, args = argv[0], argv[1:]
    elif not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE, end="")
        return
    elif argv[0] == "--version":
        from tuneforge import __version__

        print(f"tuneforge {__version__}")
        return
    else:
        from tuneforge.errors import did_you_mean

        _fail(f"unknown command '{argv[0]}'{did_you_mean(argv[0], COMMANDS)}; valid: {', '.join(COMMANDS)}")
    import importlib
    import inspect

    from tuneforge.errors import TuneforgeError

    module_name, function_name = COMMANDS[command].split(":")
    handler = getattr(importlib.import_module(module_name), function_name)
    takes_debug = "debug" in inspect.signature(handler).parameters

    try:
        handler(args, debug=debug) if takes_debug else handler(args)
    except TuneforgeError as exc:
        if debug:
            raise
        _fail(str(exc))


def train_command(args: list, debug: bool = False) -> None:
    """``tuneforge train <args>``: ``hydra.main`` composes the config (the only composition of the run);
    the task validates it before anything heavy is imported or a run directory made, then runs
    :func:`tuneforge.training.run.train` with a :class:`~tuneforge.RunContext` for this process
    (``debug``: full tracebacks)."""
    if {"-h", "--help"} & set(args):  # tuneforge's own help (groups, choices, field docs): no Hydra, no torch
        from tuneforge.commands.config import train_help
        return print(train_help(args), end="")
    import dataclasses
    import functools
    import logging
    from pathlib import Path

    import hydra
    from hydra.core.hydra_config import HydraConfig

    from tuneforge.errors import ConfigError
    from tuneforge.host.compose import (CONFIG_MODULE, CONFIG_NAME, explain_composition_error,
                                        keep_only_listed_components, load_plugins)
    from tuneforge.host.hydra_dirs import discard_new_output_dir

    overrides = hydra_overrides(args)
    plugins = load_plugins(overrides)
    args = [*args, *run_dir_overrides(args, overrides)]
    # Lightning's DDP launcher starts the other processes by re-running sys.argv: they re-enter `train`
    command_line = [sys.argv[0], "train", *(["--debug"] if debug else []), *args]
    invoked_as = sys.argv
    sys.argv = [sys.argv[0], *args, *worker_hydra_overrides(args)]  # what Hydra parses
    user_full_error = os.environ.get("HYDRA_FULL_ERROR")
    task_errors: list = []

    def own_errors(task):
        """The job reports its own errors as always; only composing a job's config raises to us (below)."""
        @functools.wraps(task)
        def job(cfg):
            _set_env("HYDRA_FULL_ERROR", user_full_error)
            try:
                result = task(cfg)
            except Exception as exc:
                task_errors.append(exc)
                raise  # Hydra prints it (a short traceback) unless the user set HYDRA_FULL_ERROR=1
            os.environ["HYDRA_FULL_ERROR"] = "1"  # for the next job's composition (a -m sweep)
            return result
        return job

    @hydra.main(config_path=f"pkg://{CONFIG_MODULE}", config_name=CONFIG_NAME, version_base="1.3")
    @own_errors
    def hydra_train(cfg) -> None:
        sys.argv = command_line
        try:
            _train_in_hydra(cfg)
        except Exception:
            if not debug:
                raise  # Hydra prints it (a short traceback)
            import traceback

            traceback.print_exc()
            raise SystemExit(1) from None

    def _train_in_hydra(cfg) -> None:
        from hydra.types import RunMode

        if HydraConfig.get().mode != RunMode.MULTIRUN:
            return _train_one(cfg)
        from tuneforge.commands.sweep import record_failed_job

        try:  # a sweep job: its failure is recorded in its own directory, and the sweep goes on
            _train_one(cfg, in_sweep=True)
        except Exception as exc:
            if debug:
                raise
            record_failed_job(exc, HydraConfig.get(), cfg.get("run_dir"))

    def _train_one(cfg, in_sweep: bool = False) -> None:
        from tuneforge.errors import TuneforgeError
        from tuneforge.host.components import run_components

        output_dir = HydraConfig.get().runtime.output_dir
        keep_only_listed_components(cfg, HydraConfig.get().overrides.task)  # this job's own overrides
        try:
            components = run_components(cfg, plugins)  # before torch is imported, before any run directory
        except TuneforgeError as exc:
            if in_sweep:
                raise  # recorded in the job's directory (kept)
            discard_new_output_dir(output_dir)  # Hydra made it for this job: a refused run leaves nothing
            if debug:
                raise
            _fail(str(exc))

        from tuneforge.secrets import install_log_redaction

        # Hydra's root handler already prints and files Lightning's messages: avoid doubles
        # (Lightning adds its own console handler when first imported, so import it first).
        import lightning.pytorch  # noqa: F401

        for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
            logging.getLogger(name).handlers.clear()
            logging.getLogger(name).propagate = True
        install_log_redaction()
        run_dir = Path(components.config.run_dir or output_dir)
        try:
            if components.config.evidence.seeds > 1:
                train_seeds(components, run_dir)
                return
            metrics, context = train_one(components, run_dir)
        except TuneforgeError as exc:
            if debug or in_sweep:
                raise
            _fail(str(exc))
        if context.is_main:  # DDP workers: the main process prints
            _print_summary(components.config, metrics)

    def train_one(components, run_dir: Path, settings=None, command_dir=None) -> tuple:
        """One run in ``run_dir``: ``(metrics, run context)``.  ``settings``: the overrides that make this
        job's composed config the run's (a seed's), for the processes the run starts (DDP children);
        ``command_dir``: the run directory of this command (the seeds', when not ``run_dir``), which the
        printed resume command names."""
        from tuneforge.context import RunContext
        from tuneforge.training.run import RunInterrupted, run_train

        context = RunContext.detect(run_dir, components.config, debug=debug)
        context = dataclasses.replace(context, child_command=child_command(debug, run_dir, settings))
        try:
            return run_train(components.config, plugins, run_dir, context=context, components=components), context
        except RunInterrupted as exc:
            if context.is_main:
                print(f"tuneforge: {exc}.\nResume with: {resume_command(args, command_dir or run_dir)}",
                      file=sys.stderr)
            raise SystemExit(130 if exc.signal_name == "SIGINT" else 143) from None

    def train_seeds(components, run_dir: Path) -> None:
        """``evidence.seeds=N``: each seed's run in ``<run_dir>/seed-<seed>`` (a completed one is reused),
        then ``seeds.json``/``seeds.md`` and the summary across seeds."""
        from tuneforge.context import RunContext
        from tuneforge.evaluation.seeds import format_seed_summary
        from tuneforge.host.components import run_components
        from tuneforge.training.seed_runs import completed_metrics, seed_log, seed_runs, write_seed_summary

        runs = seed_runs(components.config, run_dir)
        is_main = RunContext.detect(run_dir, components.config).is_main
        results = []
        for number, run in enumerate(runs, 1):
            metrics = completed_metrics(run)
            if metrics is None:
                # an interrupted seed resumes with the seeds' own command: completed seeds are skipped then
                with seed_log(run, enabled=is_main):
                    metrics, _ = train_one(run_components(run.config, plugins), run.run_dir,
                                           settings=run.overrides(), command_dir=run_dir)
            results.append(metrics)
            if is_main:
                print(f"seed {run.seed} ({number}/{len(runs)}): {run.run_dir}")
        if is_main:
            fold = write_seed_summary(run_dir, runs, results)
            print(format_seed_summary(fold))
            print(f"run directory: {run_dir} (seeds.json, seeds.md)")

    # With HYDRA_FULL_ERROR=1 Hydra raises a composition error instead of printing it over
    # several lines; it becomes a one-line ConfigError here.
    os.environ["HYDRA_FULL_ERROR"] = "1"
    sweep_started = __import__("time").time()
    try:
        hydra_train()
        if {"-m", "--multirun"} & set(args):
            from tuneforge.commands.sweep import SweepFailed, failed_jobs, swept_keys
            from tuneforge.host.hydra_dirs import current_sweep_dir

            failed = failed_jobs(current_sweep_dir(), since=sweep_started, keys=swept_keys(overrides))
            if failed:
                raise SweepFailed("\n".join(failed))
    except Exception as exc:
        from tuneforge.host.compose import yaml_syntax_error

        if not any(exc is e for e in task_errors) and yaml_syntax_error(exc) and not debug:
            discard_new_output_dir()
            raise ConfigError(yaml_syntax_error(exc)) from None  # a config file Hydra read: file:line:column
        if any(exc is e for e in task_errors) or not _is_composition_error(exc):
            raise
        discard_new_output_dir()  # a -m sweep whose jobs could not be composed
        if debug:
            raise
        raise ConfigError(explain_composition_error(exc, overrides)) from None
    finally:
        sys.argv = invoked_as
        _set_env("HYDRA_FULL_ERROR", user_full_error)


def run_dir_overrides(args: list, overrides: list) -> list:
    """``hydra.run.dir=<run_dir>`` when ``run_dir=`` is given for a single run, so Hydra's job log
    (``train.log``) goes into the run directory and nothing is written to the working directory.

    The directory is checked first (a file, a read-only mount, no permission: one line), since
    Hydra creates it before tuneforge sees the config.

    Neither ``run_dir=`` nor ``hydra.run.dir=`` given: ``hydra.run.dir=runs/<launch id>`` when
    several processes started by a cluster launcher (or spread over several nodes) would otherwise
    each compute their own ``runs/<date_time>``; a one-line :class:`~tuneforge.ConfigError` for such
    a launch without a job id (:func:`shared_launch_run_dir`).
    """
    if {"-m", "--multirun", "--cfg", "-c", "--info", "-i"} & set(args):  # sweeps; printing the config only
        return []
    given = dict(o.split("=", 1) for o in overrides if "=" in o and not o.startswith(("+", "~")))
    if "hydra.run.dir" in given:
        return []
    if "run_dir" not in given or given["run_dir"] in ("", "null"):
        shared = shared_launch_run_dir(given.get("trainer.num_nodes", "1"))
        return [] if shared is None else [f"hydra.run.dir={shared}"]
    from tuneforge.host.paths import setting_path
    from tuneforge.training.run_lock import check_usable

    value = given["run_dir"]
    if len(value) > 1 and value[0] == value[-1] and value[0] in "'\"":  # run_dir="~/x": Hydra's quoting
        value = value[1:-1]
    run_dir = setting_path(value)  # "~/x" is the home folder's x for Hydra too, not ./~/x
    check_usable(Path(run_dir))
    quoted = run_dir if all(c.isalnum() or c in "_./-" for c in run_dir) or '"' in run_dir else f'"{run_dir}"'
    return [f"hydra.run.dir={quoted}"]


def shared_launch_run_dir(num_nodes="1"):
    """The run directory all processes of a multi-process launch agree on (``runs/<launch id>``),
    or None when one process decides it (a plain run, Lightning's launcher on one machine);
    see :func:`tuneforge.context.shared_run_dir`.  ``num_nodes``: the ``trainer.num_nodes=``
    override (read before Hydra composes the config).  Without launcher variables and one node
    nothing is imported."""
    from tuneforge.context import detect_ranks, shared_run_dir, started_by_a_launcher

    try:
        nodes = int(str(num_nodes).strip())
    except ValueError:
        nodes = 1  # Hydra reports the bad value when it composes
    if not started_by_a_launcher() and nodes <= 1:
        return None
    return shared_run_dir(detect_ranks(num_nodes=max(nodes, 1)), nodes)


def child_command(debug: bool, run_dir, settings: Optional[dict] = None) -> tuple:
    """The command that starts another process of the current Hydra job's run (a DDP child): a single
    ``tuneforge train`` with exactly this job's overrides (for a ``-m`` sweep job, its own values, no
    ``-m``) and its run directory, so the child composes the job's config and never a sweep.
    ``settings``: ``{key: value}`` overrides that replace the job's own for these keys (one seed of
    ``evidence.seeds=N``: its seed and run directory)."""
    from hydra.core.hydra_config import HydraConfig

    overrides = with_settings(list(HydraConfig.get().overrides.task), settings or {})
    return (sys.executable, "-m", "tuneforge", "train", *(["--debug"] if debug else []), *overrides,
            f"hydra.run.dir={_quoted(run_dir)}")


def with_settings(overrides: list, settings: dict) -> list:
    """``overrides`` with those that set a key of ``settings`` (also as ``+key``/``~key``) replaced by
    ``key=value`` for each of ``settings`` (a string quoted for Hydra, a number as it is)."""
    kept = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") not in settings]
    return kept + [f"{key}={_quoted(value)}" for key, value in settings.items()]


def _quoted(value) -> str:
    """``value`` as a Hydra override value: a path or string quoted, a number as it is."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    text = str(value).replace("\\", "\\\\").replace("'", "\\'")
    return f"'{text}'"


def _is_composition_error(exc: BaseException) -> bool:
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    return isinstance(exc, (HydraException, OmegaConfBaseException))


def _set_env(name: str, value) -> None:
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value


def worker_hydra_overrides(args: list) -> list:
    """Hydra overrides for a process that is not the main one of its run (an ``srun``/``torchrun``
    task or a DDP child with rank > 0): it logs to the console only, so only the main process
    writes Hydra's job log file into the run directory.  Empty for the main process or when
    ``args`` choose the job logging themselves.

    Read before Hydra composes the config, so without it: whether the global rank is 0 does not
    depend on the trainer's devices (rank = node rank x processes per node + local rank), and
    without any launcher variable Lightning (and torch) is not imported at all.
    """
    if any(arg.startswith(("hydra/job_logging=", "hydra.job_logging")) for arg in args):
        return []
    from tuneforge.context import detect_ranks, started_by_a_launcher

    if not started_by_a_launcher():
        return []

    return [] if detect_ranks().global_rank == 0 else ["hydra/job_logging=tuneforge_worker"]


#: Hydra's own flags that take a value (``--cfg job``, ``-cn other`` ...)
HYDRA_FLAGS_WITH_VALUE = {"--cfg", "-c", "--package", "-p", "--config-path", "-cp", "--config-name", "-cn",
                          "--config-dir", "-cd", "--experimental-rerun"}


def hydra_overrides(args: list) -> list:
    """The ``key=value`` overrides among ``train``'s arguments (Hydra's flags and their values left out)."""
    overrides, skip_next = [], False
    for arg in args:
        if skip_next:
            skip_next = False
        elif arg in HYDRA_FLAGS_WITH_VALUE:
            skip_next = True
        elif not arg.startswith("-"):
            overrides.append(arg)
    return overrides


def resume_command(args: list, run_dir) -> str:
    """The command that continues an interrupted run: same arguments, same run directory."""
    import shlex

    kept = [a for a in args if not a.startswith(("hydra.run.dir=", "run_dir=", "resume="))]
    return shlex.join(["tuneforge", "train", *kept, f"hydra.run.dir={run_dir}"])


def _print_summary(cfg, metrics: dict) -> None:
    from tuneforge.evaluation.report import format_comparison

    print(format_comparison(metrics))
    print(f"run directory: {cfg.run_dir or _hydra_output_dir()}")


def _hydra_output_dir() -> str:
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get().runtime.output_dir


def plugins_command(args: list) -> None:
    """``tuneforge plugins``: every installed plugin with its distribution and contributions.  It always
    lists: a broken plugin (failing import, registration hook or config class) is shown as ``broken``
    with its one-line reason, and entry points in a near-miss group as ``not loaded: wrong group``."""
    from tuneforge.host.compose import plugin_selection
    from tuneforge.host.plugin_manager import ENTRY_POINT_GROUP, create_plugin_manager
    from tuneforge.host.schema import register_configs

    plugins = create_plugin_manager(plugin_selection(args), tolerate_broken=True)
    register_configs(plugins, broken=plugins.broken)  # a config class Hydra refuses breaks its plugin too
    loaded = {name: info for name, info in plugins.infos.items() if name not in plugins.broken}
    width = max(len("plugin"), *(len(name) for name in [*loaded, *plugins.broken]))
    print(f"{'plugin':<{width}}  {'distribution':<20}  contributes")
    for name, info in loaded.items():
        dist = f"{info.distribution} {info.version}".strip()
        contributes = "; ".join(f"{group}: {', '.join(names)}"
                                for group, names in plugins.contributions(name).items())
        print(f"{name:<{width}}  {dist:<20}  {contributes or '(lifecycle hooks only)'}")
    for name, reason in plugins.broken.items():
        print(f"{name:<{width}}  broken: {reason}")
    for group, name, value, dist in plugins.misplaced:
        print(f"{name:<{width}}  not loaded: wrong group: entry point '{name} = {value}' of distribution "
              f"'{dist}' is in group '{group}'; tuneforge loads the group '{ENTRY_POINT_GROUP}'")
    if plugins.blocked:
        print(f"blocked (not imported): {', '.join(plugins.blocked)}")
