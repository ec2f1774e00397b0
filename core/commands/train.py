"""``tuneforge train``: Hydra composes the config (the only composition of the run), the job validates
it before anything heavy is imported or a run directory made, then trains.

A :class:`TrainCommand` carries one invocation through its phases: ``compose`` (``hydra.main``, and
Hydra's errors as one line), ``job`` (one Hydra job; a ``-m`` sweep job's failure recorded and the
sweep going on), ``validate`` (the typed run, or a one-line refusal that leaves nothing behind),
``train_one`` / ``train_seeds`` (the run, or one run per seed) and ``summary``.
The helpers below it read the command line before Hydra does (run directory, worker logging, the
commands that start a DDP child or resume a run).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Optional

from tuneforge.commands.cli import _fail
from tuneforge.commands.train_signals import RunsBegun


def train_command(args: list, debug: bool = False, program: bool = False) -> None:
    """``tuneforge train <args>`` (``debug``: full tracebacks; ``program``: this is the ``tuneforge``
    process itself, see :func:`tuneforge.commands.cli.main`)."""
    if {"-h", "--help"} & set(args):  # tuneforge's own help (groups, choices, field docs): no Hydra, no torch
        from tuneforge.commands.config import train_help
        return print(train_help(args), end="")
    if print_pruned_job(args):
        return
    from tuneforge.commands.train_signals import one_line_on_stop_signals
    from tuneforge.errors import TuneforgeError

    collector = StartupCollector(freeze=program)
    runs_begun = RunsBegun()
    try:
        with one_line_on_stop_signals(runs_begun):  # before the run's own handling, and after it
            try:
                command = TrainCommand(args, debug, collector, runs_begun)
            except (TuneforgeError, OSError) as exc:  # the run directory cannot be made on this node
                tell_the_other_ranks(exc, args)
                raise
            command.run()
    finally:
        collector.resume()  # a command that ran no job (a refused config, --cfg job): on again all the same


class StartupCollector:
    """The cyclic garbage collector paused while the command starts: from the first import (Hydra, the
    plugins) until Lightning is imported at the start of the first job (:meth:`resume`).

    Start-up allocates close to half a million long-lived objects (the modules, functions and classes of
    torch, Lightning, torchmetrics, scipy, transformers); each time the allocations pass the collector's
    threshold it traverses all of them again and frees next to nothing: about half a second of a tiny
    run (``docs/performance.md``, "Start-up").  Paused, it runs once at :meth:`resume`.  With ``freeze``
    (the ``tuneforge`` program only, never a caller's own process) what survives that collection (the
    loaded modules) is then frozen (``gc.freeze``), so the run's later collections traverse only the
    run's own objects."""

    def __init__(self, freeze: bool = False):
        import gc

        self.freeze = freeze
        self.paused = gc.isenabled()
        if self.paused:
            gc.disable()

    def resume(self) -> None:
        """The collector on again (once; a no-op afterwards and when it was off to begin with)."""
        import gc

        if not self.paused:
            return
        self.paused = False
        if self.freeze:
            gc.collect()
            gc.freeze()
        gc.enable()


