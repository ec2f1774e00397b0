"""Running the selected evaluators on one model state (base or tuned) in one shared pass, and
describing their metrics (:class:`tuneforge.specs.MetricInfo`) for the report and ``compare``."""

from __future__ import annotations

from typing import Optional

from omegaconf import DictConfig


def run_evaluators(evaluators: dict, cfg: DictConfig, model, tokenizer, examples, label: str = "eval",
                   chat_template: Optional[str] = None, context=None):
    """Every selected evaluator on ``examples`` in one evaluation pass (generations are shared).

    ``evaluators`` maps each ``evaluators.<key>`` to its validated component
    (``RunComponents.evaluators``): the spec and the typed config it is called
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
    """
    from tuneforge.evaluation import EvaluationPass
    from tuneforge.specs import call_accepting

    results = {}
    one_pass = EvaluationPass(label=label, chat_template=chat_template, context=context)
    was_training = model.training
    home, device = next(model.parameters()).device, _evaluation_device(cfg, context)
    model.eval()
    if device is not None:
        model.to(device)
    try:
        for name, evaluator in evaluators.items():
            spec = evaluator.spec
            values = call_accepting(spec.evaluate, model, tokenizer, examples, evaluator.config, evaluation=one_pass,
                                    **({"context": context} if _takes_context(spec.evaluate) else {}))
            for metric, value in values.items():
                results[metric_name(name, metric, values)] = float(value)
    finally:
        model.train(was_training)
        model.to(home)
    return results, one_pass


def metric_name(evaluator: str, metric: str, values: dict) -> str:
    """The reported name of an evaluator's metric: ``<evaluator>/<metric>``, or ``<evaluator>`` alone
    when it returned one metric of its own name."""
    return evaluator if len(values) == 1 and metric == evaluator else f"{evaluator}/{metric}"


def describe_metrics(plugins, cfg: DictConfig, metrics: dict) -> dict:
    """``{reported name: MetricInfo fields}`` for every metric in ``metrics["base"]`` and ``["tuned"]``.

    The info comes from each evaluator's :attr:`~tuneforge.specs.EvaluatorSpec.metrics`
    (defaults for a metric it does not describe); it is saved as
    ``metric_info`` in ``metrics.json`` so that reports and ``compare`` need
    no plugins.
    """
    from tuneforge.specs import MetricInfo

    evaluators = {key: node.name for key, node in (cfg.get("evaluators") or {}).items()}
    info = {}
    for name in sorted({*metrics.get("base", {}), *metrics.get("tuned", {})}):
        key, _, metric = name.partition("/")
        spec = plugins["evaluators"].get(evaluators[key]) if key in evaluators else None
        info[name] = (spec.metric_info(metric or key) if spec is not None else MetricInfo(name)).as_dict()
    return info


def _evaluation_device(cfg: DictConfig, context=None):
    """The GPU to evaluate on when the trainer would use one (Lightning returns the model on CPU):
    ``context.device``, or without a context the one of local rank 0; None for the CPU."""
    import torch

    from tuneforge.context import evaluation_device

    if context is not None:
        device = context.device
    else:
        device = evaluation_device(cfg.trainer.accelerator, cfg.trainer.devices, local_rank=0)
    return None if device == "cpu" else torch.device(device)


def _takes_context(evaluate) -> bool:
    """True when ``evaluate`` has a parameter named ``context`` that can be passed by keyword."""
    import inspect

    try:
        parameter = inspect.signature(evaluate).parameters.get("context")
    except (TypeError, ValueError):
        return False
    return parameter is not None and parameter.kind in (parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY)
