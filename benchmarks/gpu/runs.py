"""The GPU check's steps that run tuneforge as users do: ``python -m tuneforge train`` processes on the model
folders of ``models.py`` (bf16 LoRA, QLoRA, resume after SIGKILL, the strategies).

Each step returns its result (``summary``, ``details``, ``targets``, ``markdown``) or raises
:class:`outcome.Failed` (with the tail of the run's log as ``output``) or :class:`outcome.Skipped`.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from common import plan_mib
from outcome import Failed, Skipped, needs_cuda_and, relative_difference, require
from run import child_env as benchmark_env
from tuneforge_run import metric_losses

HERE = Path(__file__).resolve().parent
BENCHMARKS = HERE.parent
#: a step's ``tuneforge train`` process is stopped after this many seconds
TRAIN_TIMEOUT_S = {"gpu": 180, "cpu": 300}
#: how far past the budget a running process may go before it is stopped
BUDGET_GRACE_S = 20
#: run sizes per mode: steps, batch and the length of the Llama-1B runs (4 rows of 2048 on a GPU: tuneforge plan
#: puts 8 x 2048 packed at 81 GiB, more than an H100's 80, and 4 x 2048 at 43)
SIZES = {"gpu": dict(steps=12, batch=8, checkpoint_every=4, kill_after=8, long_length=2048, long_batch=4,
                     long_steps=8, speed_steps=96, speed_warmup=4, speed_records=800, threads=8),
         "cpu": dict(steps=6, batch=4, checkpoint_every=2, kill_after=4, long_length=256, long_batch=4,
                     long_steps=3, speed_steps=8, speed_warmup=2, speed_records=48, threads=None)}
#: issue 28's target: a run's peak GPU memory within this share of tuneforge plan's estimate
PLAN_TOLERANCE = 0.20


def threads(context) -> int:
    """CPU threads of each process a step starts: the mode's (``SIZES``), or in the dry run this process's own
    (``OMP_NUM_THREADS``: where the suite shares the cores between workers, a child must not take more)."""
    import torch

    return SIZES[context.mode]["threads"] or torch.get_num_threads()


def timeout(context, runs: int = 1) -> float:
    """Seconds a step's process may take: :data:`TRAIN_TIMEOUT_S` per ``runs``, but not past the check's budget
    (plus :data:`BUDGET_GRACE_S`), so that the whole check ends near its budget even when a process hangs."""
    return max(min(TRAIN_TIMEOUT_S[context.mode] * runs, context.seconds_left() + BUDGET_GRACE_S), 1.0)


def timeout_reason(context, runs: int = 1) -> str:
    if timeout(context, runs) < TRAIN_TIMEOUT_S[context.mode] * runs:
        return "the check's time budget ran out while it ran"
    return f"no result within the {TRAIN_TIMEOUT_S[context.mode] * runs} s a run is given: a hang, or far too slow"


def sample_data() -> Path:
    import tuneforge.plugins

    return Path(tuneforge.plugins.__file__).parent / "data" / "sample.jsonl"


# ---------------------------------------------------------------------------
# tuneforge train processes
# ---------------------------------------------------------------------------


def train_overrides(context, model: str, *, steps=None, batch=None, precision="bf16-mixed", extra=()) -> list:
    """A LoRA run on one of the model folders, evaluation off, on the check's device."""
    sizes = SIZES[context.mode]
    return ["model=hf", f"model.path={context.folders[model]}", "data=jsonl", f"data.path={sample_data()}",
            "data.max_length=512", "adapter=lora", "adapter.r=16", "adapter.lora_alpha=32",
            "adapter.target_modules=all-linear", "optim.lr=1e-3", f"loader.batch_size={batch or sizes['batch']}",
            f"trainer.max_steps={steps or sizes['steps']}", f"trainer.precision={precision}",
            f"trainer.accelerator={'gpu' if context.device == 'cuda' else 'cpu'}", "trainer.devices=1",
            "trainer.enable_progress_bar=false", "trainer.log_every_n_steps=1", "evaluators=[]", "baselines=[]",
            "checkpoint.every_n_steps=0", "resume=never", f"threads={threads(context)}", *extra]


