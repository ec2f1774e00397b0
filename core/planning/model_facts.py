"""What the memory estimate needs to know about a model, read from its architecture alone.

The quick way, without torch: when the model source gives its config's fields
(``ModelSourceSpec.config_fields``), the architecture is a plain decoder family
(:mod:`tuneforge.planning.decoder_shapes`) and the adapter counts its own parameters on those shapes
(``AdapterSpec.count_parameters``), the counts are arithmetic on the config's numbers.

Otherwise, the exact way for any model and adapter: the model source's ``model_config(config)`` (:class:`~tuneforge.specs.ModelSourceSpec`) gives the
architecture; the model is built from it on the meta device (``torch.device("meta")``: shapes and
dtypes, no storage, nothing read from disk) and the selected adapter's own ``apply`` runs on it, so
the trainable parameters are counted exactly, for any adapter, with no table of adapters here.  An
adapter that cannot run on the meta device is counted as full fine-tuning (every parameter trains:
an upper bound), and the facts say so.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Optional

from tuneforge.errors import ConfigError, ModelError
from tuneforge.model_heads import CAUSAL_LM, MODEL_HEADS
from tuneforge.planning.decoder_shapes import decoder_shapes

log = logging.getLogger("tuneforge")


class PlanUnavailable(ConfigError):
    """The run's model cannot be described without loading it (its source has no ``model_config``)."""


@dataclass(frozen=True)
class ModelFacts:
    """Parameter counts and the shape numbers of one model with one adapter applied.

    ``base_parameters``: parameters of the model as the source loads it; ``adapter_parameters``: those the
    adapter added; ``trainable_parameters``: those with ``requires_grad`` after the adapter.
    ``linear_weights`` / ``linear_rows``: elements and output rows of the linear-layer weights that
    bitsandbytes quantizes (every ``nn.Linear`` except the output layer; embeddings and norms are not
    linear layers).  ``weight_bytes``: bytes per element of the loaded weights (the config's dtype).
    ``frozen_bytes`` / ``trainable_bytes``: their bytes at the dtypes the parameters have after the adapter
    (the model is built in the weights' dtype; peft keeps adapter weights in float32 over a 16-bit base).
    ``checkpointing``: the adapter turned gradient checkpointing on.  ``exact``: False when the adapter
    could not run on the meta device (``note`` says why) and every parameter is counted as trainable.
    """

    architecture: str
    base_parameters: int
    adapter_parameters: int
    trainable_parameters: int
    linear_weights: int
    linear_rows: int
    weight_bytes: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    vocab_size: int
    frozen_bytes: int = 0
    trainable_bytes: int = 0
    checkpointing: bool = False
    exact: bool = True
    note: str = ""

    @property
    def total_parameters(self) -> int:
        return self.base_parameters + self.adapter_parameters

    @property
    def frozen_parameters(self) -> int:
        return self.total_parameters - self.trainable_parameters

    @property
    def head_dim(self) -> int:
        return self.hidden_size // max(self.num_heads, 1)


_CACHE: dict = {}
#: config fields read per model component (None: the source cannot give them)
_FIELDS: dict = {}
#: architectures read per model component (a GGUF base's header takes a second to parse), and the
#: meta-device base models built from them per head: a plan's suggestions size the same model again
_ARCHITECTURES: dict = {}
_BASE_MODELS: dict = {}


def model_facts(run) -> ModelFacts:
    """The :class:`ModelFacts` of a validated run's model and adapter (:class:`~tuneforge.host.components.RunConfig`),
    cached per (model config, adapter config, the loss's model head)."""
    key = (run.model.name, repr(run.model.config), run.adapter.name, repr(run.adapter.config),
           run.loss.spec.model_head)
    if key not in _CACHE:
        _CACHE[key] = _facts(run)
    return _CACHE[key]


def read_architecture(model) -> Any:
    """The ``transformers`` config of the run's model source (``model`` is the run's model component),
    read without the weights (once per model component); :class:`PlanUnavailable` when the source cannot."""
    return _once_per_model(_ARCHITECTURES, model, _read_architecture)


def _once_per_model(cache: dict, model, read) -> Any:
    """``read(model)`` for the run's model component ``model``, computed once per model name and config."""
    key = (model.name, repr(model.config))
    if key not in cache:
        cache[key] = read(model)
    return cache[key]


