"""Mistakes: plugin functions that return the wrong thing (one component per kind; ``loss=badloss``
returns a different wrong value for each ``loss.mistake``)."""

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


@tuneforge.hookimpl
def tuneforge_adapters():
    return [tuneforge.AdapterSpec("noapply", NoOptions, "apply returns None", apply=lambda model, config: None)]


@tuneforge.hookimpl
def tuneforge_losses():
    return [tuneforge.LossSpec("badloss", BadLossConfig, "returns the wrong thing", build=_build_loss)]


@tuneforge.hookimpl
def tuneforge_callbacks():
    return [tuneforge.CallbackSpec("notacallback", NoOptions, "build returns a plain object",
                                   build=lambda config: object())]