def run_overrides(context) -> dict:
    """Every ``tuneforge train`` run of the check, by name, as its overrides (``tests/test_gpu_check.py``
    validates the GPU ones on the CPU: a mistyped key in a GPU-only branch would otherwise wait for a GPU)."""
    sizes = SIZES[context.mode]
    cuda = context.device == "cuda"
    resume = train_overrides(context, "smollm2", extra=(
        f"checkpoint.every_n_steps={sizes['checkpoint_every']}", "checkpoint.keep_last=2",
        "trainer.deterministic=true", "adapter.lora_dropout=0.1", "resume=auto"))
    return {
        "lora-smollm2": train_overrides(context, "smollm2", extra=(
            "evaluators=[perplexity,exact_match]", "evaluators.exact_match.max_new_tokens=16", "data.val_size=8")),
        "lora-llama-1b": train_overrides(context, "llama_1b", steps=sizes["long_steps"], batch=sizes["long_batch"],
                                         extra=(f"data.path={context.folders['records']}",
                                                f"data.max_length={sizes['long_length']}", "data.val_size=0",
                                                "model.dtype=bfloat16", "model.attn_implementation=sdpa")),
        # on the CPU bitsandbytes' 4-bit layers compute in float32 (docs/quantization.md); on a GPU in bfloat16
        "qlora": train_overrides(context, "smollm2", precision="bf16-mixed" if cuda else "32-true",
                                 extra=("adapter=qlora", *(("model.compute_dtype=bfloat16",) if cuda else ()))),
        "resume": [o for o in resume if o not in ("checkpoint.every_n_steps=0", "resume=never")],
        **{f"strategy-{strategy}": train_overrides(context, "smollm2", extra=(f"strategy={strategy}",))
           for strategy in ("ddp", "fsdp", "deepspeed_stage_2")},
    }


def child_env(context) -> dict:
    """The environment of a process a step starts: the benchmark's (:func:`run.child_env`: offline, the
    step's threads) with unbuffered output, so a killed run's log still ends where it stopped."""
    return dict(benchmark_env(threads(context)), PYTHONUNBUFFERED="1")


def log_tail(path: Path, lines: int = 40) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.is_file() else ""


class TrainRun:
    """One ``python -m tuneforge train`` process: its run directory and log, started and waited for."""

    def __init__(self, context, name: str, overrides: list, fresh: bool = True):
        self.context, self.name = context, name
        self.run_dir = context.work / "runs" / name
        self.log = context.work / "logs" / f"{name}.log"
        self.log.parent.mkdir(parents=True, exist_ok=True)
        if fresh and self.run_dir.exists():
            shutil.rmtree(self.run_dir)
        self.command = [sys.executable, "-m", "tuneforge", "train", *overrides, f"hydra.run.dir={self.run_dir}"]

    def start(self, attempt: str = "") -> subprocess.Popen:
        handle = open(self.log, "a")
        handle.write(f"$ {' '.join(self.command)}{'  # ' + attempt if attempt else ''}\n")
        handle.flush()
        # a session of its own: a SIGKILL reaches the whole process group (data-loader workers too)
        return subprocess.Popen(self.command, stdout=handle, stderr=subprocess.STDOUT, env=child_env(self.context),
                                cwd=str(BENCHMARKS.parent), start_new_session=True)

    def wait(self, process: subprocess.Popen) -> int:
        try:
            return process.wait(timeout=timeout(self.context))
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            raise Failed(f"{self.name}: stopped after {timeout(self.context):.0f} s ({timeout_reason(self.context)})",
                         output=log_tail(self.log)) from None

    def run(self, attempt: str = "") -> "TrainRun":
        """Start, wait, and require a completed run (exit 0, ``status.json`` completed)."""
        code = self.wait(self.start(attempt))
        status = self.status()
        require(code == 0 and status.get("status") == "completed",
                f"{self.name}: tuneforge train exited {code}, status {status.get('status')!r}"
                + (f": {status.get('error')}" if status.get("error") else ""), output=log_tail(self.log))
        return self

    def status(self) -> dict:
        path = self.run_dir / "status.json"
        return json.loads(path.read_text()) if path.is_file() else {}

    def metrics(self) -> dict:
        return json.loads((self.run_dir / "metrics.json").read_text())

    def losses(self) -> list:
        return metric_losses(self.run_dir)

    def gpu_peak_mib(self):
        peak = self.metrics().get("memory", {}).get("gpu_peak_bytes")
        return peak / 2 ** 20 if peak else None


