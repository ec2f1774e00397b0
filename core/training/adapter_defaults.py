"""What the host does for an :class:`~tuneforge.specs.AdapterSpec` that leaves out ``load`` or ``merge``,
and the checks on what an adapter's ``apply`` and ``merge`` return.

A spec whose ``apply`` wraps the model with peft (``get_peft_model``) and that gives no ``save``/``load``/
``merge`` works without them: the default save (``save_pretrained``) writes peft's adapter folder
(``adapter_config.json`` + weights); the default load sees that file, loads the run's base model and puts
the adapter back on it with ``peft.PeftModel.from_pretrained``; the default merge folds it into the base
weights with peft's ``merge_and_unload``.  A folder without ``adapter_config.json`` holds full weights,
read with ``from_pretrained``; a loaded model that is not a peft model is exported as it is.
"""

from __future__ import annotations

import sys
from pathlib import Path

#: the file peft's ``save_pretrained`` writes into an adapter folder: a saved model/ holding it is a peft adapter
PEFT_ADAPTER_CONFIG = "adapter_config.json"


def holds_peft_adapter(model_dir) -> bool:
    """Whether ``model_dir`` (a run's ``model/``) holds a peft adapter (peft's ``adapter_config.json``)."""
    return model_dir is not None and (Path(model_dir) / PEFT_ADAPTER_CONFIG).is_file()


def holds_unmerged_adapter(model) -> bool:
    """Whether ``model`` still carries an unmerged adapter: a peft wrapper (``peft.PeftModel``, a tuner
    model) or a ``transformers`` model with an adapter loaded into it (``load_adapter``), whose
    ``save_pretrained`` writes only the adapter."""
    if getattr(model, "_hf_peft_config_loaded", False) is True:
        return True
    peft = sys.modules.get("peft")  # a peft model exists only once peft is imported
    if peft is None:
        return False
    from peft.tuners.tuners_utils import BaseTuner

    wrappers = tuple(cls for cls in (getattr(peft, "PeftModel", None), getattr(peft, "PeftMixedModel", None),
                                     BaseTuner) if isinstance(cls, type))
    return isinstance(model, wrappers)


def load_peft_adapter(adapter_spec, base_model, model_dir):
    """The peft adapter saved in ``model_dir`` put back onto ``base_model`` (the default load of a spec
    without ``load`` whose save wrote peft's adapter folder)."""
    import warnings

    from peft import PeftModel

    from tuneforge.errors import ModelError

    if base_model is None:
        raise ModelError(f"{model_dir}: adapter '{adapter_spec.name}' saved a peft adapter there, which loads "
                         "onto the run's base model, and none was given")
    with warnings.catch_warnings():  # peft reads transformers 5's deprecated is_gradient_checkpointing
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        return PeftModel.from_pretrained(base_model, str(model_dir))


def default_merge(adapter_spec, model):
    """``model`` merged as the default ``merge`` does: a peft model folded into its base weights with
    ``merge_and_unload``; any other model as it is.  A prompt-learning adapter (prefix or prompt tuning:
    virtual tokens, not weight deltas) is a one-line ``ModelError``."""
    if not holds_unmerged_adapter(model):
        return model
    from tuneforge.errors import ModelError

    for config in (getattr(model, "peft_config", None) or {}).values():
        if getattr(config, "is_prompt_learning", False):
            kind = getattr(config.peft_type, "value", config.peft_type)
            raise ModelError(f"adapter '{adapter_spec.name}' is {kind} (virtual tokens, not weight deltas) and "
                             "cannot be merged into the base weights; use the run directory with tuneforge "
                             "generate/chat, or load it with peft.PeftModel.from_pretrained")
    try:
        merge = model.merge_and_unload  # peft's tuner models have it; a model with adapters loaded has not
        return merge()
    except (AttributeError, NotImplementedError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"adapter '{adapter_spec.name}' cannot be merged into the base weights by peft's "
                         f"merge_and_unload ({first})") from exc


def merged_model():
    """What an adapter's ``merge`` must return (a :class:`~tuneforge.host.guard.Returns`): a plain
    ``transformers`` model that ``save_pretrained`` writes whole, not a peft model whose adapter is still
    unmerged (its ``save_pretrained`` would write only the adapter)."""
    import torch

    from tuneforge.host.guard import Returns, type_name

    def problem(result):
        if not isinstance(result, torch.nn.Module):
            return type_name(result)
        if holds_unmerged_adapter(result):
            return f"{type(result).__name__}, a peft model whose adapter is not merged into the base weights"
        if not callable(getattr(result, "save_pretrained", None)):
            return f"{type(result).__name__}, which has no save_pretrained"
        return None

    return Returns(problem, "the merged model: a plain transformers model that save_pretrained writes whole "
                            "(for a peft model, model.merge_and_unload())")
