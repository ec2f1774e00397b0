"""Built-in losses: the arithmetic on tensors, accumulation-exact normalisation in the
trainer, chunked cross entropy's value and memory, and DPO / distillation training runs."""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass
from functools import partial

import pytest
import torch
import torch.nn.functional as F

import tuneforge
from tuneforge.data import IGNORE_INDEX, DataSplits, pad_batch
from tuneforge.errors import ConfigError, ModelError
from tuneforge.losses import LossContext, LossOutput, dpo_loss, final_hidden_states, kl_div_sum, sequence_logps
from tuneforge.plugins import adapters, losses
from tuneforge.plugins.models import TinyModelConfig, build_tiny_tokenizer, load_tiny
from tuneforge.testing import run_tiny_fit

from helpers import adamw_component

WORDS = ["forest", "maple", "garden", "stone", "cloud", "river", "candle", "planet", "silver", "window",
         "bridge", "orange", "pencil", "rabbit", "castle", "dragon", "meadow", "harbor", "lantern", "marble",
         "needle", "oyster", "pepper", "quartz", "saddle", "thunder", "velvet", "walnut", "yellow", "zephyr"]


def tiny_model(**kwargs):
    return load_tiny(TinyModelConfig(**kwargs))[0]


def random_batch(vocab, batch=3, length=17, seed=0):
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(4, vocab, (batch, length), generator=generator)
    labels = input_ids.clone()
    labels[:, :5] = IGNORE_INDEX  # a masked prompt
    labels[1, 12:] = IGNORE_INDEX  # and a shorter target
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 14:] = 0
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}


# ---------------------------------------------------------------------------
# cross entropy arithmetic
# ---------------------------------------------------------------------------


def test_cross_entropy_matches_explicit_formula_with_smoothing_and_z_loss():
    model = tiny_model()
    batch = random_batch(model.config.vocab_size)
    eps, z_weight = 0.1, 1e-3
    output = losses.build_cross_entropy(losses.CrossEntropyConfig(label_smoothing=eps, z_loss=z_weight))(model, batch)

    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    labels = batch["labels"][:, 1:]
    keep = labels != IGNORE_INDEX
    logp = logits[keep].log_softmax(-1)
    nll = -logp.gather(-1, labels[keep][:, None]).squeeze(-1)
    terms = (1 - eps) * nll - eps * logp.mean(-1)  # label smoothing: eps spread uniformly over the vocabulary
    zs = logits[keep].logsumexp(-1) ** 2
    expected = terms.mean() + z_weight * zs.mean()
    assert output.num_tokens == len(terms) == 12 + 7 + 12  # labels 5..16, and 5..11 in the short row
    assert float(output.loss) == pytest.approx(float(expected), abs=1e-5)
    assert float(output.metrics["z_loss"]) == pytest.approx(float(zs.mean()), rel=1e-5)


# ---------------------------------------------------------------------------
# chunked cross entropy
# ---------------------------------------------------------------------------


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("adapter", ["none", "lora_lm_head", "prompt", "prefix"])
def test_chunked_cross_entropy_equals_cross_entropy_value_and_gradients(adapter):
    model = tiny_model()
    if adapter == "lora_lm_head":
        model = adapters.apply_lora(model, adapters.LoraAdapterConfig(modules_to_save=["lm_head"]))
    elif adapter == "prompt":
        model = adapters.apply_prompt(model, adapters.PromptAdapterConfig(num_virtual_tokens=4))
    elif adapter == "prefix":
        model = adapters.apply_prefix(model, adapters.PrefixAdapterConfig(num_virtual_tokens=4))
    model.eval()  # no dropout: both passes must see the same function
    batch = random_batch(model.config.vocab_size, seed=1)
    options = dict(label_smoothing=0.1, z_loss=1e-3)
    plain = losses.build_cross_entropy(losses.CrossEntropyConfig(**options))
    chunked = losses.build_chunked_cross_entropy(losses.ChunkedCrossEntropyConfig(**options, chunk_size=7))

    reference = plain(model, batch)
    reference.loss.backward()
    expected = _grads(model)
    model.zero_grad()
    output = chunked(model, batch)
    output.loss.backward()
    got = _grads(model)

    assert output.num_tokens == reference.num_tokens > 7 * 3  # several chunks
    assert float(output.loss) == pytest.approx(float(reference.loss), abs=1e-5)
    assert set(got) == set(expected) and expected
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], atol=1e-5, rtol=1e-4, msg=name)


