"""The benchmark (benchmarks/run.py) in its smallest mode, and its equality checks.

The smoke run trains the tiny model for 3 steps with the plain PyTorch+PEFT loop, the plain
loop with the loss on trained positions only, HF Trainer and tuneforge (each in its own
process) and must find the same loss at every step: with a different batch at each step, that
proves the four consumed the same batches in the same order.  No timing is asserted; the shares
of the batches and the CPU's limit must be printed and stored.
"""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"
#: one module fixture runs the benchmark's four systems (~35 s): in CI's slow step, not the default suite
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("benchmark")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("TUNEFORGE_COMMAND", None)
    completed = subprocess.run([sys.executable, str(BENCHMARKS / "run.py"), "--smoke", "--out", str(out)],
                               capture_output=True, text=True, env=env, timeout=600)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    return completed.stdout, json.loads((out / "results.json").read_text())


@pytest.fixture
def benchmarks_path(monkeypatch):
    """benchmarks/ on sys.path for the test; its modules (``data``, ``common`` ...: generic names)
    are forgotten afterwards."""
    monkeypatch.setattr(sys, "path", [str(BENCHMARKS), *sys.path])
    before = set(sys.modules)
    yield
    for name in set(sys.modules) - before:
        if str(getattr(sys.modules[name], "__file__", None) or "").startswith(str(BENCHMARKS)):
            del sys.modules[name]


