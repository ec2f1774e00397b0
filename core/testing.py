"""Helpers for plugin authors: run a tiny CPU fine-tune with your plugin registered, and check
a dataset's label masking, a loss or an evaluator on toy inputs.

    from tuneforge.testing import run_tiny_fit

    import my_package.plugin as plugin

    def test_my_adapter(tmp_path):
        result = run_tiny_fit(tmp_path, plugins=[plugin], overrides=["adapter=my_adapter"])
        assert result.metrics["steps"] == 5

The same is available as the pytest fixture ``tuneforge_fit`` (this module is a
pytest plugin through the ``pytest11`` entry point): ``tuneforge_fit(plugins=...,
overrides=...)`` runs in a fresh temporary directory.

``plugins=[module]`` works whether or not your package is installed: a module
passed in that is also installed (an entry point names that module) is
registered once, in place of the entry point, under the entry point's name;
an uninstalled one is registered under its ``__name__``.  Leave ``plugins``
empty to test the installed package exactly as ``tuneforge train`` sees it.

Smaller checks, without a training run: :func:`assert_labels` (which text
spans of a tokenized example carry loss), :func:`run_loss` (a loss on a toy
batch with the tiny model) and :func:`run_evaluator` (an evaluator on toy
examples or on given predictions); :func:`tiny_model` gives the tiny model
and its tokenizer as a tuple ``(model, tokenizer)``, :func:`tiny_tokenizer` the
tokenizer alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Iterable, Mapping, Optional, Sequence

#: Overrides that make a run small enough for a unit test on one CPU core; ``run_tiny_fit``
#: puts them first, so your ``overrides`` win (e.g. ``trainer.max_steps=10``).  The data is
#: the default ``data=jsonl`` sample (64 alpaca and chat records, 10% held out) unless you
#: select your own dataset.
TINY_OVERRIDES = (
    "model=tiny",                         # a random 2-layer Llama (hidden size 64), byte-level tokenizer: no download
    "trainer.max_steps=5",                # five optimizer steps
    "trainer.accelerator=cpu",
    "trainer.devices=1",
    "trainer.enable_progress_bar=false",
    "loader.batch_size=4",                # four examples per step
    "threads=1",                          # one torch thread
)


@dataclass
class FitResult:
    """What a tiny fit produced.

    metrics: the run's final metrics, as in ``<run_dir>/metrics.json``: ``base`` and ``tuned``
        (evaluator results before and after training, named ``<evaluator>/<metric>``, e.g.
        ``perplexity/loss``, or just ``<evaluator>`` for one metric of its own name, e.g.
        ``exact_match``), ``steps`` (optimizer steps run), ``train`` (last logged values:
        ``train/loss``, ``val/loss`` when validation ran, ``train/<key>`` a loss logs),
        ``data`` (``train_examples``, ``val_examples``, ``train_records`` ...), ``quality``
        (the data quality report), ``parameters`` (``trainable``, ``total``, ``fraction``),
        ``throughput`` (``fit_time_s``, ``tokens``, ``tokens_per_s``), ``overfitting``,
        ``metric_info`` (each reported metric's ``MetricInfo``: section, direction, loss or not),
        ``skipped_nonfinite_batches`` and ``wall_time_s``.
    run_dir: the run directory (``pathlib.Path``): ``config.yaml``, ``metrics.csv``
        (per-step ``train/loss``), ``metrics.json``, ``predictions.jsonl``, ``model/``,
        ``status.json``, and what plugins wrote (``<run_dir>/<plugin>/``).
    config: the composed, resolved config (``omegaconf.DictConfig``), e.g.
        ``result.config.adapter.name``.
    components: the validated components (each component's spec and the typed config
        instance it was given), e.g. ``result.components.adapter.config``.
    """

    metrics: dict
    run_dir: Path
    config: object
    components: object = None

    def load_model(self):
        """``(model, tokenizer)``: the run's trained model read back from ``<run_dir>/model`` the way
        ``tuneforge eval``, ``generate`` and ``export`` read it (the model source loads the base, then the
        adapter's ``load``; full weights with ``from_pretrained``), in eval mode.  To check that an adapter
        reloads to the logits it trained, compare them with a fresh model's after ``spec.apply``."""
        from tuneforge.training.model_io import load_saved_model

        model_part, adapter = self.components.model, self.components.adapter
        base, tokenizer = model_part.spec.load(model_part.config)
        model = load_saved_model(adapter.spec, base, self.run_dir / "model",
                                 trust_remote_code=bool(getattr(model_part.config, "trust_remote_code", False)))
        return model.eval(), tokenizer


def run_tiny_fit(run_dir, plugins: Iterable = (), overrides: Sequence[str] = ()) -> FitResult:
    """Compose the config with ``TINY_OVERRIDES`` + ``overrides`` and train the tiny model.

    ``plugins`` are modules or objects with ``tuneforge_*`` hooks, registered
    next to the installed ones (their components become Hydra choices).  The
    config is composed once (Hydra's compose API) and validated once, like a
    ``tuneforge train`` run: a bad value raises ``ConfigError`` before the
    model loads.
    """
    from tuneforge.host.components import run_components
    from tuneforge.host.compose import compose, load_plugins
    from tuneforge.training.run import run_train

    all_overrides = [*TINY_OVERRIDES, *overrides, f"run_dir={Path(run_dir)}"]
    loaded = load_plugins(all_overrides, extra_plugins=plugins)
    all_overrides = _without_disabling_passed_plugins(all_overrides, loaded)
    cfg = compose(all_overrides)
    components = run_components(cfg, loaded)
    metrics = run_train(cfg, loaded, components=components)
    return FitResult(metrics=metrics, run_dir=Path(run_dir), config=cfg, components=components)


def _without_disabling_passed_plugins(overrides: Sequence[str], loaded) -> list:
    """``overrides`` without the names in ``plugins.disable=[...]`` of plugins registered anyway (passed in
    ``plugins=``), with a ``DeprecationWarning``.

    tuneforge 0.1's testing kit needed ``plugins.disable=[<own package>]`` when the package under test was
    also installed (the passed module collided with its entry point); the passed module now takes the
    entry point's place, so the override is not needed.  It keeps working, with this warning, until
    tuneforge 0.3 (see docs/plugins.md, "Compatibility").
    """
    import warnings

    from hydra.core.override_parser.overrides_parser import OverridesParser

    if not any(o.lstrip("+~").startswith("plugins.disable") for o in overrides):
        return list(overrides)
    kept = []
    for text, parsed in zip(overrides, OverridesParser.create().parse_overrides(list(overrides))):
        if parsed.key_or_group != "plugins.disable" or parsed.is_delete():
            kept.append(text)
            continue
        value = parsed.value()
        names = [str(v) for v in value] if isinstance(value, list) else [str(value)]
        passed = [name for name in names if name in loaded.infos]
        if not passed:
            kept.append(text)
            continue
        warnings.warn(f"plugins.disable={passed} in the overrides of tuneforge_fit/run_tiny_fit is not needed any "
                      f"more: a plugin passed in plugins= replaces its installed entry point; drop it (it will be "
                      f"refused from tuneforge 0.3)", DeprecationWarning, stacklevel=3)
        rest = [name for name in names if name not in passed]
        kept.append(f"{text.split('=', 1)[0]}=[{','.join(rest)}]")
    return kept


try:
    import pytest
except ImportError:  # pragma: no cover - pytest is only needed by plugin test suites
    pytest = None

if pytest is not None:

    @pytest.fixture
    def tuneforge_fit(tmp_path_factory):
        """Call ``tuneforge_fit(plugins=[...], overrides=[...])`` to run :func:`run_tiny_fit`."""

        def fit(plugins: Iterable = (), overrides: Sequence[str] = ()) -> FitResult:
            return run_tiny_fit(tmp_path_factory.mktemp("tuneforge-run"), plugins, overrides)

        return fit


# ---------------------------------------------------------------------------
# Smaller checks: the tiny model, label masking, a loss, an evaluator
# ---------------------------------------------------------------------------

#: Toy records for :func:`run_loss` and :func:`run_evaluator` (alpaca records: prompt masked, output trained).
TOY_RECORDS = (
    {"instruction": "What is the capital of France?", "output": "Paris"},
    {"instruction": "Add 2 and 3.", "output": "5"},
    {"instruction": "Translate 'cat' to German.", "output": "Katze"},
    {"instruction": "Name a primary colour.", "output": "red"},
)


def _plugins(plugins: Iterable = ()):
    from tuneforge.host.plugin_manager import PluginSelection, create_plugin_manager

    return create_plugin_manager(PluginSelection.from_env(), plugins)


def tiny_model(plugins: Iterable = ()):
    """``(model, tokenizer)`` of ``model=tiny`` (random weights, seed 0), loaded through the registered model source."""
    return _load_tiny(_plugins(plugins))


def _load_tiny(registered):
    spec = registered["model"].get("tiny")
    return spec.load(_component_config(spec, None))


def tiny_tokenizer():
    """The tokenizer of ``model=tiny``: one token per byte, ChatML template, ``<|im_end|>`` ends a turn (EOS)."""
    return tiny_model()[1]


def _component_config(spec, config):
    """``config`` as the spec's config: a mapping of field values -> an instance of ``spec.config``
    (its ``__post_init__`` validation runs); an instance passes through; None -> the defaults."""
    if config is None:
        return spec.config()
    if isinstance(config, Mapping):
        return spec.config(**config)
    return config


def toy_examples(tokenizer, records: Optional[Sequence] = None) -> list:
    """Tokenized examples of ``records`` (default :data:`TOY_RECORDS`), as a dataset's ``DataSplits`` holds them.

    Records are dicts in any format the built-in datasets read (alpaca, chat
    ``messages``, completion ``text``, preference); each example has
    ``input_ids``, ``labels`` (-100 where no loss), ``messages``, ``record``
    and ``source`` (``toy:<index>``).
    """
    from tuneforge.data import Record, tokenize_records

    records = TOY_RECORDS if records is None else records
    examples, _ = tokenize_records([Record(dict(r), f"toy:{i}") for i, r in enumerate(records)], tokenizer)
    return examples


def trained_spans(example: Mapping, tokenizer, prefix: str = "") -> list:
    """The texts that carry loss in a tokenized example: each run of consecutive trained tokens, decoded.

    Special tokens are kept in the text (e.g. the tiny tokenizer's ``<|im_end|>``).
    ``prefix="chosen_"`` reads ``chosen_input_ids``/``chosen_labels`` of a preference example.
    """
    from tuneforge.data import IGNORE_INDEX

    ids, labels = list(example[f"{prefix}input_ids"]), list(example[f"{prefix}labels"])
    assert len(ids) == len(labels), f"{prefix}input_ids has {len(ids)} tokens but {prefix}labels {len(labels)}"
    spans, current = [], []
    for token, label in zip(ids, labels):
        if label == IGNORE_INDEX:
            if current:
                spans.append(current)
            current = []
            continue
        assert label == token, (f"a trained label ({label}) differs from its input id ({token}): labels must be "
                                "the input ids themselves (not shifted), -100 where no loss")
        current.append(token)
    if current:
        spans.append(current)
    return [tokenizer.decode(span, skip_special_tokens=False) for span in spans]


def assert_labels(example: Mapping, tokenizer, trained: Sequence[str], prefix: str = "") -> list:
    """Assert exactly which text spans of a tokenized example carry loss; returns the spans.

    ``trained`` lists, in order, the text of every run of trained tokens (see
    :func:`trained_spans`), e.g. for an alpaca record with the tiny tokenizer
    ``["Paris<|im_end|>\\n"]``: the answer and the end-of-turn marker, and
    nothing of the prompt.  The assertion message shows the whole example
    with the trained spans marked ``[[...]]``.
    """
    spans = trained_spans(example, tokenizer, prefix)
    if spans != list(trained):
        shown = _marked_text(example, tokenizer, prefix)
        raise AssertionError(f"trained spans differ:\n  expected {list(trained)!r}\n  got      {spans!r}\n"
                             f"  example  {shown!r}")
    return spans


def _marked_text(example: Mapping, tokenizer, prefix: str) -> str:
    from tuneforge.data import marked_text

    return marked_text(example, tokenizer, prefix)


def run_loss(loss, batch: Optional[Mapping] = None, *, config=None, model=None, tokenizer=None,
             records: Optional[Sequence] = None, plugins: Iterable = (), backward: bool = True):
    """Run a loss once on a toy batch with the tiny model; returns its ``LossOutput``.

    ``loss``: a :class:`~tuneforge.specs.LossSpec` (built here with ``config`` -- a
    mapping of field values or an instance of its config class, default its
    defaults -- and a real ``LossContext``) or an already built
    ``loss_fn(model, batch)``.  ``batch``: padded tensors; default ``records``
    (default :data:`TOY_RECORDS`) tokenized and padded (``input_ids``,
    ``attention_mask``, ``labels``).  ``model``/``tokenizer``: default
    :func:`tiny_model`.  Checks that the result is a ``LossOutput`` whose
    ``loss`` is a finite scalar tensor and ``num_tokens`` None or a positive
    count; with ``backward`` it also backpropagates and checks that some
    trainable parameter got a finite, nonzero gradient.  Gradients are left on
    the parameters for you to inspect.
    """
    import torch

    from tuneforge.data import pad_batch
    from tuneforge.losses import LossContext, LossOutput
    from tuneforge.specs import LossSpec
    from tuneforge.training.model_io import load_model_from_config

    registered = _plugins(plugins)
    if model is None or tokenizer is None:
        model, tokenizer = _load_tiny(registered)
    if batch is None:
        batch = pad_batch(toy_examples(tokenizer, records), tokenizer.pad_token_id)
    if isinstance(loss, LossSpec):
        context = LossContext(tokenizer=tokenizer,
                              load_model=lambda model_config: load_model_from_config(registered, model_config))
        loss_fn = loss.build(_component_config(loss, config), context)
    else:
        loss_fn = loss
    output = loss_fn(model, dict(batch))
    assert isinstance(output, LossOutput), f"a loss must return tuneforge.losses.LossOutput, got {type(output)}"
    assert isinstance(output.loss, torch.Tensor) and output.loss.ndim == 0, \
        f"LossOutput.loss must be a scalar tensor, got {output.loss!r}"
    assert torch.isfinite(output.loss), f"LossOutput.loss is {float(output.loss)}"
    assert output.num_tokens is None or int(output.num_tokens) > 0, \
        f"LossOutput.num_tokens must be None or > 0, got {output.num_tokens}"
    if backward:
        output.loss.backward()
        grads = [p.grad for p in model.parameters() if p.requires_grad and p.grad is not None]
        assert grads, "no trainable parameter received a gradient from the loss"
        assert all(torch.isfinite(g).all() for g in grads), "a gradient is not finite"
        assert any(g.abs().sum() > 0 for g in grads), "every gradient is zero"
    return output


def run_evaluator(evaluator, examples: Optional[Sequence] = None, *, predictions: Optional[Sequence] = None,
                  config=None, model=None, tokenizer=None, plugins: Iterable = ()) -> dict:
    """Run an evaluator once with the tiny model; returns its metrics (``{name: float or None}``).

    ``evaluator``: an :class:`~tuneforge.specs.EvaluatorSpec` or an
    ``evaluate(model, tokenizer, examples, config[, *, evaluation])`` function
    (then pass ``config``), called as the host calls it (``evaluation=`` an
    :class:`~tuneforge.evaluation.EvaluationPass` when it takes that keyword).
    ``examples``: records (any dataset format) or tokenized examples; default
    :data:`TOY_RECORDS`.  ``predictions``: instead of examples, rows
    ``{"prompt", "reference", "output"}`` (or ``(prompt, reference, output)``
    tuples): each becomes an example (the prompt as the user turn, the
    reference as the answer) and
    ``generate_predictions(..., evaluation=evaluation)`` returns the given
    ``output`` instead of generating, so a metric can be checked on known
    outputs; that needs an ``evaluate`` taking ``evaluation`` and handing it
    to the helpers (an evaluator that scores with the model itself, e.g. by
    log-likelihood, still uses the model); predictions of another shape are a
    one-line ``ValueError`` saying the expected form.  ``config``: a mapping of field
    values or an instance of the evaluator's config class (default its
    defaults).  What the evaluator returns and records is checked as in a run
    (:func:`tuneforge.evaluation.runner.checked_metric_values` and
    :func:`~tuneforge.evaluation.runner.checked_example_scores`: finite
    numbers, not bools; one per-example score per example): a mistake is the
    run's one-line :class:`~tuneforge.PluginError`.
    """
    from tuneforge.evaluation import EvaluationPass
    from tuneforge.evaluation.runner import checked_example_scores, checked_metric_values
    from tuneforge.specs import EvaluatorSpec, MetricInfo, accepts_keyword, call_accepting

    if model is None or tokenizer is None:
        model, tokenizer = tiny_model(plugins)
    given = None
    if predictions is not None:
        rows = _prediction_rows(predictions)
        examples = toy_examples(tokenizer, [{"instruction": r["prompt"], "output": r["reference"]} for r in rows])
        given = {ex["source"]: str(r["output"]) for ex, r in zip(examples, rows)}
    elif examples is None or not examples or "input_ids" not in examples[0]:
        examples = toy_examples(tokenizer, examples)
    if isinstance(evaluator, EvaluatorSpec):
        spec, evaluate, config = evaluator, evaluator.evaluate, _component_config(evaluator, config)
    else:  # a bare function: checked as an evaluator of its name that declares no metrics
        evaluate = evaluator
        spec = SimpleNamespace(name=getattr(evaluate, "__name__", "evaluate"), metrics=(), metric_info=MetricInfo)
    if given is not None:
        assert accepts_keyword(evaluate, "evaluation"), (
            "run_evaluator(predictions=...) needs an evaluate(model, tokenizer, examples, config, *, evaluation) "
            "that passes evaluation= to generate_predictions; this one takes no 'evaluation' keyword")
    one_pass = EvaluationPass(label="test", given_outputs=given)
    examples = list(examples)
    values = checked_metric_values(spec, call_accepting(evaluate, model, tokenizer, examples, config,
                                                        evaluation=one_pass))
    checked_example_scores(spec, one_pass.scores, one_pass.scored_rows, len(examples))
    return values


#: what ``run_evaluator(predictions=...)`` takes, as its errors say
PREDICTION_FORM = ("a list of (prompt, reference, output) tuples or of {'prompt', 'reference', 'output'} dicts, "
                   "e.g. [('2+2?', '4', '4')]")


def _prediction_rows(predictions) -> list:
    """``predictions`` as ``[{"prompt", "reference", "output"}]``; anything else is a one-line ValueError."""
    from tuneforge.host.guard import shown

    if isinstance(predictions, (str, bytes, Mapping)) or not isinstance(predictions, Iterable):
        raise ValueError(f"run_evaluator(predictions=...) got {type(predictions).__name__} "
                         f"{shown(predictions)}; it takes {PREDICTION_FORM}")
    rows = []
    for i, row in enumerate(predictions):
        if isinstance(row, Mapping):
            missing = [key for key in ("prompt", "reference", "output") if key not in row]
            problem = f"lacks {', '.join(repr(k) for k in missing)}" if missing else None
        elif isinstance(row, Sequence) and not isinstance(row, (str, bytes)):
            problem = None if len(row) == 3 else f"has {len(row)} items, not 3"
        else:
            problem = f"is a {type(row).__name__}"
        if problem:
            raise ValueError(f"run_evaluator(predictions=...): row {i} {shown(row)} {problem}; it takes "
                             f"{PREDICTION_FORM}")
        rows.append(row if isinstance(row, Mapping) else dict(zip(("prompt", "reference", "output"), row)))
    return rows