class TrainCommand:
    """One ``tuneforge train`` invocation: its arguments, the plugins they load and the Hydra jobs it runs."""

    def __init__(self, args: list, debug: bool = False, collector: Optional[StartupCollector] = None,
                 runs_begun: Optional[RunsBegun] = None):
        from tuneforge.host.compose import check_config_dirs, load_plugins

        self.debug = debug
        #: the run directories whose run this command began (train_one), newest last
        self.runs_begun = RunsBegun() if runs_begun is None else runs_begun
        #: resumed once Lightning is imported (the end of start-up), see :class:`StartupCollector`
        self.collector = collector
        self.overrides = hydra_overrides(args)
        #: the user's config folders (--config-dir, hydra.searchpath); a file a built-in one shadows is refused
        self.config_dirs = check_config_dirs(args, self.overrides)
        self.plugins = load_plugins(self.overrides)
        self.args = [*args, *run_dir_overrides(args, self.overrides)]
        # Lightning's DDP launcher starts the other processes by re-running sys.argv: they re-enter `train`
        self.command_line = [sys.argv[0], "train", *(["--debug"] if debug else []), *self.args]
        self.user_full_error = os.environ.get("HYDRA_FULL_ERROR")
        #: the exceptions a job raised (Hydra re-raises them; they are not composition errors)
        self.job_errors: list = []

    # -- compose: Hydra runs the job(s) ---------------------------------------------------------------

    def run(self) -> None:
        """Run Hydra on the arguments; a composition error becomes one ``ConfigError`` line, a sweep with
        failed jobs a ``SweepFailed`` naming each."""
        import hydra

        from tuneforge.host.compose import CONFIG_MODULE, CONFIG_NAME
        from tuneforge.host.config_files import saved_run_args

        @hydra.main(config_path=f"pkg://{CONFIG_MODULE}", config_name=CONFIG_NAME, version_base="1.3")
        def hydra_train(cfg) -> None:
            self.job(cfg)

        invoked_as = sys.argv
        hydra_args = saved_run_args(self.args, self.config_dirs)  # a run's saved config.yaml copied: re-run it
        sys.argv = [sys.argv[0], *hydra_args, *worker_hydra_overrides(self.args)]  # what Hydra parses
        # With HYDRA_FULL_ERROR=1 Hydra raises a composition error instead of printing it over
        # several lines; it becomes a one-line ConfigError here.
        os.environ["HYDRA_FULL_ERROR"] = "1"
        started = time.time()
        from tuneforge.host.hydra_dirs import RUN_START_CHECKS, RefusedBeforeRun

        RUN_START_CHECKS.append(self._run_dir_check)
        try:
            hydra_train()
            self._check_sweep(started)
        except RefusedBeforeRun as exc:  # before Hydra made a directory (run_dir in a data folder, shared by a sweep)
            from tuneforge.errors import ConfigError

            raise ConfigError(str(exc)) from None
        except Exception as exc:
            self._explain(exc)
        finally:
            RUN_START_CHECKS.remove(self._run_dir_check)
            sys.argv = invoked_as
            _set_env("HYDRA_FULL_ERROR", self.user_full_error)

    def _run_dir_check(self, config) -> list:
        """Before Hydra makes the run directory (and writes its log there): a run directory inside a folder
        the run reads as data is refused (:mod:`tuneforge.host.config_checks`)."""
        from tuneforge.host.config_checks import composed_run_dir_data_problems

        return [str(problem) for problem in composed_run_dir_data_problems(config, self.plugins)]

    def _check_sweep(self, started: float) -> None:
        if not {"-m", "--multirun"} & set(self.args):
            return
        from tuneforge.commands.sweep import SweepFailed, failed_jobs, swept_keys
        from tuneforge.host.hydra_dirs import current_sweep_dir, discard_new_output_dir

        failed = failed_jobs(current_sweep_dir(), since=started, keys=swept_keys(self.overrides))
        discard_new_output_dir()  # all jobs ran in run_dirs of their own: nothing but multirun.yaml left in it
        if failed:
            raise SweepFailed("\n".join(failed))

    def _explain(self, exc: Exception) -> None:
        """Re-raise ``exc``: a job's own error as it is, Hydra's composition errors as one line."""
        from tuneforge.errors import ConfigError
        from tuneforge.host.compose import explain_config_error
        from tuneforge.host.hydra_dirs import discard_new_output_dir

        from_job = any(exc is e for e in self.job_errors)
        # a config file's YAML (file:line:column), a defaults-list cycle, Hydra's composition errors
        line = None if from_job else explain_config_error(exc, self.overrides, self.config_dirs)
        if line is None:
            raise exc
        discard_new_output_dir()  # a -m sweep whose jobs could not be composed
        if self.debug:
            raise exc
        raise ConfigError(line) from None

    # -- job: one composed config ---------------------------------------------------------------------

    def job(self, cfg) -> None:
        """One Hydra job.  It reports its own errors as always (Hydra prints a short traceback unless
        ``--debug``); only composing a job's config raises to :meth:`run`."""
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        from tuneforge.training.run_dir import note_log_start

        _set_env("HYDRA_FULL_ERROR", self.user_full_error)
        sys.argv = self.command_line
        # a sweep's job log (and one noted nowhere before Hydra): Hydra opened it, this job wrote nothing yet
        note_log_start(HydraConfig.get().runtime.output_dir, unless_noted=True)
        try:
            if HydraConfig.get().mode != RunMode.MULTIRUN:
                self.train_job(cfg)
            else:
                self.sweep_job(cfg)
        except Exception as exc:
            self.job_errors.append(exc)
            if not self.debug:
                raise  # Hydra prints it (a short traceback)
            import traceback

            traceback.print_exc()
            raise SystemExit(1) from None
        os.environ["HYDRA_FULL_ERROR"] = "1"  # for the next job's composition (a -m sweep)

    def sweep_job(self, cfg) -> None:
        """A ``-m`` sweep job: its failure is recorded in its own directory, and the sweep goes on."""
        from hydra.core.hydra_config import HydraConfig

        from tuneforge.commands.sweep import record_failed_job

        began = time.monotonic_ns()
        self.runs_begun.resume_sweep = resume_command(self.args, None, _sweep_dir())  # a stop between runs
        try:
            self.train_job(cfg, in_sweep=True)
        except Exception as exc:
            if self.debug:
                raise
            record_failed_job(exc, HydraConfig.get(), cfg.get("run_dir"), began)

    def train_job(self, cfg, in_sweep: bool = False) -> None:
        """Validate the job's config, then train it (once, or once per seed) and print the summary."""
        from hydra.core.hydra_config import HydraConfig

        from tuneforge.errors import TuneforgeError

        components = self.validate(cfg, HydraConfig.get().runtime.output_dir, in_sweep)
        if components.settings.run_dir:  # one Hydra did not know before it opened the job log: the log goes there
            from tuneforge.commands.job_log import move_job_log

            move_job_log(HydraConfig.get().runtime.output_dir, components.settings.run_dir)
        _route_library_logs()
        if self.collector is not None:  # the heavy imports are done: the collector runs again
            self.collector.resume()
        run_dir = Path(components.settings.run_dir or HydraConfig.get().runtime.output_dir)
        if in_sweep:  # a job whose run completed (a sweep resumed, or run again into its hydra.sweep.dir)
            from tuneforge.commands.sweep import skip_completed_job, swept_keys

            if skip_completed_job(components.config, run_dir, HydraConfig.get(), swept_keys(self.overrides)):
                return
        try:
            if components.settings.evidence.seeds > 1:
                self.train_seeds(components, run_dir)
                return
            metrics, context = self.train_one(components, run_dir)
        except TuneforgeError as exc:
            if self.debug or in_sweep:
                raise
            _fail(tell_the_other_ranks(str(exc), self.args, cfg))
        except OSError as exc:  # a file-system error the run did not explain itself: one line, as cli.main does
            if self.debug or in_sweep:
                raise
            _fail(tell_the_other_ranks(exc, self.args, cfg))
        if context.is_main:  # DDP workers: the main process prints
            _print_summary(components.settings, metrics)

    def validate(self, cfg, output_dir: str, in_sweep: bool):
        """The typed run of ``cfg`` (before torch is imported, before any run directory); a refusal is one
        line, and Hydra's new output directory is removed (a sweep job keeps it to record the error)."""
        from hydra.core.hydra_config import HydraConfig

        from tuneforge.errors import TuneforgeError
        from tuneforge.host.components import run_components
        from tuneforge.host.compose import keep_only_listed_components
        from tuneforge.host.config_checks import check_run_dir_outside_data
        from tuneforge.host.hydra_dirs import discard_new_output_dir

        keep_only_listed_components(cfg, HydraConfig.get().overrides.task)  # this job's own overrides
        try:
            components = run_components(cfg, self.plugins)
            if not components.settings.run_dir:  # the run goes into Hydra's output directory
                check_run_dir_outside_data(output_dir, components)
            return components
        except TuneforgeError as exc:
            if in_sweep:
                raise  # recorded in the job's directory (kept)
            discard_new_output_dir(output_dir)  # Hydra made it for this job: a refused run leaves nothing
            if self.debug:
                raise
            from tuneforge.host.config_files import in_saved_run_file

            # a re-run saved config's key: its file and line
            _fail(tell_the_other_ranks(in_saved_run_file(str(exc), self.overrides), self.args, cfg))

    # -- the run(s) -----------------------------------------------------------------------------------

    def train_one(self, components, run_dir: Path, settings=None, command_dir=None) -> tuple:
        """One run in ``run_dir``: ``(metrics, run context)``.  ``settings``: the overrides that make this
        job's composed config the run's (a seed's), for the processes the run starts (DDP children);
        ``command_dir``: the run directory of this command (the seeds', when not ``run_dir``), which the
        printed resume command names."""
        import dataclasses

        from tuneforge.context import RunContext
        from tuneforge.training.run import RunInterrupted, run_train

        context = RunContext.detect(run_dir, components.config, debug=self.debug)
        context = dataclasses.replace(context, child_command=child_command(self.debug, run_dir, settings,
                                                                           config_flags(self.args)))
        self.runs_begun.append(run_dir)
        try:
            return run_train(components.config, self.plugins, run_dir, context=context,
                             components=components), context
        except RunInterrupted as exc:
            if context.is_main:
                from tuneforge.training.launch import relaunch_note

                command = resume_command(self.args, command_dir or run_dir, _sweep_dir())
                note = relaunch_note(context, components.settings.trainer.num_nodes)  # several nodes: each one
                print(f"tuneforge: {exc}.\nResume with: {command}{note}", file=sys.stderr)
            raise SystemExit(130 if exc.signal_name == "SIGINT" else 143) from None

    def train_seeds(self, components, run_dir: Path) -> None:
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
                    metrics, _ = self.train_one(run_components(run.config, self.plugins), run.run_dir,
                                                settings=run.overrides(), command_dir=run_dir)
            results.append(metrics)
            if is_main:
                print(f"seed {run.seed} ({number}/{len(runs)}): {run.run_dir}")
        if is_main:
            fold = write_seed_summary(run_dir, runs, results)
            print(format_seed_summary(fold))
            print(f"run directory: {run_dir} (seeds.json, seeds.md)")


