"""Attention of short bfloat16 rows as matrix products in the training step
(tuneforge.training.matmul_attention): the same attention as torch's SDPA kernel within bfloat16's
rounding, for packed, padded and unmasked batches and grouped heads; every call it does not take goes
to the function it replaced; the registry is left as it was found."""

import pytest
import torch
import torch.nn.functional as F
from helpers import packed_tiny_batch, tiny_lora_model

from tuneforge.training import matmul_attention as matmul
from tuneforge.training.matmul_attention import MAX_LENGTH, matmul_attention


class _Module(torch.nn.Module):
    """What an attention function reads from its module: ``training`` and ``is_causal``."""

    is_causal = True


class _Replaced:
    """A stand-in for the registry's ``sdpa`` function: counts its calls, computes with torch's kernel."""

    def __init__(self):
        self.calls = 0

    def __call__(self, module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None,
                 **kwargs):
        self.calls += 1
        output = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask, scale=scaling,
                                                enable_gqa=True, is_causal=attention_mask is None and bool(is_causal))
        return output.transpose(1, 2).contiguous(), None


def _inputs(batch=3, heads=4, kv_heads=2, length=20, size=16, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, count, length, size, generator=generator).to(torch.bfloat16).requires_grad_()
            for count in (heads, kv_heads, kv_heads)]


def _packed_mask(batch, length, dtype=torch.float32):
    """Block-causal additive mask: each row holds sequences of 7 tokens."""
    positions = torch.arange(length) % 7
    starts = (positions == 0).cumsum(0)
    allowed = (starts[:, None] == starts[None, :]) & torch.ones(length, length, dtype=torch.bool).tril()
    mask = torch.zeros(length, length, dtype=dtype).masked_fill(~allowed, torch.finfo(dtype).min)
    return mask.expand(batch, 1, length, length).contiguous()


def _left_padded_mask(batch, length):
    """Boolean causal mask with the first 4 positions of the last row padding (those queries see nothing)."""
    allowed = torch.ones(batch, 1, length, length, dtype=torch.bool).tril()
    allowed[-1, :, :, :4] = False
    return allowed


def _reference(query, key, value, mask, causal, scale):
    """torch's kernel in float32 on the same (bfloat16-rounded) inputs, and those inputs (for their
    gradients)."""
    inputs = [tensor.detach().float().requires_grad_() for tensor in (query, key, value)]
    if mask is not None and mask.is_floating_point():
        mask = mask.float()
    output = F.scaled_dot_product_attention(*inputs, attn_mask=mask, enable_gqa=True, scale=scale,
                                            is_causal=mask is None and causal)
    return output.transpose(1, 2), inputs


def _relative(actual, expected) -> float:
    return float((actual.detach().float() - expected.detach()).norm() / expected.detach().norm())


@pytest.mark.parametrize("kind", ["packed", "left_padded", "causal", "not_causal", "mask_per_head", "no_groups"])
def test_products_match_torchs_kernel_within_bfloat16_rounding(kind):
    heads, kv_heads = (4, 4) if kind == "no_groups" else (4, 2)
    query, key, value = _inputs(heads=heads, kv_heads=kv_heads)
    mask = {"packed": _packed_mask(3, 20), "left_padded": _left_padded_mask(3, 20),
            "mask_per_head": _packed_mask(3, 20).expand(3, heads, 20, 20).contiguous(),
            "no_groups": _packed_mask(3, 20)}.get(kind)
    causal = kind != "not_causal"
    replaced = _Replaced()
    module = _Module()
    module.is_causal = causal
    output, weights = matmul._Attention(replaced)(module, query, key, value, mask, scaling=0.25)
    assert replaced.calls == 0 and weights is None and output.dtype == torch.bfloat16
    expected, reference_inputs = _reference(query, key, value, mask, causal, scale=0.25)
    assert output.shape == expected.shape
    assert _relative(output, expected) < 1e-2
    upstream = torch.randn(output.shape, generator=torch.Generator().manual_seed(1))
    (output.float() * upstream).sum().backward()
    (expected * upstream).sum().backward()
    for tensor, reference in zip((query, key, value), reference_inputs):
        assert _relative(tensor.grad, reference.grad) < 2e-2
    if kind == "left_padded":  # queries that may attend to nothing get 0, as from torch's kernel
        assert torch.equal(output[-1, :4], torch.zeros_like(output[-1, :4]))
        assert torch.isfinite(query.grad).all() and torch.isfinite(key.grad).all()


@pytest.mark.parametrize("case", ["no_grad", "float32", "too_long", "dropout", "softcap", "cached_keys", "mask_2d"])
def test_calls_the_products_do_not_take_go_to_the_replaced_function(case):
    length = MAX_LENGTH + 1 if case == "too_long" else 12
    query, key, value = _inputs(length=length)
    if case == "float32":
        query, key, value = (tensor.detach().float() for tensor in (query, key, value))
    if case == "cached_keys":
        key, value = (torch.cat([tensor, tensor], dim=2) for tensor in (key, value))
    mask = torch.ones(3, length, dtype=torch.bool) if case == "mask_2d" else None
    module = _Module().train()
    kwargs = {"dropout": 0.1} if case == "dropout" else {"softcap": 30.0} if case == "softcap" else {}
    replaced = _Replaced()
    attention = matmul._Attention(replaced)
    with torch.set_grad_enabled(case != "no_grad"):
        if case in ("dropout", "cached_keys", "mask_2d"):
            assert not matmul._takes(module, query, key, mask, kwargs.get("dropout", 0.0), kwargs)
        else:
            attention(module, query, key, value, mask, **kwargs)
            assert replaced.calls == 1
    module.eval()  # dropout applies in training only
    with torch.enable_grad():
        assert matmul._takes(module, *_inputs()[:2], None, 0.1, {}) is True


