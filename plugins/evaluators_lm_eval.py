"""Evaluator ``lm_eval``: EleutherAI's lm-evaluation-harness tasks on the base and the tuned model.

    pip install "tuneforge[lm-eval]"
    tuneforge train ... evaluators=[lm_eval] \\
        evaluators.lm_eval.include_path=examples/lm_eval_tasks \\
        evaluators.lm_eval.tasks=[tuneforge_general_knowledge] evaluators.lm_eval.limit=20

The live model and tokenizer of the run are wrapped in lm-eval's ``HFLM``
(nothing is reloaded from disk; a ``peft`` model is scored with its adapter)
and handed to ``lm_eval.simple_evaluate`` with a ``TaskManager`` that indexes
the YAML task definitions under ``include_path``.  Each task metric is
reported as ``lm_eval/<task>/<metric>`` (``lm_eval/<task>/<metric>/<filter>``
for a filter other than lm-eval's ``none``) in the report's ``forgetting``
section: tasks the base model already handles, where a worse tuned value is
what fine-tuning cost.

lm-eval is an optional dependency: this module imports it only when the
evaluator runs (or its config is checked with tasks named), so ``tuneforge``
works without it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import functools
import importlib.util
import logging
import math
import os
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Optional

import tuneforge
from tuneforge.errors import ConfigError, first_line
from tuneforge.evaluation import EvaluationPass

log = logging.getLogger("tuneforge")

#: the command that installs lm-eval with the versions tuneforge is tested with
INSTALL = 'pip install "tuneforge[lm-eval]"'
#: the config key of this evaluator (``evaluators.<name>``)
KEY = "evaluators.lm_eval"
#: report section of every metric
SECTION = "forgetting"


class LmEvalConfigError(ConfigError, ValueError):
    """A bad value in the ``lm_eval`` config: ``field`` (relative to ``evaluators.lm_eval``) and ``message``.

    A :class:`~tuneforge.errors.ConfigError` (one line on the command line) and a ``ValueError`` (what
    a config class raises from ``__post_init__``).
    """

    def __init__(self, field_name: str, message: str):
        self.field, self.message = field_name, message
        super().__init__(f"{KEY}.{field_name}: {message}")


@dataclass
class LmEvalConfig:
    """Run lm-evaluation-harness tasks on the base and the tuned model (``pip install "tuneforge[lm-eval]"``).

    tasks: lm-eval task or group names, e.g. ``[tuneforge_general_knowledge]``.  Required.
    include_path: a folder (or a list of folders) of your own YAML task
        definitions, indexed besides lm-eval's built-in tasks.
    include_defaults: also index lm-eval's ~15,000 built-in tasks: true, false,
        or null (auto: only when a name in ``tasks`` is not found under
        ``include_path``; indexing them takes about 20 s).
    limit: score only the first N documents of each task; a number below 1 is
        a fraction of each task (null: all).
    num_fewshot: few-shot examples in each prompt (null: each task's own
        default, else 0).
    batch_size: requests per forward pass.
    metrics: the metrics of each task to report, e.g. ``[acc]`` (empty: every
        numeric metric the task returns, e.g. ``acc`` and ``acc_norm``).
    apply_chat_template: render the prompts with the chat template the
        training data was rendered with (the tokenizer's own when the data set
        none); few-shot examples become chat turns.
    bootstrap_iters: resamples for lm-eval's standard errors, reported as
        ``<metric>_stderr`` (closed form for accuracies); 0: no standard errors.
    offline: keep lm-eval, ``datasets`` and ``huggingface_hub`` off the hub
        during the evaluation (local tasks need nothing from it); false lets
        built-in benchmarks download their data.
    """

    tasks: list = field(default_factory=list)
    include_path: Any = None
    include_defaults: Optional[bool] = None
    limit: Optional[float] = None
    num_fewshot: Optional[int] = None
    batch_size: int = 8
    metrics: list = field(default_factory=list)
    apply_chat_template: bool = False
    bootstrap_iters: int = 0
    offline: bool = True

    #: data files (absolute in config.yaml; their content hashes identify the run's data)
    DATA_FILES: ClassVar[tuple] = ("include_path",)

    def __post_init__(self) -> None:
        _check_bounds(self)
        if not _placeholder(self.tasks) and self.tasks:
            require_lm_eval()
            resolve_tasks(self)

    def include_paths(self) -> list:
        """``include_path`` as a list of folder (or YAML file) paths."""
        paths = self.include_path
        if paths is None or paths == "":
            return []
        return [str(p) for p in ([paths] if isinstance(paths, (str, os.PathLike)) else paths)]


def _placeholder(value) -> bool:
    """omegaconf's MISSING (``???``) or an unresolved interpolation: not a real value yet."""
    return isinstance(value, str) and (value == "???" or "${" in value)


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_bounds(config: LmEvalConfig) -> None:
    """The checks that need no lm-eval: types, bounds and that ``include_path`` exists."""
    def bad(name: str, message: str):
        raise LmEvalConfigError(name, message)

    values = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
    for name in ("tasks", "metrics"):
        value = values[name]
        if _placeholder(value):
            continue
        if isinstance(value, str) or not all(isinstance(item, str) and item.strip() for item in value or []):
            bad(name, f"must be a list of names, e.g. {name}=[{'acc' if name == 'metrics' else 'arc_easy'}], "
                      f"got {value!r}")
    limit = values["limit"]
    if limit is not None and not _placeholder(limit):
        if not _number(limit) or limit <= 0 or (limit >= 1 and float(limit) != int(limit)):
            bad("limit", f"must be a whole number of documents >= 1 or a fraction in (0, 1), got {limit!r}")
    for name, least in (("num_fewshot", 0), ("batch_size", 1), ("bootstrap_iters", 0)):
        value = values[name]
        if (value is None and name == "num_fewshot") or _placeholder(value):
            continue
        if not _number(value) or float(value) != int(value) or value < least:
            bad(name, f"must be a whole number >= {least}, got {value!r}")
    if not _placeholder(config.include_path):
        for path in config.include_paths():
            if _placeholder(path):
                continue
            if not Path(path).expanduser().exists():
                bad("include_path", f"no such folder: {path} (give folders of lm-eval YAML task definitions)")


