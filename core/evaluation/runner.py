"""Running the selected evaluators on one model state (base or tuned) in one shared pass."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf


def run_evaluators(evaluators: dict, cfg: DictConfig, model, tokenizer, examples, label: str = "eval"):
    """Every selected evaluator on ``examples`` in one evaluation pass (generations are shared).

    ``evaluators`` maps each ``evaluators.<key>`` to its validated component
    (``RunComponents.evaluators``): the spec and the typed config it is called with.

    Returns ``(metrics, pass)``: metrics are named ``<evaluator>/<metric>``, or
    just ``<evaluator>`` when it returns one metric of its own name
    (``exact_match``, ``bleu``); the pass holds the predictions.
    """
    from tuneforge.evaluation import evaluation_pass

    results = {}
    was_training = model.training
    home, device = next(model.parameters()).device, _evaluation_device(cfg)
    model.eval()
    if device is not None:
        model.to(device)
    try:
        with evaluation_pass(label, chat_template=OmegaConf.select(cfg, "data.chat_template")) as one_pass:
            for name, evaluator in evaluators.items():
                values = evaluator.spec.evaluate(model, tokenizer, examples, evaluator.config)
                for metric, value in values.items():
                    alone = len(values) == 1 and metric == name
                    results[name if alone else f"{name}/{metric}"] = float(value)
    finally:
        model.train(was_training)
        model.to(home)
    return results, one_pass


def _evaluation_device(cfg: DictConfig):
    """The GPU to evaluate on when the trainer would use one (Lightning returns the model on CPU)."""
    import os

    import torch

    if cfg.trainer.accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return None