def test_float32_inputs_under_bfloat16_autocast_are_taken():
    query, key, value = (tensor.detach().float().requires_grad_() for tensor in _inputs())
    replaced = _Replaced()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        output, _ = matmul._Attention(replaced)(_Module(), query, key, value, _packed_mask(3, 20))
    assert replaced.calls == 0 and output.dtype == torch.bfloat16
    output.float().sum().backward()
    assert query.grad.dtype == torch.float32 and torch.isfinite(query.grad).all()


def test_one_forward_pass_expands_its_mask_once(monkeypatch):
    expansions = []
    real = matmul._mask_rows
    monkeypatch.setattr(matmul, "_mask_rows", lambda *args, **kwargs: expansions.append(1) or real(*args, **kwargs))
    query, key, value = _inputs()
    mask = _packed_mask(3, 20)
    attention = matmul._Attention(_Replaced())
    for _ in range(3):  # the layers of one forward pass share one mask
        attention(_Module(), query, key, value, mask)
    assert len(expansions) == 1
    attention(_Module(), query, key, value, mask.clone())  # another mask, even with the same values
    attention.forget_mask()
    attention(_Module(), query, key, value, mask)
    assert len(expansions) == 3


def _registry():
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    return ALL_ATTENTION_FUNCTIONS


def test_the_context_restores_the_registry_after_an_error_and_keeps_an_earlier_local_entry():
    model = tiny_lora_model()
    registry = _registry()
    original = registry["sdpa"]
    with pytest.raises(RuntimeError, match="boom"):
        with matmul_attention(model):
            assert isinstance(registry["sdpa"], matmul._Attention)
            raise RuntimeError("boom")
    assert registry["sdpa"] is original and "sdpa" not in registry._local_mapping
    earlier = _Replaced()
    registry["sdpa"] = earlier
    try:
        with matmul_attention(model):
            assert registry["sdpa"].replaced is earlier
        assert registry["sdpa"] is earlier
    finally:
        del registry["sdpa"]


@pytest.mark.parametrize("case", ["disabled", "eager_model"])
def test_nothing_changes_when_disabled_or_for_a_model_without_sdpa(case):
    model = tiny_lora_model()
    if case == "eager_model":
        model.set_attn_implementation("eager")
    assert matmul._applies(model) is (case == "disabled")
    original = _registry()["sdpa"]
    with matmul_attention(model, enabled=case != "disabled"):
        assert _registry()["sdpa"] is original


def _model_loss_and_grads(model, batch, *, bf16: bool, products: bool):
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16), matmul_attention(model, enabled=products):
        loss = model(**batch).loss
    loss.backward()
    grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    return float(loss), grads


@pytest.mark.parametrize("batch_kind", ["packed", "padded", "unpadded"])
def test_a_bf16_training_forward_is_as_close_to_float32_with_the_products_as_with_the_kernel(batch_kind,
                                                                                           monkeypatch):
    model = tiny_lora_model()
    vocab = model.config.vocab_size
    ids = torch.randint(5, vocab, (3, 20), generator=torch.Generator().manual_seed(5))
    mask = torch.ones_like(ids)
    mask[1, 14:] = 0
    batch = {"packed": packed_tiny_batch(model, vocab),
             "padded": {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)},
             "unpadded": {"input_ids": ids, "labels": ids}}[batch_kind]
    calls = []
    real = matmul._products
    monkeypatch.setattr(matmul, "_products", lambda *args: calls.append(1) or real(*args))
    loss32, grads32 = _model_loss_and_grads(model, batch, bf16=False, products=True)
    assert calls == []  # float32: the kernel
    kernel_loss, kernel_grads = _model_loss_and_grads(model, batch, bf16=True, products=False)
    assert calls == []
    loss, grads = _model_loss_and_grads(model, batch, bf16=True, products=True)
    assert len(calls) == model.config.num_hidden_layers
    kernel_error = abs(kernel_loss - loss32) / abs(loss32)
    assert abs(loss - loss32) / abs(loss32) < max(3 * kernel_error, 1e-3)
    assert _relative(grads, grads32) < max(1.5 * _relative(kernel_grads, grads32), 2e-2)
    assert torch.isfinite(grads).all()


@pytest.mark.parametrize("setting", ["auto", "kernel"])
def test_the_training_steps_loss_call_uses_the_products_as_trainer_cpu_attention_says(setting, monkeypatch):
    from tuneforge.plugins.losses import CrossEntropyConfig, build_cross_entropy
    from tuneforge.training.module import FineTuneModule

    model = tiny_lora_model()
    module = FineTuneModule(model, build_cross_entropy(CrossEntropyConfig()), optim_config=None)
    module.cpu_attention = setting
    calls = []
    real = matmul._products
    monkeypatch.setattr(matmul, "_products", lambda *args: calls.append(1) or real(*args))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        output = module._loss(packed_tiny_batch(model, model.config.vocab_size))
    output.loss.backward()
    assert len(calls) == (2 if setting == "auto" else 0)
    assert "sdpa" not in _registry()._local_mapping


def test_trainer_cpu_attention_takes_auto_or_kernel():
    from tuneforge.errors import ConfigError
    from tuneforge.host.schema import TrainerConfig

    assert TrainerConfig().cpu_attention == "auto"
    with pytest.raises(ConfigError, match=r"^cpu_attention: must be one of auto, kernel, got 'fast'$"):
        TrainerConfig(cpu_attention="fast")
