"""Running the selected evaluators on one model state (base or tuned) in one shared pass, checking what
each returns and records (finite numbers; one per-example score per example), and describing their
metrics (:class:`tuneforge.specs.MetricInfo`) for the report and ``compare``."""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING, Optional

from tuneforge.errors import ModelError, PluginError
from tuneforge.host.guard import shown

if TYPE_CHECKING:
    from tuneforge.host.components import RunSettings

log = logging.getLogger("tuneforge")


def run_evaluators(evaluators: dict, settings: "RunSettings", model, tokenizer, examples, label: str = "eval",
                   chat_template: Optional[str] = None, context=None, held_out_only: bool = False,
                   rewards=None, answers: Optional[list] = None):
    """Every selected evaluator on ``examples`` in one evaluation pass (generations are shared).

    ``evaluators`` maps each ``evaluators.<key>`` to its validated component
    (``RunConfig.evaluators``): the spec and the typed config it is called
    with.  ``chat_template`` is the one the data was rendered with
    (:attr:`tuneforge.data.DataSplits.chat_template`); it reaches the
    evaluators through the pass.  Returns ``(metrics, pass)``: metrics are
    named ``<evaluator>/<metric>``, or just ``<evaluator>`` when it returns
    one metric of its own name (``exact_match``, ``bleu``); the pass holds
    the predictions.  The model is evaluated on ``context.device`` (a
    :class:`~tuneforge.RunContext`; without one, the first GPU when the
    trainer would use GPUs), and ``context`` is passed to each evaluator
    whose ``evaluate`` has a ``context`` parameter (None outside a training
    run, e.g. ``tuneforge eval``); the pass carries it too.

    What each evaluator returns and the per-example scores it recorded are checked when it returns
    (:func:`checked_metric_values`, :func:`checked_example_scores`).
    Per-example scores the evaluators recorded (:func:`tuneforge.evaluation.record_scores`)
    end up in ``pass.example_scores`` under the reported names, and in the
    ``scores`` of the prediction rows they were recorded for.  With
    ``held_out_only`` the evaluators whose declared metrics all belong to
    another section than held-out (``forgetting``: they score their own
    reference set, not ``examples``) are skipped: the baseline and
    memorisation columns need only what depends on ``examples``.  ``rewards``: the run's built
    rewards (:class:`tuneforge.rewards.Rewards`), given to the evaluators as ``evaluation.rewards``.
    ``answers`` (one answer text per example of ``examples``, a baseline's ``answer``): the evaluators
    score these answers instead of generating, and only the metrics of evaluators that read them (through
    :func:`tuneforge.evaluation.generate_predictions`) and did not run the model are kept.
    """
    from tuneforge import memory_marks
    from tuneforge.evaluation import EvaluationPass
    from tuneforge.host.guard import spec_call
    from tuneforge.specs import call_accepting

    results = {}
    one_pass = EvaluationPass(label=label, chat_template=chat_template, context=context, rewards=rewards)
    if answers is not None:
        one_pass.given_answers = {id(example): text for example, text in zip(examples, answers)}
    was_training = model.training
    home, device = next(model.parameters()).device, _evaluation_device(settings, context)
    model.eval()
    if device is not None:
        model.to(device)
    try:
        for name, evaluator in evaluators.items():
            spec = evaluator.spec
            if held_out_only and not scores_held_out(spec):
                continue
            one_pass.scores, one_pass.scored_rows = {}, {}
            reads, kept_rows = one_pass.given_reads, set(one_pass.predictions)
            with _model_calls(model, answers is not None) as model_calls:
                values = spec_call(spec, "evaluate", call_accepting, spec.evaluate, model, tokenizer, examples,
                                   evaluator.config, evaluation=one_pass, context=context, named_only=("context",))
            try:
                values = checked_metric_values(spec, values)
                recorded = checked_example_scores(spec, one_pass.scores, one_pass.scored_rows, len(examples))
            except NonFiniteValue as refused:
                # nan or inf: the model's own weights or outputs, when they are not finite, not the evaluator
                raise (model_not_finite(model, examples, label, spec.name, refused.value) or refused) from None
            if answers is not None and (one_pass.given_reads == reads or model_calls):  # not the answers alone
                values, recorded = {}, {}
                one_pass.predictions = {k: v for k, v in one_pass.predictions.items() if k in kept_rows}
            for metric, value in values.items():
                if value is not None:
                    results[metric_name(name, metric, values)] = value
            for metric, scores in recorded.items():
                if values.get(metric) is not None and _consistent(scores, float(values[metric]), f"{name}/{metric}"):
                    reported = metric_name(name, metric, values)
                    one_pass.example_scores[reported] = scores
                    for row, value in zip(one_pass.scored_rows.get(metric) or [], scores["values"]):
                        row.setdefault("scores", {})[reported] = value
            one_pass.scores, one_pass.scored_rows = {}, {}
            memory_marks.mark(f"{name} on the {label} column")
    finally:
        model.train(was_training)
        model.to(home)
    return results, one_pass