def _route_library_logs() -> None:
    """Hydra's root handler already prints and files Lightning's messages: avoid doubles (Lightning adds
    its own console handler when first imported, so import it first); secrets are redacted from logs."""
    import logging

    import lightning.pytorch  # noqa: F401

    from tuneforge.secrets import install_log_redaction

    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True
    install_log_redaction()


def run_dir_overrides(args: list, overrides: list) -> list:
    """``hydra.run.dir=<run_dir>`` when ``run_dir=`` is given for a single run, so Hydra's job log
    (``train.log``) goes into the run directory and nothing is written to the working directory.

    The directory is checked first (a file, a read-only mount, no permission: one line), since
    Hydra creates it before tuneforge sees the config.

    Neither ``run_dir=`` nor ``hydra.run.dir=`` given: ``hydra.run.dir=runs/<launch id>`` when
    several processes started by a cluster launcher (or spread over several nodes) would otherwise
    each compute their own ``runs/<date_time>``; a one-line :class:`~tuneforge.ConfigError` for such
    a launch without a job id (:func:`shared_launch_run_dir`).

    The length of the directory's ``train.log`` is noted before Hydra opens it for this command
    (:func:`tuneforge.training.run_dir.note_log_start`), so that ``resume=never`` can move the earlier
    runs' lines aside.
    """
    if {"-m", "--multirun", "--cfg", "-c", "--info", "-i"} & set(args):  # sweeps; printing the config only
        return []
    from tuneforge.host.paths import argument_path, override_value
    from tuneforge.training.run_dir import note_log_start

    given = dict(o.split("=", 1) for o in overrides if "=" in o and not o.startswith(("+", "~")))
    if "hydra.run.dir" in given:
        note_log_start(argument_path(given["hydra.run.dir"]))
        return []
    if "run_dir" not in given or given["run_dir"] in ("", "null"):
        shared = shared_launch_run_dir(given.get("trainer.num_nodes", "1"))
        if shared is not None:
            note_log_start(shared)
        return [] if shared is None else [f"hydra.run.dir={shared}"]
    from tuneforge.training.run_lock import check_usable

    # run_dir="~/x": Hydra's quoting taken off; "~/x" is the home folder's x for Hydra too, not ./~/x
    run_dir = argument_path(given["run_dir"])
    check_usable(Path(run_dir))
    note_log_start(run_dir)
    return [f"hydra.run.dir={override_value(run_dir)}"]  # quoted for Hydra as the path needs


