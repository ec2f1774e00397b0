"""``strategy=fsdp`` (FSDP2: ``fully_shard`` through Lightning's ModelParallelStrategy) on 2 CPU processes
with gloo: equal to one process with the same global batch (with norm clipping that bites too),
pickle-free checkpoints, exact resume after SIGKILL, and the tuned evaluation / ``model/`` on the whole
weights (generation with ranks doing different numbers of batches does not hang).
"""

import json
import os
import random
import signal
import time

import pytest
import torch
from safetensors.torch import load_file

from helpers import run_cli, train_losses
from test_distributed import DDP_RUN, _batches

#: the DDP resume run of tests/test_distributed.py (LoRA dropout 0.1, shuffling, accumulation 2, warmup,
#: checkpoints every 2 steps), sharded
FSDP_RUN = ["strategy=fsdp" if arg == "strategy=ddp" else arg for arg in DDP_RUN]

#: one process with batch 4 vs 2 processes with batch 2: the same global batches, no dropout
COMMON = ["train", "adapter.lora_dropout=0", "loader.shuffle=false", "trainer.max_steps=3", "optim.lr=1e-2",
          "trainer.accelerator=cpu", "trainer.enable_progress_bar=false", "threads=1", "evaluators=[]",
          "baselines=[]", "memorisation.sample=0"]
ONE = [*COMMON, "trainer.devices=1", "loader.batch_size=4"]
TWO = [*COMMON, "strategy=fsdp", "trainer.devices=2", "loader.batch_size=2"]
ENV = {"OMP_NUM_THREADS": "1"}


def _adapter(run_dir) -> dict:
    return load_file(str(run_dir / "model" / "adapter_model.safetensors"))


def _max_difference(got: dict, expected: dict) -> float:
    assert got.keys() == expected.keys()
    return max(float((got[key] - expected[key]).abs().max()) for key in expected)


def _train(args, run_dir, env=None, **kwargs):
    result = run_cli([*args, f"hydra.run.dir={run_dir}"], env={**ENV, **(env or {})},
                     timeout=kwargs.pop("timeout", 240), **kwargs)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def _no_pickles(run_dir) -> None:
    """Nothing in the run directory is a pickle (torch.save writes zip archives or protocol-2+ pickles);
    tensors are in safetensors files."""
    for path in run_dir.rglob("*"):
        if path.is_file() and path.suffix != ".safetensors":
            head = path.read_bytes()[:2]
            assert head != b"PK" and not (head[:1] == b"\x80" and head[1:2] in b"\x02\x03\x04\x05"), path