@contextlib.contextmanager
def _model_calls(model, watch: bool):
    """A list that gets an entry whenever one of ``model``'s modules runs forward inside the context
    (``watch``: False watches nothing): whether an evaluator scoring given answers ran the model too."""
    calls: list = []
    handles = [module.register_forward_pre_hook(lambda *_: calls.append(1)) for module in model.modules()] \
        if watch else []
    try:
        yield calls
    finally:
        for handle in handles:
            handle.remove()


class NonFiniteValue(PluginError):
    """An evaluator returned or recorded nan or inf (``value``): its plugin is blamed unless the model
    itself is not finite (:func:`model_not_finite`)."""

    def __init__(self, message: str, value):
        super().__init__(message)
        self.value = value


class NonFiniteModelError(ModelError):
    """The evaluated model's weights, or its outputs, are not finite (a diverged training run)."""


def model_not_finite(model, examples, label: str, evaluator: str, value) -> Optional[NonFiniteModelError]:
    """The one-line error for an evaluator's nan or inf ``value`` caused by the model: a weight that is nan
    or inf, or (weights finite but huge, e.g. after a learning rate far too high) nan or inf logits on the
    first example.  None when the model is finite, so the evaluator is to blame."""
    import torch

    problem = None
    largest, largest_name = 0.0, ""
    try:
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                if parameter.is_meta or not parameter.numel():
                    continue
                if not parameter.is_floating_point():
                    continue
                if not bool(torch.isfinite(parameter).all()):
                    problem = f"its weights are not finite (nan or inf in {name})"
                    break
                peak = float(parameter.abs().max())
                if peak > largest:
                    largest, largest_name = peak, name
            if problem is None and not _finite_outputs(model, examples):
                problem = (f"its weights are so large (up to {largest:.3g}, in {largest_name}) that its outputs "
                           "are nan or inf")
    except Exception:  # noqa: BLE001 - a model that cannot be inspected: the evaluator's error stands
        return None
    if problem is None:
        return None
    scored = shown(value)
    if label == "tuned":
        return NonFiniteModelError(
            f"the trained model is not finite: {problem}, so evaluator '{evaluator}' scored {scored}; training "
            "diverged: lower optim.lr, or set trainer.on_nonfinite_loss=stop to stop at the first nan/inf loss "
            "(skip goes on without a usable model)")
    return NonFiniteModelError(
        f"the model evaluated for the '{label}' column is not finite: {problem}, so evaluator '{evaluator}' "
        f"scored {scored}; check the model source (model.path) and model.dtype (float16 overflows where "
        "bfloat16 and float32 do not)")