def trained(run: TrainRun, steps: int) -> dict:
    """Require ``steps`` finite losses whose last three average below the first three; the run's numbers."""
    losses = run.losses()
    require(len(losses) == steps and all(math.isfinite(x) for x in losses),
            f"{run.name}: expected {steps} finite training losses, got {losses}", output=log_tail(run.log))
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    require(last < first, f"{run.name}: the loss did not fall ({first:.4f} over the first 3 steps, {last:.4f} over "
                          "the last 3)", details={"losses": losses})
    metrics = run.metrics()
    precision = metrics.get("precision", {})
    return {"losses": losses, "precision": precision.get("chosen") if isinstance(precision, dict) else precision,
            "gpu_peak_mib": run.gpu_peak_mib(), "throughput": metrics.get("throughput")}


def plan_target(peak, estimate) -> dict:
    within = abs(peak / estimate - 1) if peak and estimate else None
    return {"target": f"peak GPU memory within {PLAN_TOLERANCE:.0%} of tuneforge plan",
            "measured": f"{peak:.0f} MiB vs {estimate:.0f} MiB planned" if within is not None else "-",
            "met": within is not None and within <= PLAN_TOLERANCE}


def lora_smollm2(context) -> dict:
    """bf16 LoRA with evaluation (perplexity, exact match with generation) on the SmolLM2 architecture."""
    steps = SIZES[context.mode]["steps"]
    run = TrainRun(context, "lora-smollm2", run_overrides(context)["lora-smollm2"]).run()
    details = trained(run, steps)
    metrics = run.metrics()
    require(details["precision"] == "bf16-mixed", f"the run trained in {details['precision']}, not bf16-mixed",
            details=details)
    require("tuned" in metrics and "base" in metrics, "metrics.json has no base/tuned evaluation",
            details={"keys": sorted(metrics)})
    peak = f", peak GPU {details['gpu_peak_mib']:.0f} MiB" if details["gpu_peak_mib"] else ""
    return {"summary": f"{steps} steps, loss {details['losses'][0]:.3f} -> {details['losses'][-1]:.3f}, "
                       f"evaluated base and tuned{peak}", "details": details}


def lora_llama_1b(context) -> dict:
    sizes = SIZES[context.mode]
    overrides = run_overrides(context)["lora-llama-1b"]
    estimate, problem = plan_mib(overrides)
    run = TrainRun(context, "lora-llama-1b", overrides).run()
    losses = run.losses()
    require(len(losses) == sizes["long_steps"] and all(math.isfinite(x) for x in losses),
            f"expected {sizes['long_steps']} finite losses, got {losses}", output=log_tail(run.log))
    peak = run.gpu_peak_mib()
    details = {"losses": losses, "gpu_peak_mib": peak, "plan_mib": estimate, "plan_problem": problem,
               "throughput": run.metrics().get("throughput")}
    result = {"summary": f"{len(losses)} steps at max length {sizes['long_length']}, loss {losses[0]:.3f} -> "
                         f"{losses[-1]:.3f}" + (f", peak GPU {peak:.0f} MiB" if peak else "")
                         + (f", plan {estimate:.0f} MiB" if estimate else f", no plan ({problem})"),
              "details": details}
    if context.device == "cuda":
        result["targets"] = [plan_target(peak, estimate)]
    return result


