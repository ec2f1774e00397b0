"""Benchmark: tuneforge against a plain PyTorch + PEFT loop, HF ``Trainer`` and TRL ``SFTTrainer``.

    .venv/bin/python benchmarks/run.py --smoke                 # tiny model, 3 steps: a correctness check
    bash .ci/fetch-smollm2 && .venv/bin/python benchmarks/run.py   # SmolLM2-135M, the real benchmark
    .venv/bin/python benchmarks/run.py --help                  # every option

Every system trains the same model (same weights, same LoRA initialisation: r=16 on all
linear layers) on the SAME batches - built once here with tuneforge's data pipeline and a
seeded permutation, saved, and consumed in that order by every system - with AdamW (same
betas, eps, no weight decay), a constant learning rate without warmup, the same gradient
clipping, fp32, on the CPU with the same thread count.  Each run is its own subprocess; the
runs alternate their order over the repeats; the first ``--warmup`` steps are not timed.

Before any speed is printed, the runs are checked against each other: every fixed-batch run
trained on exactly the saved batches (digests), started from the same trainable weights
(checksum), and has the same loss at every step (relative tolerance ``--tolerance``).  On a
mismatch the first differing step is printed and the script exits 1.  Then, per system: real
(non-pad) tokens per second, peak RSS, the per-step losses, the ratios against the plain loop
and HF Trainer, and a Markdown table.

tuneforge with ``loader.group_by_length=true`` / ``loader.packing=true`` (when this tuneforge
has those keys) train the same examples for one epoch and batch them their own way: their
losses differ by construction, so they are compared on real tokens/s only.

Not collected by pytest (``tests/test_benchmark_smoke.py`` runs ``--smoke``).  See
docs/performance.md, section "Benchmark".
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

#: system name -> (child script, label in the tables)
SYSTEMS = {
    "plain": ("plain_loop.py", "plain PyTorch+PEFT loop"),
    "hf_trainer": ("hf_trainer.py", "HF Trainer"),
    "trl_sft": ("trl_sft.py", "TRL SFTTrainer"),
    "tuneforge": ("tuneforge_run.py", "tuneforge"),
}
#: tuneforge variant -> the loader key it needs
VARIANTS = {"group_by_length": "group_by_length", "packing": "packing"}

SMOKE = dict(model="tiny", steps=3, warmup=1, repeats=1, batch_size=4, records=16, max_words=30, threads=1,
             systems="plain,hf_trainer,tuneforge", variants="none")


class BenchmarkError(Exception):
    """A check failed or a run broke: printed as one ``benchmark: error:`` line, exit 1."""


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="benchmarks/run.py", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--smoke", action="store_true",
                        help="smallest mode: " + " ".join(f"--{k.replace('_', '-')}={v}" for k, v in SMOKE.items()))
    parser.add_argument("--model", default="smollm2",
                        help="tuneforge model preset: tiny (random, no download) or smollm2 (bash .ci/fetch-smollm2)")
    parser.add_argument("--steps", type=int, default=24, help="optimizer steps per run (batches in the plan)")
    parser.add_argument("--warmup", type=int, default=4, help="first steps not timed (at least 1)")
    parser.add_argument("--repeats", type=int, default=2, help="runs per system, in alternating order")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--data", default="generated",
                        help="'generated' (seeded alpaca records, see --records), 'sample' (the alpaca rows of "
                             "plugins/data/sample.jsonl) or the path of an alpaca .jsonl file")
    parser.add_argument("--records", type=int, default=200, help="generated records")
    parser.add_argument("--max-words", type=int, default=120, help="longest generated input, in words")
    parser.add_argument("--max-length", type=int, default=1024, help="data.max_length (longer examples truncated)")
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--max-grad-norm", type=float, default=1.0, help="gradient clipping (0: none)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of every run (and OMP_NUM_THREADS)")
    parser.add_argument("--seed", type=int, default=0, help="model/LoRA seed and the batch permutation seed")
    parser.add_argument("--systems", default="plain,hf_trainer,trl_sft,tuneforge",
                        help=f"comma-separated, from {','.join(SYSTEMS)} (trl_sft is skipped without trl)")
    parser.add_argument("--variants", default="group_by_length,packing",
                        help="tuneforge loader variants to time ('none' for none); skipped when absent")
    parser.add_argument("--tolerance", type=float, default=1e-4, help="relative tolerance of the loss check")
    parser.add_argument("--out", help="work directory (default: a new temporary directory); results.json goes here")
    if "--smoke" in argv:  # smoke values become the defaults: options given explicitly still win
        parser.set_defaults(**SMOKE)
    args = parser.parse_args(argv)
    if args.warmup < 1 or args.steps <= args.warmup:
        parser.error(f"--warmup must be at least 1 and below --steps (got warmup={args.warmup}, steps={args.steps})")
    unknown = [s for s in args.systems.split(",") if s not in SYSTEMS]
    if unknown:
        parser.error(f"--systems: unknown {unknown}; valid: {','.join(SYSTEMS)}")
    variants = [] if args.variants in ("", "none") else args.variants.split(",")
    bad = [v for v in variants if v not in VARIANTS]
    if bad:
        parser.error(f"--variants: unknown {bad}; valid: {','.join(VARIANTS)} or none")
    args.variant_list = variants
    return args


# ---------------------------------------------------------------------------
# set-up: records, tuneforge overrides, the plan, the spec
# ---------------------------------------------------------------------------


def tuneforge_overrides(args, workdir: Path) -> list:
    """The tuneforge run's overrides: everything the comparison holds equal, in tuneforge's terms."""
    return [
        f"model={args.model}",
        "data=jsonl", f"data.path={workdir / 'ordered.jsonl'}", "data.format=alpaca", "data.shuffle=false",
        "data.val_size=0", "data.cache=false", f"data.max_length={args.max_length}", "data.truncation=truncate",
        "adapter=lora", "adapter.r=16", "adapter.lora_alpha=32", "adapter.lora_dropout=0.0",
        "adapter.target_modules=all-linear", "loss=cross_entropy", "evaluators=[]", "callbacks=[bench_probe]",
        f"optim.lr={args.lr}", "optim.scheduler=constant", "optim.warmup_steps=0", "optim.warmup_ratio=0.0",
        "optim.weight_decay=0.0", "optim.betas=[0.9,0.999]", "optim.eps=1e-8",
        f"loader.batch_size={args.batch_size}", "loader.shuffle=false",
        f"trainer.max_steps={args.steps}", "trainer.accumulate_grad_batches=1",
        f"trainer.gradient_clip_val={args.max_grad_norm if args.max_grad_norm else 'null'}",
        "trainer.gradient_clip_algorithm=norm", "trainer.precision=32-true", "trainer.accelerator=cpu",
        "trainer.devices=1", "trainer.enable_progress_bar=false", "trainer.log_every_n_steps=1",
        "checkpoint.every_n_steps=0", "checkpoint.keep_last=1", "resume=never",
        f"seed={args.seed}", f"threads={args.threads}",
    ]


def load_records(args) -> tuple:
    """``(records, description)`` for ``--data``."""
    from data import generate_records, read_alpaca

    if args.data == "generated":
        return (generate_records(args.records, args.seed, args.max_words),
                f"{args.records} generated alpaca records (seed {args.seed}, 3..{args.max_words} words)")
    path = HERE.parent / "plugins" / "data" / "sample.jsonl" if args.data == "sample" else Path(args.data)
    if not path.is_file():
        raise BenchmarkError(f"--data {args.data}: no such file {path}")
    records = read_alpaca(path)
    return records, f"{len(records)} alpaca records of {path}"


def loader_keys(cfg) -> set:
    return set(cfg.loader.keys())


def prepare(args, workdir: Path) -> tuple:
    """Records -> plan (batches.safetensors, plan.json, ordered.jsonl) -> spec.json; returns ``(spec, plan)``."""
    from omegaconf import OmegaConf

    from data import build_plan
    from tuneforge.errors import TuneforgeError

    records, description = load_records(args)
    overrides = tuneforge_overrides(args, workdir)
    try:
        plan, cfg = build_plan(workdir, records, overrides, batch_size=args.batch_size, steps=args.steps,
                               seed=args.seed)
    except (ValueError, TuneforgeError) as exc:
        hint = " (bash .ci/fetch-smollm2 fetches the model)" if "gguf" in str(exc).lower() else ""
        raise BenchmarkError(f"{str(exc).splitlines()[0]}{hint}") from None
    model_config = OmegaConf.to_container(cfg.model, resolve=True)
    source = model_config.pop("name")
    variants, notes = {}, []
    for variant in args.variant_list:
        key = VARIANTS[variant]
        if key in loader_keys(cfg):
            # one epoch over exactly the examples of the fixed batches, batched the variant's way
            variants[variant] = [f"loader.{key}=true", "loader.shuffle=true", "trainer.max_steps=-1",
                                 "trainer.max_epochs=1"]
        else:
            notes.append(f"tuneforge[{variant}]: skipped, this tuneforge has no loader.{key} "
                         f"(loader keys: {', '.join(sorted(loader_keys(cfg)))})")
    spec = {
        "model": args.model, "model_source": source, "model_config": model_config,
        "seed": args.seed, "threads": args.threads, "steps": args.steps, "warmup": args.warmup,
        "batch_size": args.batch_size, "lr": args.lr, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.0,
        "max_grad_norm": args.max_grad_norm,
        "lora": {"r": 16, "lora_alpha": 32, "lora_dropout": 0.0, "target_modules": "all-linear"},
        "data": description, "max_length": args.max_length,
        "tuneforge": {"overrides": overrides, "variants": variants},
        "notes": notes,
    }
    (workdir / "spec.json").write_text(json.dumps(spec, indent=1))
    return spec, plan


# ---------------------------------------------------------------------------
# running the children
# ---------------------------------------------------------------------------


def child_env(threads: int) -> dict:
    env = dict(os.environ)
    env.pop("TUNEFORGE_COMMAND", None)
    env.update({"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false",
                "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
                "PYTHONPATH": os.pathsep.join([str(HERE), *filter(None, [env.get("PYTHONPATH")])])})
    return env


def run_child(workdir: Path, entry: tuple, repeat: int, threads: int) -> dict:
    """Run one system (or tuneforge variant) in a fresh process; return its result."""
    system, variant = entry
    name = system if variant is None else f"tuneforge-{variant}"
    result_path = workdir / f"{name}-{repeat}.json"
    log_path = workdir / f"{name}-{repeat}.log"
    command = [sys.executable, str(HERE / SYSTEMS[system][0]), str(workdir), str(result_path)]
    if variant:
        command.append(variant)
    started = time.time()
    with open(log_path, "w") as log:
        completed = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=child_env(threads),
                                   cwd=str(HERE.parent))
    if completed.returncode != 0 or not result_path.is_file():
        tail = log_path.read_text().strip().splitlines()[-15:]
        print("\n".join(tail), file=sys.stderr)
        raise BenchmarkError(f"{name} (repeat {repeat}) failed with exit code {completed.returncode}; "
                             f"full log: {log_path}")
    result = json.loads(result_path.read_text())
    result.update(name=name, system=system, variant=variant, repeat=repeat, wall_s=time.time() - started,
                  launched_at=started)
    return result


def run_order(entries: list, repeats: int) -> list:
    """``(entry, repeat)`` pairs: the entries in order on even repeats, reversed on odd ones."""
    order = []
    for repeat in range(repeats):
        for entry in (entries if repeat % 2 == 0 else list(reversed(entries))):
            order.append((entry, repeat))
    return order


# ---------------------------------------------------------------------------
# checks (before any speed is printed)
# ---------------------------------------------------------------------------


def first_loss_mismatch(reference: list, other: list, rtol: float):
    """``None`` when both loss lists have the same length and agree within ``rtol`` (relative to the
    larger magnitude) at every step; otherwise ``(step, reference_value, other_value)`` of the
    first difference (1-based step; a missing value is ``None``)."""
    for index in range(max(len(reference), len(other))):
        a = reference[index] if index < len(reference) else None
        b = other[index] if index < len(other) else None
        if a is None or b is None or not math.isfinite(a) or not math.isfinite(b):
            if a != b or a is None:
                return index + 1, a, b
            continue
        if abs(a - b) > rtol * max(abs(a), abs(b), 1e-12):
            return index + 1, a, b
    return None


def max_relative_difference(reference: list, other: list) -> float:
    return max((abs(a - b) / max(abs(a), abs(b), 1e-12) for a, b in zip(reference, other)), default=0.0)


def check_runs(fixed: list, variants: list, plan: dict, steps: int, rtol: float) -> list:
    """Raise :class:`BenchmarkError` unless every fixed-batch run trained on the saved batches,
    all runs started from the same trainable weights and the fixed-batch losses agree.
    Returns the lines that say what was checked."""
    if not fixed:
        raise BenchmarkError("no fixed-batch run to check")
    expected = plan["digests"][:steps]
    for run in fixed:
        if run["steps"] != steps:
            raise BenchmarkError(f"{run['name']} (repeat {run['repeat']}) ran {run['steps']} steps, expected {steps}")
        for step, (want, got) in enumerate(zip(expected, run["digests"]), 1):
            if want != got:
                raise BenchmarkError(f"{run['name']} (repeat {run['repeat']}) trained on another batch at step "
                                     f"{step} than the saved one (digest {got}, saved {want})")
    reference = fixed[0]
    for run in fixed + variants:
        a, b = reference["init_checksum"], run["init_checksum"]
        if a[0] != b[0] or any(abs(x - y) > 1e-9 * max(abs(x), abs(y), 1.0) for x, y in zip(a[1:], b[1:])):
            raise BenchmarkError(f"{run['name']} (repeat {run['repeat']}) starts from other trainable weights than "
                                 f"{reference['name']}: checksum {b} vs {a} (count, sum, sum of squares)")
    worst, compared = 0.0, {run["system"] for run in fixed}
    for run in fixed[1:]:
        mismatch = first_loss_mismatch(reference["losses"], run["losses"], rtol)
        if mismatch:
            step, a, b = mismatch
            raise BenchmarkError(f"losses differ at step {step}: {reference['name']} (repeat {reference['repeat']}) "
                                 f"{a!r} vs {run['name']} (repeat {run['repeat']}) {b!r} (rtol {rtol}); no speed "
                                 "ratio is printed for runs that did not do the same work")
        worst = max(worst, max_relative_difference(reference["losses"], run["losses"]))
    return [f"{len(fixed)} fixed-batch runs x {steps} steps: every batch equals the saved one (digest)",
            f"{len(fixed) + len(variants)} runs start from the same trainable weights "
            f"({reference['init_checksum'][0]} values, checksum)",
            f"per-step losses of {len(compared)} systems agree within rtol {rtol:g} (largest relative difference "
            f"{worst:.2e})" if len(fixed) > 1 else "one run only: no losses to compare"]


# ---------------------------------------------------------------------------
# speed
# ---------------------------------------------------------------------------


def timed_window(run: dict, plan_tokens, warmup: int) -> dict:
    """Real tokens per second over the steps after ``warmup`` (step ``warmup`` end -> last step end)."""
    ends = run["step_end"]
    tokens = run["tokens"] if plan_tokens is None else plan_tokens[: len(ends)]
    if len(ends) <= warmup:
        raise BenchmarkError(f"{run['name']} ran {len(ends)} steps, not more than the {warmup} warm-up steps")
    seconds = ends[-1] - ends[warmup - 1]
    counted = sum(tokens[warmup:])
    return {"timed_steps": len(ends) - warmup, "seconds": seconds, "tokens": counted,
            "tokens_per_s": counted / max(seconds, 1e-12), "s_per_step": seconds / (len(ends) - warmup)}


def summarize(runs: list, plan: dict, warmup: int) -> dict:
    """Per system/variant: median tokens/s over repeats, max peak RSS, the runs' numbers."""
    summary = {}
    total = sum(plan["tokens"])
    for run in runs:
        fixed = run["variant"] is None
        window = timed_window(run, plan["tokens"] if fixed else None, warmup)
        run["timing"] = window
        entry = summary.setdefault(run["name"], {"runs": [], "label": label(run)})
        if run.get("first_step_at"):
            # process launch (interpreter start, imports, model load, data, setup) to the first step's end
            window["startup_s"] = run["first_step_at"] - run["launched_at"]
        entry["runs"].append(window)
        entry["peak_rss_mib"] = max(entry.get("peak_rss_mib", 0.0), run["peak_rss_mib"])
        entry["steps"] = run["steps"]
        if not fixed and sum(run["tokens"]) != total:
            entry["note"] = (f"trained {sum(run['tokens'])} real tokens in one epoch, the fixed runs {total}: "
                             "its batches do not expose an attention mask that counts them")
    for entry in summary.values():
        entry["tokens_per_s"] = statistics.median(r["tokens_per_s"] for r in entry["runs"])
    return summary


