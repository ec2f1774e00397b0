"""Padding-free packing and length-grouped batching: exact attention, labels that never cross a
boundary, losses and gradients equal to unpacked batches, grouping, sharding and the CLI."""

from __future__ import annotations

import copy
import json
import random

import pytest
import torch

from helpers import adamw_component, run_cli
from tuneforge.data import IGNORE_INDEX, DataSplits, pad_batch
from tuneforge.data.packing import (PackedRows, block_causal_mask, length_grouped_order, pack_batch,
                                    pack_examples, varlen_arguments)
from tuneforge.errors import ConfigError, ModelError
from tuneforge.losses import model_inputs
from tuneforge.plugins import losses
from tuneforge.testing import run_tiny_fit
from tuneforge.training import resumable_sampler

VOCAB = 300


def tiny_llama(attn_implementation: str, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False,
                         attn_implementation=attn_implementation)
    model = LlamaForCausalLM(config).eval()  # no dropout: packed and unpacked passes see one function
    assert model.config._attn_implementation == attn_implementation
    return model


def make_examples(shapes, seed=1):
    """Examples of (length, masked prompt tokens), random token ids."""
    generator = torch.Generator().manual_seed(seed)
    examples = []
    for length, prompt in shapes:
        ids = torch.randint(3, VOCAB, (length,), generator=generator).tolist()
        examples.append({"input_ids": ids, "labels": [IGNORE_INDEX] * prompt + ids[prompt:]})
    return examples


SHAPES = [(20, 5), (13, 3), (31, 10), (7, 2), (16, 12), (9, 0), (25, 20), (11, 4)]


def grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def assert_same_grads(got, expected, atol=1e-5):
    assert set(got) == set(expected) and expected
    worst = max(float((got[n] - expected[n]).abs().max()) for n in expected)
    assert worst < atol, worst


# ---------------------------------------------------------------------------
# rows, positions, labels
# ---------------------------------------------------------------------------


