"""The GPU check (benchmarks/gpu/check.py) cannot rot between GPU runs: its dry run runs every step's
CPU-sized equivalent here, and each step either passes or names why it was skipped."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GPU = ROOT / "benchmarks" / "gpu"
#: the steps whose GPU-only feature a CPU cannot run; every other step must run in the dry run
GPU_ONLY = {"packing_flash_attention_2", "strategy_deepspeed_stage_2", "speed_1b_flash_attention_2"}


@pytest.fixture
def check_module(monkeypatch):
    """benchmarks/gpu/check.py imported (with its sibling modules), forgotten afterwards."""
    monkeypatch.setattr(sys, "path", [str(GPU), str(GPU.parent), *sys.path])
    before = set(sys.modules)
    import check

    yield check
    for name in set(sys.modules) - before:
        del sys.modules[name]


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu-check")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("TUNEFORGE_COMMAND", None)
    completed = subprocess.run([sys.executable, str(GPU / "check.py"), "--dry-run", "--out", str(out)],
                               capture_output=True, text=True, env=env, timeout=900, cwd=str(ROOT))
    results = json.loads((out / "results.json").read_text()) if (out / "results.json").is_file() else None
    return completed, results, out


@pytest.mark.slow  # the dry run takes ~2.5 minutes: CI's slow step runs it
def test_the_dry_run_runs_every_step_or_names_why_not(dry_run, check_module):
    completed, results, out = dry_run
    assert results is not None, completed.stdout[-3000:] + completed.stderr[-3000:]
    steps = {step["name"]: step for step in results["steps"]}
    assert list(steps) == [step.name for step in check_module.STEPS]
    failed = {name: step.get("output") or step.get("traceback") or step["reason"]
              for name, step in steps.items() if step["status"] == "failed"}
    assert not failed, failed
    assert completed.returncode == 0, completed.stderr[-3000:]
    for name, step in steps.items():
        if name in GPU_ONLY:
            assert step["status"] == "skipped" and "CUDA" in step["reason"], step
        else:
            assert step["status"] == "passed", step
            assert step["summary"], step
    summary = (out / "summary.md").read_text()
    assert all(f"`{name}`" in summary for name in steps)


@pytest.mark.slow
def test_the_dry_run_measured_what_the_gpu_run_reports(dry_run):
    _, results, _ = dry_run
    steps = {step["name"]: step for step in results["steps"]}
    speed = steps["speed_1b_sdpa"]["details"]["rows"]
    assert set(speed) == {"hf_trainer", "tuneforge", "tuneforge-packing"}
    assert all(row["tokens_per_s"] > 0 and row["mfu"]["measured"] > 0 and row["plan_mib"] > 0
               for row in speed.values())
    assert "| HF Trainer |" in steps["speed_1b_sdpa"]["markdown"]
    resume = steps["resume_sigkill"]["details"]
    assert resume["resumed_from"].endswith("step-00000004") and resume["largest_weight_difference"] <= 1e-5
    packing = steps["packing_sdpa"]["details"]
    assert packing["packed_rows"] < packing["examples"] and packing["fp32"]["relative_difference"] <= 1e-4
    chunked = steps["chunked_loss_128k"]["details"]
    assert chunked["vocabulary"] == 128256 and chunked["fp32"]["cross_entropy"]["gradient_relative_error"] < 1e-4
    assert steps["lora_bf16_smollm2"]["details"]["precision"] == "bf16-mixed"


def test_a_step_that_fails_or_breaks_is_recorded_and_the_others_still_run(check_module, tmp_path):
    from outcome import Failed

    def fails(context):
        raise Failed("the packed loss is 2.0, the unpacked 1.0", output="log line")

    def breaks(context):
        raise KeyError("missing")

    context = check_module.Context(mode="cpu", device="cpu", work=tmp_path, out=tmp_path, deadline=float("inf"))
    first = check_module.run_step(check_module.Step("a", "a", fails), context, None)
    second = check_module.run_step(check_module.Step("b", "b", breaks), context, None)
    assert first["status"] == "failed" and first["output"] == "log line" and "2.0" in first["reason"]
    assert second["status"] == "failed" and "KeyError" in second["reason"] and "Traceback" in second["traceback"]
    context.results["a"] = first
    third = check_module.run_step(check_module.Step("c", "c", lambda c: {}, needs=("a",)), context, None)
    assert third == {"name": "c", "title": "c", "status": "skipped", "reason": "needs step a, which failed"}
    markdown = check_module.summary_markdown({"dry_run": True, "started_at": "2026-12-06T00:00:00",
                                              "steps": [first, second, third]})
    assert "## Failed: a" in markdown and "log line" in markdown and "Traceback" in markdown


def test_a_step_that_would_not_fit_the_budget_is_skipped_with_the_time_left(check_module, tmp_path):
    import time

    context = check_module.Context(mode="gpu", device="cuda", work=tmp_path, out=tmp_path,
                                   deadline=time.monotonic() + 20)
    step = check_module.Step("slow", "slow", lambda c: pytest.fail("must not run"), seconds={"gpu": 60, "cpu": 1})
    result = check_module.run_step(step, context, None)
    assert result["status"] == "skipped" and result["reason"].startswith("time budget:")


def test_published_peaks_and_mfu(check_module):
    from gpu_limit import mfu, published_peak

    assert published_peak("NVIDIA H100 80GB HBM3") == ("H100", 989.4e12)
    assert published_peak("NVIDIA H100 PCIe") == ("H100 PCIe", 756e12)
    assert published_peak("NVIDIA H200") == ("H200", 989.4e12)
    assert published_peak("Some future GPU") is None
    limit = {"body_linear_params": 1e9, "head_params": 2e8, "layers": 16, "attention_width": 2048,
             "mean_context": 100.0, "published_peak": 1e15, "measured_peak": 8e14}
    # 4 x (1e9 + 0.5 x 2e8) + 6 x 16 x 2048 x 100 = 4.4e9 + 1.966e7 FLOPs per real token
    shares = mfu(limit, 100_000, 0.5)
    assert shares["published"] == pytest.approx(100_000 * (4.4e9 + 6 * 16 * 2048 * 100) / 1e15)
    assert shares["measured"] == pytest.approx(shares["published"] * 1e15 / 8e14)
    assert shares["six_n"] == pytest.approx(100_000 * 6 * 1.2e9 / 1e15)


def test_without_a_gpu_the_check_says_to_use_the_dry_run(tmp_path):
    pytest.importorskip("torch")
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    completed = subprocess.run([sys.executable, str(GPU / "check.py"), "--out", str(tmp_path)], capture_output=True,
                               text=True, timeout=120)
    assert completed.returncode == 2
    assert "no CUDA GPU here" in completed.stderr and "--dry-run" in completed.stderr


def test_the_device_scripts_are_valid_bash():
    for script in ("check.sh", "prepare.sh"):
        assert subprocess.run(["bash", "-n", str(GPU / script)]).returncode == 0, script


def test_a_hanging_run_is_killed_at_the_budget(check_module, tmp_path, monkeypatch):
    """A `tuneforge train` process that hangs (here: `sleep`) is killed once the check's budget (plus its grace)
    is spent, with its whole process group, and the step fails saying so."""
    import time

    import runs
    from outcome import Failed

    monkeypatch.setattr(runs, "BUDGET_GRACE_S", 1)
    context = check_module.Context(mode="gpu", device="cuda", work=tmp_path, out=tmp_path,
                                   deadline=time.monotonic() + 1)
    run = runs.TrainRun(context, "hangs", [])
    run.command = ["bash", "-c", "sleep 60 & sleep 60"]
    started = time.monotonic()
    with pytest.raises(Failed, match="budget ran out"):
        run.wait(run.start())
    assert time.monotonic() - started < 20
    assert runs.timeout(check_module.Context(mode="gpu", device="cuda", work=tmp_path, out=tmp_path,
                                             deadline=float("inf"))) == runs.TRAIN_TIMEOUT_S["gpu"]


def test_every_gpu_run_of_the_check_composes_and_validates(check_module, tmp_path):
    """The overrides of the GPU-only branches (accelerator=gpu, QLoRA's bfloat16 compute, the DeepSpeed preset)
    are composed and validated here, so a mistyped key does not wait for a GPU to show.  The model folders
    and records are the dry run's (its ``models`` step, CPU-sized: seconds, not the whole dry run)."""
    import models
    import runs
    from tuneforge.host.components import validate
    from tuneforge.host.compose import compose, load_plugins

    built = check_module.Context(mode="cpu", device="cpu", work=tmp_path, out=tmp_path, deadline=float("inf"))
    models.build_models(built)
    context = check_module.Context(mode="gpu", device="cuda", work=tmp_path, out=tmp_path, deadline=float("inf"))
    context.folders = dict(built.folders)
    overrides = runs.run_overrides(context)
    assert {"lora-smollm2", "lora-llama-1b", "qlora", "resume", "strategy-deepspeed_stage_2"} <= set(overrides)
    for name, run in overrides.items():
        assert "trainer.accelerator=gpu" in run and "trainer.precision=bf16-mixed" in run, name
        plugins = load_plugins(run)
        assert validate(compose(run), plugins) == [], name