def _finite_outputs(model, examples) -> bool:
    """Whether the model's logits on (the first 64 tokens of) the first example are all finite; True when
    there is no example with ``input_ids`` to try or the model gives no ``logits``."""
    import torch

    example = next((e for e in examples if isinstance(e, dict) and e.get("input_ids") is not None), None)
    if example is None:
        return True
    ids = torch.as_tensor(example["input_ids"]).reshape(-1)[:64]
    if not ids.numel():
        return True
    device = next(model.parameters()).device
    logits = getattr(model(input_ids=ids.unsqueeze(0).to(device)), "logits", None)
    return logits is None or bool(torch.isfinite(logits.float()).all())


def checked_metric_values(spec, values) -> dict:
    """What an evaluator's ``evaluate`` returned, as ``{metric: float or None}``: a mapping of metric
    names to finite real numbers (a 0-d tensor or a numpy scalar counts; a bool, nan and inf do not)
    or None (no value this time).  Anything else is a one-line :class:`~tuneforge.PluginError` naming
    the plugin, the evaluator and the metric (:mod:`tuneforge.host.guard`)."""
    from collections.abc import Mapping

    def refuse(what: str):
        return _evaluator_error(spec, f"evaluate returned {what}; it must return {{metric name: finite number "
                                      "(not a bool) or None}")

    if not isinstance(values, Mapping):
        raise refuse(f"{type(values).__name__} {shown(values)}, not a dict")
    checked = {}
    for metric, value in values.items():
        if not isinstance(metric, str):
            raise refuse(f"the key {shown(metric)} ({type(metric).__name__}), not a metric name")
        number = None if value is None else _finite_number(value)
        if value is not None and number is None:
            cause = " (nan and inf also come from a model whose outputs are not finite)" \
                if _not_finite(value) else ""
            refused = refuse(f"{shown(value)} ({type(value).__name__}) for metric '{metric}'"
                             f"{_declared(spec, metric)}{cause}")
            if cause:
                raise NonFiniteValue(str(refused), value)
            raise refused
        checked[metric] = number
    return checked


def checked_example_scores(spec, scores: dict, scored_rows: dict, count: int) -> dict:
    """The per-example scores an evaluator recorded (:func:`tuneforge.evaluation.record_scores`;
    ``{metric: {"values", "weights"}}``) with every value and weight a finite float.

    Each value and weight must be a finite real number (a 0-d tensor or a numpy scalar counts; a bool,
    nan and inf do not), and a held-out metric recorded without ``rows`` needs one value per example
    the evaluator was given (``count``): ``values[i]`` scores ``examples[i]``.  (With ``rows`` the
    values score those prediction rows; a metric of another section, e.g. ``forgetting``, scores the
    evaluator's own reference set.)  Anything else is a one-line :class:`~tuneforge.PluginError`
    naming the plugin, the evaluator and the metric."""
    from tuneforge.specs import HELD_OUT

    checked = {}
    for metric, recorded in scores.items():
        where = f"record_scores({metric!r})"
        numbers = {}
        for part in ("values", "weights"):
            given = recorded.get(part)
            if given is None:
                numbers[part] = None
                continue
            numbers[part] = [_finite_number(value) for value in given]
            if None in numbers[part]:
                i = numbers[part].index(None)
                refused = _evaluator_error(spec, f"{where} got {shown(given[i])} ({type(given[i]).__name__}) as "
                                                 f"{part}[{i}] of {len(given)}; each must be a finite number "
                                                 "(not a bool: 1.0 or 0.0 for a hit or a miss)")
                if _not_finite(given[i]):
                    raise NonFiniteValue(str(refused), given[i])
                raise refused
        if (metric not in scored_rows and len(numbers["values"]) != count
                and spec.metric_info(metric).section == HELD_OUT):
            raise _evaluator_error(spec, f"{where} got {len(numbers['values'])} values for the {count} examples "
                                         "evaluate was given; it needs one per example, in order (or the scored "
                                         "prediction rows as rows=...)")
        checked[metric] = numbers
    return checked