def test_pack_examples_fills_rows_deterministically_and_uses_every_example_once():
    rng = random.Random(3)
    lengths = [rng.randint(5, 200) for _ in range(300)]
    rows = pack_examples(lengths, 256, seed=7)
    assert sorted(i for row in rows for i in row) == list(range(300))
    assert all(sum(lengths[i] for i in row) <= 256 for row in rows)
    lower_bound = -(-sum(lengths) // 256)
    assert len(rows) <= lower_bound + 2, (len(rows), lower_bound)  # best-fit decreasing is near-optimal
    assert pack_examples(lengths, 256, seed=7) == rows
    assert pack_examples([300, 10, 5], 256) == [[0], [1, 2]]  # too long for a row: a row of its own


def test_positions_restart_per_example_and_labels_never_cross_a_boundary():
    examples = make_examples([(20, 5), (13, 0), (31, 10), (7, 0), (16, 12)])  # some train every token
    batch = pack_batch([examples[:3], examples[3:]], pad_token_id=0)
    first = 20 + 13 + 31
    assert batch["input_ids"].shape == (2, first)
    assert batch["position_ids"][0].tolist() == [*range(20), *range(13), *range(31)]
    assert batch["position_ids"][1].tolist() == [*range(7), *range(16), *range(first - 23)]  # padding: own run
    assert batch["attention_mask"][1].tolist() == [1] * 23 + [0] * (first - 23)
    assert batch["input_ids"][1, 23:].eq(0).all() and batch["labels"][1, 23:].eq(IGNORE_INDEX).all()
    # every example's own labels, except its first token (never predicted from the previous example)
    assert batch["labels"][0, 20:33].tolist() == [IGNORE_INDEX] + examples[1]["labels"][1:]
    segments = (batch["position_ids"] == 0).cumsum(-1)
    for row in range(2):
        for i in range(first - 1):  # position i predicts token i+1: both in one example whenever trained
            if batch["labels"][row, i + 1] != IGNORE_INDEX:
                assert segments[row, i] == segments[row, i + 1], (row, i)
    trained = sum(sum(label != IGNORE_INDEX for label in ex["labels"][1:]) for ex in examples)
    assert int((batch["labels"][:, 1:] != IGNORE_INDEX).sum()) == trained


def test_block_causal_mask_and_varlen_arguments():
    positions = torch.tensor([[0, 1, 2, 0, 1, 0], [0, 1, 2, 3, 0, 1]])
    mask = block_causal_mask(positions, torch.float32)
    assert mask.shape == (2, 1, 6, 6)
    allowed = (mask[:, 0] == 0).int()
    assert allowed[0].tolist() == [[1, 0, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0], [1, 1, 1, 0, 0, 0],
                                   [0, 0, 0, 1, 0, 0], [0, 0, 0, 1, 1, 0], [0, 0, 0, 0, 0, 1]]
    assert float(mask.min()) == torch.finfo(torch.float32).min
    args = varlen_arguments(positions)
    assert args["cu_seq_lens_q"].tolist() == [0, 3, 5, 6, 10, 12] and args["cu_seq_lens_q"].dtype == torch.int32
    assert args["max_length_q"] == 4 and args["max_length_k"] == 4


# ---------------------------------------------------------------------------
# exactness: attention, loss and gradients
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_a_token_cannot_attend_across_an_example_boundary(implementation):
    model = tiny_llama(implementation)
    a, b = make_examples([(15, 3), (12, 2)])
    changed = dict(a, input_ids=[(t + 7) % VOCAB for t in a["input_ids"]])
    with torch.no_grad():
        logits = [model(**model_inputs(model, pack_batch([[first, b]], 0))).logits[0] for first in (a, changed)]
        alone = model(input_ids=torch.tensor([b["input_ids"]])).logits[0]
    assert not torch.allclose(logits[0][:15], logits[1][:15], atol=1e-3)  # the changed example's own logits move
    torch.testing.assert_close(logits[1][15:], logits[0][15:], atol=1e-6, rtol=0)  # the other's do not
    torch.testing.assert_close(logits[0][15:], alone, atol=1e-5, rtol=1e-5)  # = the example on its own


@pytest.mark.parametrize("loss", ["cross_entropy", "chunked_cross_entropy"])
@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_packed_loss_and_gradients_equal_unpacked(implementation, loss):
    model = tiny_llama(implementation)
    examples = make_examples(SHAPES)
    if loss == "cross_entropy":
        loss_fn = losses.build_cross_entropy(losses.CrossEntropyConfig(label_smoothing=0.1, z_loss=1e-3))
    else:
        loss_fn = losses.build_chunked_cross_entropy(losses.ChunkedCrossEntropyConfig(z_loss=1e-3, chunk_size=16))
    unpacked_model, packed_model = copy.deepcopy(model), copy.deepcopy(model)
    reference = loss_fn(unpacked_model, pad_batch(examples, 0))
    reference.loss.backward()
    rows = [[examples[i] for i in row] for row in pack_examples([len(e["input_ids"]) for e in examples], 48)]
    assert 1 < len(rows) < len(examples)
    output = loss_fn(packed_model, pack_batch(rows, 0))
    output.loss.backward()
    assert output.num_tokens == reference.num_tokens
    assert float(output.loss) == pytest.approx(float(reference.loss), abs=1e-5)
    assert_same_grads(grads(packed_model), grads(unpacked_model))


@pytest.mark.parametrize("accumulate", [1, 2])
@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_packed_training_step_gradient_equals_unpacked_per_token_mean(implementation, accumulate):
    """Through the data module and the Lightning module: packed rows in one batch or in an
    accumulation window give the gradient of the unpacked batch's per-token mean."""
    import lightning.pytorch as pl
    from omegaconf import OmegaConf

    from tuneforge.host.schema import LoaderConfig, OptimConfig
    from tuneforge.training.data_module import FineTuneDataModule
    from tuneforge.training.module import FineTuneModule

    examples = make_examples(SHAPES)
    loss_fn = losses.build_cross_entropy(losses.CrossEntropyConfig(label_smoothing=0.05))
    base = tiny_llama(implementation)
    rows_per_batch = 4 // accumulate
    loader = OmegaConf.structured(LoaderConfig(batch_size=rows_per_batch, shuffle=False, packing=True,
                                               pack_length=40))
    datamodule = FineTuneDataModule(DataSplits(train=examples, val=[]), 0, loader, seed=0)
    assert len(datamodule.packed_rows()) == 4  # one window covers every example

    captured = {}

    class Grab(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if trainer.global_step == 1 and not captured:  # right after the window's optimizer step
                captured.update(grads(pl_module.model))

    model = copy.deepcopy(base)
    optim = OmegaConf.structured(OptimConfig(scheduler="constant"))
    optim.lr = 0.0  # no update, only the accumulated gradients count (a run's optim.lr must be > 0)
    module = FineTuneModule(model, loss_fn, optim, optimizer=adamw_component())
    trainer = pl.Trainer(max_steps=1, accumulate_grad_batches=accumulate, gradient_clip_val=None,
                         accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[Grab()],
                         use_distributed_sampler=False)
    trainer.fit(module, datamodule=datamodule)

    unpacked = copy.deepcopy(base)
    loss_fn(unpacked, pad_batch(examples, 0)).loss.backward()
    assert_same_grads(captured, grads(unpacked))


def test_flash_attention_path_passes_varlen_arguments_through_the_model():
    """The FlashAttention path (``flash_attention_2``) cannot run without a GPU; this registers a
    reference varlen attention under a flash-like name and checks that what packing passes
    (position_ids, cu_seq_lens_*, max_length_*, no mask) reaches the attention and gives the
    unpacked logits."""
    import transformers

    if not hasattr(transformers, "AttentionInterface"):  # transformers < 4.48: attention classes, no registry
        pytest.skip("this transformers has no AttentionInterface to register a reference attention with")
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import repeat_kv

    seen = []

    def varlen_reference(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
        assert attention_mask is None
        bounds = kwargs["cu_seq_lens_q"].tolist()
        seen.append((bounds, kwargs["max_length_q"]))
        batch, heads, length, dim = query.shape
        key, value = (repeat_kv(t, module.num_key_value_groups) for t in (key, value))
        q, k, v = (t.transpose(1, 2).reshape(batch * length, heads, dim) for t in (query, key, value))
        out = torch.empty_like(q)
        for start, end in zip(bounds[:-1], bounds[1:]):
            out[start:end] = torch.nn.functional.scaled_dot_product_attention(
                q[start:end].transpose(0, 1), k[start:end].transpose(0, 1), v[start:end].transpose(0, 1),
                is_causal=True, scale=scaling).transpose(0, 1)
        return out.reshape(batch, length, heads, dim), None

    AttentionInterface.register("flash_varlen_reference", varlen_reference)
    model = tiny_llama("sdpa")
    model.config._attn_implementation = "flash_varlen_reference"
    examples = make_examples(SHAPES[:4])
    batch = pack_batch([examples[:2], examples[2:]], 0)
    with torch.no_grad():
        packed = model(**model_inputs(model, batch)).logits
    assert seen and seen[0] == ([0, 20, 33, 38, 38 + 31, 38 + 38], 31)  # row 1's padding (33..38): its own run
    model.config._attn_implementation = "sdpa"
    with torch.no_grad():
        for row, members in enumerate([examples[:2], examples[2:]]):
            start = 0
            for example in members:
                alone = model(input_ids=torch.tensor([example["input_ids"]])).logits[0]
                end = start + len(example["input_ids"])
                torch.testing.assert_close(packed[row, start:end], alone, atol=1e-5, rtol=1e-5)
                start = end


def test_unsupported_attention_implementation_is_refused():
    model = tiny_llama("sdpa")
    model.config._attn_implementation = "flex_attention"
    with pytest.raises(ModelError, match="loader.packing=true needs attn_implementation eager, sdpa"):
        model_inputs(model, pack_batch([make_examples(SHAPES[:2])], 0))


# ---------------------------------------------------------------------------
# length grouping, sharding, resume positions
# ---------------------------------------------------------------------------


def _padding_fraction(batches, lengths):
    real = sum(lengths[i] for batch in batches for i in batch)
    computed = sum(max(lengths[i] for i in batch) * len(batch) for batch in batches)
    return 1 - real / computed


def _epoch_batches(sampler, batch_size, epoch=0):
    sampler.set_epoch(epoch)
    indices = list(sampler)
    return [indices[i:i + batch_size] for i in range(0, len(indices), batch_size)]


def test_group_by_length_cuts_padding_and_sees_every_example_once_per_epoch():
    rng = random.Random(5)
    lengths = [rng.choice([8, 30, 120, 400]) + rng.randint(0, 20) for _ in range(800)]
    plain = resumable_sampler.ResumableSampler(800, seed=1, shuffle=True, batch_size=8)
    grouped = resumable_sampler.ResumableSampler(800, seed=1, shuffle=True, batch_size=8, lengths=lengths)
    random_fraction = _padding_fraction(_epoch_batches(plain, 8), lengths)
    for epoch in (0, 1):
        batches = _epoch_batches(grouped, 8, epoch)
        assert sorted(i for batch in batches for i in batch) == list(range(800))
        assert _padding_fraction(batches, lengths) < random_fraction / 4, random_fraction
    assert _epoch_batches(grouped, 8, 0) != _epoch_batches(grouped, 8, 1)  # shuffled between epochs
    # the longest batches are not all at the start: batches are shuffled across mega-batches
    maxima = [max(lengths[i] for i in batch) for batch in _epoch_batches(grouped, 8)]
    assert maxima != sorted(maxima, reverse=True)
    assert length_grouped_order(range(10), list(range(10)), 4, seed=0)[-2:] in ([1, 0], [0, 1])  # short batch last


def test_small_groups_keep_batches_varied_between_epochs_on_small_data():
    """100 examples, batch 8: one group of 50 batches sorts the whole epoch, so most pairs of examples that
    share a batch share one again next epoch; groups of 4 batches mix them and still cut most padding."""
    import itertools

    rng = random.Random(11)
    lengths = [rng.randint(116, 145) for _ in range(100)]

    def batch_mates(group_batches, epoch):
        sampler = resumable_sampler.ResumableSampler(100, seed=0, shuffle=True, batch_size=8, lengths=lengths,
                                              group_batches=group_batches)
        return {frozenset(pair) for batch in _epoch_batches(sampler, 8, epoch)
                for pair in itertools.combinations(batch, 2)}

    pairs = len(batch_mates(50, 0))
    assert len(batch_mates(50, 0) & batch_mates(50, 1)) > pairs / 2  # the same neighbours, epoch after epoch
    assert len(batch_mates(4, 0) & batch_mates(4, 1)) < pairs / 4
    plain = resumable_sampler.ResumableSampler(100, seed=0, shuffle=True, batch_size=8)
    small = resumable_sampler.ResumableSampler(100, seed=0, shuffle=True, batch_size=8, lengths=lengths, group_batches=4)
    assert _padding_fraction(_epoch_batches(small, 8), lengths) < _padding_fraction(_epoch_batches(plain, 8),
                                                                                    lengths) / 2
    sampler = resumable_sampler.ResumableSampler(100, seed=0, shuffle=True, batch_size=8, lengths=lengths, group_batches=4)
    full = list(sampler)
    sampler.resume_at(0, 5)
    assert list(sampler) == full[5 * 8:]  # resumes exactly like the default grouping


@pytest.mark.parametrize("count", [801, 800])
def test_group_by_length_shards_by_rank_and_resumes_mid_epoch(count):
    rng = random.Random(count)
    lengths = [rng.randint(4, 300) for _ in range(count)]
    per_rank = {}
    for rank in (0, 1):
        sampler = resumable_sampler.ResumableSampler(count, seed=3, shuffle=True, batch_size=4, rank=rank, world_size=2,
                                              lengths=lengths)
        per_rank[rank] = _epoch_batches(sampler, 4)
        assert len(list(sampler)) == len(sampler)
        sampler.resume_at(0, 7)  # a resumed sampler continues after the batches already done
        assert list(sampler) == [i for batch in per_rank[rank][7:] for i in batch]
    seen = [i for rank in (0, 1) for batch in per_rank[rank] for i in batch]
    assert set(seen) == set(range(count)) and len(seen) == count + count % 2  # padding repeats one example
    # step k's batches on both ranks come from one group of similar lengths
    spreads = [max(lengths[i] for i in a + b) - min(lengths[i] for i in a + b)
               for a, b in zip(per_rank[0], per_rank[1])]
    assert sorted(spreads)[len(spreads) // 2] < 30


def test_packed_rows_are_sharded_by_rank():
    """The rows the data module packs, sharded by rank and grouped by length as its sampler does
    (a real 2-process run with packing: tests/test_cli.py, test_two_process_ddp_equals_one_process...)."""
    from omegaconf import OmegaConf

    from tuneforge.host.schema import LoaderConfig
    from tuneforge.training.data_module import FineTuneDataModule

    rng = random.Random(60)
    examples = make_examples([(rng.randint(5, 60), 2) for _ in range(60)])
    config = OmegaConf.structured(LoaderConfig(batch_size=2, packing=True, pack_length=64, group_by_length=True))
    module = FineTuneDataModule(DataSplits(train=examples, val=[]), 0, config, seed=5)
    rows = module.packed_rows()
    seen = []
    for rank in (0, 1):
        sampler = resumable_sampler.ResumableSampler(len(rows), seed=5, shuffle=True, batch_size=2, rank=rank, world_size=2,
                                              lengths=rows.lengths())
        for batch_rows in _epoch_batches(sampler, 2):
            batch = module.pack_collate([rows[i] for i in batch_rows])
            assert batch["input_ids"].shape[0] <= 2 and batch["input_ids"].shape[1] <= 64
            for row in range(batch["input_ids"].shape[0]):
                starts = torch.nonzero(batch["position_ids"][row] == 0).flatten().tolist()
                real = int(batch["attention_mask"][row].sum())
                seen += [tuple(batch["input_ids"][row, s:e].tolist())
                         for s, e in zip(starts, [*starts[1:], real]) if s < real]
    assert set(seen) == {tuple(ex["input_ids"]) for ex in examples}
    if len(rows) % 2 == 0:  # else the second rank repeats one row (padding to the world size)
        assert len(seen) == len(examples)


def test_a_checkpoint_of_another_batch_layout_is_refused():
    from omegaconf import OmegaConf

    from tuneforge.host.schema import LoaderConfig
    from tuneforge.training.checkpoint import CheckpointError
    from tuneforge.training.data_module import FineTuneDataModule

    import lightning.pytorch as pl

    examples = make_examples(SHAPES)
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    loaders = {}
    for name, options in (("plain", {}), ("packed", {"packing": True, "pack_length": 40, "group_by_length": True}),
                          ("small_groups", {"group_by_length": True, "group_batches": 4})):
        config = OmegaConf.structured(LoaderConfig(batch_size=2, **options))
        module = FineTuneDataModule(DataSplits(train=examples, val=[]), 0, config, seed=0)
        module.trainer = trainer  # the data module reads its rank and world size from the trainer
        loaders[name] = module.train_dataloader()
    loaders["packed"].position_fn = lambda: 1
    state = loaders["packed"].state_dict()
    assert state == {"epoch": 0, "batches": 1, "layout": "packed rows of <= 40 tokens grouped by length"}
    with pytest.raises(CheckpointError, match=r"^the checkpoint's data position counts batches of packed rows of "
                                              r"<= 40 tokens grouped by length, but this run makes batches of "
                                              r"examples; resume with"):
        loaders["plain"].load_state_dict(state)
    loaders["small_groups"].position_fn = lambda: 1
    with pytest.raises(CheckpointError, match=r"counts batches of examples grouped by length \(groups of 4 "
                                              r"batches\), but this run makes batches of examples;"):
        loaders["plain"].load_state_dict(loaders["small_groups"].state_dict())
    loaders["plain"].load_state_dict({"epoch": 0, "batches": 1})  # checkpoints from before layouts: examples
    assert len(list(loaders["plain"].sampler)) == len(examples) - 2  # resumed after one batch of 2


def test_packed_rows_dataset_lengths():
    examples = make_examples(SHAPES[:3])
    rows = PackedRows(examples, [[0, 2], [1]])
    assert len(rows) == 2 and rows.lengths() == [51, 13] and rows[1] == [examples[1]]


# ---------------------------------------------------------------------------
# configuration and the command line
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("overrides, message", [
    (["loss=dpo", "data.path=${pkg:tuneforge.plugins/data/preference.jsonl}"],
     r"loader.packing=true does not work with loss=dpo \(preference losses compare whole sequences\); set "
     r"loader.packing=false, or use a loss that supports packing: chunked_cross_entropy, cross_entropy, "
     r"distillation"),
    (["adapter=prompt"], r"loader.packing=true does not work with adapter=prompt; .*: freeze, full, ia3, lora$"),
])
def test_packing_is_refused_before_the_model_loads_where_it_cannot_be_exact(tmp_path, overrides, message):
    from tuneforge.host.compose import compose, load_plugins

    all_overrides = ["loader.packing=true", *overrides]
    with pytest.raises(ConfigError, match=message):
        compose(all_overrides, load_plugins(all_overrides))


def test_cli_trains_with_packing_and_with_length_grouping(tmp_path):
    for name, option in (("packed", "loader.packing=true"), ("grouped", "loader.group_by_length=true")):
        result = run_cli(["train", "model=tiny", option, "trainer.max_steps=3", "trainer.enable_progress_bar=false",
                          "threads=1", f"hydra.run.dir={tmp_path / name}"])
        assert result.returncode == 0, result.stderr[-3000:]
        metrics = json.loads((tmp_path / name / "metrics.json").read_text())
        assert metrics["steps"] == 3
        throughput = metrics["throughput"]
        assert throughput["excludes_warmup_steps"] == 1 and throughput["tokens_per_s"] > 0
        assert 0 < throughput["last_segment"]["timed_tokens"] < throughput["tokens"]
    refused = run_cli(["train", "loader.packing=true", "loss=dpo", "data.path=${pkg:tuneforge.plugins/data/preference.jsonl}",
                       f"hydra.run.dir={tmp_path / 'dpo'}"])
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines()[-1].startswith(
        "tuneforge: error: loader.packing=true does not work with loss=dpo")


def test_tokens_per_second_counts_real_tokens_only(tmp_path):
    """One epoch packed or padded: the same real tokens (not padding, not the 4D mask's size)."""
    tokens = {}
    for name, extra in (("padded", []), ("packed", ["loader.packing=true", "loader.pack_length=256"])):
        result = run_tiny_fit(tmp_path / name, overrides=["trainer.max_steps=-1", "trainer.max_epochs=1",
                                                          "evaluators=[]", *extra])
        tokens[name] = result.metrics["throughput"]["tokens"]
    assert tokens["packed"] == tokens["padded"] == 4403  # the 58 training examples of the sample data