def _peak_cpu_bytes(fn) -> int:
    """Peak of live CPU tensor bytes allocated while ``fn`` runs (torch profiler memory events)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    events.sort(key=lambda e: e.start_ns())
    live = peak = 0
    for event in events:
        live += event.nbytes()
        peak = max(peak, live)
    return peak


def test_chunked_and_default_cross_entropy_keep_no_full_logits_on_large_vocabulary():
    """``chunked_cross_entropy`` (checkpointed chunks) and the default ``cross_entropy`` (chunks of the
    output layer and loss fused, ``tuneforge.linear_cross_entropy``) against the full logits."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    vocab, length, batch_size = 32000, 256, 2
    model = LlamaForCausalLM(LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                                         tie_word_embeddings=False)).eval()
    input_ids = torch.randint(0, vocab, (batch_size, length), generator=torch.Generator().manual_seed(0))
    batch = {"input_ids": input_ids, "labels": input_ids.clone(), "attention_mask": torch.ones_like(input_ids)}
    plain = losses.build_cross_entropy(losses.CrossEntropyConfig())
    chunked = losses.build_chunked_cross_entropy(losses.ChunkedCrossEntropyConfig(chunk_size=64))

    def full_logits(model, batch):
        return LossOutput(_full_logits_cross_entropy(model, batch))

    values = {}

    def step(name, loss_fn):
        model.zero_grad(set_to_none=True)
        output = loss_fn(model, batch)
        output.loss.backward()
        values[name] = float(output.loss)

    step("warmup", chunked)  # first-call allocations (thread pools, caches) out of the measurement
    step("warmup", plain)
    full_peak = _peak_cpu_bytes(lambda: step("full", full_logits))
    plain_peak = _peak_cpu_bytes(lambda: step("plain", plain))
    chunked_peak = _peak_cpu_bytes(lambda: step("chunked", chunked))
    logits_bytes = batch_size * length * vocab * 4
    assert values["chunked"] == pytest.approx(values["full"], abs=1e-5)
    assert values["plain"] == pytest.approx(values["full"], abs=1e-5)
    assert full_peak > logits_bytes  # the full logits loss holds at least one full logits tensor
    for peak in (chunked_peak, plain_peak):
        assert peak < logits_bytes / 2, (peak, full_peak)
        assert peak < full_peak / 4, (peak, full_peak)


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_the_plan_counts_the_logits_each_loss_really_allocates(precision):
    """``LossSpec.logits_bytes`` (what ``tuneforge plan`` counts for the output layer and logits) against the
    peak of live tensor bytes of a step measured with torch's profiler, on a 32k vocabulary where the
    logits are most of a step: within a factor of the measured peak, and never far below it."""
    import contextlib

    from transformers import LlamaConfig, LlamaForCausalLM

    from tuneforge.losses import LogitsWork, full_logits_bytes

    torch.manual_seed(0)
    vocab, length, batch_size, hidden = 32000, 256, 2, 32
    model = LlamaForCausalLM(LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=64,
                                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                                         tie_word_embeddings=False)).eval()
    input_ids = torch.randint(0, vocab, (batch_size, length), generator=torch.Generator().manual_seed(0))
    batch = {"input_ids": input_ids, "labels": input_ids.clone(), "attention_mask": torch.ones_like(input_ids)}
    bf16 = precision == "bf16-mixed"
    work = LogitsWork(batch_size * length, vocab, hidden, 2 if bf16 else 4, "cpu", weight_bytes=4)

    def step(loss_fn):
        model.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext():
            loss_fn(model, batch).loss.backward()

    specs = {spec.name: spec for spec in losses.tuneforge_losses()}
    configs = {"cross_entropy": losses.CrossEntropyConfig(),
               "chunked_cross_entropy": losses.ChunkedCrossEntropyConfig(chunk_size=64)}
    for name, config in configs.items():
        loss_fn = specs[name].build(config, None)
        step(loss_fn)  # first-call allocations out of the measurement
        measured = _peak_cpu_bytes(lambda: step(loss_fn))
        planned = specs[name].logits_bytes(config, work)
        assert 0.8 * measured <= planned <= 2.0 * measured, (name, measured / 2 ** 20, planned / 2 ** 20)
        assert planned < full_logits_bytes(work) / 4, name
    assert specs["dpo"].logits_bytes is None  # builds full logits: the plan's default counts them


