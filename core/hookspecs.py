"""The tuneforge hook specifications: this module IS the plugin API reference.

A plugin is a module (or object) with functions named after these hooks,
optionally decorated with ``tuneforge.hookimpl``.  Every function whose name
starts with ``tuneforge_`` is treated as a hook implementation, so a misspelt
hook name or argument is an error when plugins load, not a silent no-op.
Implementations may accept any subset of a hook's arguments; hooks are always
called with keyword arguments.

Two kinds of hook exist:

* **Registration hooks** return a list (or another iterable) of typed
  specs (:mod:`tuneforge.specs`; an empty list for none).  They are called
  once per run, per plugin, before the configuration is composed; each
  spec's config dataclass becomes a Hydra config group option.  ``None``, a
  spec not in a list, a mapping or a string stops the run in one line
  naming the plugin, its distribution and the hook.  These docstrings do not list the built-in components:
  ``tuneforge plugins`` lists every installed one with its plugin, and the
  hook reference of docs/plugins.md, generated from the registered
  components (:mod:`tuneforge.host.hook_docs`), names tuneforge's own.
* **Lifecycle hooks** are called at exactly one place in a run
  (:func:`tuneforge.training.run.train`), once per process: under DDP
  (``strategy=ddp``, ``srun``, ``torchrun``) every process of the run calls
  them.  Their ``context`` argument (:class:`tuneforge.RunContext`) says
  which process this is; write files or print only where
  ``context.is_main`` is true.

The annotations name the types (pytest's ``hookspec.py`` is the model); they
are strings at run time (``from __future__ import annotations``), so this
module imports neither omegaconf nor the run context.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable

import pluggy

if TYPE_CHECKING:
    from pathlib import Path

    from omegaconf import DictConfig

    from tuneforge.context import RunContext
    from tuneforge.host.components import RunConfig
    from tuneforge.specs import (AdapterSpec, BaselineSpec, CallbackSpec, DatasetSpec, EvaluatorSpec, LoggerSpec,
                                 LossSpec, ModelSourceSpec, OptimizerSpec, RetrieverSpec, RewardSpec)

PROJECT_NAME = "tuneforge"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)


# ---------------------------------------------------------------------------
# Registration hooks
# ---------------------------------------------------------------------------


@hookspec
def tuneforge_model_sources() -> Iterable[ModelSourceSpec]:
    """Return :class:`~tuneforge.specs.ModelSourceSpec` objects.

    Selected with ``model=<name>``; the spec's config fields are set with
    ``model.<field>=...``.
    """


@hookspec
def tuneforge_datasets() -> Iterable[DatasetSpec]:
    """Return :class:`~tuneforge.specs.DatasetSpec` objects.

    Selected with ``data=<name>``; the spec's config fields are set with
    ``data.<field>=...``.  The record formats that
    :func:`tuneforge.data.prepare_splits` reads are in docs/data.md.
    """


@hookspec
def tuneforge_adapters() -> Iterable[AdapterSpec]:
    """Return :class:`~tuneforge.specs.AdapterSpec` objects.

    Selected with ``adapter=<name>``; the spec's config fields are set with
    ``adapter.<field>=...``.
    """


@hookspec
def tuneforge_losses() -> Iterable[LossSpec]:
    """Return :class:`~tuneforge.specs.LossSpec` objects.

    Selected with ``loss=<name>``; the spec's config fields are set with
    ``loss.<field>=...``.
    """


@hookspec
def tuneforge_optimizers() -> Iterable[OptimizerSpec]:
    """Return :class:`~tuneforge.specs.OptimizerSpec` objects.

    Selected with ``optimizer=<name>``; the learning rate, weight decay and
    schedule stay in the ``optim`` section.
    """


@hookspec
def tuneforge_evaluators() -> Iterable[EvaluatorSpec]:
    """Return :class:`~tuneforge.specs.EvaluatorSpec` objects.

    Selected as a list with ``evaluators=[a,b]``; each runs on the held-out
    split before training (base model) and after (tuned model), and may
    describe its metrics (:class:`~tuneforge.specs.MetricInfo`) for the
    report.
    """


@hookspec
def tuneforge_callbacks() -> Iterable[CallbackSpec]:
    """Return :class:`~tuneforge.specs.CallbackSpec` objects.

    Selected as a list with ``callbacks=[a,b]``; each builds a Lightning
    callback added to the trainer, acts when the run ends (``on_run_end``,
    with its own config), or both.
    """


@hookspec
def tuneforge_loggers() -> Iterable[LoggerSpec]:
    """Return :class:`~tuneforge.specs.LoggerSpec` objects.

    Selected as a list with ``loggers=[a,b]`` (default ``[csv]``); each builds
    a Lightning logger that receives the training metrics, the redacted run
    config as hyperparameters and the base/tuned evaluator results.  The run's
    own ``metrics.csv`` is written whatever the list holds.
    """


@hookspec
def tuneforge_baselines() -> Iterable[BaselineSpec]:
    """Return :class:`~tuneforge.specs.BaselineSpec` objects.

    Selected as a list with ``baselines=[a,b]`` (default
    ``[few_shot,retrieval,majority]``; ``baselines=[]`` switches them off); each
    rewrites the held-out prompts for the base model (e.g. demonstrations
    from the training set before the user turn), or answers without a model
    (``majority``), and the selected held-out
    evaluators score the result as one more column next to ``base`` and
    ``tuned``, with confidence intervals and prompt-token cost, so the run's
    verdict says whether fine-tuning beat prompting.
    """


@hookspec
def tuneforge_retrievers() -> Iterable[RetrieverSpec]:
    """Return :class:`~tuneforge.specs.RetrieverSpec` objects.

    Not a config group of their own: a component selects one with its
    ``retriever`` setting, by name (``baselines.rag.retriever=dense``) or by
    a mapping with ``name`` and the retriever's keys
    (``baselines.rag.retriever={name: dense, model: ./all-MiniLM-L6-v2}``);
    the host checks both with the rest of the config.  A retriever indexes
    a list of passages and returns the positions of the k most similar to a
    query, so dense embeddings or the user's own vector store can replace
    BM25.
    """


@hookspec
def tuneforge_rewards() -> Iterable[RewardSpec]:
    """Return :class:`~tuneforge.specs.RewardSpec` objects.

    Selected as a list with ``rewards=[a,b]`` (default none), each with its
    keys and a ``weight`` (``'rewards=[regex,length]'
    rewards.regex.pattern=... rewards.length.weight=0.5``); a reward scores
    a generated completion (given its prompt and the example's record) with
    a number, and the selected ones add up, weighted, to the run's reward.
    Online objectives (``loss=grpo``) train on it, and the ``reward``
    evaluator reports it on held-out prompts for the base model, the
    prompting baselines and the tuned model.
    """


# ---------------------------------------------------------------------------
# Lifecycle hooks
# ---------------------------------------------------------------------------


@hookspec
def tuneforge_run_start(config: DictConfig, run_dir: Path, context: RunContext, run_config: RunConfig) -> None:
    """Called when a training run starts, in every process of the run.

    A single-process run calls it once; under DDP each process calls it
    once, the main process after saving the resolved ``config.yaml`` (other
    processes do not wait for that).  Check ``context.is_main`` before
    writing into ``run_dir``.  It runs before the model loads: raising
    (e.g. ``tuneforge.ConfigError`` with one line) refuses the run, which
    then ends ``failed`` with that error, and ``tuneforge_run_end`` is
    still called.  Any other exception is a bug of the plugin: it ends the
    run the same way, as a one-line ``tuneforge.PluginError`` naming the
    plugin, its distribution and this hook.

    :param config: the composed, resolved ``omegaconf.DictConfig`` (read-only);
        prefer ``run_config``, whose values are typed and checked.
    :param run_dir: ``pathlib.Path`` of the run directory.
    :param context: :class:`tuneforge.RunContext` of this process:
        ``is_main``, ``global_rank``, ``local_rank``, ``node_rank``,
        ``world_size``, ``device``, ``debug``, ``run_dir``, ``config``.
        Implementations written before it existed, without a ``context``
        parameter, keep working.
    :param run_config: :class:`tuneforge.RunConfig`, the validated run:
        ``run_config.settings`` (the host's typed sections: ``trainer``,
        ``loader``, ``optim``, ``checkpoint``, ``evidence`` ..., and ``seed``,
        ``resume``, ``run_dir``) and each selected component with its spec and
        typed config (``run_config.data.spec``, ``run_config.data.config``;
        ``run_config.callbacks[key]``).  A plugin that needs a fact about
        another component asks that component's spec (e.g.
        ``DatasetSpec.no_validation``) rather than reading its keys.
    """


@hookspec
def tuneforge_run_end(config: DictConfig, run_dir: Path, status: str, metrics: dict[str, Any],
                      context: RunContext, run_config: RunConfig) -> None:
    """Called when a training run ends, successfully or not, in every process.

    Under DDP each process of the run calls it once, with its own
    ``metrics`` and ``status``; only the main process (``context.is_main``)
    has written ``run_dir``, so report and write files there only.  Not
    called when the run stopped before :func:`tuneforge_run_start` (a
    launch, config or run-directory error).

    :param config: the resolved config of the run.
    :param run_dir: ``pathlib.Path`` of the run directory.
    :param status: ``"completed"``, ``"failed"`` or ``"interrupted"``.
    :param metrics: dict of final metrics (``base/...`` and ``tuned/...``
        evaluator results, last training loss); partial for a failed run.
    :param context: :class:`tuneforge.RunContext` of this process (see
        :func:`tuneforge_run_start`); optional in implementations.
    :param run_config: :class:`tuneforge.RunConfig`, the validated run (see
        :func:`tuneforge_run_start`).
    """