def tell_the_other_ranks(error, args: list, cfg=None) -> str:
    """``error``'s line, after telling it to the other ranks of a cluster launch (srun, torchrun, ...) that
    this process stops before it met them, so that they stop at once instead of waiting for it until
    ``trainer.collective_timeout_s`` (:func:`tuneforge.training.rank_agreement.tell_the_other_ranks`).
    The strategy and the timeout come from the job's config ``cfg`` where it was composed, else from the
    command line.  Nothing for a plain process or a ``-m`` sweep."""
    from tuneforge.commands.cli import describe_os_error
    from tuneforge.context import started_by_a_launcher

    line = describe_os_error(error, "train") if isinstance(error, OSError) else str(error)
    if not started_by_a_launcher() or {"-m", "--multirun"} & set(args):
        return line
    from tuneforge.training.rank_agreement import tell_the_other_ranks as tell

    given = dict(o.split("=", 1) for o in hydra_overrides(args) if "=" in o and not o.startswith(("+", "~")))
    strategy, timeout = given.get("strategy.name", given.get("strategy")), 1800.0
    try:
        strategy = cfg.strategy.name if cfg is not None else strategy
        timeout = float(cfg.trainer.collective_timeout_s if cfg is not None
                        else given.get("trainer.collective_timeout_s", timeout))
    except Exception:  # noqa: BLE001 - a value the config refuses: that is the error being told
        timeout = 1800.0
    tell((line.splitlines() or [""])[0], strategy, timeout)
    return line


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


