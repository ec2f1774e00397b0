"""``trainer.compile`` (tuneforge.training.compiled_blocks): which parts compile, what is refused and
why, the context that swaps the compiled code in and out, and compiled training that computes the
same loss and gradients as eager (with packing, bf16 autocast and gradient checkpointing)."""

import json

import pytest
import torch
from helpers import packed_tiny_batch, tiny_lora_model
from peft import PrefixTuningConfig, get_peft_model

from tuneforge.errors import ConfigError
from tuneforge.plugins.models import TinyModelConfig, load_tiny
from tuneforge.training import compiled_blocks as compiled
from tuneforge.training.compiled_blocks import BlockCompiler, choose_compile, compiled_blocks, compiled_parts
from tuneforge.training.fsdp import decoder_layers, unsharded_class_name


def _loss_and_grads(model, batch, compiler=None, bf16: bool = False):
    """Loss and gradients with the compiled parts in the forward and the backward pass, as
    FineTuneModule holds them (a checkpointed layer's recompute must meet the same code)."""
    model.zero_grad(set_to_none=True)
    with compiled_blocks(model, compiler):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(**batch).loss
        loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return loss.detach().float(), grads


def test_the_decoder_layers_attention_mlp_and_norms_are_what_compiles():
    model = tiny_lora_model()
    blocks = decoder_layers(model)
    assert [type(b).__name__ for b in blocks] == ["LlamaDecoderLayer"] * model.config.num_hidden_layers
    parts = {type(p).__name__ for p in compiled_parts(blocks[0])}
    assert parts == {"LlamaAttention", "LlamaMLP", "LlamaRMSNorm"}
    record = choose_compile(True, model).record()
    assert record["enabled"] and record["blocks"] == len(blocks) and record["block_classes"] == ["LlamaDecoderLayer"]
    off = choose_compile(False, model).record()
    assert off == {"requested": False, "enabled": False, "reason": "trainer.compile is false", "blocks": 0,
                   "block_classes": []}


def test_what_cannot_compile_is_refused_with_what_would_do(monkeypatch):
    with pytest.raises(ConfigError, match=r"names no repeated blocks.*valid: trainer.compile=false"):
        choose_compile(True, torch.nn.Sequential(torch.nn.Linear(4, 4)))
    with monkeypatch.context() as patch:
        patch.setattr(compiled, "_torch_shares_part_graphs", lambda: False)
        with pytest.raises(ConfigError, match=r"needs torch >= 2.5 \(this is .*valid: trainer.compile=false"):
            choose_compile(True, tiny_lora_model())

    base, _ = load_tiny(TinyModelConfig())
    prefix = get_peft_model(base, PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4))
    with pytest.raises(ConfigError, match=r"adapter=prefix.*valid: trainer.compile=false, or adapter=lora"):
        choose_compile(True, prefix)

    def no_compiler():
        raise RuntimeError("no working C++ compiler found")

    from torch._inductor import cpp_builder

    monkeypatch.setattr(cpp_builder, "get_cpp_compiler", no_compiler)
    with pytest.raises(ConfigError, match=r"no C\+\+ compiler.*install g\+\+.*or set trainer.compile=false"):
        choose_compile(True, tiny_lora_model(), accelerator="cpu")
    assert choose_compile(True, tiny_lora_model(), accelerator="cuda").enabled  # GPUs compile with triton instead


def test_the_context_swaps_forward_and_cache_in_and_restores_them_after_an_error():
    model = tiny_lora_model()
    compiler = BlockCompiler(decoder_layers(model))
    keys = list(model.state_dict())
    assert model.config.use_cache is True
    with compiled_blocks(model, compiler):
        assert all("forward" in part.__dict__ for part in compiler.parts)
        assert model.config.use_cache is False
    assert not any("forward" in part.__dict__ for part in compiler.parts) and model.config.use_cache is True

    marker = compiler.parts[0].forward = lambda *a, **k: None  # someone else's patch stays theirs
    with pytest.raises(KeyError), compiled_blocks(model, compiler):
        raise KeyError("boom")
    assert compiler.parts[0].__dict__["forward"] is marker and model.config.use_cache is True
    del compiler.parts[0].forward
    assert list(model.state_dict()) == keys  # nothing renamed (no _orig_mod): checkpoints and adapters load
    with compiled_blocks(model, None):
        assert model.config.use_cache is True