def require_lm_eval() -> None:
    """Raise a one-line :class:`~tuneforge.errors.ConfigError` naming the install command when lm-eval is
    not installed (checked without importing it)."""
    if importlib.util.find_spec("lm_eval") is None:
        raise LmEvalConfigError("tasks", f"evaluator 'lm_eval' needs lm-evaluation-harness, which is not "
                                         f"installed: {INSTALL}")


# ---------------------------------------------------------------------------
# Task names: one TaskManager per index, built once per process
# ---------------------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def task_manager(include_path: tuple, include_defaults: bool):
    """lm-eval's ``TaskManager`` over ``include_path`` (and its built-in tasks with ``include_defaults``).

    Cached: indexing the built-in tasks reads ~15,000 YAML files, so the base
    and the tuned evaluation (and the config check) share one index.
    """
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=list(include_path) or None, include_defaults=include_defaults)


def resolve_tasks(config: LmEvalConfig):
    """The ``TaskManager`` that knows every name in ``config.tasks``; a one-line error naming the unknown
    task and the valid ones otherwise."""
    tasks = list(config.tasks or [])
    paths = tuple(str(Path(p).expanduser().resolve()) for p in config.include_paths())
    if not tasks:
        raise LmEvalConfigError("tasks", "is empty: name the lm-eval tasks to run, e.g. tasks=[arc_easy] or "
                                         "include_path=<folder of YAML tasks> tasks=[<task>]")
    if config.include_defaults is False and not paths:
        raise LmEvalConfigError("include_defaults", "is false and include_path is empty: no task to run; set "
                                                    "include_path=<folder of YAML tasks>")
    manager = None
    if config.include_defaults is not True and paths:
        manager = task_manager(paths, False)
        if config.include_defaults is None and not all(task in manager.all_tasks for task in tasks):
            manager = None  # a name not found locally: look among the built-in tasks too
    if manager is None:
        manager = task_manager(paths, True)
    known = set(manager.all_tasks)
    unknown = [task for task in tasks if task not in known]
    if unknown:
        local = sorted(task_manager(paths, False).all_tasks) if paths else []
        close = difflib.get_close_matches(unknown[0], sorted(known), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        listed = f"{', '.join(local[:20])}{' ...' if len(local) > 20 else ''} (under include_path)" if local \
            else "none under include_path"
        builtin = (f"; or one of lm-eval's {len(known) - len(local)} built-in tasks (`lm-eval ls tasks`)"
                   if config.include_defaults is not False else "")
        raise LmEvalConfigError("tasks", f"unknown lm-eval task '{unknown[0]}'{hint}; valid: {listed}{builtin}")
    return manager


# ---------------------------------------------------------------------------
# The evaluation
# ---------------------------------------------------------------------------


def typed_config(config) -> LmEvalConfig:
    """``config`` as an :class:`LmEvalConfig` (checked by its ``__post_init__``), from an omegaconf node or a
    mapping (the host-added ``name`` is dropped) or as it is."""
    if isinstance(config, LmEvalConfig):
        return config
    try:
        from omegaconf import OmegaConf

        values = OmegaConf.to_container(config, resolve=True) if OmegaConf.is_config(config) else dict(config)
    except ImportError:  # pragma: no cover - omegaconf is a dependency of tuneforge
        values = dict(config)
    names = {f.name for f in dataclasses.fields(LmEvalConfig)}
    return LmEvalConfig(**{key: value for key, value in values.items() if key in names})


def evaluate_lm_eval(model, tokenizer, examples, config, *, evaluation: Optional[EvaluationPass] = None) -> dict:
    """Run ``config.tasks`` through ``lm_eval.simple_evaluate`` on the live ``model``; ``examples`` (the
    held-out split) is not used.

    Returns ``{"<task>/<metric>": value}`` for every numeric metric of every
    task and group (or those in ``config.metrics``).  In a multi-process run
    only local rank 0 gets lm-eval's results (its rule); other processes
    return ``{}``.  The model's weights, its train/eval mode and the global
    random generators are as before the call.
    """
    config = typed_config(config)
    manager = resolve_tasks(config)
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    chat_template = evaluation.chat_template if evaluation is not None else None
    hflm_kwargs = {}
    if config.apply_chat_template and chat_template:
        hflm_kwargs["chat_template_args"] = {"chat_template": chat_template}
    limit = config.limit
    if limit is not None and limit >= 1:
        limit = int(limit)
    was_training = model.training
    try:
        with _offline(config.offline), _random_state_kept():
            lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=int(config.batch_size), **hflm_kwargs)
            output = lm_eval.simple_evaluate(
                model=lm, tasks=list(config.tasks), task_manager=manager, limit=limit,
                num_fewshot=config.num_fewshot, log_samples=False, bootstrap_iters=int(config.bootstrap_iters),
                apply_chat_template=bool(config.apply_chat_template),
                fewshot_as_multiturn=bool(config.apply_chat_template))
    except FileNotFoundError as exc:
        raise ConfigError(f"{KEY}: a task's data file is missing: {first_line(exc)} (relative data_files paths "
                          f"in a task YAML are read from the working directory, {os.getcwd()}; write absolute "
                          "paths or run from the folder they are relative to)") from exc
    except ConnectionError as exc:  # what `datasets` raises for a hub dataset it may not fetch
        if not config.offline:
            raise
        raise ConfigError(f"{KEY}: a task's data is on the Hugging Face hub and {KEY}.offline is true: "
                          f"{first_line(exc)}; use local data files (dataset_path: json), or set "
                          f"{KEY}.offline=false to download it") from exc
    finally:
        model.train(was_training)
    if output is None:  # not local rank 0: lm-eval returns results in one process only
        return {}
    return task_metrics(output, config.metrics)