def test_two_process_fsdp_equals_one_process_with_the_same_global_batch(tmp_path):
    _train(ONE, tmp_path / "one")
    two = _train(TWO, tmp_path / "two")
    assert "fsdp: 2 decoder layer(s) and the root sharded over 2 process(es)" in two.stdout + two.stderr
    assert "gloo, all 2 processes registered" in two.stdout + two.stderr
    # default trainer.gradient_clip_val=1.0 with gradient_clip_algorithm=norm: DTensor gradients clipped
    assert train_losses(tmp_path / "two") == pytest.approx(train_losses(tmp_path / "one"), abs=1e-5)
    one, sharded = _adapter(tmp_path / "one"), _adapter(tmp_path / "two")
    print(f"fsdp vs one process: max weight difference {_max_difference(sharded, one):.2e}")
    for key in one:  # the DDP test's tolerance: 1 process pads its batches of 4 to other lengths than 2 x 2
        torch.testing.assert_close(sharded[key], one[key], atol=2e-5, rtol=1e-4)
    # against 2-process DDP (the same batches on each rank), sharding changes only float rounding: gradients
    # reduce-scattered instead of all-reduced (measured 0.0 on one install, 1.5e-8 on another)
    _train(["strategy=ddp" if arg == "strategy=fsdp" else arg for arg in TWO], tmp_path / "ddp")
    ddp = _adapter(tmp_path / "ddp")
    print(f"fsdp vs ddp: max weight difference {_max_difference(sharded, ddp):.2e}")
    assert _max_difference(sharded, ddp) <= 1e-6
    assert train_losses(tmp_path / "two") == pytest.approx(train_losses(tmp_path / "ddp"), abs=1e-6)
    lora_b = [key for key in one if "lora_B" in key]  # B starts at zero: nonzero B means training moved it
    assert lora_b and all(one[key].abs().max() > 1e-4 for key in lora_b)

    # the final checkpoint is safetensors + JSON with the whole (gathered) trainable state
    [checkpoint] = (tmp_path / "two" / "checkpoints").iterdir()
    state = json.loads((checkpoint / "state.json").read_text())
    tensors = load_file(str(checkpoint / "tensors.safetensors"))
    weights = state["state_dict"]
    assert set(weights) == {"model." + key.replace(".weight", ".default.weight") for key in one}
    for key, ref in weights.items():  # full shapes, not one rank's shard
        assert tensors[ref["__tensor__"]].shape == one[key[len("model."):].replace(".default", "")].shape
    [optimizer] = state["optimizer_states"]
    assert set(optimizer["state"]) == set(weights)  # keyed by parameter name (FSDP2's full optimizer state)
    _no_pickles(tmp_path / "two")

    # model/ reloaded with plain peft gives the logits of the trained (sharded) model: the one whose whole
    # weights the final checkpoint gathered to rank 0
    from peft import PeftModel

    from tuneforge.plugins.models import TinyModelConfig, load_tiny

    trained = {key[len("model."):]: tensors[ref["__tensor__"]] for key, ref in weights.items()}
    logits = []
    for load_trained in (False, True):
        model = PeftModel.from_pretrained(load_tiny(TinyModelConfig())[0], str(tmp_path / "two" / "model")).eval()
        if load_trained:
            assert not model.load_state_dict(trained, strict=False).unexpected_keys
        inputs = torch.randint(0, model.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            logits.append(model(inputs).logits)
    assert torch.equal(logits[0], logits[1])


@pytest.mark.slow  # moved out of the default suite to keep it near 15 minutes; CI's slow step runs it
def test_fsdp_over_a_quantized_base_equals_ddp(tmp_path):
    """QLoRA (LoRA over a 4-bit NF4 base, bitsandbytes) sharded by FSDP2: the same steps, adapter and tuned
    evaluation (the unsharded copy, rebuilt over the quantized base) as 2-process DDP."""
    pytest.importorskip("bitsandbytes")
    args = [*TWO, "adapter=qlora", "evaluators=[perplexity]"]
    _train(args, tmp_path / "fsdp")
    _train(["strategy=ddp" if arg == "strategy=fsdp" else arg for arg in args], tmp_path / "ddp")
    # float rounding only (gradients reduce-scattered instead of all-reduced), which AdamW's normalised step
    # enlarges on weights whose gradient is near zero: measured 1.3e-6 here (steps are 1e-2)
    assert _max_difference(_adapter(tmp_path / "fsdp"), _adapter(tmp_path / "ddp")) <= 1e-5
    assert train_losses(tmp_path / "fsdp") == pytest.approx(train_losses(tmp_path / "ddp"), abs=1e-6)
    tuned = [json.loads((tmp_path / run / "metrics.json").read_text())["tuned"] for run in ("fsdp", "ddp")]
    assert tuned[0]["perplexity/loss"] == pytest.approx(tuned[1]["perplexity/loss"], abs=1e-5)
    base = json.loads((tmp_path / "ddp" / "metrics.json").read_text())["base"]
    assert tuned[1]["perplexity/loss"] < base["perplexity/loss"]


@pytest.mark.slow  # moved out of the default suite to keep it near 15 minutes; CI's slow step runs it
def test_norm_clipping_that_bites_is_global_over_the_shards(tmp_path):
    """``gradient_clip_algorithm=norm`` at 0.02, with Adam's eps=1 so that the update scales with the
    clipped gradient: the shards' norm must be the global one for 2 ranks to equal 1 process."""
    clip = ["trainer.gradient_clip_val=0.02", "optim.eps=1.0", "optim.lr=0.5"]
    _train([*ONE, *clip], tmp_path / "one")
    _train([*TWO, *clip], tmp_path / "two")
    _train([*ONE, *clip, "trainer.gradient_clip_val=null"], tmp_path / "unclipped")
    one, sharded, unclipped = (_adapter(tmp_path / name) for name in ("one", "two", "unclipped"))
    assert _max_difference(unclipped, one) > 1e-3  # the clipping changed the training
    difference = _max_difference(sharded, one)
    print(f"clipped fsdp vs one process: max weight difference {difference:.2e}")
    assert difference <= 1e-5


@pytest.mark.slow  # three two-process runs, ~50 s: CI's slow step runs it (DDP's is in the default suite)
def test_fsdp_sigkill_then_resume_matches_the_uninterrupted_two_process_run(tmp_path):
    reference, reference_log = tmp_path / "reference", tmp_path / "reference.log"
    _train([*FSDP_RUN, f"callbacks.batch_log.path={reference_log}"], reference, site_dirs=["steplog"], timeout=300)
    seed = int(os.environ.get("RESUME_TEST_SEED", str(time.time_ns() % 1_000_000)))
    kill_step = random.Random(seed).randint(3, 5)  # after the first checkpoint (step 2)
    print(f"kill step {kill_step} (RESUME_TEST_SEED={seed})")
    crashed, log = tmp_path / "crashed", tmp_path / "crashed.log"
    killed = run_cli([*FSDP_RUN, f"callbacks.batch_log.path={log}", f"callbacks.batch_log.kill_at_step={kill_step}",
                      f"hydra.run.dir={crashed}"], site_dirs=["steplog"], env=ENV, timeout=300)
    assert killed.returncode == -signal.SIGKILL, (kill_step, killed.stderr[-2000:])
    checkpoint = crashed / "checkpoints" / f"step-{(kill_step // 2) * 2:08d}"
    state = json.loads((checkpoint / "state.json").read_text())
    assert state["tuneforge"]["world_size"] == 2 and len(state["rng_states"]) == 2
    _no_pickles(crashed)

    _train([*FSDP_RUN, f"callbacks.batch_log.path={log}"], crashed, site_dirs=["steplog"], timeout=300)
    status = json.loads((crashed / "status.json").read_text())
    assert status["status"] == "completed" and status["steps"] == 6 and status["resumed_from"] == str(checkpoint)
    expected, got = _batches(reference_log), _batches(log)
    for rank in (0, 1):  # each rank saw the same micro-batches in the same order, with the same learning rate
        assert [b["ids"] for b in got[rank]] == [b["ids"] for b in expected[rank]], (rank, kill_step)
        assert [b["lr"] for b in got[rank]] == pytest.approx([b["lr"] for b in expected[rank]], rel=1e-9)
    difference = _max_difference(_adapter(crashed), _adapter(reference))  # LoRA dropout 0.1, Adam moments
    print(f"resumed vs uninterrupted fsdp: max weight difference {difference:.2e}")
    assert difference <= 1e-5
    assert train_losses(crashed) == pytest.approx(train_losses(reference), abs=1e-5)


def test_tuned_evaluation_sees_whole_weights_and_generation_does_not_hang(tmp_path):
    """3 generation batches on 2 ranks: rank 0 generates 2 batches, rank 1 one (and their sequences stop
    at different lengths).  With sharded weights every forward would be a collective and rank 0 would
    wait forever; the tuned evaluation runs on the whole model on each rank.  ``tuneforge eval`` on the
    saved ``model/`` (plain peft, one process) reproduces the tuned numbers the run computed."""
    run = tmp_path / "run"
    evaluate = ["evaluators=[perplexity,exact_match]", "evaluators.exact_match.batch_size=4",
                "evaluators.exact_match.max_new_tokens=6", "data.val_size=12", "memorisation.sample=6"]
    _train([*TWO, *evaluate, "baselines=[]"], run)
    metrics = json.loads((run / "metrics.json").read_text())
    assert {"perplexity/loss", "exact_match"} <= set(metrics["tuned"])
    again = run_cli(["eval", f"run_dir={run}", f"out={tmp_path / 'eval'}", "threads=1"], env=ENV, timeout=240)
    assert again.returncode == 0, again.stderr[-3000:]
    rescored = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert rescored["tuned"]["perplexity/loss"] == pytest.approx(metrics["tuned"]["perplexity/loss"], abs=1e-6)
    assert rescored["tuned"]["exact_match"] == metrics["tuned"]["exact_match"]
    predicted = {r["prompt"]: r["tuned"] for r in map(json.loads, (run / "predictions.jsonl").open())
                 if r.get("set") == "val" and r.get("kind") == "generation"}
    replayed = {r["prompt"]: r["tuned"] for r in map(json.loads, (tmp_path / "eval" / "predictions.jsonl").open())
                if r.get("set") == "val" and r.get("kind") == "generation"}
    assert predicted and predicted == replayed  # greedy generations of the in-run model == of the saved one


@pytest.mark.slow  # moved out of the default suite to keep it near 15 minutes; CI's slow step runs it
@pytest.mark.fault(fault="`strategy=fsdp` vs `ddp` with LoRA dropout 0.1, accumulation 2, lr 5e-3",
                   outcome="adapter weights within 1e-6 of DDP (1.2e-7 on 6 steps; 5.7e-6 before FSDP kept "
                           "accumulated gradients local); see docs/distributed.md")
def test_fsdp_with_gradient_accumulation_and_dropout_stays_within_1e_6_of_ddp(tmp_path):
    """Accumulation 2, LoRA dropout 0.1, lr 5e-3: the micro-batches keep their gradients local until the
    optimizer step (as DDP's no_sync), so the sums are DDP's (5.7e-6 apart when every micro-batch was
    reduce-scattered; 1.2e-7 measured with the change).

    Both runs attend through transformers' key/value copies (``TRANSFORMERS_SDPA_FORCE_GQA=0``), where this
    config was measured.  On the training step's grouped-query path (tuneforge.training.grouped_query_attention)
    the gradients differ from the copies' in their last bits, and the clipping norm's other summation order
    under FSDP, magnified by Adam, then left the adapters 5.8e-6 apart after these 6 steps, as far as the bug
    this test guards against; with gradient clipping off the two strategies were bit-identical on that path
    (measured 2026-12-07; docs/distributed.md, "How close FSDP and DDP are")."""
    copies = {"TRANSFORMERS_SDPA_FORCE_GQA": "0"}
    run = ["train", "trainer.accelerator=cpu", "trainer.devices=2", "loader.shuffle=true", "trainer.max_steps=6",
           "trainer.accumulate_grad_batches=2", "loader.batch_size=2", "optim.lr=5e-3", "optim.warmup_steps=2",
           "adapter.lora_dropout=0.1", "trainer.enable_progress_bar=false", "threads=1", "evaluators=[]",
           "baselines=[]", "memorisation.sample=0"]
    _train([*run, "strategy=ddp"], tmp_path / "ddp", env=copies)
    _train([*run, "strategy=fsdp"], tmp_path / "fsdp", env=copies)
    difference = _max_difference(_adapter(tmp_path / "fsdp"), _adapter(tmp_path / "ddp"))
    print(f"fsdp vs ddp with accumulation and dropout: max weight difference {difference:.2e}")
    assert difference <= 1e-6
    assert train_losses(tmp_path / "fsdp") == pytest.approx(train_losses(tmp_path / "ddp"), abs=1e-6)
