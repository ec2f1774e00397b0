"""LoRA dropout from random bits (tuneforge.training.lora_dropout): torch's dropout, another random stream."""

import math

import pytest
import torch

from tuneforge.training import lora_dropout as bits


def _within(rate: float, expected: float, n: int) -> bool:
    return abs(rate - expected) < 5 * math.sqrt(expected * (1 - expected) / n)


@pytest.mark.parametrize("p", [0.05, 0.3, 0.9])
def test_the_mask_keeps_each_element_with_probability_1_minus_p_at_every_position(p):
    torch.manual_seed(0)
    n = 1_000_001  # odd: the last 31-bit number comes from the first half of an int64
    keep = bits.keep_mask((n,), p)
    assert keep.dtype == torch.bool and keep.shape == (n,)
    assert _within(keep.float().mean().item(), 1 - p, n)
    # even and odd positions come from the two halves of each int64 (the upper one has its top bit 0)
    for half in (keep[0::2], keep[1::2]):
        assert _within(half.float().mean().item(), 1 - p, half.numel())


def test_dropout_from_bits_scales_and_differentiates_as_torchs_dropout():
    torch.manual_seed(1)
    x = torch.randn(64, 48, requires_grad=True)
    torch.manual_seed(7)
    y = bits.dropout_from_bits(x, 0.1)
    torch.manual_seed(7)
    again = bits.dropout_from_bits(x, 0.1)
    assert torch.equal(y, again)  # the default generator: seeded runs draw the same masks
    kept = y != 0
    scale = torch.ones(1).div_(0.9)  # how torch's dropout scales its mask
    assert torch.equal(y[kept], x[kept] * scale) and 0.8 < kept.float().mean().item() < 1.0
    reference = torch.nn.functional.dropout(x, 0.1, training=True)
    assert set(torch.unique(reference[reference != 0] / x[reference != 0]).tolist()) == set(
        torch.unique(y[kept] / x[kept]).tolist())
    y.sum().backward()
    assert torch.equal(x.grad, kept.float() * scale)
    assert bits.dropout_from_bits(x, 0.0) is x and not bits.dropout_from_bits(x, 1.0).any()
    half = x.detach().to(torch.bfloat16)
    assert bits.dropout_from_bits(half, 0.5).dtype == torch.bfloat16


def test_the_swap_draws_lora_dropout_from_bits_only_in_training_on_the_cpu(monkeypatch):
    from peft import LoraConfig, get_peft_model

    from tuneforge.plugins.models import TinyModelConfig, load_tiny

    model, _ = load_tiny(TinyModelConfig())
    model = get_peft_model(model, LoraConfig(r=4, lora_dropout=0.2, target_modules="all-linear"))
    dropouts = bits._lora_dropouts(model)
    assert dropouts and all(type(d) is torch.nn.Dropout for d in dropouts)
    calls = []
    real = bits.dropout_from_bits
    monkeypatch.setattr(bits, "dropout_from_bits", lambda x, p: calls.append(p) or real(x, p))
    ids = torch.randint(0, model.config.vocab_size, (2, 6))
    with bits.lora_dropout_from_bits(model):
        model.train()
        model(input_ids=ids)
        assert calls == [0.2] * len(dropouts)  # every adapted layer's input, once
        model.eval()
        model(input_ids=ids)
        assert len(calls) == len(dropouts)  # eval: no dropout at all
    model.train()
    model(input_ids=ids)
    assert len(calls) == len(dropouts) and not any("forward" in d.__dict__ for d in dropouts)