def label(run: dict) -> str:
    if run["variant"]:
        return f"tuneforge, loader.{VARIANTS[run['variant']]}=true"
    return SYSTEMS[run["system"]][1]


def ratio(summary: dict, name: str, base: str) -> str:
    if base not in summary or name not in summary:
        return "-"
    return f"{summary[name]['tokens_per_s'] / summary[base]['tokens_per_s']:.2f}"


def print_losses(fixed: list) -> None:
    firsts = {}
    for run in fixed:
        firsts.setdefault(run["name"], run["losses"])
    names = list(firsts)
    print("\nper-step training loss (first repeat of each system):")
    print("  step  " + "  ".join(f"{n:>12}" for n in names))
    for step in range(max(len(losses) for losses in firsts.values())):
        print(f"  {step + 1:4d}  " + "  ".join(f"{firsts[n][step]:12.6f}" if step < len(firsts[n]) else f"{'-':>12}"
                                           for n in names))


def markdown_table(summary: dict, spec: dict, plan: dict) -> str:
    rows = ["| system | real tokens/s | vs plain loop | vs HF Trainer | s/step | peak RSS (MiB) | steps timed "
            "| launch to first step (s) |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, entry in summary.items():
        s_per_step = statistics.median(r["s_per_step"] for r in entry["runs"])
        startups = [r["startup_s"] for r in entry["runs"] if "startup_s" in r]
        startup = f"{statistics.median(startups):.1f}" if startups else "-"
        rows.append(f"| {entry['label']} | {entry['tokens_per_s']:.0f} | {ratio(summary, name, 'plain')} | "
                    f"{ratio(summary, name, 'hf_trainer')} | {s_per_step:.4f} | {entry['peak_rss_mib']:.0f} | "
                    f"{entry['runs'][0]['timed_steps']} of {entry['steps']} | {startup} |")
    padded = sum(plan["padded_tokens"][: spec["steps"]])
    real = sum(plan["tokens"][: spec["steps"]])
    rows.append("")
    rows.append(f"model={spec['model']}, {spec['data']}; {spec['steps']} steps of batch {spec['batch_size']} "
                f"({real} real of {padded} padded tokens), first {spec['warmup']} not timed; LoRA r=16 all-linear, "
                f"AdamW lr {spec['lr']:g} constant, clip {spec['max_grad_norm']:g}, fp32, {spec['threads']} threads; "
                f"median of {len(next(iter(summary.values()))['runs'])} runs per system")
    return "\n".join(rows)


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    workdir = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="tuneforge-benchmark-"))
    workdir = workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        return _main(args, workdir)
    except BenchmarkError as exc:
        print(f"benchmark: error: {exc}", file=sys.stderr)
        return 1


