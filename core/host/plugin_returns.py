"""What the host expects back from plugin callables, as :class:`~tuneforge.host.guard.Returns` for
:func:`~tuneforge.host.guard.spec_call`: a plugin returning something else (None, a list, the model
alone ...) stops the run with one line naming the plugin, what came back and what is valid, instead of
a traceback from deep inside the host where the value is first used.

Each is a function so that torch and Lightning are imported only when a run needs them.
"""

from __future__ import annotations

from tuneforge.host.guard import Returns, instance_of, type_name


def model_and_tokenizer() -> Returns:
    """A model source's ``load``: ``(model, tokenizer)``."""
    import torch

    def problem(result):
        if isinstance(result, (tuple, list)) and len(result) == 2 and isinstance(result[0], torch.nn.Module) \
                and result[1] is not None:
            return None
        if isinstance(result, torch.nn.Module):
            return f"the model alone ({type(result).__name__})"
        if isinstance(result, (tuple, list)) and len(result) == 2:
            return f"({type_name(result[0])}, {type_name(result[1])})"
        return type_name(result)

    return Returns(problem, "a tuple (model, tokenizer): a torch.nn.Module (e.g. a transformers model) and its "
                            "tokenizer")


def model(what: str) -> Returns:
    """An adapter's ``apply``, ``load`` or ``merge``: a ``torch.nn.Module``; ``what`` says which model."""
    import torch

    return instance_of(torch.nn.Module, f"{what} (a torch.nn.Module)")


def adapted_model() -> Returns:
    """An adapter's ``apply``: a ``torch.nn.Module`` with parameters left to train (``requires_grad``)."""
    import torch

    def problem(result):
        if not isinstance(result, torch.nn.Module):
            return type_name(result)
        parameters = list(result.parameters())
        if any(parameter.requires_grad for parameter in parameters):
            return None
        return (f"a {type(result).__name__} with no parameter to train (all "
                f"{sum(parameter.numel() for parameter in parameters):,} have requires_grad=False)")

    return Returns(problem, "the model with the adapter applied (a torch.nn.Module) and the parameters to train "
                            "left with requires_grad=True: freeze only the rest, or wrap the model with "
                            "peft.get_peft_model")


def data_splits() -> Returns:
    """A dataset's ``load``: :class:`tuneforge.data.DataSplits`."""
    from tuneforge.data import DataSplits

    return instance_of(DataSplits, "tuneforge.data.DataSplits (the tokenized train and validation examples "
                                   "with their stats), e.g. from tuneforge.data.prepare_splits")


def loss_function() -> Returns:
    """A loss's ``build``: the loss function."""
    return Returns(lambda result: None if callable(result) else type_name(result),
                   "the loss function, loss_fn(model, batch) -> tuneforge.LossOutput")


def loss_output() -> Returns:
    """What a built loss function returns (:func:`tuneforge.losses.loss_output_problem`)."""
    from tuneforge.losses import loss_output_problem

    return Returns(loss_output_problem, "tuneforge.LossOutput(loss=<a one-element tensor with its gradient>, "
                                        "num_tokens=<the units it averages over, or None>, metrics=<a dict>)")


def lightning_callback() -> Returns:
    """A callback's ``build``: a Lightning callback."""
    from lightning.pytorch import Callback

    return instance_of(Callback, "a lightning.pytorch.Callback instance")


def retriever() -> Returns:
    """A retriever's ``build``: an object with ``index`` and ``search`` methods."""
    def problem(result):
        missing = [name for name in ("index", "search") if not callable(getattr(result, name, None))]
        return None if not missing else f"{type_name(result)} (no {' or '.join(missing)} method)"

    return Returns(problem, "a retriever: an object with index(passages) and search(query, k) methods")


def tokenizer() -> Returns:
    """A model source's ``load_tokenizer``: the tokenizer."""
    return Returns(lambda result: None if callable(getattr(result, "decode", None)) else type_name(result),
                   "the tokenizer (a transformers tokenizer, pad_token set), as load gives it")
