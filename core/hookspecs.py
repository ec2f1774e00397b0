"""The tuneforge hook specifications: this module IS the plugin API reference.

A plugin is a module (or object) with functions named after these hooks,
optionally decorated with ``tuneforge.hookimpl``.  Every function whose name
starts with ``tuneforge_`` is treated as a hook implementation, so a misspelt
hook name or argument is an error when plugins load, not a silent no-op.
Implementations may accept any subset of a hook's arguments; hooks are always
called with keyword arguments.

Two kinds of hook exist:

* **Registration hooks** return an iterable of typed specs
  (:mod:`tuneforge.specs`).  They are called once per run, per plugin, before
  the configuration is composed; each spec's config dataclass becomes a Hydra
  config group option.
* **Lifecycle hooks** are called at exactly one place in a run
  (:func:`tuneforge.training.run.train`).
"""

from __future__ import annotations

import pluggy

PROJECT_NAME = "tuneforge"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)


# ---------------------------------------------------------------------------
# Registration hooks
# ---------------------------------------------------------------------------


@hookspec
def tuneforge_model_sources():
    """Return :class:`~tuneforge.specs.ModelSourceSpec` objects.

    Selected with ``model=<name>``; the spec's config fields are set with
    ``model.<field>=...``.  Built-ins: ``hf`` (Hugging Face id, local folder or
    ``.gguf`` file) and ``tiny`` (a small random Llama, no download).
    """


@hookspec
def tuneforge_datasets():
    """Return :class:`~tuneforge.specs.DatasetSpec` objects.

    Selected with ``data=<name>``.  Built-ins: ``files`` (any local file or
    folder), ``jsonl``, ``json``, ``csv``, ``parquet`` and ``hf`` (Hugging Face
    ``datasets``), each reading alpaca, chat (OpenAI or ShareGPT), completion
    and preference records; ``legal_citations`` (the demo's seeded generator).
    """


@hookspec
def tuneforge_adapters():
    """Return :class:`~tuneforge.specs.AdapterSpec` objects.

    Selected with ``adapter=<name>``.  Built-ins: ``lora`` (also DoRA and
    rsLoRA), ``prefix``, ``prompt``, ``ia3``, ``full`` and ``freeze``.
    """


@hookspec
def tuneforge_losses():
    """Return :class:`~tuneforge.specs.LossSpec` objects.

    Selected with ``loss=<name>``.  Built-ins: ``cross_entropy``,
    ``chunked_cross_entropy``, ``dpo`` and ``distillation``.
    """


@hookspec
def tuneforge_evaluators():
    """Return :class:`~tuneforge.specs.EvaluatorSpec` objects.

    Selected as a list with ``evaluators=[a,b]``; each runs on the held-out
    split before training (base model) and after (tuned model).  Built-ins:
    ``perplexity``, ``exact_match``, ``contains``, ``regex``, ``rouge``,
    ``bleu``, ``chrf``, ``choice`` and ``forgetting``.
    """


@hookspec
def tuneforge_callbacks():
    """Return :class:`~tuneforge.specs.CallbackSpec` objects.

    Selected as a list with ``callbacks=[a,b]``; each builds a Lightning
    callback added to the trainer.  Built-ins: ``early_stopping`` and
    ``targets`` (the demo's pass/fail verdict).
    """


@hookspec
def tuneforge_loggers():
    """Return :class:`~tuneforge.specs.LoggerSpec` objects.

    Selected as a list with ``loggers=[a,b]`` (default ``[csv]``); each builds
    a Lightning logger that receives the training metrics, the redacted run
    config as hyperparameters and the base/tuned evaluator results.  The run's
    own ``metrics.csv`` is written whatever the list holds.  Built-ins:
    ``csv``, ``tensorboard``, ``mlflow`` and ``wandb`` (the last three need
    ``pip install 'tuneforge[tensorboard]'`` / ``[mlflow]`` / ``[wandb]``).
    """


# ---------------------------------------------------------------------------
# Lifecycle hooks
# ---------------------------------------------------------------------------


@hookspec
def tuneforge_run_start(config, run_dir):
    """Called once when a training run starts, after the resolved config is saved.

    :param config: the composed, resolved ``omegaconf.DictConfig`` (read-only).
    :param run_dir: ``pathlib.Path`` of the run directory.
    """


@hookspec
def tuneforge_run_end(config, run_dir, status, metrics):
    """Called once when a training run ends, successfully or not.

    :param config: the resolved config of the run.
    :param run_dir: ``pathlib.Path`` of the run directory.
    :param status: ``"completed"``, ``"failed"`` or ``"interrupted"``.
    :param metrics: dict of final metrics (``base/...`` and ``tuned/...``
        evaluator results, last training loss); partial for a failed run.
    """