def task_metrics(output: dict, wanted=()) -> dict:
    """``{"<task>/<metric>[/<filter>]": float}`` from the ``results`` of ``lm_eval.simple_evaluate``.

    lm-eval names each value ``"<metric>,<filter>"``; the filter ``none`` is
    left out of the name.  Only finite numbers are kept (a standard error
    lm-eval did not compute is ``"N/A"``).  ``wanted`` (metric names, e.g.
    ``["acc"]``) keeps those metrics under any filter, or one filter's with
    ``"acc/<filter>"``; empty keeps all.  A name in ``wanted`` that no task
    returned is a :class:`~tuneforge.errors.ConfigError` naming the ones there are.
    """
    wanted = [str(name) for name in wanted or []]
    metrics: dict = {}
    available: set = set()
    for task, values in sorted((output.get("results") or {}).items()):
        for key, value in values.items():
            if "," not in key or not _number(value) or not math.isfinite(value):
                continue
            metric, _, filter_name = key.partition(",")
            name = metric if filter_name == "none" else f"{metric}/{filter_name}"
            available.add(name)
            if not wanted or metric in wanted or name in wanted:
                metrics[f"{task}/{name}"] = float(value)
    missing = [name for name in wanted if name not in available and not any(
        a.partition("/")[0] == name for a in available)]
    if missing:
        raise LmEvalConfigError("metrics", f"no task returned '{missing[0]}'; the tasks returned: "
                                           f"{', '.join(sorted(available)) or 'no numeric metric'}")
    _check_directions(output, metrics)
    return metrics