def child_command(debug: bool, run_dir, settings: Optional[dict] = None, flags=()) -> tuple:
    """The command that starts another process of the current Hydra job's run (a DDP child): a single
    ``tuneforge train`` with exactly this job's overrides (for a ``-m`` sweep job, its own values, no
    ``-m``) and its run directory, so the child composes the job's config and never a sweep.
    ``settings``: ``{key: value}`` overrides that replace the job's own for these keys (one seed of
    ``evidence.seeds=N``: its seed and run directory); ``flags``: the command's ``--config-dir`` and
    ``--config-name`` (:func:`config_flags`), which are no overrides of the job."""
    from hydra.core.hydra_config import HydraConfig

    overrides = with_settings(list(HydraConfig.get().overrides.task), settings or {})
    return (sys.executable, "-m", "tuneforge", "train", *(["--debug"] if debug else []), *flags, *overrides,
            f"hydra.run.dir={_quoted(run_dir)}")


def config_flags(args: list) -> list:
    """Hydra's ``--config-dir`` (absolute) and ``--config-name`` among ``train``'s ``args``, as a process
    that composes the same config again (a DDP child) needs them: the user's config folder and a re-run
    saved config (whose file the child reads again)."""
    from tuneforge.host.config_files import config_name, given_config_dir

    folder, name = given_config_dir(args), config_name(args)
    return [*(["--config-dir", str(folder)] if folder else []), *(["--config-name", name] if name else [])]


def with_settings(overrides: list, settings: dict) -> list:
    """``overrides`` with those that set a key of ``settings`` (also as ``+key``/``~key``) replaced by
    ``key=value`` for each of ``settings`` (a string quoted for Hydra, a number as it is)."""
    kept = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") not in settings]
    return kept + [f"{key}={_quoted(value)}" for key, value in settings.items()]


def _quoted(value) -> str:
    """``value`` as a Hydra override value: a path or string quoted (as Hydra's grammar reads it back
    exactly, :func:`tuneforge.host.paths.override_value`), a number as it is."""
    from tuneforge.host.paths import quoted_override_string

    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    return quoted_override_string(str(value), "'")


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


#: what Hydra's ``--info`` (``-i``) prints; its value is optional: ``--info defaults`` or ``--info=defaults``
INFO_CHOICES = ("all", "config", "defaults", "defaults-tree", "plugins", "searchpath")