# ---------------------------------------------------------------------------
# cross entropy on the trained positions only (no full logits)
# ---------------------------------------------------------------------------


def _full_logits_cross_entropy(model, batch, label_smoothing=0.0, z_weight=0.0):
    """The previous ``cross_entropy``: full logits, shifted, masked (the reference value)."""
    from tuneforge.losses import causal_lm_logits, cross_entropy_sums, shift_for_next_token

    logits = causal_lm_logits(model, batch["input_ids"], batch["attention_mask"])
    nll, z, count = cross_entropy_sums(*shift_for_next_token(logits, batch["labels"]), label_smoothing)
    return nll / count + z_weight * z / count


@pytest.mark.parametrize("adapter", ["none", "lora_lm_head", "prompt", "prefix"])
def test_cross_entropy_on_trained_positions_equals_the_full_logits_loss(adapter):
    model = tiny_model()
    if adapter == "lora_lm_head":
        model = adapters.apply_lora(model, adapters.LoraAdapterConfig(modules_to_save=["lm_head"]))
    elif adapter == "prompt":
        model = adapters.apply_prompt(model, adapters.PromptAdapterConfig(num_virtual_tokens=4))
    elif adapter == "prefix":
        model = adapters.apply_prefix(model, adapters.PrefixAdapterConfig(num_virtual_tokens=4))
    model.eval()
    batch = random_batch(model.config.vocab_size, seed=2)
    reference = _full_logits_cross_entropy(model, batch, 0.1, 1e-3)
    reference.backward()
    expected = _grads(model)
    model.zero_grad()
    output = losses.build_cross_entropy(losses.CrossEntropyConfig(label_smoothing=0.1, z_loss=1e-3))(model, batch)
    output.loss.backward()
    assert float(output.loss) == pytest.approx(float(reference), abs=1e-5)
    got = _grads(model)
    assert set(got) == set(expected) and expected
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], atol=1e-5, rtol=1e-4, msg=name)


def _soft_capped_gemma2():
    from transformers import Gemma2Config, Gemma2ForCausalLM

    torch.manual_seed(0)
    return Gemma2ForCausalLM(Gemma2Config(vocab_size=260, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                          num_attention_heads=2, num_key_value_heads=1, head_dim=16,
                                          initializer_range=0.3, final_logit_softcapping=0.5,
                                          attn_implementation="eager")).eval()


def _scaled_llama():
    """A causal LM whose logits are 3 x lm_head(hidden): a model-specific head the config does not name."""
    from transformers import LlamaForCausalLM

    class Scaled(LlamaForCausalLM):
        def forward(self, *args, **kwargs):
            outputs = super().forward(*args, **kwargs)
            outputs.logits = outputs.logits * 3.0
            return outputs

    base = tiny_model()
    model = Scaled(base.config)
    model.load_state_dict(base.state_dict())
    return model.eval()


