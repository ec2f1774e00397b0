"""Running the selected evaluators on one model state (base or tuned) in one shared pass."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf


def run_evaluators(plugins, cfg: DictConfig, model, tokenizer, examples, label: str = "eval", context=None):
    """Every selected evaluator on ``examples`` in one evaluation pass (generations are shared).

    Returns ``(metrics, pass)``: metrics are named ``<evaluator>/<metric>``, or
    just ``<evaluator>`` when it returns one metric of its own name
    (``exact_match``, ``bleu``); the pass holds the predictions.  The model
    is evaluated on ``context.device`` (a :class:`~tuneforge.RunContext`;
    without one, the first GPU when the trainer would use GPUs), and
    ``context`` is passed to each evaluator whose ``evaluate`` has a
    ``context`` parameter (None outside a training run, e.g. ``tuneforge eval``).
    """
    from tuneforge.evaluation import evaluation_pass

    results = {}
    was_training = model.training
    home, device = next(model.parameters()).device, _evaluation_device(cfg, context)
    model.eval()
    if device is not None:
        model.to(device)
    try:
        with evaluation_pass(label, chat_template=OmegaConf.select(cfg, "data.chat_template")) as one_pass:
            for name, evaluator_cfg in cfg.evaluators.items():
                spec = plugins["evaluators"].get(evaluator_cfg.name)
                extra = {"context": context} if _takes_context(spec.evaluate) else {}
                values = spec.evaluate(model, tokenizer, examples, evaluator_cfg, **extra)
                for metric, value in values.items():
                    alone = len(values) == 1 and metric == name
                    results[name if alone else f"{name}/{metric}"] = float(value)
    finally:
        model.train(was_training)
        model.to(home)
    return results, one_pass


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
