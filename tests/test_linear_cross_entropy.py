"""The default loss's output layer and cross entropy in chunks (``tuneforge.linear_cross_entropy``):
the same values and gradients as plain autograd on the whole logits, in float64, in float32 and
under CPU autocast bfloat16, and never a ``tokens x vocab`` tensor."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tuneforge.linear_cross_entropy import fusable_output_layer, linear_cross_entropy_sums


def plain_sums(hidden, layer, targets, smoothing, with_z):
    logits = layer(hidden).float() if hidden.dtype != torch.float64 else layer(hidden)
    nll = F.cross_entropy(logits, targets, reduction="sum", label_smoothing=smoothing)
    z = (logits.logsumexp(-1) ** 2).sum() if with_z else logits.new_zeros(())
    return nll, z


def layer_and_inputs(dtype, bias=False, train_weight=False, tokens=23, dim=8, vocab=37, seed=0):
    torch.manual_seed(seed)
    layer = torch.nn.Linear(dim, vocab, bias=bias, dtype=dtype)
    layer.weight.requires_grad_(train_weight)
    if bias:
        layer.bias.requires_grad_(train_weight)
    hidden = torch.randn(tokens, dim, dtype=dtype, requires_grad=True)
    targets = torch.randint(0, vocab, (tokens,))
    return layer, hidden, targets


def gradients(layer, hidden, total):
    params = [hidden] + [p for p in layer.parameters() if p.requires_grad]
    return torch.autograd.grad(total, params)


@pytest.mark.parametrize("smoothing,with_z,bias,train_weight,chunk", [
    (0.0, False, False, False, 5),
    (0.1, True, True, True, 5),
    (0.0, True, False, True, 1),
    (0.2, False, True, True, 100),  # one chunk holds every row
])
def test_value_and_gradients_equal_autograd_on_the_whole_logits(smoothing, with_z, bias, train_weight, chunk):
    layer, hidden, targets = layer_and_inputs(torch.float64, bias, train_weight)
    nll, z, count = linear_cross_entropy_sums(hidden, layer, targets, smoothing, with_z, chunk=chunk)
    ref_nll, ref_z = plain_sums(hidden, layer, targets, smoothing, with_z)
    assert count == 23
    torch.testing.assert_close(nll, ref_nll, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(z, ref_z, rtol=1e-12, atol=1e-12)
    got = gradients(layer, hidden, nll + 0.3 * z)  # both sums carry upstream gradients
    expected = gradients(layer, hidden, ref_nll + 0.3 * ref_z)
    assert len(got) == (3 if bias and train_weight else 2 if train_weight else 1)
    for mine, reference in zip(got, expected):
        torch.testing.assert_close(mine, reference, rtol=1e-10, atol=1e-12)


def test_gradcheck_through_the_hidden_states_weight_and_bias():
    from tuneforge.linear_cross_entropy import _LinearCrossEntropy

    _, hidden, targets = layer_and_inputs(torch.float64, tokens=7, vocab=11)
    weight = torch.randn(11, 8, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(11, dtype=torch.float64, requires_grad=True)

    def total(h, w, b):  # label smoothing 0.1, the z-loss, chunks of 3 rows
        nll, z = _LinearCrossEntropy.apply(h, w, b, targets, 0.1, True, 3)
        return nll + 0.5 * z

    assert torch.autograd.gradcheck(total, (hidden, weight, bias))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_equals_plain_autograd_in_float32_and_under_cpu_autocast(dtype):
    """Under autocast the logits are computed in bfloat16 and the softmax in float32, as autograd does
    with ``lm_head(hidden).float()``; the gradient meets the weight in bfloat16 in both."""
    layer, hidden, targets = layer_and_inputs(torch.float32, tokens=300, dim=64, vocab=1000, seed=1)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        nll, _, _ = linear_cross_entropy_sums(hidden, layer, targets, chunk=64)
        reference, _ = plain_sums(hidden, layer, targets, 0.0, False)
    torch.testing.assert_close(nll, reference, rtol=1e-6, atol=1e-3)
    got, = torch.autograd.grad(nll, hidden)
    expected, = torch.autograd.grad(reference, hidden)
    assert got.dtype == expected.dtype == torch.float32
    tolerance = 1e-6 if dtype == torch.float32 else 1e-2  # bfloat16: an ulp of the cast gradient
    torch.testing.assert_close(got, expected, rtol=tolerance, atol=tolerance * float(expected.abs().max()))


def test_no_trained_positions_give_zero_sums_and_zero_gradients():
    layer, hidden, targets = layer_and_inputs(torch.float32, tokens=0)
    nll, z, count = linear_cross_entropy_sums(hidden, layer, targets, with_z=True)
    assert count == 0 and float(nll.detach()) == 0.0 and float(z.detach()) == 0.0
    grad, = torch.autograd.grad(nll + z, hidden)
    assert grad.shape == (0, 8)


def test_without_gradients_it_keeps_nothing_for_backward():
    layer, hidden, targets = layer_and_inputs(torch.float32)
    with torch.no_grad():
        nll, _, _ = linear_cross_entropy_sums(hidden, layer, targets)
    reference, _ = plain_sums(hidden.detach(), layer, targets, 0.0, False)
    assert not nll.requires_grad
    torch.testing.assert_close(nll, reference)


def test_no_tensor_of_tokens_x_vocab_is_allocated():
    """The point of the chunks: the largest allocation is one chunk's logits, not all of them."""
    from torch.profiler import ProfilerActivity, profile

    layer, hidden, targets = layer_and_inputs(torch.float32, tokens=512, dim=32, vocab=4096, seed=2)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        nll, _, _ = linear_cross_entropy_sums(hidden, layer, targets, chunk=64)
        nll.backward()
    largest = max(event.cpu_memory_usage for event in prof.events())
    assert 64 * 4096 * 4 <= largest < 512 * 4096 * 4


def test_only_a_plain_linear_output_layer_is_fused():
    assert fusable_output_layer(torch.nn.Linear(4, 9))

    class Wrapped(torch.nn.Linear):
        pass

    assert not fusable_output_layer(Wrapped(4, 9))
    assert not fusable_output_layer(torch.nn.Sequential(torch.nn.Linear(4, 9)))


def test_the_step_is_freed_without_the_garbage_collector():
    """tuneforge freezes the collector during a run: a reference cycle through the autograd graph
    would keep every activation of every step."""
    import gc
    import weakref

    layer, hidden, targets = layer_and_inputs(torch.float32)
    gc.disable()
    try:
        activation = hidden * 2.0
        nll, _, _ = linear_cross_entropy_sums(activation, layer, targets)
        outputs, kept = weakref.ref(nll), weakref.ref(activation)
        nll.backward()
        del nll, activation
        assert outputs() is None and kept() is None
    finally:
        gc.enable()
