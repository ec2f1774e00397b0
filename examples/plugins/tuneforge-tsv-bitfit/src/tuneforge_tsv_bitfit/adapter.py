"""Adapter ``bitfit``: train only the bias terms and the normalisation layers (BitFit-like).

BitFit (Ben Zaken et al., 2022) fine-tunes only the biases of a transformer.
Llama-style models have no biases, so the weights of the normalisation layers
(RMSNorm, LayerNorm) are trained as well unless ``adapter.include_norms=false``;
``adapter.extra_trainable`` adds parameters by name (e.g. ``[lm_head]``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import tuneforge


@dataclass
class BitFitConfig:
    """Train only the bias terms and, optionally, the normalisation layers.

    include_norms: also train the weights of normalisation layers (LayerNorm, RMSNorm).
    extra_trainable: regular expressions; parameters whose name matches one
        (``re.search``) train too, e.g. ``[lm_head]`` for the output layer.
    max_trainable_fraction: refuse to train more than this share of all parameters
        (0 < fraction <= 1), a guard against a pattern that matched too much.
    """

    include_norms: bool = True
    extra_trainable: list = field(default_factory=list)
    max_trainable_fraction: float = 0.05

    def __post_init__(self):
        # values may still be omegaconf's "???" or an interpolation while Hydra checks types
        if isinstance(self.max_trainable_fraction, (int, float)) and not 0 < self.max_trainable_fraction <= 1:
            raise ValueError(f"max_trainable_fraction must be > 0 and <= 1, got {self.max_trainable_fraction}")
        if isinstance(self.extra_trainable, (list, tuple)):
            for pattern in self.extra_trainable:
                try:
                    re.compile(pattern)
                except (re.error, TypeError) as exc:
                    raise ValueError(f"extra_trainable: {pattern!r} is not a regular expression ({exc})") from None


def is_norm(module) -> bool:
    """True for normalisation layers (``LayerNorm``, ``LlamaRMSNorm`` ...), by class name."""
    return "norm" in type(module).__name__.lower()


def trainable_names(model, include_norms: bool = True, extra_trainable=()) -> list:
    """Names of the parameters BitFit trains in ``model`` (biases, norms, and names matching ``extra_trainable``)."""
    patterns = [re.compile(p) for p in extra_trainable]
    names = []
    for module_name, module in model.named_modules():
        for parameter_name, _ in module.named_parameters(recurse=False):
            name = f"{module_name}.{parameter_name}" if module_name else parameter_name
            if parameter_name == "bias" or (include_norms and is_norm(module) and parameter_name == "weight") \
                    or any(p.search(name) for p in patterns):
                names.append(name)
    return names


def apply_bitfit(model, config: BitFitConfig):
    """Freeze everything but the biases (and norms); raises ``tuneforge.ModelError`` when nothing is left to train."""
    names = set(trainable_names(model, config.include_norms, list(config.extra_trainable)))
    if not names:
        hint = "" if config.include_norms else "; set adapter.include_norms=true to train the normalisation layers"
        raise tuneforge.ModelError(f"adapter=bitfit: the model has no bias terms{hint}")
    total = trained = 0
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(name in names)
        total += parameter.numel()
        trained += parameter.numel() if name in names else 0
    if trained / max(total, 1) > config.max_trainable_fraction:
        raise tuneforge.ModelError(
            f"adapter=bitfit would train {trained} of {total} parameters ({trained / total:.2%}), more than "
            f"adapter.max_trainable_fraction={config.max_trainable_fraction}")
    return model


@tuneforge.hookimpl
def tuneforge_adapters():
    return [tuneforge.AdapterSpec("bitfit", BitFitConfig, "train only biases and norms (BitFit-like)",
                                  apply=apply_bitfit)]
