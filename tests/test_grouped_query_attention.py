"""Grouped-query attention without key/value copies in the training step
(tuneforge.training.grouped_query_attention): SDPA gets the key/value heads themselves where it
applies, the numbers are those of transformers' copies, and nothing changes elsewhere."""

import os

import pytest
import torch
from helpers import packed_tiny_batch, tiny_lora_model
from torch.overrides import TorchFunctionMode

from tuneforge.plugins.models import TinyModelConfig, load_tiny
from tuneforge.training import grouped_query_attention
from tuneforge.training.grouped_query_attention import FORCE_GQA_VARIABLE, grouped_query_sdpa


class _SdpaCalls(TorchFunctionMode):
    """Records, for every ``scaled_dot_product_attention`` call, its ``enable_gqa`` and the heads of
    its query and key."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.nn.functional.scaled_dot_product_attention:
            self.calls.append((kwargs.get("enable_gqa", False), args[0].shape[1], args[1].shape[1]))
        return func(*args, **kwargs)


def _padded_batch(vocab: int):
    generator = torch.Generator().manual_seed(4)
    ids = torch.randint(5, vocab, (2, 16), generator=generator)
    mask = torch.ones_like(ids)
    mask[1, 11:] = 0
    labels = ids.masked_fill(mask == 0, -100)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _loss_and_grads(model, batch, *, grouped: bool, bf16: bool = False):
    model.zero_grad(set_to_none=True)
    recorder = _SdpaCalls()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16), recorder:
        if grouped:
            with grouped_query_sdpa(model):
                loss = model(**batch).loss
        else:
            loss = model(**batch).loss
    loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return loss.detach().float(), grads, recorder.calls


@pytest.fixture(autouse=True)
def _variable_unset(monkeypatch):
    monkeypatch.delenv(FORCE_GQA_VARIABLE, raising=False)


@pytest.mark.parametrize("batch_kind", ["packed", "padded"])
def test_float32_grouped_heads_give_the_copies_loss_and_gradients(batch_kind):
    model = tiny_lora_model()
    vocab = model.config.vocab_size
    batch = packed_tiny_batch(model, vocab) if batch_kind == "packed" else _padded_batch(vocab)
    loss, grads, calls = _loss_and_grads(model, batch, grouped=False)
    grouped_loss, grouped_grads, grouped_calls = _loss_and_grads(model, batch, grouped=True)
    assert calls == [(False, 4, 4)] * 2  # transformers copied the 2 key/value heads to 4
    assert grouped_calls == [(True, 4, 2)] * 2  # SDPA got the 2 heads themselves
    torch.testing.assert_close(grouped_loss, loss, rtol=1e-6, atol=1e-6)
    assert grouped_grads.keys() == grads.keys() and len(grads) == 2 * 7 * 2
    for name in grads:
        torch.testing.assert_close(grouped_grads[name], grads[name], rtol=1e-5, atol=1e-6)
    assert FORCE_GQA_VARIABLE not in os.environ


def test_under_cpu_autocast_grouped_heads_are_as_close_to_float32_as_the_copies():
    model = tiny_lora_model()
    batch = packed_tiny_batch(model, model.config.vocab_size)
    loss, grads, _ = _loss_and_grads(model, batch, grouped=False)
    copies_loss, copies_grads, _ = _loss_and_grads(model, batch, grouped=False, bf16=True)
    grouped_loss, grouped_grads, calls = _loss_and_grads(model, batch, grouped=True, bf16=True)
    assert calls == [(True, 4, 2)] * 2

    def error(g):
        flat = torch.cat([g[name].flatten() for name in grads])
        return float((flat - torch.cat([grads[name].flatten() for name in grads])).norm() / flat.norm())

    assert abs(float(grouped_loss - loss)) <= 2 * abs(float(copies_loss - loss)) + 1e-3
    assert error(grouped_grads) <= 1.5 * error(copies_grads) + 1e-3


def test_the_environment_is_restored_after_an_error():
    model = tiny_lora_model()
    with pytest.raises(RuntimeError, match="inside"):
        with grouped_query_sdpa(model):
            assert os.environ[FORCE_GQA_VARIABLE] == "1"
            raise RuntimeError("inside")
    assert FORCE_GQA_VARIABLE not in os.environ


@pytest.mark.parametrize("value", ["0", "1"])
def test_a_value_the_user_set_is_kept(value, monkeypatch):
    monkeypatch.setenv(FORCE_GQA_VARIABLE, value)
    model = tiny_lora_model()
    _, _, calls = _loss_and_grads(model, packed_tiny_batch(model, model.config.vocab_size), grouped=True)
    assert calls == [(value == "1", 4, 2 if value == "1" else 4)] * 2
    assert os.environ[FORCE_GQA_VARIABLE] == value


def test_no_change_without_grouped_heads_with_eager_attention_or_an_old_torch(monkeypatch):
    def variable_inside(model):
        with grouped_query_sdpa(model):
            return os.environ.get(FORCE_GQA_VARIABLE)

    assert variable_inside(tiny_lora_model(num_key_value_heads=4)) is None  # as many key/value heads as query heads
    eager = tiny_lora_model()
    eager.config._attn_implementation = "eager"
    assert variable_inside(eager) is None
    assert variable_inside(torch.nn.Linear(3, 3)) is None  # not a transformers model
    model = tiny_lora_model()
    assert variable_inside(model) == "1"
    monkeypatch.setattr(grouped_query_attention, "_torch_has_enable_gqa", lambda: False)
    assert variable_inside(model) is None


def test_no_change_when_the_attention_weights_are_not_on_the_cpu():
    with torch.device("meta"):
        model, _ = load_tiny(TinyModelConfig())
    with grouped_query_sdpa(model):
        assert FORCE_GQA_VARIABLE not in os.environ


def test_the_training_step_runs_attention_on_the_grouped_heads():
    from tuneforge.training.module import FineTuneModule
    from tuneforge.plugins.losses import CrossEntropyConfig, build_cross_entropy

    model = tiny_lora_model()
    module = FineTuneModule(model, build_cross_entropy(CrossEntropyConfig()), optim_config=None)
    recorder = _SdpaCalls()
    with recorder:
        module._loss(packed_tiny_batch(model, model.config.vocab_size))
    assert recorder.calls == [(True, 4, 2)] * 2
    assert FORCE_GQA_VARIABLE not in os.environ