def _read_architecture(model) -> Any:
    from tuneforge.host.guard import spec_call

    spec = model.spec
    if spec.model_config is None:
        raise PlanUnavailable(f"model={spec.name}: this model source cannot describe its architecture without "
                              "loading the weights (its spec has no model_config), so tuneforge plan cannot "
                              "size the run")
    return spec_call(spec, "model_config", spec.model_config, model.config)


def _facts(run) -> ModelFacts:
    import warnings

    quick = _facts_from_fields(run)
    if quick is not None:
        return quick
    architecture = read_architecture(run.model)
    with warnings.catch_warnings():  # deprecations of the libraries the adapter calls: not about the user's run
        warnings.simplefilter("ignore")
        return _facts_of(run, architecture)


def _facts_of(run, architecture) -> ModelFacts:
    import copy

    import torch

    weight_bytes = _dtype_bytes(architecture, torch)
    base_key = (id(architecture), run.loss.spec.model_head)
    if base_key not in _BASE_MODELS:
        base_model = meta_model(architecture, run.loss.spec.model_head)
        base_model.to({2: torch.bfloat16, 8: torch.float64}.get(weight_bytes, torch.float32))  # as the source loads it
        _BASE_MODELS[base_key] = (architecture, base_model)  # the architecture kept alive: its id stays its own
    model = copy.deepcopy(_BASE_MODELS[base_key][1])  # the adapter changes the model it is given
    architecture_name = type(model).__name__
    base = _count(model.parameters())
    linear_weights, linear_rows = _quantizable_linears(model)
    exact, note = True, ""
    try:
        model = run.adapter.spec.apply(model, run.adapter.config)
    except Exception as exc:  # an adapter that needs real weights (e.g. one that reads them to initialise)
        if _refuses_the_config(exc):
            raise
        exact = False
        note = (f"adapter={run.adapter.name} cannot be applied on the meta device "
                f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); every parameter is "
                "counted as trainable (an upper bound)")
        log.debug("plan: %s", note)
    else:  # an apply that leaves nothing to train: refused as train refuses it
        from tuneforge.host.guard import checked_result, origin_of
        from tuneforge.host.plugin_returns import adapted_model

        checked_result(origin_of(run.adapter.spec), f"adapter '{run.adapter.name}', apply", model, adapted_model())
    parameters = list({id(p): p for p in model.parameters()}.values())
    total = _count(parameters)
    trainable = _count(p for p in parameters if p.requires_grad) if exact else total
    trainable_bytes = sum(p.numel() * p.element_size() for p in parameters if p.requires_grad or not exact)
    frozen_bytes = sum(p.numel() * p.element_size() for p in parameters) - trainable_bytes
    return ModelFacts(
        architecture=architecture_name,
        base_parameters=base, adapter_parameters=total - base, trainable_parameters=trainable,
        linear_weights=linear_weights, linear_rows=linear_rows, weight_bytes=weight_bytes,
        frozen_bytes=frozen_bytes, trainable_bytes=trainable_bytes,
        hidden_size=int(_field(architecture, "hidden_size", "n_embd", "d_model")),
        intermediate_size=int(_field(architecture, "intermediate_size", "n_inner", "ffn_dim", default=0)
                              or 4 * _field(architecture, "hidden_size", "n_embd", "d_model")),
        num_layers=int(_field(architecture, "num_hidden_layers", "n_layer", "num_layers")),
        num_heads=int(_field(architecture, "num_attention_heads", "n_head")),
        num_kv_heads=int(_field(architecture, "num_key_value_heads", default=0)
                         or _field(architecture, "num_attention_heads", "n_head")),
        vocab_size=int(_field(architecture, "vocab_size")),
        checkpointing=exact and any(getattr(m, "gradient_checkpointing", False) is True for m in model.modules()),
        exact=exact, note=note)


def _refuses_the_config(exc: BaseException) -> bool:
    """Whether an adapter's ``apply`` failed on the meta device for a reason ``tuneforge train`` stops on too:
    a :class:`~tuneforge.errors.ModelError` (the adapter does not fit the model: target modules that match
    nothing, more layers than the model has ...) that does not say it is about the meta device."""
    import re

    return isinstance(exc, ModelError) and re.search(r"\bmeta\b", str(exc), re.IGNORECASE) is None


