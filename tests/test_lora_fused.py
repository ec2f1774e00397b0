"""peft's LoRA layers fused into one operation in the training step (tuneforge.training.lora_fused): the
same numbers as peft's own forward and backward, peft's forward wherever the fused one does not apply,
and every layer's own forward back after the context."""

import pytest
import torch
from peft import LoraConfig, get_peft_model

from tuneforge.training import lora_fused
from tuneforge.training.lora_fused import fused_lora_layers


class _Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.up = torch.nn.Linear(48, 80)
        self.down = torch.nn.Linear(80, 48, bias=False)

    def forward(self, x):
        return self.down(torch.relu(self.up(x)))


def _model(**lora):
    torch.manual_seed(0)
    model = get_peft_model(_Net(), LoraConfig(r=4, lora_alpha=8, target_modules=["up", "down"], **lora))
    with torch.no_grad():  # B starts at zero: give the adapter an effect to compare
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.2)
    return model.train()


def _pass(model, x, *, fused: bool, bf16: bool = False, seed: int = 1):
    """Output, input gradient and parameter gradients of one forward and backward."""
    model.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_(True)
    torch.manual_seed(seed)  # the same dropout masks in both passes
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        if fused:
            with fused_lora_layers(model):
                out = model(x)
        else:
            out = model(x)
    (out.float() ** 2).sum().backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return out.detach().float(), x.grad, grads


def _relative(a, b):
    return float((a.float() - b.float()).norm() / b.float().norm())


@pytest.fixture
def fused_calls(monkeypatch):
    calls = []
    apply = lora_fused._LoraLinear.apply
    monkeypatch.setattr(lora_fused._LoraLinear, "apply", lambda *args: calls.append(args) or apply(*args))
    return calls


@pytest.mark.parametrize("lora", [{}, {"lora_dropout": 0.3}, {"bias": "all"}, {"use_rslora": True}],
                         ids=["plain", "dropout", "trainable-bias", "rslora"])
