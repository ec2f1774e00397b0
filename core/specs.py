"""Typed registration objects that plugins return from the ``tuneforge_*`` registration hooks.

Each spec is a small frozen dataclass: a ``name`` (what users type on the command
line, e.g. ``adapter=lora``), a ``config`` dataclass (its fields become the
config keys, e.g. ``adapter.r=8``, type-checked by Hydra) and the function(s)
that do the work.  Nothing here imports torch: entry-point modules that build
specs stay cheap to import.

Every config dataclass must give every field a default, and must not declare a
field called ``name``: the host adds ``name`` itself so that a saved config says
which component produced it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Optional


def _check_config_class(kind: str, name: str, config: type) -> None:
    if not (isinstance(config, type) and dataclasses.is_dataclass(config)):
        raise TypeError(f"{kind} '{name}': config must be a dataclass class, got {config!r}")
    for field in dataclasses.fields(config):
        if field.name == "name":
            raise TypeError(f"{kind} '{name}': config field 'name' is reserved by tuneforge")
        if field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise TypeError(
                f"{kind} '{name}': config field '{field.name}' needs a default "
                "(use None or omegaconf.MISSING ('???') for required values)"
            )


@dataclass(frozen=True)
class _Spec:
    """Common part of every spec: a unique name and its config dataclass."""

    kind: ClassVar[str] = "component"
    required: ClassVar[tuple[str, ...]] = ()
    name: str
    config: type
    description: str = ""

    def __post_init__(self) -> None:
        if not self.name or not self.name.replace("_", "").replace("-", "").isalnum():
            raise ValueError(f"{self.kind} name {self.name!r} must be letters, digits, '_' or '-'")
        _check_config_class(self.kind, self.name, self.config)
        for attr in self.required:
            if not callable(getattr(self, attr)):
                raise TypeError(f"{self.kind} '{self.name}': '{attr}' must be a callable")


@dataclass(frozen=True)
class ModelSourceSpec(_Spec):
    """Where a model and its tokenizer come from (config group ``model``).

    ``load(config) -> (model, tokenizer)`` returns a ``transformers``
    causal-LM ``PreTrainedModel`` in train mode and a ``PreTrainedTokenizerBase``
    whose ``pad_token`` is set.
    """

    kind: ClassVar[str] = "model source"
    required: ClassVar[tuple[str, ...]] = ("load",)
    load: Optional[Callable[[Any], tuple]] = None


@dataclass(frozen=True)
class DatasetSpec(_Spec):
    """A dataset (config group ``data``).

    ``load(config, tokenizer) -> tuneforge.data.DataSplits`` returns tokenized
    examples: each a dict of equal-length int lists (``input_ids``, ``labels``
    with -100 on tokens that carry no loss, optionally more keys such as
    ``chosen_input_ids``).  Bad records raise ``tuneforge.errors.DataError``
    naming file and line; none is dropped silently.
    """

    kind: ClassVar[str] = "dataset"
    required: ClassVar[tuple[str, ...]] = ("load",)
    load: Optional[Callable[[Any, Any], Any]] = None


@dataclass(frozen=True)
class AdapterSpec(_Spec):
    """How the model is made trainable (config group ``adapter``).

    ``apply(model, config) -> model`` freezes/wraps the model (e.g. returns a
    ``peft.PeftModel``).  ``save(model, directory)`` writes the trained
    weights; when omitted the host calls
    ``model.save_pretrained(directory, safe_serialization=True)``, which writes
    PEFT's own adapter format for PEFT models and full safetensors weights
    otherwise.  ``supports_packing``: False for adapters whose model cannot
    take packed batches (``loader.packing``: a 4D attention mask and
    per-example ``position_ids``), e.g. ones that prepend virtual tokens.
    """

    kind: ClassVar[str] = "adapter"
    required: ClassVar[tuple[str, ...]] = ("apply",)
    apply: Optional[Callable[[Any, Any], Any]] = None
    save: Optional[Callable[[Any, str], None]] = None
    supports_packing: bool = True


@dataclass(frozen=True)
class LossSpec(_Spec):
    """A training objective (config group ``loss``).

    ``build(config, context) -> loss_fn`` where ``context`` is a
    ``tuneforge.losses.LossContext`` and ``loss_fn(model, batch) ->
    tuneforge.losses.LossOutput``.  The loss runs the forward pass itself, so
    objectives that need extra passes (a reference model, a teacher) fit the
    same interface.  ``supports_packing``: True when the loss handles packed
    batches (``loader.packing``), i.e. it builds its forward arguments with
    ``tuneforge.losses.model_inputs(model, batch)``; ``loader.packing=true``
    with any other loss is refused before the model loads.
    """

    kind: ClassVar[str] = "loss"
    required: ClassVar[tuple[str, ...]] = ("build",)
    build: Optional[Callable[[Any, Any], Callable]] = None
    supports_packing: bool = False


@dataclass(frozen=True)
class EvaluatorSpec(_Spec):
    """Scores a model on held-out data (config group ``evaluators``; several run).

    ``evaluate(model, tokenizer, examples, config) -> dict[str, float]`` gets
    the validation split (tokenized examples, each also carrying its source
    ``record``) and returns named metrics.  It must not change the model.
    """

    kind: ClassVar[str] = "evaluator"
    required: ClassVar[tuple[str, ...]] = ("evaluate",)
    evaluate: Optional[Callable[..., dict]] = None


@dataclass(frozen=True)
class CallbackSpec(_Spec):
    """Extra Lightning callbacks (config group ``callbacks``; several run).

    ``build(config) -> lightning.pytorch.Callback``.
    """

    kind: ClassVar[str] = "callback"
    required: ClassVar[tuple[str, ...]] = ("build",)
    build: Optional[Callable[[Any], Any]] = None


#: spec class -> (config group, registration hook name, whether several run at once)
SPEC_KINDS: dict[type, tuple[str, str, bool]] = {
    ModelSourceSpec: ("model", "tuneforge_model_sources", False),
    DatasetSpec: ("data", "tuneforge_datasets", False),
    AdapterSpec: ("adapter", "tuneforge_adapters", False),
    LossSpec: ("loss", "tuneforge_losses", False),
    EvaluatorSpec: ("evaluators", "tuneforge_evaluators", True),
    CallbackSpec: ("callbacks", "tuneforge_callbacks", True),
}