def qlora(context) -> dict:
    if importlib.util.find_spec("bitsandbytes") is None:
        raise Skipped("bitsandbytes is not installed (pip install 'tuneforge[quantization]'; check.sh carries its wheel)")
    steps = SIZES[context.mode]["steps"]
    run = TrainRun(context, "qlora", run_overrides(context)["qlora"]).run()
    details = trained(run, steps)
    setup = run.metrics().get("setup", {})
    details["setup"] = setup
    return {"summary": f"NF4 base, {steps} steps, loss {details['losses'][0]:.3f} -> {details['losses'][-1]:.3f}"
                       + (f", peak GPU {details['gpu_peak_mib']:.0f} MiB" if details["gpu_peak_mib"] else ""),
            "details": details}


def resume_after_sigkill(context) -> dict:
    """An uninterrupted run, and the same run SIGKILLed once its second checkpoint is complete, then resumed
    with the same command: equal losses at every step and equal adapter weights."""
    import torch
    from safetensors.torch import load_file

    sizes = SIZES[context.mode]
    overrides = run_overrides(context)["resume"]
    reference = TrainRun(context, "resume-reference", overrides).run()
    crashed = TrainRun(context, "resume-crashed", overrides)
    complete = crashed.run_dir / "checkpoints" / f"step-{sizes['kill_after']:08d}" / "COMPLETE"
    process = crashed.start("killed once the checkpoint is complete")
    deadline = time.monotonic() + timeout(context)
    while not complete.is_file() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    require(process.poll() is None, f"the run ended (exit {process.returncode}) before its step-{sizes['kill_after']} "
                                    "checkpoint could be killed", output=log_tail(crashed.log))
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    status = crashed.status().get("status")
    require(status == "running", f"after SIGKILL status.json says {status!r}, expected 'running'")
    crashed = TrainRun(context, "resume-crashed", overrides, fresh=False).run("the resume")
    resumed_from = crashed.status().get("resumed_from") or ""
    expected_losses, losses = reference.losses(), crashed.losses()
    a = load_file(str(reference.run_dir / "model" / "adapter_model.safetensors"))
    b = load_file(str(crashed.run_dir / "model" / "adapter_model.safetensors"))
    largest = max(float((a[key].float() - b[key].float()).abs().max()) for key in a) if a.keys() == b.keys() else None
    loss_difference = max((relative_difference(x, y) for x, y in zip(expected_losses, losses)), default=0.0)
    details = {"killed_after_step": sizes["kill_after"], "resumed_from": resumed_from, "losses": losses,
               "reference_losses": expected_losses, "largest_weight_difference": largest,
               "largest_loss_relative_difference": loss_difference}
    require(resumed_from.endswith(f"step-{sizes['kill_after']:08d}"),
            f"resumed from {resumed_from!r}, expected the step-{sizes['kill_after']} checkpoint", details=details)
    require(len(losses) == len(expected_losses) and loss_difference <= 1e-5,
            f"the resumed run's losses differ from the uninterrupted run's by up to {loss_difference:.2e} (relative)",
            details=details)
    require(largest is not None and largest <= 1e-5 and all(torch.isfinite(t).all() for t in b.values()),
            f"the adapter weights differ by up to {largest} from the uninterrupted run's", details=details)
    return {"summary": f"killed after the step-{sizes['kill_after']} checkpoint, resumed from it: {len(losses)} losses "
                       f"equal within {loss_difference:.1e}, adapter weights within {largest:.1e}",
            "details": details}


def strategy_run(context, strategy: str) -> dict:
    steps = SIZES[context.mode]["steps"]
    run = TrainRun(context, f"strategy-{strategy}", run_overrides(context)[f"strategy-{strategy}"]).run()
    details = trained(run, steps)
    return {"summary": f"strategy={strategy}, 1 process: {steps} steps, loss {details['losses'][0]:.3f} -> "
                       f"{details['losses'][-1]:.3f}", "details": details}


def strategy_ddp(context) -> dict:
    return strategy_run(context, "ddp")


def strategy_fsdp(context) -> dict:
    return strategy_run(context, "fsdp")


def strategy_deepspeed(context) -> dict:
    needs_cuda_and(context, "deepspeed_stage_2", "deepspeed", "deepspeed is not installed (pip install "
                   "'tuneforge[deepspeed]'; check.sh installs the wheel benchmarks/gpu/prepare.sh built)")
    return strategy_run(context, "deepspeed_stage_2")