def _facts_from_fields(run) -> Optional[ModelFacts]:
    """The facts counted on the shapes of the model's config fields (no torch), or None when the source,
    the architecture, the head or the adapter is not one that can be counted this way."""
    from tuneforge.host.guard import spec_call

    source, adapter = run.model.spec, run.adapter.spec
    if run.loss.spec.model_head != CAUSAL_LM or source.config_fields is None or adapter.count_parameters is None:
        return None
    fields = _once_per_model(_FIELDS, run.model,
                             lambda model: spec_call(source, "config_fields", source.config_fields, model.config))
    shapes = decoder_shapes(fields) if fields else None
    if shapes is None:
        return None
    counted = spec_call(adapter, "count_parameters", adapter.count_parameters, shapes, run.adapter.config)
    if counted is None:
        return None
    base, trained_base = shapes.base_parameters, counted.trainable_base_parameters
    return ModelFacts(
        architecture=shapes.architecture, base_parameters=base, adapter_parameters=counted.adapter_parameters,
        trainable_parameters=counted.adapter_parameters + trained_base,
        linear_weights=sum(linear.in_features * linear.out_features for linear in shapes.linears),
        linear_rows=sum(linear.out_features for linear in shapes.linears), weight_bytes=shapes.weight_bytes,
        frozen_bytes=(base - trained_base) * shapes.weight_bytes,
        trainable_bytes=trained_base * shapes.weight_bytes + counted.adapter_parameters * counted.adapter_bytes,
        hidden_size=shapes.hidden_size, intermediate_size=shapes.intermediate_size, num_layers=shapes.num_layers,
        num_heads=shapes.num_heads, num_kv_heads=shapes.num_kv_heads, vocab_size=shapes.vocab_size,
        checkpointing=bool(counted.checkpointing))


def meta_model(architecture, head: str = CAUSAL_LM):
    """A model of ``architecture`` with ``head`` (a causal LM, or a one-label sequence classifier:
    :mod:`tuneforge.model_heads`) on the meta device: every parameter has its shape and no storage."""
    import copy

    import torch
    import transformers

    auto_class = getattr(transformers, MODEL_HEADS[head])
    if head != CAUSAL_LM:
        architecture = copy.copy(architecture)
        architecture.num_labels = 1
    with torch.device("meta"):
        # a config with code of its own (auto_map) was read with trust_remote_code=true by its source
        return auto_class.from_config(architecture, trust_remote_code=bool(getattr(architecture, "auto_map", None)))


def _quantizable_linears(model) -> tuple:
    """(elements, output rows) of the ``nn.Linear`` weights other than the output layer: what
    bitsandbytes replaces by 4- or 8-bit layers (it skips the output layer, as transformers asks it to)."""
    import torch

    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    elements = rows = 0
    for module in model.modules():
        if isinstance(module, torch.nn.Linear) and module is not output:
            elements += module.weight.numel()
            rows += module.weight.shape[0]
    return elements, rows


def _count(parameters) -> int:
    seen, total = set(), 0
    for parameter in parameters:
        if id(parameter) not in seen:
            seen.add(id(parameter))
            total += parameter.numel()
    return total


def _dtype_bytes(architecture, torch) -> int:
    """Bytes per element of the weights the source loads: the config's ``dtype`` (``torch_dtype`` before
    transformers 4.56), float32 when it names none."""
    from importlib.metadata import version

    major, minor = (int(part) for part in version("transformers").split(".")[:2])
    value = getattr(architecture, "dtype" if (major, minor) >= (4, 56) else "torch_dtype", None)
    if isinstance(value, str):
        value = getattr(torch, value, None)
    return value.itemsize if isinstance(value, torch.dtype) else 4


def _field(architecture, *names, default=None):
    for name in names:
        value = getattr(architecture, name, None)
        if value is not None:
            return value
    if default is not None:
        return default
    raise PlanUnavailable(f"the model's config ({type(architecture).__name__}) has none of {', '.join(names)}; "
                          "tuneforge plan sizes decoder language models (hidden size, layers, heads, vocabulary)")