@pytest.mark.parametrize("build", [_soft_capped_gemma2, _scaled_llama])
def test_cross_entropy_uses_the_models_own_logits_when_they_are_not_just_the_output_layer(build):
    model = build()
    batch = random_batch(model.config.vocab_size, seed=3)
    with torch.no_grad():
        reference = float(_full_logits_cross_entropy(model, batch))
        hidden, lm_head = final_hidden_states(model, batch["input_ids"], batch["attention_mask"])
        head_only = torch.nn.functional.cross_entropy(lm_head(hidden[:, :-1]).flatten(0, 1),
                                                      batch["labels"][:, 1:].flatten())
    assert abs(float(head_only) - reference) > 1e-2  # the output layer alone would give another loss
    loss_fn = losses.build_cross_entropy(losses.CrossEntropyConfig())
    for _ in range(2):  # the check is cached per model
        assert float(loss_fn(model, batch).loss) == pytest.approx(reference, abs=1e-5)


def test_cross_entropy_peak_memory_is_below_the_full_logits_path():
    """The output layer runs on the trained positions only: with half of them masked (a prompt), the
    peak is lower than the previous full-logits loss by more than one full logits tensor."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    vocab, length, batch_size = 32000, 256, 2
    model = LlamaForCausalLM(LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                                         tie_word_embeddings=False)).eval()
    input_ids = torch.randint(0, vocab, (batch_size, length), generator=torch.Generator().manual_seed(0))
    labels = input_ids.clone()
    labels[:, : length // 2] = IGNORE_INDEX
    batch = {"input_ids": input_ids, "labels": labels, "attention_mask": torch.ones_like(input_ids)}
    cross_entropy = losses.build_cross_entropy(losses.CrossEntropyConfig())
    values = {}

    def step(name, loss_fn):
        model.zero_grad(set_to_none=True)
        loss = loss_fn(model, batch)
        loss.backward()
        values[name] = float(loss)

    step("warmup", lambda m, b: cross_entropy(m, b).loss)
    before = _peak_cpu_bytes(lambda: step("full", _full_logits_cross_entropy))
    after = _peak_cpu_bytes(lambda: step("trained", lambda m, b: cross_entropy(m, b).loss))
    logits_bytes = batch_size * length * vocab * 4
    assert values["trained"] == pytest.approx(values["full"], abs=1e-5)
    assert after < before - logits_bytes, (after, before, logits_bytes)


# ---------------------------------------------------------------------------
# normalisation over the accumulation window
# ---------------------------------------------------------------------------


def _example(ids, n_prompt):
    return {"input_ids": ids, "labels": [IGNORE_INDEX] * n_prompt + ids[n_prompt:]}


def test_gradient_accumulation_equals_one_big_batch_per_token_mean():
    import lightning.pytorch as pl
    from omegaconf import OmegaConf

    from tuneforge.host.schema import OptimConfig
    from tuneforge.training.module import FineTuneModule

    tokenizer = build_tiny_tokenizer()
    pad = tokenizer.pad_token_id
    # micro-batch 1: two long targets; micro-batch 2: two short ones -> very different token counts
    examples = [_example(list(range(10, 40)), 2), _example(list(range(50, 76)), 3),
                _example(list(range(80, 92)), 9), _example(list(range(100, 108)), 5)]
    loss_fn = losses.build_cross_entropy(losses.CrossEntropyConfig(label_smoothing=0.05, z_loss=1e-3))
    base = tiny_model()

    captured = {}

    class Grab(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if batch_idx == 1:  # after the optimizer step of the 2-micro-batch window
                captured.update(_grads(pl_module.model))

    model = copy.deepcopy(base)
    optim = OmegaConf.structured(OptimConfig(scheduler="constant"))
    optim.lr = 0.0  # no update, only the accumulated gradients count (a run's optim.lr must be > 0)
    module = FineTuneModule(model, loss_fn, optim, optimizer=adamw_component())
    loader = torch.utils.data.DataLoader(examples, batch_size=2, shuffle=False,
                                         collate_fn=partial(pad_batch, pad_token_id=pad))
    trainer = pl.Trainer(max_steps=1, accumulate_grad_batches=2, gradient_clip_val=None, accelerator="cpu",
                         devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=[Grab()])
    trainer.fit(module, train_dataloaders=loader)

    big = copy.deepcopy(base)
    loss_fn(big, pad_batch(examples, pad)).loss.backward()
    expected = _grads(big)

    naive = copy.deepcopy(base)  # mean of the two micro-batch means: what must NOT come out
    for part in (examples[:2], examples[2:]):
        (loss_fn(naive, pad_batch(part, pad)).loss / 2).backward()
    wrong = _grads(naive)

    assert set(captured) == set(expected)
    worst = max(float((captured[n] - expected[n]).abs().max()) for n in expected)
    assert worst < 1e-5
    assert max(float((wrong[n] - expected[n]).abs().max()) for n in expected) > 1e-3  # the test can tell


@pytest.mark.parametrize("loss", [
    ["loss=cross_entropy", "loss.label_smoothing=0.1", "loss.z_loss=1e-4"],
    ["loss=chunked_cross_entropy", "loss.chunk_size=16", "loss.z_loss=1e-4"],
])
def test_cross_entropy_losses_train_with_accumulation(tmp_path, loss):
    path = tmp_path / "words.jsonl"
    path.write_text("".join(json.dumps({"instruction": "Write the word in capital letters.", "input": w,
                                        "output": w.upper()}) + "\n" for w in WORDS))
    result = run_tiny_fit(tmp_path / "run", overrides=[
        f"data.path={path}", "data.val_size=6", *loss, "trainer.accumulate_grad_batches=2",
        "loader.batch_size=2", "optim.lr=1e-2", "trainer.max_steps=10"])
    assert result.metrics["steps"] == 10
    assert result.metrics["tuned"]["perplexity/loss"] < result.metrics["base"]["perplexity/loss"] - 0.5
    assert "train/z_loss" in result.metrics["train"]


# ---------------------------------------------------------------------------
# DPO
# ---------------------------------------------------------------------------


def test_dpo_loss_formulas():
    pc, pr = torch.tensor([-3.0, -5.0]), torch.tensor([-4.0, -2.0])
    rc, rr = torch.tensor([-3.5, -4.0]), torch.tensor([-3.5, -3.0])
    h = (pc - pr) - (rc - rr)
    beta = 0.5
    torch.testing.assert_close(dpo_loss(pc, pr, rc, rr, beta=beta), -F.logsigmoid(beta * h))
    smoothed = dpo_loss(pc, pr, rc, rr, beta=beta, label_smoothing=0.2)
    torch.testing.assert_close(smoothed, -0.8 * F.logsigmoid(beta * h) - 0.2 * F.logsigmoid(-beta * h))
    torch.testing.assert_close(dpo_loss(pc, pr, rc, rr, beta=beta, variant="ipo"), (h - 1 / (2 * beta)) ** 2)
    with pytest.raises(ConfigError, match="loss.variant.*sigmoid, ipo"):
        dpo_loss(pc, pr, rc, rr, beta=beta, variant="kto")
    with pytest.raises(ConfigError, match="variant: must be one of sigmoid, ipo"):  # the config refuses it
        losses.DPOConfig(variant="hinge")


def _pair_examples(tokenizer, words):
    examples = []
    for word in words:
        prompt = f"Word: {word}\nVerdict: "
        n_prompt = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
        example = {}
        for side, answer in (("chosen", f"yes, {word}"), ("rejected", f"no, {word}")):
            ids = tokenizer(prompt + answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
            example[f"{side}_input_ids"] = ids
            example[f"{side}_labels"] = [IGNORE_INDEX] * n_prompt + ids[n_prompt:]
        example["record"] = {"prompt": prompt}
        examples.append(example)
    return examples


def _pair_examples_for_run(tokenizer, words):
    """Preference examples plus ``input_ids``/``labels`` (the chosen answer), so that the run's
    data-quality report and the perplexity evaluator, which read those keys, have something to read."""
    examples = _pair_examples(tokenizer, words)
    for example in examples:
        example["input_ids"] = example["chosen_input_ids"]
        example["labels"] = example["chosen_labels"]
    return examples


def test_sequence_logps_sums_trained_tokens_only():
    model = tiny_model().eval()
    batch = random_batch(model.config.vocab_size)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    total, count = sequence_logps(logits, batch["labels"])
    logp = logits[:, :-1].log_softmax(-1)
    labels = batch["labels"][:, 1:]
    for b in range(labels.size(0)):
        keep = labels[b] != IGNORE_INDEX
        expected = logp[b][keep].gather(-1, labels[b][keep][:, None]).sum()
        assert float(total[b]) == pytest.approx(float(expected), abs=1e-4)
        assert int(count[b]) == int(keep.sum())


@pytest.mark.parametrize("kind", ["lora", "full"])
def test_dpo_reference_is_the_model_before_training(kind):
    tokenizer = build_tiny_tokenizer()
    model = tiny_model()
    if kind == "lora":
        model = adapters.apply_lora(model, adapters.LoraAdapterConfig(lora_dropout=0.0))
    model.eval()
    batch = pad_batch(_pair_examples(tokenizer, WORDS[:4]), tokenizer.pad_token_id)
    loss_fn = losses.build_dpo(losses.DPOConfig(beta=0.1))
    output = loss_fn(model, batch)
    # the policy equals the reference at the start: every pair's loss is -log sigmoid(0) = log 2
    assert float(output.loss) == pytest.approx(math.log(2), abs=1e-6)
    assert output.num_tokens == 4
    output.loss.backward()
    with torch.no_grad():  # move the policy; the reference must stay where it was
        for parameter in model.parameters():
            if parameter.requires_grad and parameter.grad is not None:
                parameter -= 5.0 * parameter.grad
    moved = loss_fn(model, batch)
    assert float(moved.loss) < math.log(2) - 1e-3
    assert float(moved.metrics["reward_margin"]) > 0
    if kind == "lora":  # no second model copy: the reference is the adapter-disabled base
        assert sum(isinstance(m, torch.nn.Embedding) for m in model.modules()) == 1


@dataclass
class PairsConfig:
    """Test preference data: 'yes, <word>' is preferred over 'no, <word>'."""

    n_val: int = 6


class PairsPlugin:
    @staticmethod
    def tuneforge_datasets():
        def load(config, tokenizer):
            examples = _pair_examples_for_run(tokenizer, WORDS)
            return DataSplits(train=examples[config.n_val:], val=examples[:config.n_val],
                              stats={"train_examples": len(examples) - config.n_val, "val_examples": config.n_val})

        return [tuneforge.DatasetSpec("test_pairs", PairsConfig, load=load)]


def _held_out_margin(model, examples, pad_id):
    batch = pad_batch(examples, pad_id)
    with torch.no_grad():
        values = {}
        for side in ("chosen", "rejected"):
            logits = model(input_ids=batch[f"{side}_input_ids"],
                           attention_mask=batch[f"{side}_attention_mask"]).logits
            values[side] = sequence_logps(logits, batch[f"{side}_labels"])[0]
    return float((values["chosen"] - values["rejected"]).mean())


@pytest.mark.parametrize("variant", ["sigmoid", "ipo"])
def test_dpo_training_raises_held_out_margin(tmp_path, variant):
    from peft import PeftModel

    result = run_tiny_fit(tmp_path, plugins=[PairsPlugin()], overrides=[
        "data=test_pairs", "loss=dpo", f"loss.variant={variant}", "loss.beta=0.5",
        "optim.lr=1e-2", "optim.scheduler=constant", "trainer.max_steps=15", "adapter=lora"])
    assert result.metrics["steps"] == 15
    tokenizer = build_tiny_tokenizer()
    held_out = _pair_examples(tokenizer, WORDS[:6])
    base = tiny_model().eval()
    before = _held_out_margin(base, held_out, tokenizer.pad_token_id)
    tuned = PeftModel.from_pretrained(tiny_model(), str(result.run_dir / "model")).eval()
    after = _held_out_margin(tuned, held_out, tokenizer.pad_token_id)
    assert after > before + 1.0, (before, after)


def test_dpo_needs_preference_batches():
    model = tiny_model()
    with pytest.raises(ConfigError, match="chosen_input_ids"):
        losses.build_dpo(losses.DPOConfig())(model, random_batch(model.config.vocab_size))


# ---------------------------------------------------------------------------
# distillation
# ---------------------------------------------------------------------------


def test_kl_div_sum_matches_torch():
    generator = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(2, 6, 11, generator=generator), torch.randn(2, 6, 11, generator=generator)
    labels = torch.tensor([[IGNORE_INDEX, 1, 2, 3, IGNORE_INDEX, 4], [IGNORE_INDEX] * 3 + [5, 6, 7]])
    kl, count = kl_div_sum(student, teacher, labels, temperature=2.0)
    mask = labels[:, 1:] != IGNORE_INDEX
    expected = F.kl_div((student[:, :-1][mask] / 2).log_softmax(-1), (teacher[:, :-1][mask] / 2).log_softmax(-1),
                        reduction="sum", log_target=True)
    assert count == int(mask.sum()) == 7
    assert float(kl) == pytest.approx(float(expected), rel=1e-5)


def test_distillation_rejects_teacher_with_another_tokenizer():
    from tokenizers import AddedToken

    student_tokenizer = build_tiny_tokenizer()
    other = build_tiny_tokenizer()
    other.add_tokens([AddedToken("<extra>")])
    context = LossContext(tokenizer=student_tokenizer, load_model=lambda cfg: (tiny_model(), other))
    with pytest.raises(ModelError, match=r"loss.teacher.*tokenizer.*sizes 261 vs 260"):
        losses.build_distillation(losses.DistillationConfig(teacher={"name": "tiny", "seed": 1}), context)
    with pytest.raises(ConfigError, match="loss.teacher must be"):
        losses.build_distillation(losses.DistillationConfig(), context)


def test_distillation_value_mixes_kl_and_ce():
    tokenizer = build_tiny_tokenizer()
    teacher = tiny_model(seed=1).eval()
    student = tiny_model().eval()
    context = LossContext(tokenizer=tokenizer, load_model=lambda cfg: (teacher, tokenizer))
    loss_fn = losses.build_distillation(losses.DistillationConfig(teacher={"name": "tiny"}, temperature=2.0,
                                                                  alpha=0.3), context)
    batch = random_batch(student.config.vocab_size)
    output = loss_fn(student, batch)
    ce = losses.build_cross_entropy(losses.CrossEntropyConfig())(student, batch)
    with torch.no_grad():
        kl, count = kl_div_sum(student(**{k: batch[k] for k in ("input_ids", "attention_mask")}).logits,
                               teacher(**{k: batch[k] for k in ("input_ids", "attention_mask")}).logits,
                               batch["labels"], 2.0)
    expected = 0.3 * 4.0 * float(kl) / count + 0.7 * float(ce.loss)
    assert output.num_tokens == count
    assert float(output.loss) == pytest.approx(expected, rel=1e-5)


def _chat_examples(tokenizer, words):
    """Held-out examples rendered with the tokenizer's chat template; only the answer is trained."""
    examples = []
    for word in words:
        messages = [{"role": "user", "content": f"Write the word in capital letters.\n\n{word}"},
                    {"role": "assistant", "content": word.upper()}]
        text = tokenizer.apply_chat_template(messages, tokenize=False)
        prompt = tokenizer.apply_chat_template(messages[:1], tokenize=False, add_generation_prompt=True)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        n_prompt = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
        examples.append({"input_ids": ids, "labels": [IGNORE_INDEX] * n_prompt + ids[n_prompt:]})
    return examples