#: Hydra flags after which ``--cfg job`` is left to Hydra (another package, config path or name, a sweep)
_LEFT_TO_HYDRA = (HYDRA_FLAGS_WITH_VALUE - {"--cfg", "-c"}) | {"-m", "--multirun", "--info", "-i"}


def print_pruned_job(args: list) -> bool:
    """``train --cfg job`` (or ``-c job``) with a list group on the command line (``evaluators=[exact_match]``):
    print the config the run will use, after :func:`~tuneforge.host.compose.keep_only_listed_components`
    drops the components an experiment added that the list leaves out, and without the settings it left for
    them (``evaluators.perplexity.batch_size``); Hydra's own print shows both still.
    ``--resolve`` resolves interpolations, as Hydra's does.  False (nothing printed) in every other case,
    which Hydra prints itself.  A ``--config-dir`` is read as ``hydra.searchpath``, as the compose API takes it."""
    from tuneforge.host.config_files import config_dir_as_searchpath

    args = config_dir_as_searchpath(args)
    flags = [arg for arg in args if arg.startswith("-")]
    wants_job = any(arg in ("--cfg", "-c") and value == "job" for arg, value in zip(args, args[1:]))
    overrides = hydra_overrides(args)
    from tuneforge.host.compose import sets_list_group

    if not wants_job or _LEFT_TO_HYDRA & set(flags) or not sets_list_group(overrides):
        return False
    from omegaconf import OmegaConf

    from tuneforge.host.components import drop_deselected_settings
    from tuneforge.host.compose import compose, load_plugins

    plugins = load_plugins(overrides)
    cfg = compose(overrides)
    drop_deselected_settings(cfg, plugins)
    print(OmegaConf.to_yaml(cfg, resolve="--resolve" in flags), end="")
    return True


def hydra_overrides(args: list) -> list:
    """The ``key=value`` overrides among ``train``'s arguments (Hydra's flags and their values left out)."""
    overrides, skip_next = [], False
    for arg, after in zip(args, [*args[1:], None]):
        if skip_next:
            skip_next = False
        elif arg in HYDRA_FLAGS_WITH_VALUE or (arg in ("--info", "-i") and after in INFO_CHOICES):
            skip_next = True
        elif not arg.startswith("-"):
            overrides.append(arg)
    return overrides


def resume_command(args: list, run_dir, sweep_dir=None) -> str:
    """The command that continues an interrupted run: same arguments, same run directory; it works pasted
    into a shell as printed (quoted for the shell, the run directory also for Hydra's override grammar:
    spaces, ``é``, ``,``, ``=`` and quotes in its name).

    ``sweep_dir``: the run is a job of the ``-m`` sweep in that directory, and the command resumes the sweep:
    the same ``-m`` arguments (a per-job ``run_dir`` pattern kept) into the same ``hydra.sweep.dir``, so the
    jobs that completed are skipped (:func:`tuneforge.commands.sweep.skip_completed_job`), the interrupted one
    resumes from its checkpoint and the jobs it had not reached run.  ``resume=`` is left out of both (a
    ``resume=never`` would start the runs over)."""
    import shlex

    from tuneforge.host.paths import override_value

    if sweep_dir is not None:
        kept = [a for a in args if not a.startswith(("hydra.sweep.dir=", "hydra.run.dir=", "resume="))]
        return shlex.join(["tuneforge", "train", *kept, f"hydra.sweep.dir={override_value(sweep_dir)}"])
    kept = [a for a in args if not a.startswith(("hydra.run.dir=", "run_dir=", "resume="))]
    return shlex.join(["tuneforge", "train", *kept, f"hydra.run.dir={override_value(run_dir)}"])


def _sweep_dir() -> Optional[Path]:
    """The directory of the ``-m`` sweep whose job this is (absolute), or None for a single run."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hydra_config = HydraConfig.get()
    return Path(str(hydra_config.sweep.dir)).absolute() if hydra_config.mode == RunMode.MULTIRUN else None


def _print_summary(settings, metrics: dict) -> None:
    from tuneforge.evaluation.report import format_comparison

    print(format_comparison(metrics))
    print(f"run directory: {settings.run_dir or _hydra_output_dir()}")


def _hydra_output_dir() -> str:
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get().runtime.output_dir
