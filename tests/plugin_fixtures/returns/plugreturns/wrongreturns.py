"""Mistakes: plugin functions that return the wrong thing (one component per kind; ``loss=badloss``
returns a different wrong value for each ``loss.mistake``; adapter ``frozen`` applies to a model with no
parameter left to train, adapter ``unmerged`` merges a peft LoRA model into itself, unmerged)."""

from dataclasses import dataclass

import tuneforge
from tuneforge.losses import LossOutput, model_inputs


@dataclass
class NoOptions:
    """No options."""


@dataclass
class BadLossConfig:
    """mistake: what the loss does wrong: build_none, bare_tensor, vector, detached, num_tokens."""

    mistake: str = "bare_tensor"


def _load_splits_as_list(config, tokenizer):
    return [{"input_ids": [1, 2, 3], "labels": [1, 2, 3]}]


def _load_model_alone(config):
    from tuneforge.testing import tiny_model

    model, _ = tiny_model()
    return model


def _build_loss(config, context):
    if config.mistake == "build_none":
        return None

    def loss_fn(model, batch):
        loss = model(**model_inputs(model, batch), labels=batch["labels"]).loss
        if config.mistake == "bare_tensor":
            return loss
        if config.mistake == "vector":
            return LossOutput(loss=loss.repeat(2))
        if config.mistake == "detached":
            return LossOutput(loss=loss.detach())
        return LossOutput(loss=loss, num_tokens="many")

    return loss_fn


@tuneforge.hookimpl
def tuneforge_datasets():
    return [tuneforge.DatasetSpec("listsplits", NoOptions, "load returns a list", load=_load_splits_as_list)]


@tuneforge.hookimpl
def tuneforge_model_sources():
    return [tuneforge.ModelSourceSpec("modelonly", NoOptions, "load returns the model alone", load=_load_model_alone)]


def _freeze_everything(model, config):
    model.requires_grad_(False)
    return model


def _apply_lora(model, config):
    from peft import LoraConfig, get_peft_model

    return get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))


def _load_lora(base_model, directory):
    from peft import PeftModel

    return PeftModel.from_pretrained(base_model, directory)


@tuneforge.hookimpl
def tuneforge_adapters():
    return [tuneforge.AdapterSpec("noapply", NoOptions, "apply returns None", apply=lambda model, config: None),
            tuneforge.AdapterSpec("frozen", NoOptions, "apply leaves nothing to train", apply=_freeze_everything),
            tuneforge.AdapterSpec("unmerged", NoOptions, "merge returns the peft model unmerged", apply=_apply_lora,
                                  load=_load_lora, merge=lambda model: model)]


@tuneforge.hookimpl
def tuneforge_losses():
    return [tuneforge.LossSpec("badloss", BadLossConfig, "returns the wrong thing", build=_build_loss)]


@tuneforge.hookimpl
def tuneforge_callbacks():
    return [tuneforge.CallbackSpec("notacallback", NoOptions, "build returns a plain object",
                                   build=lambda config: object())]