def test_distillation_training_lowers_kl_to_teacher(tmp_path):
    from peft import PeftModel

    from tuneforge.losses import causal_lm_logits

    def write(path, words):
        path.write_text("".join(json.dumps({"instruction": "Write the word in capital letters.", "input": w,
                                            "output": w.upper()}) + "\n" for w in words))
        return path

    train, val = write(tmp_path / "train.jsonl", WORDS[6:]), write(tmp_path / "val.jsonl", WORDS[:6])
    result = run_tiny_fit(tmp_path / "run", overrides=[
        f"data.path={train}", f"data.val_path={val}", "loss=distillation", "loss.teacher={name:tiny,seed:1}",
        "loss.alpha=1.0", "loss.temperature=1.0", "optim.lr=1e-2", "optim.scheduler=constant",
        "trainer.max_steps=15"])
    assert result.metrics["steps"] == 15
    tokenizer = build_tiny_tokenizer()
    batch = pad_batch(_chat_examples(tokenizer, WORDS[:6]), tokenizer.pad_token_id)
    teacher = tiny_model(seed=1).eval()

    def kl_to_teacher(model):
        with torch.no_grad():
            args = (batch["input_ids"], batch["attention_mask"])
            kl, count = kl_div_sum(causal_lm_logits(model, *args), causal_lm_logits(teacher, *args),
                                   batch["labels"], 1.0)
        return float(kl) / count

    before = kl_to_teacher(tiny_model().eval())
    after = kl_to_teacher(PeftModel.from_pretrained(tiny_model(), str(result.run_dir / "model")).eval())
    assert after < 0.7 * before, (before, after)


