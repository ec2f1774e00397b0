"""The signatures of the callables a spec holds (:mod:`tuneforge.specs`), for readers and type checkers;
the host calls them positionally, as written in each spec's docstring."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from tuneforge.data import DataSplits
    from tuneforge.losses import LossContext, LossOutput


class LoadModel(Protocol):
    """:attr:`ModelSourceSpec.load`: the causal LM (train mode) and its tokenizer (``pad_token`` set)."""

    def __call__(self, config: Any, /) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]: ...


class LoadData(Protocol):
    """:attr:`DatasetSpec.load`: the tokenized splits of the data this config names."""

    def __call__(self, config: Any, tokenizer: PreTrainedTokenizerBase, /) -> DataSplits: ...


class ApplyAdapter(Protocol):
    """:attr:`AdapterSpec.apply`: the model made trainable (frozen, wrapped: e.g. a ``peft.PeftModel``)."""

    def __call__(self, model: PreTrainedModel, config: Any, /) -> PreTrainedModel: ...


class LossFunction(Protocol):
    """What :attr:`LossSpec.build` returns: runs the forward pass(es) on one batch."""

    def __call__(self, model: PreTrainedModel, batch: dict, /) -> LossOutput: ...


class BuildLoss(Protocol):
    """:attr:`LossSpec.build`: the loss function for this config and run."""

    def __call__(self, config: Any, context: LossContext, /) -> LossFunction: ...


class BuildOptimizer(Protocol):
    """:attr:`OptimizerSpec.build`: a ``torch.optim.Optimizer`` over the parameter groups."""

    def __call__(self, parameter_groups: list[dict], settings: Any, config: Any, /) -> Any: ...
