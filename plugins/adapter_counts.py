"""What the built-in adapters add to and train in a model of known shapes, counted without torch.

These are the ``count_parameters`` of the ``lora`` (and so ``qlora``), ``full`` and ``freeze`` specs:
``tuneforge plan`` uses them on a decoder's :class:`~tuneforge.planning.decoder_shapes.DecoderShapes`
instead of building the model on the meta device.  Each returns None for settings it does not model
(``modules_to_save``, module patterns, layer choices peft refuses), and the plan then applies the adapter
to the meta-device model, as before.  tests/test_plan_quick.py checks every count here against peft.
"""

from __future__ import annotations

import re
from typing import Optional

from tuneforge import AdapterCount, DecoderShapes, LinearShape

#: peft's shorthand for "every linear layer but the output layer"
ALL_LINEAR = "all-linear"


def count_lora(shapes: DecoderShapes, config) -> Optional[AdapterCount]:
    """LoRA (and DoRA) on the layers peft's ``target_modules`` matching picks: ``r * (in + out)`` each,
    plus a magnitude vector of ``out`` with DoRA; the biases ``bias`` trains."""
    targets = config.target_modules
    if config.modules_to_save or (isinstance(targets, str) and config.layers_to_transform is not None):
        return None  # copies of whole modules; peft refuses layers_to_transform with a pattern or all-linear
    if targets == ALL_LINEAR:  # peft expands it to the last names of the linear layers but the output
        targets = sorted({linear.path.rsplit(".", 1)[-1] for linear in shapes.linears})
    layers = config.layers_to_transform
    chosen = [linear for linear in (*shapes.linears, shapes.output) if _targeted(linear, targets, layers)]
    if not chosen:
        return None  # the adapter refuses it when it loads; the meta-device model gives that error's note
    added = sum(config.r * (linear.in_features + linear.out_features)
                + (linear.out_features if config.use_dora else 0) for linear in chosen)
    biases = {"none": 0, "all": shapes.bias_parameters,
              "lora_only": sum(linear.out_features for linear in chosen if linear.bias)}[config.bias]
    return AdapterCount(adapter_parameters=added, trainable_base_parameters=biases,
                        adapter_bytes=max(4, shapes.weight_bytes), checkpointing=config.gradient_checkpointing)


def _targeted(linear: LinearShape, targets, layers) -> bool:
    """Whether peft puts LoRA on ``linear``: a pattern matches the whole module path; a list names paths or
    last names, and ``layers`` (``layers_to_transform``) keeps the last-name matches in those layers."""
    if isinstance(targets, str):
        return re.fullmatch(targets, linear.path) is not None
    if linear.path in targets:
        return True
    if not any(linear.path.endswith(f".{name}") for name in targets):
        return False
    return layers is None or not list(layers) or linear.layer in set(layers)


def count_full(shapes: DecoderShapes, config) -> AdapterCount:
    """Every base parameter trains."""
    return AdapterCount(trainable_base_parameters=shapes.base_parameters,
                        checkpointing=config.gradient_checkpointing)


def count_freeze(shapes: DecoderShapes, config) -> Optional[AdapterCount]:
    """The top ``trainable_layers`` transformer layers train (None with ``trainable_modules``: patterns)."""
    count = int(config.trainable_layers)
    if config.trainable_modules or not 0 < count <= shapes.num_layers:
        return None
    trained = sum(shapes.layer_parameters(index) for index in range(shapes.num_layers - count, shapes.num_layers))
    return AdapterCount(trainable_base_parameters=trained, checkpointing=config.gradient_checkpointing)
