"""The benchmark (benchmarks/run.py) in its smallest mode, and its equality checks.

The smoke run trains the tiny model for 3 steps with the plain PyTorch+PEFT loop, HF Trainer
and tuneforge (each in its own process) and must find the same loss at every step: with a
different batch at each step, that proves the three consumed the same batches in the same
order.  No timing is asserted.
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
def bench_run(monkeypatch):
    """benchmarks/run.py imported as a module (it puts its folder on sys.path: undone after the test)."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    spec = importlib.util.spec_from_file_location("benchmark_run", BENCHMARKS / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_smoke_run_plain_hf_trainer_and_tuneforge_get_the_same_losses(smoke):
    stdout, results = smoke
    runs = {run["name"]: run for run in results["runs"]}
    assert sorted(runs) == ["hf_trainer", "plain", "tuneforge"]
    plan_digests = results["plan"]["digests"][:3]
    assert len(set(plan_digests)) == 3, "the three steps must have three different batches"
    plain = runs["plain"]["losses"]
    assert len(plain) == 3 and len({round(x, 3) for x in plain}) == 3
    for name in ("hf_trainer", "tuneforge"):
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
    for label in ("plain PyTorch+PEFT loop", "HF Trainer", "tuneforge"):
        assert f"| {label} |" in stdout
    assert set(results["summary"]) == {"plain", "hf_trainer", "tuneforge"}
    assert all(entry["tokens_per_s"] > 0 and entry["peak_rss_mib"] > 50 for entry in results["summary"].values())


def test_check_names_the_first_step_whose_loss_differs(smoke, bench_run):
    _, results = smoke
    fixed = [dict(run) for run in results["runs"]]
    plan = results["plan"]
    assert bench_run.check_runs(fixed, [], plan, 3, 1e-4)
    fixed[2] = dict(fixed[2], losses=list(fixed[2]["losses"]))
    fixed[2]["losses"][1] *= 1 + 1e-3
    with pytest.raises(bench_run.BenchmarkError, match=r"losses differ at step 2: plain .* vs tuneforge"):
        bench_run.check_runs(fixed, [], plan, 3, 1e-4)


def test_check_refuses_a_run_that_trained_on_other_batches(smoke, bench_run):
    _, results = smoke
    fixed = [dict(run) for run in results["runs"]]
    shuffled = fixed[1]["digests"][:]
    shuffled[1], shuffled[2] = shuffled[2], shuffled[1]  # the same batches in another order
    fixed[1] = dict(fixed[1], digests=shuffled)
    with pytest.raises(bench_run.BenchmarkError, match=r"hf_trainer .* another batch at step 2"):
        bench_run.check_runs(fixed, [], results["plan"], 3, 1e-4)
    fixed = [dict(run) for run in results["runs"]]
    fixed[0] = dict(fixed[0], init_checksum=[fixed[0]["init_checksum"][0], 0.5, 1.0])
    with pytest.raises(bench_run.BenchmarkError, match="other trainable weights"):
        bench_run.check_runs(fixed, [], results["plan"], 3, 1e-4)


def test_first_loss_mismatch(bench_run):
    mismatch = bench_run.first_loss_mismatch
    assert mismatch([5.0, 4.0], [5.0001, 4.0], 1e-4) is None
    assert mismatch([5.0, 4.0], [5.0, 4.01], 1e-4) == (2, 4.0, 4.01)
    assert mismatch([5.0, 4.0], [5.0], 1e-4) == (2, 4.0, None)
    assert mismatch([float("nan")], [float("nan")], 1e-4) is not None