def test_float32_fused_equals_peft_in_output_and_every_gradient(lora, fused_calls):
    model = _model(**lora)
    x = torch.randn(3, 7, 48)
    out, x_grad, grads = _pass(model, x, fused=False)
    fused_out, fused_x_grad, fused_grads = _pass(model, x, fused=True)
    assert len(fused_calls) == 2  # both layers ran fused
    torch.testing.assert_close(fused_out, out, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fused_x_grad, x_grad, rtol=1e-5, atol=1e-6)
    assert fused_grads.keys() == grads.keys()
    if lora.get("bias") == "all":
        assert "base_model.model.up.base_layer.bias" in grads
    for name in grads:
        torch.testing.assert_close(fused_grads[name], grads[name], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_under_cpu_autocast_fused_is_as_close_to_float32_as_peft_is(dropout, fused_calls):
    model = _model(lora_dropout=dropout)
    x = torch.randn(4, 16, 48)
    reference, reference_x_grad, reference_grads = _pass(model, x, fused=False)
    peft_out, peft_x_grad, peft_grads = _pass(model, x, fused=False, bf16=True)
    out, x_grad, grads = _pass(model, x, fused=True, bf16=True)
    assert fused_calls and fused_calls[0][-2] == torch.bfloat16
    assert x_grad.dtype == torch.float32 and all(g.dtype == torch.float32 for g in grads.values())
    assert _relative(out, reference) <= 2 * _relative(peft_out, reference) + 1e-3
    assert _relative(x_grad, reference_x_grad) <= 2 * _relative(peft_x_grad, reference_x_grad) + 1e-3
    for name in reference_grads:
        assert _relative(grads[name], reference_grads[name]) <= 2 * _relative(peft_grads[name],
                                                                              reference_grads[name]) + 1e-3


class _Fork(torch.nn.Module):
    """Two layers reading one input, as a decoder layer's query, key and value projections read one norm
    output; a third reads their sum."""

    def __init__(self):
        super().__init__()
        self.left = torch.nn.Linear(48, 48)
        self.right = torch.nn.Linear(48, 48, bias=False)
        self.out = torch.nn.Linear(48, 48)

    def forward(self, x):
        return self.out(self.left(x) + self.right(x))


def _fork_pass(model, x, *, share: bool, weight_casts=None):
    model.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with fused_lora_layers(model, weight_casts, share_casts=share):
            out = model(x)
    (out.float() ** 2).sum().backward()
    return out.detach(), x.grad, {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def test_shared_casts_change_no_number_and_are_kept_once(fused_calls):
    """Layers reading one input share its bfloat16 cast, and the frozen weights' casts are kept for the next
    context: the output and every gradient are bit for bit those of a cast in every call; the input's
    gradient stays float32 (each layer's added in float32)."""
    torch.manual_seed(0)
    model = get_peft_model(_Fork(), LoraConfig(r=4, lora_alpha=8, target_modules=["left", "right", "out"])).train()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.2)
    x = torch.randn(3, 7, 48)
    expected = _fork_pass(model, x, share=False)
    weight_casts = lora_fused.WeightCasts()
    for _ in range(2):  # the second pass uses the weights' casts kept from the first
        got = _fork_pass(model, x, share=True, weight_casts=weight_casts)
        torch.testing.assert_close(got[0], expected[0], rtol=0, atol=0)
        torch.testing.assert_close(got[1], expected[1], rtol=0, atol=0)
        assert got[1].dtype == torch.float32
        assert got[2].keys() == expected[2].keys()
        for name in expected[2]:
            torch.testing.assert_close(got[2][name], expected[2][name], rtol=0, atol=0)
    assert len(weight_casts) == 3
    left, right = fused_calls[-3][0], fused_calls[-2][0]
    assert left is right  # the two layers got the same input; the casts below show it was cast once
    casts = fused_calls[-1][-1]
    assert casts.input(left, torch.bfloat16) is casts.input(left, torch.bfloat16)


def test_kept_weight_casts_follow_the_weight():
    weight = torch.nn.Parameter(torch.randn(8, 4), requires_grad=False)
    casts = lora_fused.WeightCasts()
    first = casts.get(weight, torch.bfloat16)
    assert first.dtype == torch.bfloat16 and casts.get(weight, torch.bfloat16) is first
    with torch.no_grad():
        weight.mul_(2)  # in place: a new version
    second = casts.get(weight, torch.bfloat16)
    torch.testing.assert_close(second, (weight * 1).bfloat16(), rtol=0, atol=0)
    weight.data = torch.randn(8, 4)  # another storage
    torch.testing.assert_close(casts.get(weight, torch.bfloat16), weight.detach().bfloat16(), rtol=0, atol=0)
    assert casts.get(weight, torch.float32) is weight  # no cast to its own dtype
    casts.clear()
    assert len(casts) == 0


def test_an_input_changed_in_place_is_cast_again():
    casts = lora_fused.Casts()
    x = torch.randn(4, 8)
    first = casts.input(x, torch.bfloat16)
    assert casts.input(x, torch.bfloat16) is first
    x.add_(1)
    torch.testing.assert_close(casts.input(x, torch.bfloat16), x.bfloat16(), rtol=0, atol=0)
    unshared = lora_fused.Casts(shared=False)
    assert unshared.input(x, torch.bfloat16) is not unshared.input(x, torch.bfloat16)


def _unfusable_cases():
    def merged():
        model = _model()
        model.merge_adapter()
        return model, {}

    def two_adapters():
        model = _model()
        model.add_adapter("second", LoraConfig(r=2, target_modules=["up", "down"]))
        model.base_model.set_adapter(["default", "second"])
        return model, {}

    def mixed_batch():
        return _model().eval(), {"adapter_names": ["default", "default", "__base__"]}

    return {
        "dora": lambda: (_model(use_dora=True), {}),
        "lora-bias": lambda: (_model(lora_bias=True), {}),
        "merged": merged,
        "two-active-adapters": two_adapters,
        "mixed-batch-arguments": mixed_batch,
    }


@pytest.mark.parametrize("case", sorted(_unfusable_cases()))
def test_layers_and_calls_it_does_not_cover_run_peft_unchanged(case, fused_calls):
    model, kwargs = _unfusable_cases()[case]()
    x = torch.randn(3, 5, 48)
    with torch.no_grad():
        expected = model(x, **kwargs)
        with fused_lora_layers(model):
            got = model(x, **kwargs)
    assert not fused_calls
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_a_disabled_adapter_and_a_mismatched_dtype_fall_back_to_peft(fused_calls):
    model = _model()
    x = torch.randn(2, 5, 48)
    with torch.no_grad(), fused_lora_layers(model):
        with model.disable_adapter():
            model(x)
    assert not fused_calls
    for layer in [m for m in model.modules() if lora_fused._fusable(m)]:
        layer.base_layer.to(torch.bfloat16)  # a bfloat16 base under float32 adapters, no autocast: peft casts
    with torch.no_grad():
        expected = model(x.bfloat16())
        with fused_lora_layers(model):
            got = model(x.bfloat16())
    assert not fused_calls
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    model.float()
    with torch.no_grad(), fused_lora_layers(model):
        model(x)
    assert len(fused_calls) == 2


def test_every_layer_gets_its_own_forward_back_even_after_an_error():
    model = _model()
    layers = [m for m in model.modules() if lora_fused._fusable(m)]
    assert len(layers) == 2
    with pytest.raises(RuntimeError, match="boom"):
        with fused_lora_layers(model):
            assert all("forward" in layer.__dict__ for layer in layers)
            raise RuntimeError("boom")
    assert all("forward" not in layer.__dict__ for layer in layers)


def test_a_conv1d_base_layer_is_not_fused():
    from transformers.pytorch_utils import Conv1D

    class _Gpt2Like(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.c_attn = Conv1D(96, 48)

        def forward(self, x):
            return self.c_attn(x)

    model = get_peft_model(_Gpt2Like(), LoraConfig(r=4, target_modules=["c_attn"], fan_in_fan_out=True))
    assert not [m for m in model.modules() if lora_fused._fusable(m)]


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_gradient_checkpointing_trains_with_the_training_steps_swaps(tmp_path, precision):
    """A checkpointed layer is run again in the backward pass, and torch checks that the recompute saves
    the same tensors as the forward: the fused layers, the input casts and grouped-query attention hold
    for the backward pass too (FineTuneModule.on_before_backward), or the recompute meets peft's own
    layers and the run fails ("Recomputed values ... have different metadata")."""
    from helpers import run_cli, train_losses

    runs = {}
    for checkpointing in ("false", "true"):
        run_dir = tmp_path / f"{precision}-{checkpointing}"
        result = run_cli(["train", f"adapter.gradient_checkpointing={checkpointing}", f"trainer.precision={precision}",
                          "loader.packing=true", "trainer.max_steps=2", "trainer.enable_progress_bar=false",
                          "baselines=[]", "evaluators=[]", "threads=2", f"run_dir={run_dir}"])
        assert result.returncode == 0, result.stderr[-3000:]
        runs[checkpointing] = train_losses(run_dir)
    assert runs["true"] == pytest.approx(runs["false"], rel=1e-5 if precision == "32-true" else 1e-2)