def test_compiled_training_equals_eager_with_packing_bf16_and_checkpointing():
    """One compile for all three (parts of one class share torch's compiled code): float32 equal to
    rounding, bfloat16 as close to float32 as eager's, and gradient checkpointing unchanged; no graph
    breaks, so every part runs compiled."""
    from torch._dynamo.utils import counters

    model = tiny_lora_model()
    batch = packed_tiny_batch(model, model.config.vocab_size)
    compiler = BlockCompiler(decoder_layers(model))
    counters.clear()

    eager_loss, eager_grads = _loss_and_grads(model, batch)
    loss, grads = _loss_and_grads(model, batch, compiler)
    assert torch.allclose(loss, eager_loss, rtol=1e-5, atol=1e-6)
    assert grads.keys() == eager_grads.keys() and len(grads) > 0
    for name, grad in grads.items():
        assert torch.allclose(grad, eager_grads[name], rtol=1e-4, atol=1e-6), name
    assert not counters["graph_break"], dict(counters["graph_break"])

    bf16_eager, _ = _loss_and_grads(model, batch, bf16=True)
    bf16_compiled, _ = _loss_and_grads(model, batch, compiler, bf16=True)
    assert abs(float(bf16_compiled - eager_loss)) <= 2 * abs(float(bf16_eager - eager_loss)) + 1e-3

    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.enable_input_require_grads()
    checkpointed_loss, checkpointed_grads = _loss_and_grads(model, batch, compiler)
    assert torch.allclose(checkpointed_loss, eager_loss, rtol=1e-5, atol=1e-6)
    for name, grad in checkpointed_grads.items():
        assert torch.allclose(grad, eager_grads[name], rtol=1e-4, atol=1e-6), name


@pytest.mark.slow  # ~45 s of compiling on 2 cores: CI's slow step runs it
def test_a_run_with_trainer_compile_records_it_and_trains_like_eager(tmp_path):
    from helpers import run_cli, train_losses

    common = ["train", "loader.packing=true", "trainer.max_steps=3", "trainer.enable_progress_bar=false",
              "baselines=[]", "evaluators=[]", "threads=2"]
    runs = {}
    for name, extra in (("eager", []), ("compiled", ["trainer.compile=true"])):
        result = run_cli([*common, *extra, f"run_dir={tmp_path / name}"], timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
        runs[name] = tmp_path / name
    record = json.loads((runs["compiled"] / "metrics.json").read_text())["compile"]
    assert record["enabled"] and record["blocks"] == 2 and record["block_classes"] == ["LlamaDecoderLayer"]
    assert json.loads((runs["eager"] / "metrics.json").read_text())["compile"]["enabled"] is False
    assert train_losses(runs["compiled"]) == pytest.approx(train_losses(runs["eager"]), rel=1e-4)
    assert any(runs["compiled"].rglob("adapter_model.safetensors"))


def test_the_compiled_parts_are_the_block_when_it_has_no_weighted_children():
    block = torch.nn.Linear(3, 3)
    assert compiled_parts(block) == [block]
    assert unsharded_class_name(block) == "Linear"


def test_calls_without_gradients_stay_eager_and_a_copy_runs_its_own_weights():
    """Validation, reference models and grpo's sampling run under no_grad inside the loss call: they
    compile nothing.  A deep copy taken inside the call (a frozen reference of adapter=full) gets
    parts bound to itself, so it computes with its own weights after the original trains on."""
    import copy

    from torch._dynamo.utils import counters

    model = tiny_lora_model(num_hidden_layers=1)
    batch = packed_tiny_batch(model, model.config.vocab_size)
    compiler = BlockCompiler(decoder_layers(model))
    counters.clear()
    with compiled_blocks(model, compiler), torch.no_grad():
        eager_loss = model(**batch).loss
        reference = copy.deepcopy(model)
    assert not counters["stats"]["unique_graphs"]
    copied_parts = [p for p in reference.modules() if "forward" in p.__dict__]
    assert len(copied_parts) == len(compiler.parts)
    assert all(p.forward.__self__ is p for p in copied_parts)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.add_(1.0)  # the original trains on; the copy must not follow
        assert torch.allclose(reference(**batch).loss, eager_loss)
        assert not torch.allclose(model(**batch).loss, eager_loss)


def test_a_refused_compile_stops_the_run_in_one_line_before_the_data_and_the_base_evaluation(tmp_path):
    from helpers import run_cli

    run_dir = tmp_path / "run"
    result = run_cli(["train", "adapter=prefix", "trainer.compile=true", "trainer.max_steps=1",
                      "trainer.enable_progress_bar=false", f"run_dir={run_dir}"])
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("tuneforge: error:")]
    assert len(errors) == 1 and "trainer.compile=true with adapter=prefix" in errors[0]
    assert "valid: trainer.compile=false" in errors[0]
    assert not (run_dir / "base_eval.json").exists()
    assert " val examples" not in result.stderr  # the data's log line: the data never loaded