# ---------------------------------------------------------------------------
# documentation
# ---------------------------------------------------------------------------


def _docs(name):
    from pathlib import Path

    return (Path(__file__).resolve().parents[1] / "docs" / name).read_text()


@pytest.mark.parametrize("doc, module", [("losses.md", losses), ("adapters.md", adapters)])
def test_every_config_field_is_documented(doc, module):
    import dataclasses

    text = _docs(doc)
    hook = module.tuneforge_losses if module is losses else module.tuneforge_adapters
    for spec in hook():
        assert f"`{spec.name}`" in text, spec.name
        for config_field in dataclasses.fields(spec.config):
            assert f"| `{config_field.name}` |" in text, (spec.name, config_field.name)
            assert config_field.name in (spec.config.__doc__ or ""), (spec.name, config_field.name)


def test_third_party_loss_example_in_docs_trains(tmp_path, monkeypatch):
    import re
    import sys
    import types

    [source] = [block for block in re.findall(r"```python\n(.*?)```", _docs("losses.md"), re.S)
                if "tuneforge_losses" in block and "focal" in block]  # the third-party plugin's example
    plugin = types.ModuleType("tuneforge_focal")
    monkeypatch.setitem(sys.modules, "tuneforge_focal", plugin)  # as if installed (dataclasses look it up)
    exec(compile(source, "docs/losses.md", "exec"), plugin.__dict__)
    path = tmp_path / "words.jsonl"
    path.write_text("".join(json.dumps({"instruction": "Write the word in capital letters.", "input": w,
                                        "output": w.upper()}) + "\n" for w in WORDS))
    result = run_tiny_fit(tmp_path / "run", plugins=[plugin], overrides=[
        f"data.path={path}", "data.val_size=6", "loss=focal", "loss.gamma=1.5", "optim.lr=1e-2",
        "trainer.max_steps=10"])
    assert result.config.loss.gamma == 1.5
    assert result.metrics["tuned"]["perplexity/loss"] < result.metrics["base"]["perplexity/loss"] - 0.2
