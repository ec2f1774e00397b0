"""Benchmark: tuneforge against a plain PyTorch + PEFT loop, HF ``Trainer`` and TRL ``SFTTrainer``.

    .venv/bin/python benchmarks/run.py --smoke                 # tiny model, 3 steps: a correctness check
    bash .ci/fetch-smollm2 && .venv/bin/python benchmarks/run.py   # SmolLM2-135M, the real benchmark
    .venv/bin/python benchmarks/run.py --help                  # every option

Every system trains the same model (same weights, same LoRA initialisation: r=16 on all
linear layers) on the SAME batches (by default: generated records whose instruction, input and
output lengths are drawn from real alpaca data, ``data.py``) - built once here with tuneforge's data pipeline and a
seeded permutation, saved, and consumed in that order by every system - with AdamW (same
betas, eps, no weight decay), a constant learning rate without warmup, the same gradient
clipping, fp32, on the CPU with the same thread count (``--device cuda --precision bf16-mixed``: on the GPU,
under bfloat16 autocast, every system alike).  Each run is its own subprocess; the
runs alternate their order over the repeats; the first ``--warmup`` steps are not timed.

Before any speed is printed, the runs are checked against each other: every fixed-batch run
trained on exactly the saved batches (digests), started from the same trainable weights
(checksum), and has the same loss at every step (relative tolerance ``--tolerance``).  On a
mismatch the first differing step is printed and the script exits 1.  Then, per system: real
(non-pad) tokens per second, peak RSS, the per-step losses, the ratios against the plain loop
and HF Trainer, the share of the CPU's limit (``cpu_limit.py``: fp32 and bf16 matrix-product
throughput on the model's Linear shapes, turned into real tokens/s), the trained-position and
padding shares of the batches, and a Markdown table.  On a GPU (``--device cuda``) the limit is the GPU's
bfloat16 peak instead (``gpu_limit.py``: its published dense figure, and a measured large matrix product),
given as MFU, and every system's peak GPU memory is printed next to ``tuneforge plan``'s estimate of the
same run.

``plain_trained_loss`` is the plain loop with tuneforge's loss trick (LM head and cross entropy
on the trained positions only): the same losses, so it is checked like the others.

tuneforge variants are names mapped to lists of overrides (:data:`VARIANTS`, ``--variant``).
Those with ``loader.group_by_length=true`` / ``loader.packing=true`` train the same examples for
one epoch and batch them their own way: their losses differ by construction, so they are
compared on real tokens/s only.  Other variants (e.g. ``trainer.precision=auto``) train on the
saved batches (digests checked); their losses are reported, not checked (another precision
changes them).  A variant whose overrides this tuneforge rejects is skipped with a note.

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

#: system name -> (child script, label in the tables, extra arguments of the child)
SYSTEMS = {
    "plain": ("plain_loop.py", "plain PyTorch+PEFT loop", ()),
    "plain_trained_loss": ("plain_loop.py", "plain loop, loss on trained positions only", ("trained_loss",)),
    "hf_trainer": ("hf_trainer.py", "HF Trainer", ()),
    "trl_sft": ("trl_sft.py", "TRL SFTTrainer", ()),
    "tuneforge": ("tuneforge_run.py", "tuneforge", ()),
}
#: tuneforge variant -> its overrides (added after the fixed-batch run's; a later one wins)
VARIANTS = {
    "group_by_length": ["loader.group_by_length=true"],
    "packing": ["loader.packing=true"],
    "packing_auto": ["loader.packing=true", "trainer.precision=auto"],
    "packing_auto_compile": ["loader.packing=true", "trainer.precision=auto", "trainer.compile=true"],
    "packing_auto_kernel": ["loader.packing=true", "trainer.precision=auto", "trainer.cpu_attention=kernel"],
    "packing_bf16": ["loader.packing=true", "trainer.precision=bf16-mixed"],
    "auto": ["trainer.precision=auto"],
    "bf16": ["trainer.precision=bf16-mixed"],
}
#: overrides that make a variant batch the examples its own way (then: one epoch, its own batches)
REBATCHING = ("loader.packing=true", "loader.group_by_length=true")

SMOKE = dict(model="tiny", steps=3, warmup=1, repeats=1, batch_size=4, records=16, max_field_tokens=24, threads=1,
             systems="plain,plain_trained_loss,hf_trainer,tuneforge", variants="none")


class BenchmarkError(Exception):
    """A check failed or a run broke: printed as one ``benchmark: error:`` line, exit 1."""


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="benchmarks/run.py", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--smoke", action="store_true",
                        help="smallest mode: " + " ".join(f"--{k.replace('_', '-')}={v}" for k, v in SMOKE.items()))
    parser.add_argument("--model", default="smollm2",
                        help="tuneforge model preset: tiny (random, no download) or smollm2 (bash .ci/fetch-smollm2), "
                             "or a model folder (safetensors) or .gguf file")
    parser.add_argument("--steps", type=int, default=24, help="optimizer steps per run (batches in the plan)")
    parser.add_argument("--warmup", type=int, default=4, help="first steps not timed (at least 1)")
    parser.add_argument("--repeats", type=int, default=2, help="runs per system, in alternating order")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--data", default="generated",
                        help="'generated' (seeded alpaca records with the field lengths of real alpaca data, "
                             "benchmarks/alpaca_lengths.json; see --records), 'sample' (the alpaca rows of "
                             "plugins/data/sample.jsonl) or your own data file or folder: any file tuneforge reads "
                             "(.jsonl, .json, .csv, .parquet), records in any format its default loss trains "
                             "(alpaca, chat/ShareGPT/OpenAI messages, text, prompt/completion, input_output)")
    parser.add_argument("--records", type=int, default=200, help="generated records")
    parser.add_argument("--max-field-tokens", type=int, default=0,
                        help="cap every generated field at this many tokens (0: the recorded lengths, uncapped)")
    parser.add_argument("--max-length", type=int, default=1024, help="data.max_length (longer examples truncated)")
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--max-grad-norm", type=float, default=1.0, help="gradient clipping (0: none)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of every run (and OMP_NUM_THREADS)")
    parser.add_argument("--seed", type=int, default=0, help="model/LoRA seed and the batch permutation seed")
    parser.add_argument("--systems", default="plain,plain_trained_loss,hf_trainer,trl_sft,tuneforge",
                        help=f"comma-separated, from {','.join(SYSTEMS)} (trl_sft is skipped without trl)")
    parser.add_argument("--variants", default="group_by_length,packing",
                        help="tuneforge variants to time, comma-separated ('none' for none), from: " + "; ".join(
                            f"{name} = {' '.join(overrides)}" for name, overrides in VARIANTS.items())
                        + ". Skipped with a note when this tuneforge rejects their overrides")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME=OVERRIDE[;OVERRIDE...]",
                        help="one more tuneforge variant, timed after --variants (repeatable), e.g. "
                             "'packing_32=loader.packing=true;trainer.precision=32-true'")
    parser.add_argument("--no-limit", action="store_true",
                        help="skip measuring the CPU's matrix-product throughput (the limit columns)")
    parser.add_argument("--limit", choices=("cpu", "peak"), default=None,
                        help="cpu: the CPU's limit (cpu_limit.py, the default on cpu); peak: MFU against the device's "
                             "bf16 peak and peak GPU memory against tuneforge plan (gpu_limit.py, the default on cuda)")
    parser.add_argument("--tolerance", type=float, default=None,
                        help="relative tolerance of the loss check (default: 1e-4 in 32-true, 5e-2 in bf16-mixed, "
                             "whose systems round differently and drift apart over the steps)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="where every system trains (cuda: the first GPU; --threads still sets the CPU threads)")
    parser.add_argument("--precision", choices=("32-true", "bf16-mixed"), default="32-true",
                        help="every system's precision: float32, or bfloat16 autocast over float32 LoRA weights")
    parser.add_argument("--model-dtype", choices=("float32", "bfloat16"), default=None,
                        help="dtype of the frozen base weights (model.dtype; --model folders and .gguf files only); "
                             "default: float32 (the tuneforge default)")
    parser.add_argument("--attn-implementation", default=None,
                        help="model.attn_implementation of every system (sdpa, eager, flash_attention_2; default: "
                             "the model's)")
    parser.add_argument("--out", help="work directory (default: a new temporary directory); results.json goes here")
    if "--smoke" in argv:  # smoke values become the defaults: options given explicitly still win
        parser.set_defaults(**SMOKE)
    args = parser.parse_args(argv)
    if args.warmup < 1 or args.steps <= args.warmup:
        parser.error(f"--warmup must be at least 1 and below --steps (got warmup={args.warmup}, steps={args.steps})")
    unknown = [s for s in args.systems.split(",") if s not in SYSTEMS]
    if unknown:
        parser.error(f"--systems: unknown {unknown}; valid: {','.join(SYSTEMS)}")
    names = [] if args.variants in ("", "none") else args.variants.split(",")
    bad = [v for v in names if v not in VARIANTS]
    if bad:
        parser.error(f"--variants: unknown {bad}; valid: {','.join(VARIANTS)} or none")
    variants = {name: list(VARIANTS[name]) for name in names}
    for definition in args.variant:
        name, _, overrides = definition.partition("=")
        overrides = [o.strip() for o in overrides.split(";") if o.strip()]
        if not name.strip() or not name.strip().replace("_", "").replace("-", "").isalnum() or not overrides:
            parser.error(f"--variant {definition!r}: expected NAME=OVERRIDE[;OVERRIDE...] (NAME: letters, digits, "
                         "_ or -)")
        variants[name.strip()] = overrides
    args.variant_overrides = variants
    if args.limit is None:
        args.limit = "peak" if args.device == "cuda" else "cpu"
    if args.tolerance is None:
        args.tolerance = 5e-2 if args.precision == "bf16-mixed" else 1e-4
    if (args.model_dtype or args.attn_implementation) and model_overrides(args.model)[0] != "model=hf":
        parser.error("--model-dtype and --attn-implementation need --model to be a model folder or .gguf file")
    return args


# ---------------------------------------------------------------------------
# set-up: records, tuneforge overrides, the plan, the spec
# ---------------------------------------------------------------------------


def tuneforge_overrides(args, workdir: Path, data_format: str = "alpaca") -> list:
    """The tuneforge run's overrides: everything the comparison holds equal, in tuneforge's terms
    (``data_format``: the records' ``data.format``, ``auto`` for a file of several formats)."""
    model = model_overrides(args.model)
    if args.model_dtype:
        model.append(f"model.dtype={args.model_dtype}")
    if args.attn_implementation:
        model.append(f"model.attn_implementation={args.attn_implementation}")
    return [
        *model,
        "data=jsonl", f"data.path={workdir / 'ordered.jsonl'}", f"data.format={data_format}", "data.shuffle=false",
        "data.val_size=0", "data.cache=false", f"data.max_length={args.max_length}", "data.truncation=truncate",
        "adapter=lora", "adapter.r=16", "adapter.lora_alpha=32", "adapter.lora_dropout=0.0",
        "adapter.target_modules=all-linear", "loss=cross_entropy", "evaluators=[]", "callbacks=[bench_probe]",
        f"optim.lr={args.lr}", "optim.scheduler=constant", "optim.warmup_steps=0", "optim.warmup_ratio=0.0",
        "optim.weight_decay=0.0", "optim.betas=[0.9,0.999]", "optim.eps=1e-8",
        f"loader.batch_size={args.batch_size}", "loader.shuffle=false",
        f"trainer.max_steps={args.steps}", "trainer.accumulate_grad_batches=1",
        f"trainer.gradient_clip_val={args.max_grad_norm if args.max_grad_norm else 'null'}",
        "trainer.gradient_clip_algorithm=norm", f"trainer.precision={args.precision}",
        f"trainer.accelerator={'gpu' if args.device == 'cuda' else 'cpu'}",
        "trainer.devices=1", "trainer.enable_progress_bar=false", "trainer.log_every_n_steps=1",
        "checkpoint.every_n_steps=0", "checkpoint.keep_last=1", "resume=never",
        f"seed={args.seed}", f"threads={args.threads}",
    ]


def model_overrides(model: str) -> list:
    """``--model`` in tuneforge's terms: a preset name (``tiny``, ``smollm2``), or a model folder or ``.gguf``
    file (``model=hf model.path=...``, e.g. SmolLM2 saved as safetensors, which loads as HF Trainer users load)."""
    if "/" in model or model.endswith(".gguf"):
        return ["model=hf", f"model.path={Path(model).resolve()}"]
    return [f"model={model}"]


def load_records(args) -> tuple:
    """``(records, description, data_format)`` for ``--data``."""
    from data import generate_records, read_alpaca, read_records, recorded_lengths

    if args.data == "generated":
        lengths, source = recorded_lengths()
        cap = f", capped at {args.max_field_tokens} tokens a field" if args.max_field_tokens else ""
        return (generate_records(args.records, args.seed, args.max_field_tokens),
                f"{args.records} generated alpaca records (seed {args.seed}; field lengths of the {len(lengths)} "
                f"records of {source}{cap})", "alpaca")
    if args.data == "sample":
        path = HERE.parent / "plugins" / "data" / "sample.jsonl"
        records = read_alpaca(path)
        return records, f"{len(records)} alpaca records of {path}", "alpaca"
    path = Path(args.data)
    if not path.exists():
        raise BenchmarkError(f"--data {args.data}: no such file or folder")
    try:
        records, formats = read_records(path)
    except ValueError as exc:
        raise BenchmarkError(f"--data {args.data}: {exc}") from None
    kinds = ", ".join(f"{count} {kind}" for kind, count in sorted(formats.items()))
    return records, f"{len(records)} records of {path} ({kinds})", next(iter(formats)) if len(formats) == 1 else "auto"


def is_rebatching(overrides) -> bool:
    return any(o.replace(" ", "").lower() in REBATCHING for o in overrides)


def variant_problem(base_overrides: list, overrides: list):
    """``None`` when this tuneforge composes and validates the run with the variant's overrides,
    else the first line of what it says (the variant is then skipped)."""
    from tuneforge.host.components import validate
    from tuneforge.host.compose import compose, load_plugins

    composed = [o for o in base_overrides if not o.startswith("callbacks=")] + overrides
    try:
        plugins = load_plugins(composed)  # first: it registers the configs that compose reads
        problems = validate(compose(composed), plugins)
    except Exception as exc:  # Hydra's and tuneforge's errors: a key or value this tuneforge does not have
        return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return str(problems[0]).splitlines()[0] if problems else None


def prepare(args, workdir: Path) -> tuple:
    """Records -> plan (batches.safetensors, plan.json, ordered.jsonl) -> spec.json; returns ``(spec, plan)``."""
    from omegaconf import OmegaConf

    from data import build_plan
    from tuneforge.errors import TuneforgeError

    records, description, data_format = load_records(args)
    overrides = tuneforge_overrides(args, workdir, data_format)
    try:
        plan, cfg = build_plan(workdir, records, overrides, batch_size=args.batch_size, steps=args.steps,
                               seed=args.seed)
    except (ValueError, TuneforgeError) as exc:
        hint = " (bash .ci/fetch-smollm2 fetches the model)" if "gguf" in str(exc).lower() else ""
        raise BenchmarkError(f"{str(exc).splitlines()[0]}{hint}") from None
    model_config = OmegaConf.to_container(cfg.model, resolve=True)
    source = model_config.pop("name")
    variants, notes = {}, []
    for name, added in args.variant_overrides.items():
        rebatched = is_rebatching(added)
        # a re-batching variant: one epoch over exactly the examples of the fixed batches, batched its way
        full = (["loader.shuffle=true", "trainer.max_steps=-1", "trainer.max_epochs=1"] if rebatched else []) + added
        problem = variant_problem(overrides, full)
        if problem:
            notes.append(f"tuneforge[{name}]: skipped, this tuneforge rejects {' '.join(added)}: {problem}")
            continue
        variants[name] = {"overrides": full, "added": added, "rebatched": rebatched,
                          "label": "tuneforge, " + ", ".join(f"`{o}`" for o in added)}
    spec = {
        "model": args.model, "model_source": source, "model_config": model_config,
        "seed": args.seed, "threads": args.threads, "steps": args.steps, "warmup": args.warmup,
        "batch_size": args.batch_size, "lr": args.lr, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.0,
        "max_grad_norm": args.max_grad_norm,
        "lora": {"r": 16, "lora_alpha": 32, "lora_dropout": 0.0, "target_modules": "all-linear"},
        "data": description, "max_length": args.max_length, "device": args.device, "precision": args.precision,
        "tuneforge": {"overrides": overrides, "variants": variants},
        "notes": notes,
    }
    if args.limit == "peak":
        spec["plan_mib"] = plan_estimates(overrides, variants, spec["notes"])
    (workdir / "spec.json").write_text(json.dumps(spec, indent=1))
    return spec, plan


def plan_estimates(overrides: list, variants: dict, notes: list) -> dict:
    """``tuneforge plan``'s memory estimate (MiB per device) of the fixed-batch run (key ``tuneforge``, which the
    other fixed-batch systems also train) and of each variant (``tuneforge-<name>``); a run it cannot plan is
    left out with a note."""
    from common import plan_mib

    runs = {"tuneforge": overrides,
            **{f"tuneforge-{name}": overrides + variant["overrides"] for name, variant in variants.items()}}
    estimates = {}
    for name, composed in runs.items():
        estimate, problem = plan_mib([o for o in composed if not o.startswith("callbacks=")])
        if estimate is None:
            notes.append(f"{name}: tuneforge plan failed: {problem}")
        else:
            estimates[name] = estimate
    return estimates


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
    command = [sys.executable, str(HERE / SYSTEMS[system][0]), str(workdir), str(result_path),
               *SYSTEMS[system][2]]
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


def measure_limit(workdir: Path, threads: int, script: str = "cpu_limit.py") -> dict:
    """``cpu_limit.py`` (or ``gpu_limit.py``) in a fresh process with the benchmark's threads (nothing else of
    ours runs)."""
    stem = Path(script).stem
    result_path, log_path = workdir / f"{stem}.json", workdir / f"{stem}.log"
    with open(log_path, "w") as log:
        completed = subprocess.run([sys.executable, str(HERE / script), str(workdir), str(result_path)],
                                   stdout=log, stderr=subprocess.STDOUT, env=child_env(threads), cwd=str(HERE.parent))
    if completed.returncode != 0 or not result_path.is_file():
        print("\n".join(log_path.read_text().strip().splitlines()[-15:]), file=sys.stderr)
        raise BenchmarkError(f"measuring the limit ({script}) failed with exit code {completed.returncode}; "
                             f"full log: {log_path}")
    return json.loads(result_path.read_text())


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
    """Raise :class:`BenchmarkError` unless every fixed-batch run (and every variant run that is not
    re-batched, ``rebatched: false``) trained on the saved batches, all runs started from the same
    trainable weights and the fixed-batch losses agree.  Returns the lines that say what was checked."""
    if not fixed:
        raise BenchmarkError("no fixed-batch run to check")
    expected = plan["digests"][:steps]
    same_batches = [run for run in variants if run.get("rebatched") is False]
    for run in fixed + same_batches:
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
    lines = [f"{len(fixed)} fixed-batch runs x {steps} steps: every batch equals the saved one (digest)",
             f"{len(fixed) + len(variants)} runs start from the same trainable weights "
             f"({reference['init_checksum'][0]} values, checksum)",
             f"per-step losses of {len(compared)} systems agree within rtol {rtol:g} (largest relative difference "
             f"{worst:.2e})" if len(fixed) > 1 else "one run only: no losses to compare"]
    for run in same_batches:
        lines.append(f"{run['name']} (repeat {run['repeat']}): the saved batches (digests); its losses differ from "
                     f"{reference['name']}'s by up to {max_relative_difference(reference['losses'], run['losses']):.2e} "
                     "(relative; not checked: its overrides may change the arithmetic)")
    return lines


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


def run_shares(run: dict, plan: dict) -> dict:
    """Trained-position and padding shares of the batches a run trained on (``data.shares``): the
    plan's for a fixed-batch system, the run's own (probe counts) for a tuneforge variant."""
    from data import shares

    if run["variant"] is None or not run.get("positions"):
        return shares(plan["tokens"], plan["padded_tokens"], plan["trained_tokens"])
    return shares(run["tokens"], run["positions"], run["trained"])


def is_peak_limit(limit) -> bool:
    """Whether ``limit`` is ``gpu_limit.py``'s (a device's bf16 peak: MFU) rather than ``cpu_limit.py``'s."""
    return bool(limit) and "measured_peak" in limit


def limit_shares(entry: dict, limit) -> dict:
    """The entry's real tokens/s as a share of the CPU's fp32 and bf16 limits (``cpu_limit.py``), or on a GPU
    its MFU (``gpu_limit.py``: ``published``, ``measured``, ``six_n``)."""
    if not limit:
        return {}
    if is_peak_limit(limit):
        from gpu_limit import mfu

        return mfu(limit, entry["tokens_per_s"], entry["shares"]["trained_of_real"])
    from cpu_limit import limit_tokens_per_s

    trained_of_real = entry["shares"]["trained_of_real"]
    return {precision: entry["tokens_per_s"] / limit_tokens_per_s(limit, precision, trained_of_real)
            for precision in ("fp32", "bf16")}


def summarize(runs: list, plan: dict, warmup: int, labels: dict | None = None, limit: dict | None = None,
              notes: list | None = None) -> dict:
    """Per system/variant: median tokens/s over repeats, max peak RSS, the runs' numbers, the shares
    of its batches and its share of the CPU's limits.  ``labels``: variant name -> table label.
    A variant run with no step after the warm-up is left out with a line in ``notes``."""
    summary = {}
    total = sum(plan["tokens"])
    for run in runs:
        fixed = run["variant"] is None
        if not fixed and len(run["step_end"]) <= warmup:
            if notes is not None:
                notes.append(f"{run['name']} (repeat {run['repeat']}): {len(run['step_end'])} steps in its epoch, "
                             f"none after the {warmup} warm-up steps: not timed (more --records, or --warmup)")
            continue
        window = timed_window(run, plan["tokens"] if fixed else None, warmup)
        run["timing"] = window
        entry = summary.setdefault(run["name"], {"runs": [], "label": label(run, labels),
                                                 "shares": run_shares(run, plan)})
        if run.get("first_step_at"):
            # process launch (interpreter start, imports, model load, data, setup) to the first step's end
            window["startup_s"] = run["first_step_at"] - run["launched_at"]
        entry["runs"].append(window)
        entry["peak_rss_mib"] = max(entry.get("peak_rss_mib", 0.0), run["peak_rss_mib"])
        if run.get("peak_gpu_mib"):
            entry["peak_gpu_mib"] = max(entry.get("peak_gpu_mib", 0.0), run["peak_gpu_mib"]["allocated"])
        entry["steps"] = run["steps"]
        if not fixed and sum(run["tokens"]) != total:
            entry["note"] = (f"trained {sum(run['tokens'])} real tokens in one epoch, the fixed runs {total}: "
                             "its batches do not expose an attention mask that counts them")
        if run.get("precision"):
            entry["precision"] = run["precision"]
    for entry in summary.values():
        entry["tokens_per_s"] = statistics.median(r["tokens_per_s"] for r in entry["runs"])
        entry["of_limit"] = limit_shares(entry, limit)
    return summary


def label(run: dict, labels: dict | None = None) -> str:
    if run["variant"]:
        return (labels or {}).get(run["variant"], f"tuneforge[{run['variant']}]")
    return SYSTEMS[run["system"]][1]


def percent(value) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def shares_text(shares: dict) -> str:
    return (f"trained positions {percent(shares['trained'])} of all positions ({percent(shares['trained_of_real'])} "
            f"of real tokens), padding {percent(shares['padding'])} of all positions")


def limit_lines(limit: dict, trained_of_real: float) -> list:
    """What the CPU's limit is and how it was measured, for the output and the table's notes."""
    from cpu_limit import flops_per_token, limit_tokens_per_s

    units = ", ".join(limit["bf16_units"]) or "none"
    lines = [f"CPU limit for LoRA training ({limit['threads']} threads; {flops_per_token(limit, trained_of_real) / 1e9:.3g} "
             f"GFLOP per real token = 4 x {limit['body_linear_params'] / 1e6:.3g}M body linear parameters + "
             f"4 x {limit['head_params'] / 1e6:.3g}M LM head x {trained_of_real:.3f} trained per real token; "
             f"products timed at {limit['tokens']} rows, the head at {limit['head_tokens']}; "
             f"{limit['seconds']:.1f} s):"]
    for precision in ("fp32", "bf16"):
        part = limit[precision]
        extra = f" (bf16 matrix units: {units})" if precision == "bf16" else ""
        lines.append(f"  {precision}: body {part['body_gflops']:.1f} GFLOP/s, LM head {part['head_gflops']:.1f} GFLOP/s"
                     f" -> {limit_tokens_per_s(limit, precision, trained_of_real):.0f} real tokens/s{extra}")
    return lines


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


def plan_estimate(spec: dict, name: str):
    """``tuneforge plan``'s MiB for a summary entry: the variant's own, else the fixed-batch run's (which every
    fixed-batch system trains)."""
    estimates = spec.get("plan_mib") or {}
    return estimates.get(name, estimates.get("tuneforge"))


def gpu_markdown_table(summary: dict, spec: dict, plan: dict, limit: dict) -> str:
    """The table of a ``--device cuda`` run: tokens/s, ratios, MFU, peak GPU memory against the plan."""
    rows = ["| system | real tokens/s | vs HF Trainer | MFU | MFU (measured peak) | MFU (6N) | padding | s/step "
            "| peak GPU memory (MiB) | tuneforge plan (MiB) | peak / plan | steps timed |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, entry in summary.items():
        s_per_step = statistics.median(r["s_per_step"] for r in entry["runs"])
        mfu = entry.get("of_limit") or {}
        peak, estimate = entry.get("peak_gpu_mib"), plan_estimate(spec, name)
        within = f"{peak / estimate:.2f}" if peak and estimate else "-"
        rows.append(f"| {entry['label']} | {entry['tokens_per_s']:.0f} | {ratio(summary, name, 'hf_trainer')} | "
                    f"{percent(mfu.get('published'))} | {percent(mfu.get('measured'))} | {percent(mfu.get('six_n'))} | "
                    f"{percent(entry['shares']['padding'])} | {s_per_step:.4f} | "
                    f"{f'{peak:.0f}' if peak else '-'} | {f'{estimate:.0f}' if estimate else '-'} | {within} | "
                    f"{entry['runs'][0]['timed_steps']} of {entry['steps']} |")
    from data import shares
    from gpu_limit import flops_per_token

    fixed = shares(plan["tokens"][: spec["steps"]], plan["padded_tokens"][: spec["steps"]],
                   plan["trained_tokens"][: spec["steps"]])
    published = (f"{limit['published_peak'] / 1e12:.0f} TFLOP/s ({limit['published_source']})"
                 if limit.get("published_peak") else "not in the table (gpu_limit.PUBLISHED_BF16_PEAKS)")
    rows += ["", f"model={spec['model']}, {spec['data']}; {spec['steps']} steps of batch {spec['batch_size']}, max "
                 f"length {spec['max_length']} ({shares_text(fixed)}), first {spec['warmup']} not timed; LoRA r=16 "
                 f"all-linear, AdamW lr {spec['lr']:g} constant, clip {spec['max_grad_norm']:g}, {spec['precision']} "
                 f"on {limit['device_name']}; median of {len(next(iter(summary.values()))['runs'])} runs per system",
             "", f"MFU: useful FLOPs per real token ({flops_per_token(limit, fixed['trained_of_real']) / 1e9:.2f} GFLOP: "
                 f"4 x body Linear, 4 x LM head on trained positions, attention at a mean context of "
                 f"{limit['mean_context']:.0f}) x tokens/s over the bf16 peak: published {published}, measured "
                 f"{limit['measured_peak'] / 1e12:.0f} TFLOP/s ({limit['matmul_size']}^3 bf16 product). 6N: 6 x all "
                 "Linear parameters per token over the published peak. Peak GPU memory: torch's max allocated."]
    return "\n".join(rows)


def markdown_table(summary: dict, spec: dict, plan: dict, limit: dict | None = None) -> str:
    if is_peak_limit(limit):
        return gpu_markdown_table(summary, spec, plan, limit)
    rows = ["| system | real tokens/s | vs plain loop | vs HF Trainer | of fp32 limit | of bf16 limit | padding "
            "| s/step | peak RSS (MiB) | steps timed | launch to first step (s) |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, entry in summary.items():
        s_per_step = statistics.median(r["s_per_step"] for r in entry["runs"])
        startups = [r["startup_s"] for r in entry["runs"] if "startup_s" in r]
        startup = f"{statistics.median(startups):.1f}" if startups else "-"
        of_limit = entry.get("of_limit") or {}
        rows.append(f"| {entry['label']} | {entry['tokens_per_s']:.0f} | {ratio(summary, name, 'plain')} | "
                    f"{ratio(summary, name, 'hf_trainer')} | {percent(of_limit.get('fp32'))} | "
                    f"{percent(of_limit.get('bf16'))} | {percent(entry['shares']['padding'])} | {s_per_step:.4f} | "
                    f"{entry['peak_rss_mib']:.0f} | {entry['runs'][0]['timed_steps']} of {entry['steps']} | {startup} |")
    from data import shares

    fixed = shares(plan["tokens"][: spec["steps"]], plan["padded_tokens"][: spec["steps"]],
                   plan["trained_tokens"][: spec["steps"]])
    rows.append("")
    rows.append(f"model={spec['model']}, {spec['data']}; {spec['steps']} steps of batch {spec['batch_size']} "
                f"({fixed['real_tokens']} real of {fixed['positions']} padded tokens: {shares_text(fixed)}), "
                f"first {spec['warmup']} not timed; LoRA r=16 all-linear, AdamW lr {spec['lr']:g} constant, "
                f"clip {spec['max_grad_norm']:g}, {spec.get('precision', '32-true')}, {spec['threads']} threads; "
                f"median of {len(next(iter(summary.values()))['runs'])} runs per system")
    if limit:
        from cpu_limit import limit_tokens_per_s

        rows.append("")
        rows.append(f"Limits: {limit_tokens_per_s(limit, 'fp32', fixed['trained_of_real']):.0f} (fp32) and "
                    f"{limit_tokens_per_s(limit, 'bf16', fixed['trained_of_real']):.0f} (bf16) real tokens/s: "
                    f"matrix products at {limit['fp32']['body_gflops']:.1f} / {limit['bf16']['body_gflops']:.1f} "
                    f"GFLOP/s (body) and {limit['fp32']['head_gflops']:.1f} / {limit['bf16']['head_gflops']:.1f} "
                    f"GFLOP/s (LM head) on the model's Linear shapes, {limit['threads']} threads; 4 x linear "
                    "parameters FLOPs per real token, the LM head on trained positions only (benchmarks/cpu_limit.py)")
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
    variants = spec["tuneforge"]["variants"]
    entries = [(s, None) for s in systems] + [("tuneforge", v) for v in variants]
    fixed_shares = run_shares({"variant": None}, plan)
    print(f"data: {spec['data']} -> {plan['examples']} examples; {args.steps} batches of {args.batch_size} "
          f"({plan['epochs']} epoch(s) of a seeded permutation); {sum(plan['tokens'])} real of "
          f"{sum(plan['padded_tokens'])} padded tokens")
    print(f"shares of the fixed batches: {shares_text(fixed_shares)}")
    for note in spec["notes"]:
        print(f"note: {note}")
    limit = None
    if args.limit == "peak":
        limit = measure_limit(workdir, args.threads, "gpu_limit.py")
        print(f"GPU: {limit['device_name']}, bf16 peak published {limit['published_peak'] or '-'} FLOP/s, measured "
              f"{limit['measured_peak']:.3g} FLOP/s")
    elif not args.no_limit:
        limit = measure_limit(workdir, args.threads)
        print("\n".join(limit_lines(limit, fixed_shares["trained_of_real"])))
    runs = []
    for entry, repeat in run_order(entries, args.repeats):
        run = run_child(workdir, entry, repeat, args.threads)
        if run["variant"] is not None:
            run["rebatched"] = variants[run["variant"]]["rebatched"]
        print(f"  {run['name']:<26} repeat {repeat}: {run['steps']} steps, {run['wall_s']:.1f} s wall")
        runs.append(run)
    fixed = [r for r in runs if r["variant"] is None]
    variant_runs = [r for r in runs if r["variant"] is not None]
    same_batches = [r for r in variant_runs if r.get("rebatched") is False]
    results = {"spec": spec, "plan": plan, "shares": fixed_shares, "runs": runs,
               ("gpu_limit" if args.limit == "peak" else "cpu_limit"): limit,
               "notes": notes, "versions": runs[0]["versions"]}
    results_path = workdir / "results.json"
    try:
        checked = check_runs(fixed, variant_runs, plan, args.steps, args.tolerance)
    except BenchmarkError as exc:
        results["check"] = {"ok": False, "error": str(exc)}
        results_path.write_text(json.dumps(results, indent=1))
        print_losses(fixed + same_batches)
        raise
    results["check"] = {"ok": True, "lines": checked}
    print("\ncheck passed:")
    for line in checked:
        print(f"  {line}")
    print_losses(fixed + same_batches)
    labels = {name: variant["label"] for name, variant in variants.items()}
    summary = summarize(runs, plan, args.warmup, labels, limit, notes)
    results["summary"] = summary
    results["markdown"] = markdown_table(summary, spec, plan, limit)
    results_path.write_text(json.dumps(results, indent=1))
    print("\nper system (median over repeats; limits: benchmarks/cpu_limit.py):")
    for name, entry in summary.items():
        of_limit = entry.get("of_limit") or {}
        limit_text = (f"MFU {percent(of_limit.get('published'))} (measured peak {percent(of_limit.get('measured'))})"
                      f"   peak GPU {entry.get('peak_gpu_mib', 0):.0f} MiB (plan {plan_estimate(spec, name) or 0:.0f})"
                      if args.limit == "peak" else
                      f"of fp32 limit {percent(of_limit.get('fp32'))}, of bf16 limit {percent(of_limit.get('bf16'))}")
        print(f"  {entry['label']:<44} {entry['tokens_per_s']:10.1f} real tokens/s   peak RSS "
              f"{entry['peak_rss_mib']:7.0f} MiB   x{ratio(summary, name, 'plain')} vs plain, "
              f"x{ratio(summary, name, 'hf_trainer')} vs HF Trainer   {limit_text}   "
              f"padding {percent(entry['shares']['padding'])}, "
              f"trained {percent(entry['shares']['trained'])}"
              + (f"   precision {entry['precision'].get('chosen')}" if isinstance(entry.get("precision"), dict)
                 else "")
              + (f"   NOTE: {entry['note']}" if entry.get("note") else ""))
    for note in notes:
        print(f"note: {note}")
    print(f"versions: {', '.join(f'{k} {v}' for k, v in results['versions'].items())}")
    print("\nMarkdown (ratios: real tokens/s of the row / of the column's system; > 1 is faster):\n")
    print(results["markdown"])
    print(f"\nresults: {results_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
