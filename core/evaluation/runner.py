"""Running the selected evaluators on one model state (base or tuned) in one shared pass, and
describing their metrics (:class:`tuneforge.specs.MetricInfo`) for the report and ``compare``."""

from __future__ import annotations

from typing import Optional

from omegaconf import DictConfig


def run_evaluators(plugins, cfg: DictConfig, model, tokenizer, examples, label: str = "eval",
                   chat_template: Optional[str] = None):
    """Every selected evaluator on ``examples`` in one evaluation pass (generations are shared).

    ``chat_template`` is the one the data was rendered with
    (:attr:`tuneforge.data.DataSplits.chat_template`); it reaches the
    evaluators through the pass.  Returns ``(metrics, pass)``: metrics are
    named ``<evaluator>/<metric>``, or just ``<evaluator>`` when it returns
    one metric of its own name (``exact_match``, ``bleu``); the pass holds
    the predictions.
    """
    from tuneforge.evaluation import EvaluationPass
    from tuneforge.specs import call_accepting

    results = {}
    one_pass = EvaluationPass(label=label, chat_template=chat_template)
    was_training = model.training
    home, device = next(model.parameters()).device, _evaluation_device(cfg)
    model.eval()
    if device is not None:
        model.to(device)
    try:
        for name, evaluator_cfg in cfg.evaluators.items():
            spec = plugins["evaluators"].get(evaluator_cfg.name)
            values = call_accepting(spec.evaluate, model, tokenizer, examples, evaluator_cfg, evaluation=one_pass)
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


def _evaluation_device(cfg: DictConfig):
    """The GPU to evaluate on when the trainer would use one (Lightning returns the model on CPU)."""
    import os

    import torch

    if cfg.trainer.accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return None