@pytest.fixture
def bench_run(benchmarks_path):
    """benchmarks/run.py imported as a module (it puts its folder on sys.path: undone after the test)."""
    spec = importlib.util.spec_from_file_location("benchmark_run", BENCHMARKS / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def runs_by_name(results) -> dict:
    return {run["name"]: dict(run) for run in results["runs"]}


def test_smoke_run_plain_hf_trainer_and_tuneforge_get_the_same_losses(smoke):
    stdout, results = smoke
    runs = runs_by_name(results)
    assert sorted(runs) == ["hf_trainer", "plain", "plain_trained_loss", "tuneforge"]
    plan_digests = results["plan"]["digests"][:3]
    assert len(set(plan_digests)) == 3, "the three steps must have three different batches"
    plain = runs["plain"]["losses"]
    assert len(plain) == 3 and len({round(x, 3) for x in plain}) == 3
    for name in ("plain_trained_loss", "hf_trainer", "tuneforge"):
        assert runs[name]["losses"] == pytest.approx(plain, rel=1e-4), name
        assert runs[name]["digests"] == plan_digests, name
        assert runs[name]["init_checksum"] == pytest.approx(runs["plain"]["init_checksum"], rel=1e-9)
    assert results["check"]["ok"]
    # tuneforge went through its real train path: a completed run directory with its own metrics
    run_dir = Path(runs["tuneforge"]["run_dir"])
    assert json.loads((run_dir / "status.json").read_text())["status"] == "completed"
    assert json.loads((run_dir / "metrics.json").read_text())["steps"] == 3
    assert (run_dir / "model" / "adapter_config.json").is_file()
    # per system numbers and the Markdown table are printed after the check
    assert stdout.index("check passed") < stdout.index("| system | real tokens/s |")
    for label in ("plain PyTorch+PEFT loop", "plain loop, loss on trained positions only", "HF Trainer", "tuneforge"):
        assert f"| {label} |" in stdout
    assert set(results["summary"]) == {"plain", "plain_trained_loss", "hf_trainer", "tuneforge"}
    assert all(entry["tokens_per_s"] > 0 and entry["peak_rss_mib"] > 50 for entry in results["summary"].values())


def test_smoke_run_prints_and_stores_the_shares_of_the_batches(smoke):
    stdout, results = smoke
    plan = results["plan"]
    shares = results["shares"]
    positions, real, trained = sum(plan["padded_tokens"]), sum(plan["tokens"]), sum(plan["trained_tokens"])
    assert shares["trained"] == pytest.approx(trained / positions)
    assert shares["trained_of_real"] == pytest.approx(trained / real)
    assert shares["padding"] == pytest.approx(1 - real / positions)
    assert 0 < shares["trained"] < shares["trained_of_real"] < 1 and 0 < shares["padding"] < 1
    line = next(line for line in stdout.splitlines() if line.startswith("shares of the fixed batches:"))
    assert f"trained positions {100 * shares['trained']:.1f}% of all positions" in line
    assert f"({100 * shares['trained_of_real']:.1f}% of real tokens)" in line
    assert f"padding {100 * shares['padding']:.1f}% of all positions" in line
    for entry in results["summary"].values():  # fixed-batch systems: the plan's shares, printed per system
        assert entry["shares"]["padding"] == pytest.approx(shares["padding"])
    assert "| of fp32 limit | of bf16 limit | padding |" in stdout
    assert f"padding {100 * shares['padding']:.1f}%, trained {100 * shares['trained']:.1f}%" in stdout


def test_smoke_run_prints_and_stores_the_share_of_the_cpu_limit(smoke, bench_run):
    stdout, results = smoke
    limit = results["cpu_limit"]
    assert limit["threads"] == 1 and limit["seconds"] < 10
    assert limit["body_linear_params"] > 0 and limit["head_params"] > 0 and limit["shapes"]
    for precision in ("fp32", "bf16"):
        assert limit[precision]["body_gflops"] > 0 and limit[precision]["head_gflops"] > 0
        assert f"  {precision}: body " in stdout
    assert "CPU limit for LoRA training (1 threads;" in stdout
    from cpu_limit import limit_tokens_per_s

    for entry in results["summary"].values():
        for precision in ("fp32", "bf16"):
            expected = entry["tokens_per_s"] / limit_tokens_per_s(limit, precision, entry["shares"]["trained_of_real"])
            assert entry["of_limit"][precision] == pytest.approx(expected)
        assert f"of fp32 limit {100 * entry['of_limit']['fp32']:.1f}%" in stdout


def test_check_names_the_first_step_whose_loss_differs(smoke, bench_run):
    _, results = smoke
    fixed = [dict(run) for run in results["runs"]]
    plan = results["plan"]
    assert bench_run.check_runs(fixed, [], plan, 3, 1e-4)
    last = [run["name"] for run in fixed].index("tuneforge")
    fixed[last] = dict(fixed[last], losses=list(fixed[last]["losses"]))
    fixed[last]["losses"][1] *= 1 + 1e-3
    with pytest.raises(bench_run.BenchmarkError, match=r"losses differ at step 2: plain .* vs tuneforge"):
        bench_run.check_runs(fixed, [], plan, 3, 1e-4)


def test_check_refuses_a_run_that_trained_on_other_batches(smoke, bench_run):
    _, results = smoke
    fixed = [dict(run) for run in results["runs"]]
    other = [run["name"] for run in fixed].index("hf_trainer")
    shuffled = fixed[other]["digests"][:]
    shuffled[1], shuffled[2] = shuffled[2], shuffled[1]  # the same batches in another order
    fixed[other] = dict(fixed[other], digests=shuffled)
    with pytest.raises(bench_run.BenchmarkError, match=r"hf_trainer .* another batch at step 2"):
        bench_run.check_runs(fixed, [], results["plan"], 3, 1e-4)
    fixed = [dict(run) for run in results["runs"]]
    fixed[0] = dict(fixed[0], init_checksum=[fixed[0]["init_checksum"][0], 0.5, 1.0])
    with pytest.raises(bench_run.BenchmarkError, match="other trainable weights"):
        bench_run.check_runs(fixed, [], results["plan"], 3, 1e-4)


def test_check_holds_a_variant_on_the_saved_batches_to_them_but_not_to_their_losses(smoke, bench_run):
    _, results = smoke
    fixed = [dict(run) for run in results["runs"]]
    tuneforge = next(run for run in fixed if run["name"] == "tuneforge")
    variant = dict(tuneforge, name="tuneforge-auto", variant="auto", rebatched=False,
                   losses=[x * 1.01 for x in tuneforge["losses"]])
    lines = bench_run.check_runs(fixed, [variant], results["plan"], 3, 1e-4)
    assert any(line.startswith("tuneforge-auto (repeat 0): the saved batches") and "not checked" in line
               for line in lines)
    variant["digests"] = list(reversed(variant["digests"]))
    with pytest.raises(bench_run.BenchmarkError, match=r"tuneforge-auto .* another batch at step 1"):
        bench_run.check_runs(fixed, [variant], results["plan"], 3, 1e-4)
    # a re-batching variant (packing) trains on batches of its own: not compared with the saved ones
    assert bench_run.check_runs(fixed, [dict(variant, rebatched=True)], results["plan"], 3, 1e-4)


def test_variants_are_names_mapped_to_overrides_and_rejected_ones_are_named(smoke, bench_run):
    _, results = smoke
    args = bench_run.parse_args(["--smoke", "--variants", "packing,auto", "--variant",
                                 "packing_32=loader.packing=true; trainer.precision=32-true"])
    assert args.variant_overrides == {"packing": ["loader.packing=true"], "auto": ["trainer.precision=auto"],
                                      "packing_32": ["loader.packing=true", "trainer.precision=32-true"]}
    assert bench_run.is_rebatching(args.variant_overrides["packing_32"])
    assert not bench_run.is_rebatching(args.variant_overrides["auto"])
    with pytest.raises(SystemExit):
        bench_run.parse_args(["--smoke", "--variant", "no_overrides="])
    # the smoke run's own overrides (its data file still exists): this tuneforge's answer to a variant
    base = results["spec"]["tuneforge"]["overrides"]
    assert "trainer.precision=32-true" in base, "fixed-batch tuneforge runs pin fp32 like the others"
    assert bench_run.variant_problem(base, ["loader.packing=true"]) is None
    assert "nope" in bench_run.variant_problem(base, ["loader.nope=true"])
    assert "trainer.precision" in bench_run.variant_problem(base, ["trainer.precision=fp8"])


def test_generated_records_take_their_lengths_from_the_recorded_alpaca_data(benchmarks_path):
    import random

    from data import filler, generate_records, recorded_lengths, shares

    lengths, source = recorded_lengths()
    assert len(lengths) > 500 and "alpaca" in source
    assert generate_records(20, seed=3) == generate_records(20, seed=3) != generate_records(20, seed=4)
    records = generate_records(200, seed=0)
    fields = {tuple(len(r.get(k, "").replace(".", " .").replace(",", " ,").split()) for k in
                    ("instruction", "input", "output")) for r in records}
    assert fields <= set(lengths), "each record has the three lengths of one recorded record"
    assert {len(filler(random.Random(0), n).replace(".", " .").replace(",", " ,").split()) for n in (1, 7, 300)} \
        == {1, 7, 300}
    capped = generate_records(50, seed=0, max_field_tokens=5)
    assert max(len(r["output"].replace(".", " .").replace(",", " ,").split()) for r in capped) <= 5
    assert shares([6, 4], [8, 8], [3, 1]) == pytest.approx(
        {"trained": 0.25, "trained_of_real": 0.4, "padding": 6 / 16, "real_tokens": 10, "positions": 16,
         "trained_positions": 4})


def test_first_loss_mismatch(bench_run):
    mismatch = bench_run.first_loss_mismatch
    assert mismatch([5.0, 4.0], [5.0001, 4.0], 1e-4) is None
    assert mismatch([5.0, 4.0], [5.0, 4.01], 1e-4) == (2, 4.0, 4.01)
    assert mismatch([5.0, 4.0], [5.0], 1e-4) == (2, 4.0, None)
    assert mismatch([float("nan")], [float("nan")], 1e-4) is not None


def test_a_users_own_data_file_is_read_in_any_format_the_default_loss_trains(benchmarks_path, tmp_path, bench_run):
    from data import read_records

    chat = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    sharegpt = {"conversations": [{"from": "human", "value": "a"}, {"from": "gpt", "value": "b"}]}
    completion = {"prompt": "2+2=", "completion": "4"}
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text("\n".join(json.dumps(r) for r in (chat, sharegpt, completion)) + "\n\n")
    records, formats = read_records(mixed)
    assert records == [chat, sharegpt, completion] and formats == {"chat": 2, "prompt_completion": 1}
    listed = tmp_path / "listed.json"  # LLaMA-Factory's files are JSON lists
    listed.write_text(json.dumps([sharegpt, sharegpt]))
    assert read_records(listed) == ([sharegpt, sharegpt], {"chat": 2})

    preference = tmp_path / "pairs.jsonl"
    preference.write_text(json.dumps(chat) + "\n" + json.dumps({"prompt": "p", "chosen": "a", "rejected": "b"}) + "\n")
    with pytest.raises(ValueError, match=r"pairs\.jsonl:2: a preference record; the benchmark trains with cross "
                                         r"entropy on alpaca, chat"):
        read_records(preference)
    unknown = tmp_path / "odd.jsonl"
    unknown.write_text(json.dumps({"question": "q", "answer": "a"}) + "\n")
    with pytest.raises(ValueError, match=r"odd\.jsonl:1: cannot tell the record's format"):
        read_records(unknown)

    args = bench_run.parse_args(["--smoke", "--data", str(mixed)])
    records, description, data_format = bench_run.load_records(args)
    assert len(records) == 3 and "(2 chat, 1 prompt_completion)" in description and data_format == "auto"
    args = bench_run.parse_args(["--smoke", "--data", str(listed)])
    assert bench_run.load_records(args)[2] == "chat"
    assert "data.format=chat" in bench_run.tuneforge_overrides(args, tmp_path, "chat")
    with pytest.raises(bench_run.BenchmarkError, match="no such file or folder"):
        bench_run.load_records(bench_run.parse_args(["--smoke", "--data", str(tmp_path / "missing.jsonl")]))


def test_records_without_an_example_at_max_length_are_left_out_and_text_records_are_refused(bench_run, tmp_path,
                                                                                            capsys):
    from data import build_plan, generate_records

    args = bench_run.parse_args(["--smoke", "--max-length", "256"])
    records = generate_records(8, seed=0, max_field_tokens=4)
    long_prompt = {"instruction": "word " * 400, "output": "short"}
    overrides = bench_run.tuneforge_overrides(args, tmp_path)
    plan, _ = build_plan(tmp_path, [long_prompt, *records], overrides, batch_size=4, steps=2, seed=0)
    assert plan["examples"] == 8 and plan["dropped_records"] == 1
    assert "1 of 9 records left out (no example at --max-length); 8 remain" in capsys.readouterr().out
    ordered = [json.loads(line) for line in (tmp_path / "ordered.jsonl").read_text().splitlines()]
    assert long_prompt not in ordered and len(ordered) == 8

    text = [{"text": f"plain text number {i}"} for i in range(4)]
    with pytest.raises(ValueError, match=r"record 1 is trained from its first token; .*plain text \('text' "
                                         r"records\) cannot be compared"):
        build_plan(tmp_path, text, bench_run.tuneforge_overrides(args, tmp_path, "completion"), batch_size=2,
                   steps=1, seed=0)
