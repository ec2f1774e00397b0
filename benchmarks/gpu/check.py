"""The GPU check: one command that proves tuneforge's GPU paths and measures them, within minutes.

    python benchmarks/gpu/check.py --out results/          # on a CUDA GPU (bash benchmarks/gpu/check.sh on the lent machine)
    python benchmarks/gpu/check.py --dry-run --out results/  # on any CPU: every step's CPU-sized equivalent
    python benchmarks/gpu/check.py --list                  # the steps, what each checks, what each needs

Every step either runs (``passed`` or ``failed``, with its numbers and, on failure, the output that
shows why) or is ``skipped`` with the reason (a package that is not installed, a GPU-only feature in a dry
run, the time budget).  A failing step does not stop the others.  ``results.json`` and ``summary.md`` are
rewritten after every step, so a run cut short still leaves what it did.

The steps (:data:`STEPS`) are in ``machine.py`` (versions, the GPU), ``models.py`` (the model folders),
``checks.py`` (in-process comparisons: packed against unpacked loss, the chunked losses against full
logits at a 128k vocabulary), ``runs.py`` (``tuneforge train`` runs on the model folders: bf16 LoRA,
QLoRA, resume after SIGKILL, the strategies) and ``speed.py`` (``benchmarks/run.py`` against HF Trainer).  ``--dry-run`` is what the default test suite
runs (``tests/test_gpu_check.py``), so the script cannot rot between GPU runs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Optional

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

import checks  # noqa: E402  (after the path set-up: the step modules sit beside this file)
import machine  # noqa: E402
import models  # noqa: E402
import runs  # noqa: E402
import speed  # noqa: E402
from outcome import Failed, Skipped  # noqa: E402

#: the default time budget of a GPU run: the lent machine gives 15 minutes in all, start-up included
GPU_BUDGET_S = 480


@dataclass
class Step:
    """One step: ``run(context)`` returns its result dict (``details``, ``measurements``, ``targets``) or
    raises :class:`Skipped`/:class:`Failed`; ``needs``: steps that must have passed first; ``seconds``:
    its expected duration per mode, for the budget."""

    name: str
    title: str
    run: Callable
    needs: tuple = ()
    seconds: dict = field(default_factory=lambda: {"gpu": 30, "cpu": 10})


STEPS = [
    Step("environment", "versions, the GPU, its bf16 support", machine.environment, seconds={"gpu": 5, "cpu": 2}),
    Step("models", "SmolLM2-135M and Llama-3.2-1B architectures with random weights, saved as model folders",
         models.build_models, seconds={"gpu": 25, "cpu": 5}),
    Step("lora_bf16_smollm2", "bf16 LoRA on the SmolLM2 architecture through `tuneforge train`, with evaluation",
         runs.lora_smollm2, needs=("models",), seconds={"gpu": 40, "cpu": 15}),
    Step("packing_sdpa", "packed loss equals unpacked loss (SDPA, bf16 and fp32)", checks.packing_sdpa,
         needs=("models",), seconds={"gpu": 15, "cpu": 5}),
    Step("packing_flash_attention_2", "packed loss equals unpacked loss (FlashAttention-2 varlen, bf16)",
         checks.packing_flash_attention, needs=("models",), seconds={"gpu": 15, "cpu": 1}),
    Step("chunked_loss_128k", "cross_entropy and chunked_cross_entropy against full logits at a 128k vocabulary",
         checks.chunked_loss, seconds={"gpu": 15, "cpu": 8}),
    Step("speed_1b_sdpa", "Llama-1B architecture, max length 2048: tuneforge (unpacked, packed) vs HF Trainer, "
         "tokens/s, MFU, peak memory vs plan", speed.speed_sdpa, needs=("models",), seconds={"gpu": 110, "cpu": 45}),
    Step("qlora_nf4", "QLoRA: LoRA over an NF4 base (bitsandbytes)", runs.qlora, needs=("models",),
         seconds={"gpu": 40, "cpu": 15}),
    Step("resume_sigkill", "SIGKILL after a checkpoint, resume: equals the uninterrupted run", runs.resume_after_sigkill,
         needs=("models",), seconds={"gpu": 80, "cpu": 30}),
    Step("strategy_ddp", "strategy=ddp, one process", runs.strategy_ddp, needs=("models",),
         seconds={"gpu": 30, "cpu": 10}),
    Step("strategy_fsdp", "strategy=fsdp (FSDP2), one process", runs.strategy_fsdp, needs=("models",),
         seconds={"gpu": 30, "cpu": 10}),
    Step("strategy_deepspeed_stage_2", "strategy=deepspeed_stage_2, one process", runs.strategy_deepspeed,
         needs=("models",), seconds={"gpu": 45, "cpu": 1}),
    Step("lora_bf16_llama_1b", "bf16 LoRA on the Llama-1B architecture at length 2048; peak memory vs plan",
         runs.lora_llama_1b, needs=("models",), seconds={"gpu": 40, "cpu": 10}),
    Step("speed_1b_flash_attention_2", "as speed_1b_sdpa with FlashAttention-2", speed.speed_flash_attention,
         needs=("models",), seconds={"gpu": 90, "cpu": 1}),
]


@dataclass
class Context:
    """What every step gets: ``mode`` (``gpu`` or ``cpu``), ``device`` (``cuda`` or ``cpu``), the scratch
    folder ``work``, the results folder ``out``, SmolLM2's ``tokenizer`` folder (or None: the byte-level one),
    the results of the steps so far (``results``) and the model folders and files built (``folders``)."""

    mode: str
    device: str
    work: Path
    out: Path
    deadline: float
    tokenizer: Optional[Path] = None
    results: dict = field(default_factory=dict)
    folders: dict = field(default_factory=dict)

    @property
    def dry_run(self) -> bool:
        return self.mode == "cpu"

    def seconds_left(self) -> float:
        return self.deadline - time.monotonic()


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="benchmarks/gpu/check.py", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="run every step's CPU-sized equivalent (no GPU needed)")
    parser.add_argument("--out", default="gpu-check-results", help="results folder (results.json, summary.md)")
    parser.add_argument("--work", default=None, help="scratch folder for models and runs (default: <out>/work)")
    parser.add_argument("--budget", type=float, default=None,
                        help=f"seconds for all steps; a step that would not fit is skipped (default: {GPU_BUDGET_S} "
                             "on a GPU, unlimited in a dry run)")
    parser.add_argument("--steps", default=None, help="comma-separated step names to run (default: all)")
    parser.add_argument("--tokenizer", default=None,
                        help="a folder with SmolLM2's tokenizer files, so the generated records have their real token "
                             "lengths (check.sh passes the one fetch-wheels.sh copied; default: tuneforge's byte-level "
                             "tokenizer, with the records' fields capped)")
    parser.add_argument("--list", action="store_true", help="print the steps and exit")
    args = parser.parse_args(argv)
    if args.steps:
        unknown = [name for name in args.steps.split(",") if name not in {step.name for step in STEPS}]
        if unknown:
            parser.error(f"--steps: unknown {unknown}; valid: {','.join(step.name for step in STEPS)}")
    return args


def run_step(step: Step, context: Context, selected) -> dict:
    """The result of one step: ``status`` passed/failed/skipped, ``reason`` for the last two, ``seconds``."""
    result = {"name": step.name, "title": step.title}
    if selected is not None and step.name not in selected:
        return {**result, "status": "skipped", "reason": "not selected (--steps)"}
    for need in step.needs:
        status = context.results.get(need, {}).get("status", "not run")
        if status != "passed":
            return {**result, "status": "skipped", "reason": f"needs step {need}, which {status}"}
    expected = step.seconds[context.mode]
    if context.seconds_left() < expected:
        return {**result, "status": "skipped",
                "reason": f"time budget: {max(context.seconds_left(), 0):.0f} s left, the step takes about {expected} s"}
    started = time.monotonic()
    try:
        result.update(step.run(context) or {})
        result["status"] = "passed"
    except Skipped as skip:
        result.update(status="skipped", reason=str(skip))
    except Failed as failure:
        result.update(status="failed", reason=str(failure), **failure.extra)
    except Exception as exc:  # a step's own bug or a library error: recorded, the other steps still run
        result.update(status="failed", reason=f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
                      traceback=traceback.format_exc()[-4000:])
    result["seconds"] = round(time.monotonic() - started, 1)
    return result


def write_results(context: Context, header: dict, steps: list) -> None:
    results = {**header, "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "steps": steps}
    (context.out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    (context.out / "summary.md").write_text(summary_markdown(results))


def summary_markdown(results: dict) -> str:
    """The Markdown summary: one line per step, then the speed tables and the targets."""
    environment = next((s for s in results["steps"] if s["name"] == "environment"), {}).get("details", {})
    device = environment.get("device_name", "?")
    lines = [f"# GPU check: {device}, {results['started_at'][:10]}", "",
             f"Mode: {'dry run (CPU-sized steps)' if results['dry_run'] else 'GPU'}; "
             f"{', '.join(f'{k} {v}' for k, v in environment.get('versions', {}).items())}", "",
             "| step | status | seconds | result |", "| --- | --- | ---: | --- |"]
    for step in results["steps"]:
        text = step.get("summary") or step.get("reason") or ""
        lines.append(f"| `{step['name']}` | {step['status']} | {step.get('seconds', '-')} | "
                     f"{text.replace('|', '/').replace(chr(10), ' ')} |")
    targets = [(step["name"], target) for step in results["steps"] for target in step.get("targets", [])]
    if targets:
        lines += ["", "## Targets", "", "| step | target | measured | met |", "| --- | --- | --- | --- |"]
        for name, target in targets:
            lines.append(f"| `{name}` | {target['target']} | {target['measured']} | "
                         f"{'yes' if target['met'] else 'NO'} |")
    for step in results["steps"]:
        if step.get("markdown"):
            lines += ["", f"## {step['name']}", "", step["markdown"]]
    failed = [step for step in results["steps"] if step["status"] == "failed"]
    for step in failed:
        lines += ["", f"## Failed: {step['name']}", "", "```", (step.get("output") or step.get("traceback")
                                                                or step.get("reason", ""))[-3000:], "```"]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.list:
        for step in STEPS:
            needs = f" (needs {', '.join(step.needs)})" if step.needs else ""
            print(f"{step.name:<28} ~{step.seconds['gpu']:>3} s on a GPU  {step.title}{needs}")
        return 0
    import torch

    if not args.dry_run and not torch.cuda.is_available():
        print("benchmarks/gpu/check.py: error: no CUDA GPU here (torch.cuda.is_available() is False); "
              "--dry-run runs the CPU-sized steps", file=sys.stderr)
        return 2
    mode = "cpu" if args.dry_run else "gpu"
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.work).resolve() if args.work else out / "work"
    work.mkdir(parents=True, exist_ok=True)
    budget = args.budget if args.budget is not None else (float("inf") if args.dry_run else GPU_BUDGET_S)
    context = Context(mode=mode, device="cpu" if args.dry_run else "cuda", work=work, out=out,
                      deadline=time.monotonic() + budget, tokenizer=Path(args.tokenizer) if args.tokenizer else None)
    header = {"dry_run": args.dry_run, "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "budget_s": None if budget == float("inf") else budget, "host": platform.node(),
              "command": " ".join([sys.executable, *sys.argv])}
    selected = set(args.steps.split(",")) if args.steps else None
    steps = []
    for step in STEPS:
        print(f"[gpu-check] {step.name} ...", flush=True)
        result = run_step(step, context, selected)
        context.results[step.name] = result
        steps.append(result)
        print(f"[gpu-check] {step.name}: {result['status']} ({result.get('seconds', 0)} s) "
              f"{result.get('summary') or result.get('reason') or ''}", flush=True)
        write_results(context, header, steps)
    counts = {status: sum(1 for s in steps if s["status"] == status) for status in ("passed", "failed", "skipped")}
    print(f"[gpu-check] {counts['passed']} passed, {counts['failed']} failed, {counts['skipped']} skipped; "
          f"{out / 'summary.md'}")
    return 1 if counts["failed"] else 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
