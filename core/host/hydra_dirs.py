"""The directories Hydra makes for a job before tuneforge validates its config, and taking them back.

``hydra.main`` creates the job's output directory (``hydra.run.dir``; with
``-m``, ``hydra.sweep.dir`` and the job's subdirectory) and opens its job log
there before it calls the task function, so before tuneforge can check the
composed config.  :class:`OutputDirWatch`, a Hydra callback configured in
``conf/config.yaml``, notes which of those directories did not exist yet; when
validation refuses the run (or a sweep job's config cannot be composed),
:func:`discard_new_output_dir` removes what Hydra made for it -- never a
directory that existed before the command started (an existing
``hydra.run.dir`` given to resume a run stays as it was).  A sweep whose
``hydra.sweep.dir`` holds a ``multirun.yaml`` that no Hydra sweep wrote (the
user's own, which Hydra's sweeper would overwrite) is refused before any job
(:func:`foreign_sweep_file`).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Optional

from hydra.experimental.callback import Callback
from omegaconf import OmegaConf

#: what the callback noted for the current command: the outermost missing directory of
#: ``hydra.run.dir`` (``run``) or ``hydra.sweep.dir`` (``sweep``), and the sweep directory itself
_NEW: dict = {}


def _outermost_missing(path) -> Optional[Path]:
    """The outermost directory on the way to ``path`` that does not exist (None: ``path`` exists)."""
    path = Path(str(path)).absolute()
    if path.exists():
        return None
    while not path.parent.exists():
        path = path.parent
    return path


class OutputDirWatch(Callback):
    """Notes, before Hydra makes them, which output directories of this command are new."""

    def on_run_start(self, config: Any, **kwargs: Any) -> None:
        _NEW.clear()
        problems = [problem for check in RUN_START_CHECKS for problem in check(config)]
        if problems:  # Hydra turns a callback's Exception into a warning: this one passes
            raise RefusedBeforeRun("\n".join(problems))
        _NEW["run"] = _outermost_missing(config.hydra.run.dir)
        _NEW["run_dir"] = Path(str(config.hydra.run.dir)).absolute()

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        _NEW.clear()
        problem = foreign_sweep_file(config) or sweep_run_dir_problem(config) or shared_resolved_run_dir(config)
        if problem is not None:
            raise RefusedBeforeRun(problem)
        _NEW["sweep"] = _outermost_missing(config.hydra.sweep.dir)
        _NEW["sweep_dir"] = Path(str(config.hydra.sweep.dir)).absolute()


#: checks of a single run's composed config (with its ``hydra`` node) made before Hydra makes the run
#: directory and opens its log there: each returns its problems as lines (``tuneforge train`` adds one
#: while it runs: a run directory inside a data folder, :mod:`tuneforge.host.config_checks`)
RUN_START_CHECKS: list = []


class RefusedBeforeRun(BaseException):
    """A run or ``-m`` sweep refused before Hydra makes any directory for it (one problem a line): raised
    by :class:`OutputDirWatch` (Hydra catches a callback's ``Exception`` and only warns), turned into a
    ``ConfigError`` by :class:`tuneforge.commands.train.TrainCommand`."""


#: the file into which Hydra's basic sweeper saves the sweep's config, in ``hydra.sweep.dir``
SWEEP_FILE = "multirun.yaml"


def foreign_sweep_file(config) -> Optional[str]:
    """Why the ``-m`` sweep cannot start in its ``hydra.sweep.dir``, or None: a :data:`SWEEP_FILE` there that no
    Hydra sweep wrote (not YAML, or no ``hydra`` section with ``run`` and ``sweep``: the user's own file, which
    Hydra would overwrite with the sweep's config) or something else of that name (a folder).  One that a
    sweep wrote (an earlier run of this sweep: the command that resumes it) and an empty one (nothing to lose)
    Hydra replaces as always."""
    import yaml

    from tuneforge.errors import first_line

    sweep_dir = Path(str(config.hydra.sweep.dir)).absolute()
    path = sweep_dir / SWEEP_FILE
    if not os.path.lexists(path):
        return None
    why = None
    if not path.is_file():
        why = "it is not a file"
    else:
        try:
            text = path.read_text(errors="replace")
            saved = yaml.safe_load(text)
            hydra = saved.get("hydra") if isinstance(saved, dict) else None
            if text.strip() and not (isinstance(hydra, dict) and "run" in hydra and "sweep" in hydra):
                why = "it has no hydra section with run and sweep, as every sweep's multirun.yaml has"
        except (OSError, yaml.YAMLError) as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark is not None else ""
            why = f"it cannot be read as YAML: {getattr(exc, 'problem', None) or first_line(exc)}{where}"
    if why is None:
        return None
    return (f"hydra.sweep.dir={sweep_dir} holds a {SWEEP_FILE} that no Hydra sweep wrote ({why}); the sweep would "
            f"overwrite it with its own config: move {path} out of the folder, or give another hydra.sweep.dir")


#: Hydra values that differ from job to job of a sweep (``${hydra:job.num}`` ...; a value under one of them too:
#: ``${hydra:runtime.choices.model}``, the config chosen for the job's ``model`` group)
PER_JOB_HYDRA_VALUES = ("job.num", "job.id", "job.override_dirname", "runtime.output_dir", "runtime.choices",
                        "sweep.subdir", "overrides.task")


def sweep_run_dir_problem(config) -> Optional[str]:
    """Why the ``run_dir`` of a ``-m`` sweep (``config``: the sweep's config as Hydra composes it before
    the jobs, its ``hydra.overrides.task`` holding the sweep overrides) would put several jobs into one
    directory, or None: a fixed ``run_dir`` (on the command line or in a config file), or a swept one
    with fewer values than jobs, unless it interpolates something that differs per job (a Hydra job
    value, :data:`PER_JOB_HYDRA_VALUES`, or a key the sweep sets: ``runs/lr_${optim.lr}``)."""
    import re

    sweeps = _sweeps(config)
    if "run_dir" in sweeps:
        values = sweeps.pop("run_dir")
    else:
        node = config._get_node("run_dir", throw_on_missing_key=False)
        raw = None if node is None else node._value()
        values = [] if raw in (None, "", "null") else [str(raw)]
    dotted = next((found for value in values for found in re.findall(r"\$\{\s*hydra\.[^${}]*\}", value)), None)
    if dotted is not None:  # the job's config has no hydra node: only Hydra's resolver reads it
        return (f"run_dir={','.join(values)}: {dotted} cannot be read in a job's config (Hydra takes its hydra "
                f"node out); write it with Hydra's resolver: {dotted.replace('hydra.', 'hydra:', 1)}")
    if not values or all(_per_job(str(value), sweeps) for value in values):
        return None
    jobs = len(values)
    for size in sweeps.values():
        jobs *= max(len(size), 1) if size is not None else 2
    if jobs <= len(set(values)):
        return None
    counted = all(size is not None for size in sweeps.values())
    if len(values) == 1:
        shared = f"run_dir={values[0]} is shared by {f'all {jobs}' if counted else 'all'} jobs of this -m sweep"
    else:
        distinct = len(set(values))
        shared = (f"run_dir={','.join(values)} gives {distinct} director{'y' if distinct == 1 else 'ies'} to "
                  f"{f'the {jobs}' if counted else 'more'} jobs of this -m sweep")
    return (f"{shared}, so a later job would find an earlier job's run there; leave run_dir out (each job then "
            "runs in <hydra.sweep.dir>/<job number>, by default runs/multirun/<date_time>/<n>) or make it per "
            f"job: 'run_dir={values[0]}/${{hydra:job.num}}'")


def _sweeps(config) -> dict:
    """``{key: [value, ...]}`` of the sweep's swept keys (the command line's and ``hydra.sweeper.params``;
    a value list is None where it cannot be counted without the config groups, a glob)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    overrides = [str(o) for o in OmegaConf.to_container(config.hydra.overrides.task, resolve=False)]
    params = OmegaConf.select(config, "hydra.sweeper.params", default=None)
    if params:
        overrides += [f"{key}={value}" for key, value in OmegaConf.to_container(params, resolve=False).items()]
    sweeps: dict = {}
    for override in OverridesParser.create().parse_overrides(overrides):
        if not override.is_sweep_override():
            continue
        try:
            values = [str(getattr(value, "text", value)) for value in override.sweep_iterator()]
        except Exception:  # a glob over a config group, an unbounded range: more than one job all the same
            values = None
        sweeps[override.key_or_group] = values
    return sweeps


def _per_job(value: str, sweeps: dict) -> bool:
    """Whether ``value`` interpolates a Hydra value that differs per job, or a key the sweep sets."""
    import re

    for body in re.findall(r"\$\{([^${}]*)\}", value):
        body = body.strip()
        value = body[len("hydra:"):].strip() if body.startswith("hydra:") else None
        if value is not None and any(value == v or value.startswith(v + ".") for v in PER_JOB_HYDRA_VALUES):
            return True
        if any(body == key or body.startswith(key + ".") or key.startswith(body + ".") for key in sweeps):
            return True
    return False


def shared_resolved_run_dir(config) -> Optional[str]:
    """Why two jobs of a ``-m`` sweep would run in one directory, found by composing each job's config (as
    Hydra's basic sweeper does before it launches them) and resolving its ``run_dir``: ``runs/seed${model.seed}``
    with ``model=tiny,mytiny`` gives both jobs ``runs/seed0``.  None when no two do, or this cannot be told
    here: another sweeper than Hydra's basic one, no ``run_dir``, a job that cannot be composed (Hydra reports
    it) or a ``run_dir`` that needs Hydra's job context (``${hydra:job.num}``: per job anyway)."""
    jobs = _job_overrides(config)
    node = config._get_node("run_dir", throw_on_missing_key=False)
    given = _sweeps(config).get("run_dir") or (
        [] if node is None or node._value() in (None, "", "null") else [str(node._value())])
    if len(jobs) < 2 or not given or all(_unique_per_job(value) for value in given):
        return None
    from hydra.core.global_hydra import GlobalHydra

    loader = GlobalHydra.instance().config_loader()
    by_dir: dict = {}
    for overrides in jobs:
        run_dir = _resolved_run_dir(loader, config, overrides)
        if run_dir is not None:
            by_dir.setdefault(run_dir, []).append(overrides)
    shared = next(((run_dir, found) for run_dir, found in by_dir.items() if len(found) > 1), None)
    if shared is None:
        return None
    run_dir, found = shared
    swept = {o.partition("=")[0] for o in jobs[0] if any(o not in job for job in jobs)} or None
    named = [" ".join(_unescaped(o) for o in job if swept is None or o.partition("=")[0] in swept) or
             "(no overrides)" for job in found]
    given = next((_unescaped(o.partition("=")[2]) for o in found[0] if o.partition("=")[0].lstrip("+~") == "run_dir"
                  and len(given) > 1), given[0])
    return (f"run_dir={given} gives the jobs {' and '.join(named)} of this -m sweep the same directory {run_dir}, "
            "so a later job would find an earlier job's run there; make it differ per job (a key the sweep sets, "
            f"or 'run_dir={given}/${{hydra:job.num}}'), or leave run_dir out")


def _unescaped(override: str) -> str:
    """An override as the user wrote it: Hydra's sweeper writes ``${`` as ``$\\{`` (and ``}`` as ``\\}``)."""
    return override.replace("$\\{", "${").replace("\\}", "}")


def _unique_per_job(value: str) -> bool:
    """Whether ``value`` interpolates a Hydra value that no two jobs share (``${hydra:job.num}`` ...)."""
    import re

    unique = ("job.num", "job.id", "job.override_dirname", "runtime.output_dir", "sweep.subdir")
    return any(body.strip()[len("hydra:"):].strip() in unique
               for body in re.findall(r"\$\{([^${}]*)\}", value) if body.strip().startswith("hydra:"))


def _job_overrides(config) -> list:
    """Each job's overrides, as Hydra's basic sweeper makes them (``[]`` for another sweeper, or a sweep it
    cannot expand: Hydra reports that)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    if OmegaConf.select(config, "hydra.sweeper._target_", default=None) != \
            f"{BasicSweeper.__module__}.{BasicSweeper.__name__}":
        return []
    params = OmegaConf.select(config, "hydra.sweeper.params", default=None)
    arguments = [f"{key}={value}" for key, value in
                 (OmegaConf.to_container(params, resolve=False).items() if params else ())]
    arguments += [str(o) for o in OmegaConf.to_container(config.hydra.overrides.task, resolve=False)]
    try:
        overrides = OverridesParser.create().parse_overrides(arguments)
        return [job for batch in BasicSweeper.split_arguments(overrides, None) for job in batch]
    except Exception:  # a sweep the basic sweeper cannot expand: it says so itself
        return []


def _resolved_run_dir(loader, config, overrides: list) -> Optional[Path]:
    """The absolute ``run_dir`` of the job with ``overrides``, resolved without Hydra's job context (None
    when unset, when the job cannot be composed, or when it needs that context: ``${hydra:...}``)."""
    from hydra.core.hydra_config import HydraConfig

    hydra_config = HydraConfig.instance()
    context, hydra_config.cfg = hydra_config.cfg, None  # ${hydra:...} raises: that is the job's own value
    try:
        value = OmegaConf.select(loader.load_sweep_config(config, list(overrides)), "run_dir", default=None)
    except Exception:
        return None
    finally:
        hydra_config.cfg = context
    if value in (None, "", "null"):
        return None
    from tuneforge.host.paths import setting_path

    return Path(setting_path(str(value)))


def current_sweep_dir() -> Optional[Path]:
    """The sweep directory of the ``-m`` sweep this command ran (None before one started)."""
    return _NEW.get("sweep_dir")


def _inside(path: Path, root: Optional[Path]) -> bool:
    return root is not None and (path == root or root in path.parents)


def discard_new_output_dir(output_dir=None) -> None:
    """Remove the job's output directory if this command created it (a refused run leaves nothing).

    Only what this command made goes: the run's (or the sweep job's) own directory, then the folders above
    it that this command made too and that are empty by then, and the sweep directory when nothing but
    Hydra's ``multirun.yaml`` is left in it (also when a job's config could not be composed:
    ``output_dir`` None).  A folder that holds anything else (the run directories a sweep's jobs trained
    in under ``runs/``, another command's run) is never removed.
    """
    if output_dir is not None:
        output_dir = Path(str(output_dir)).absolute()
        if _inside(output_dir, _NEW.get("run")):
            shutil.rmtree(output_dir, ignore_errors=True)
            _remove_empty_up_to(output_dir.parent, _NEW["run"])
            return
        if not _inside(output_dir, _NEW.get("sweep")):
            return
        shutil.rmtree(output_dir, ignore_errors=True)
    sweep_dir = _NEW.get("sweep_dir")
    if _NEW.get("sweep") is not None and sweep_dir.is_dir() and all(
            p.name == SWEEP_FILE for p in sweep_dir.iterdir()):
        (sweep_dir / SWEEP_FILE).unlink(missing_ok=True)
        _remove_empty_up_to(sweep_dir, _NEW["sweep"])


def _remove_empty_up_to(path: Path, top: Path) -> None:
    """Remove ``path`` and its parents up to ``top`` (included) while each is empty (a folder this command
    made and nothing else wrote into)."""
    try:
        while _inside(path, top):
            path.rmdir()  # only when empty
            if path == top:
                return
            path = path.parent
    except OSError:
        pass


def discard_empty_output_dir(output_dir) -> None:
    """Remove the job's output directory when nothing is left in it (its log went to the run directory,
    :func:`tuneforge.commands.job_log.move_job_log`), and the folders above it that this command made for a
    single run and that are empty then.  A sweep's directory stays until the sweep ends
    (:func:`discard_new_output_dir`)."""
    path = Path(str(output_dir)).absolute()
    _remove_empty_up_to(path, _NEW.get("run") if _inside(path, _NEW.get("run")) else path)


def discard_new_run_dir() -> None:
    """Remove the single run's directory if this command created it (a run stopped while starting)."""
    if _NEW.get("run_dir") is not None and _NEW.get("run") is not None:
        discard_new_output_dir(_NEW["run_dir"])