def _main(args, workdir: Path) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    systems = args.systems.split(",")
    notes = []
    if "trl_sft" in systems and importlib.util.find_spec("trl") is None:
        systems.remove("trl_sft")
        notes.append("trl_sft: skipped, trl is not installed (pip install trl, with torch pinned)")
    print(f"benchmark work directory: {workdir}")
    spec, plan = prepare(args, workdir)
    notes += spec["notes"]
    entries = [(s, None) for s in systems] + [("tuneforge", v) for v in spec["tuneforge"]["variants"]]
    print(f"data: {spec['data']} -> {plan['examples']} examples; {args.steps} batches of {args.batch_size} "
          f"({plan['epochs']} epoch(s) of a seeded permutation); {sum(plan['tokens'])} real of "
          f"{sum(plan['padded_tokens'])} padded tokens")
    runs = []
    for entry, repeat in run_order(entries, args.repeats):
        run = run_child(workdir, entry, repeat, args.threads)
        print(f"  {run['name']:<26} repeat {repeat}: {run['steps']} steps, {run['wall_s']:.1f} s wall")
        runs.append(run)
    fixed = [r for r in runs if r["variant"] is None]
    variant_runs = [r for r in runs if r["variant"] is not None]
    results = {"spec": spec, "plan": plan, "runs": runs,
               "notes": notes, "versions": runs[0]["versions"]}
    results_path = workdir / "results.json"
    try:
        checked = check_runs(fixed, variant_runs, plan, args.steps, args.tolerance)
    except BenchmarkError as exc:
        results["check"] = {"ok": False, "error": str(exc)}
        results_path.write_text(json.dumps(results, indent=1))
        print_losses(fixed)
        raise
    results["check"] = {"ok": True, "lines": checked}
    print("\ncheck passed:")
    for line in checked:
        print(f"  {line}")
    print_losses(fixed)
    summary = summarize(runs, plan, args.warmup)
    results["summary"] = summary
    results_path.write_text(json.dumps(results, indent=1))
    print("\nper system (median over repeats):")
    for name, entry in summary.items():
        print(f"  {entry['label']:<36} {entry['tokens_per_s']:10.1f} real tokens/s   peak RSS "
              f"{entry['peak_rss_mib']:7.0f} MiB   x{ratio(summary, name, 'plain')} vs plain, "
              f"x{ratio(summary, name, 'hf_trainer')} vs HF Trainer" + (f"   NOTE: {entry['note']}"
                                                                          if entry.get("note") else ""))
    for note in notes:
        print(f"note: {note}")
    print(f"versions: {', '.join(f'{k} {v}' for k, v in results['versions'].items())}")
    print("\nMarkdown (ratios: real tokens/s of the row / of the column's system; > 1 is faster):\n")
    print(markdown_table(summary, spec, plan))
    print(f"\nresults: {results_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