def _finite_number(value) -> Optional[float]:
    """``value`` as a float when it is a finite real number (a 0-d tensor or a numpy scalar counts; a bool,
    nan and inf do not); None otherwise."""
    import math
    import numbers

    if not isinstance(value, numbers.Real):
        item = getattr(value, "item", None)  # a 0-d tensor, a numpy scalar
        if not callable(item) or getattr(value, "ndim", 0) != 0:
            return None
        try:
            value = item()
        except (TypeError, ValueError, RuntimeError):
            return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        return None
    return float(value)


def _not_finite(value) -> bool:
    """Whether ``value`` is a real number (or a 0-d tensor or numpy scalar) that is nan or infinite."""
    import math

    try:
        return not isinstance(value, bool) and not math.isfinite(float(value))
    except (TypeError, ValueError, RuntimeError):
        return False


def _evaluator_error(spec, problem: str):
    """The one-line :class:`~tuneforge.PluginError` for ``problem`` of the evaluator ``spec``."""
    from tuneforge.errors import PluginError
    from tuneforge.host.guard import describe_plugin, hint, origin_of

    origin = origin_of(spec)
    return PluginError(f"{describe_plugin(origin)}: evaluator '{spec.name}', {problem}; {hint(origin)}")


def _declared(spec, metric: str) -> str:
    declared = [info.name for info in spec.metrics]
    return f" (declared: {', '.join(declared)})" if declared and metric not in declared else ""


def scores_held_out(spec) -> bool:
    """Whether an evaluator scores the examples it is given: it declares no metrics, or at least one
    of section held-out."""
    from tuneforge.specs import HELD_OUT

    return not spec.metrics or any(info.section == HELD_OUT for info in spec.metrics)


def _consistent(scores: dict, value: float, name: str) -> bool:
    """The recorded per-example scores average to the returned metric (else they are dropped, warned)."""
    from tuneforge.evaluation.uncertainty import weighted_mean

    try:
        mean = weighted_mean(scores["values"], scores.get("weights"))
    except ValueError as exc:
        log.warning("%s: per-example scores ignored (%s)", name, exc)
        return False
    if abs(mean - value) > 1e-6 * max(1.0, abs(value)):
        log.warning("%s: per-example scores average %.6g, not the returned %.6g; no interval for it",
                    name, mean, value)
        return False
    return True


def metric_name(evaluator: str, metric: str, values: dict) -> str:
    """The reported name of an evaluator's metric: ``<evaluator>/<metric>``, or ``<evaluator>`` alone
    when it returned one metric of its own name."""
    return evaluator if len(values) == 1 and metric == evaluator else f"{evaluator}/{metric}"


def describe_metrics(evaluators: dict, metrics: dict) -> dict:
    """``{reported name: MetricInfo fields}`` for every metric in ``metrics["base"]`` and ``["tuned"]``
    (``evaluators``: the run's selected evaluators by config key, each with its spec).

    The info comes from each evaluator's :attr:`~tuneforge.specs.EvaluatorSpec.metrics`
    (defaults for a metric it does not describe); it is saved as
    ``metric_info`` in ``metrics.json`` so that reports and ``compare`` need
    no plugins.
    """
    from tuneforge.specs import MetricInfo

    info = {}
    for name in sorted({*metrics.get("base", {}), *metrics.get("tuned", {})}):
        key, _, metric = name.partition("/")
        spec = evaluators[key].spec if key in evaluators else None
        info[name] = (spec.metric_info(metric or key) if spec is not None else MetricInfo(name)).as_dict()
    return info


def _evaluation_device(settings: "RunSettings", context=None):
    """The GPU to evaluate on when the trainer would use one (Lightning returns the model on CPU):
    ``context.device``, or without a context the one of local rank 0; None for the CPU."""
    import torch

    from tuneforge.context import evaluation_device

    if context is not None:
        device = context.device
    else:
        device = evaluation_device(settings.trainer.accelerator, settings.trainer.devices, local_rank=0)
    return None if device == "cpu" else torch.device(device)