def _check_directions(output: dict, metrics: dict) -> None:
    """Warn when lm-eval says a reported metric's direction differs from the one declared for the report."""
    directions = output.get("higher_is_better") or {}
    for name in metrics:
        task, _, rest = name.partition("/")
        metric = rest.split("/")[0]
        if metric.endswith("_stderr"):
            continue
        declared = SPEC.metric_info(name).higher_is_better
        said = (directions.get(task) or {}).get(metric)
        if isinstance(said, bool) and said != declared:
            log.warning("lm_eval: %s is %s-is-better for lm-eval but the report treats it as %s-is-better", name,
                        "higher" if said else "lower", "higher" if declared else "lower")


@contextlib.contextmanager
def _offline(enabled: bool):
    """While active (``enabled``), Hugging Face hub access is off: the environment variables for what is
    imported later, and the flags that ``huggingface_hub``, ``datasets`` and ``evaluate`` read at import."""
    if not enabled:
        yield
        return
    variables = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HF_EVALUATE_OFFLINE")
    saved_env = {name: os.environ.get(name) for name in variables}
    flags = [("huggingface_hub.constants", "HF_HUB_OFFLINE"), ("datasets.config", "HF_HUB_OFFLINE"),
             ("datasets.config", "HF_DATASETS_OFFLINE"), ("evaluate.config", "HF_EVALUATE_OFFLINE")]
    saved_flags = []
    try:
        os.environ.update({name: "1" for name in variables})
        for module_name, attribute in flags:
            module = sys.modules.get(module_name)
            if module is not None and hasattr(module, attribute):
                saved_flags.append((module, attribute, getattr(module, attribute)))
                setattr(module, attribute, True)
        yield
    finally:
        for module, attribute, value in reversed(saved_flags):
            setattr(module, attribute, value)
        for name, value in saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextlib.contextmanager
def _random_state_kept():
    """``simple_evaluate`` seeds ``random``, numpy and torch; put the run's generators back afterwards so an
    evaluation does not change what training draws."""
    import numpy
    import torch

    python_state, numpy_state, torch_state = random.getstate(), numpy.random.get_state(), torch.get_rng_state()
    cuda_states = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() \
        else None
    try:
        yield
    finally:
        random.setstate(python_state)
        numpy.random.set_state(numpy_state)
        torch.set_rng_state(torch_state)
        if cuda_states is not None:
            torch.cuda.set_rng_state_all(cuda_states)


# ---------------------------------------------------------------------------
# Metric metadata and registration
# ---------------------------------------------------------------------------

#: lm-eval's built-in metrics where lower is better (the rest of its metrics: higher is better)
LOWER_IS_BETTER = ("perplexity", "word_perplexity", "byte_perplexity", "bits_per_byte", "ter", "brier_score")


def _patterns(metric: str) -> tuple:
    """The names ``<task>/<metric>`` and ``<task>/<metric>/<filter>`` as :mod:`fnmatch` patterns."""
    return f"*/{metric}", f"*/{metric}/*"


#: every metric in section ``forgetting``: the lower-is-better ones and standard errors by name, the rest by
#: the catch-all ``*`` (see :meth:`tuneforge.EvaluatorSpec.metric_info` for patterns)
LM_EVAL_METRICS = (
    *(tuneforge.MetricInfo(pattern, higher_is_better=False, section=SECTION)
      for metric in LOWER_IS_BETTER for pattern in _patterns(metric)),
    *(tuneforge.MetricInfo(pattern, higher_is_better=False, section=SECTION,
                           description="lm-eval's standard error of the metric of that name")
      for pattern in _patterns("*_stderr")),
    tuneforge.MetricInfo("*", section=SECTION),
)


SPEC = tuneforge.EvaluatorSpec("lm_eval", LmEvalConfig,
                               "lm-evaluation-harness tasks (local YAML or built-in), base vs tuned",
                               evaluate=evaluate_lm_eval, metrics=LM_EVAL_METRICS)


@tuneforge.hookimpl
def tuneforge_evaluators():
    return [SPEC]
