"""Measured peak memory of `tuneforge train` next to `tuneforge plan`'s estimate (docs/memory.md).

For each configuration (a quoted list of overrides, e.g. "adapter=lora" or "adapter=qlora") the script
trains a few steps at two batch sizes, each run in a child process whose peak resident memory is read
from the kernel (``os.wait4``: the child's own ``ru_maxrss``), and asks ``tuneforge plan`` (another child)
for the same overrides.  It prints, per configuration:

* the total: the measured peak RSS at the larger batch against the plan's total;
* the activations: the peak's growth per example between the two batch sizes, times the larger batch
  (what the forward pass keeps grows with the batch; weights, optimizer state and the runtime do not),
  against the plan's activations.

    .venv/bin/python benchmarks/memory_peaks.py                                  # fp32 LoRA on SmolLM2
    .venv/bin/python benchmarks/memory_peaks.py "adapter=lora" "adapter=qlora" "optimizer=adamw_8bit"
    .venv/bin/python benchmarks/memory_peaks.py --batch-sizes 1,4 --max-length 128 --steps 2 "adapter=full"

Every run uses ``model=smollm2`` (``--model`` to change), generated records long enough that every row
holds ``--max-length`` tokens (the plan's length; ``data.path=`` in a configuration replaces them),
``baselines=[]``, no memorisation sample, 2 held-out examples and ``--steps`` optimizer steps, one
thread (``OMP_NUM_THREADS``).  The work directory (``--out``, default a new temporary one) keeps each
run's log and directory and ``results.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

UNITS = {"B": 1, "KiB": 2 ** 10, "MiB": 2 ** 20, "GiB": 2 ** 30}
WORDS = ("the court held that a statute must be read as a whole and in the context of its purpose while the "
         "appellant argued that the plain words of the section settle the question").split()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("configs", nargs="*", default=["adapter=lora"],
                        help='configurations, each one quoted list of overrides (default: "adapter=lora")')
    parser.add_argument("--model", default="model=smollm2", help="the model override(s) (default: model=smollm2)")
    parser.add_argument("--batch-sizes", default="2,8", help="the two batch sizes (default: 2,8)")
    parser.add_argument("--max-length", type=int, default=256, help="tokens per row (default: 256)")
    parser.add_argument("--steps", type=int, default=3, help="optimizer steps per run (default: 3)")
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of the runs (default: 1)")
    parser.add_argument("--out", help="work directory (default: a new temporary directory)")
    args = parser.parse_args(argv)
    small, large = sorted(int(b) for b in args.batch_sizes.split(","))
    out = Path(args.out or tempfile.mkdtemp(prefix="tuneforge-memory-"))
    out.mkdir(parents=True, exist_ok=True)
    data = write_long_records(out / "long.jsonl", args.max_length)
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")
    results = []
    for number, config in enumerate(args.configs):
        overrides = [*shlex.split(args.model), f"data.path={data}", f"data.max_length={args.max_length}",
                     "baselines=[]", "memorisation.sample=0", "data.val_size=2", f"trainer.max_steps={args.steps}",
                     "trainer.enable_progress_bar=false", "trainer.accelerator=cpu", "trainer.devices=1",
                     *shlex.split(config)]
        peaks = {}
        for batch in (small, large):
            run_dir = out / f"run-{number}-b{batch}"
            command = [sys.executable, "-m", "tuneforge", "train", *overrides, f"loader.batch_size={batch}",
                       f"run_dir={run_dir}", "resume=never"]
            peaks[batch] = peak_rss(command, out / f"train-{number}-b{batch}.log", env)
        plan = planned(overrides + [f"loader.batch_size={large}"], env)
        measured_activations = (peaks[large] - peaks[small]) / (large - small) * large
        result = {"config": config, "batch_sizes": [small, large], "peak_rss": peaks, "plan": plan,
                  "measured_activations": measured_activations}
        results.append(result)
        print_result(result)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    print(f"work directory: {out}")
    return 0


def write_long_records(path: Path, max_length: int, count: int = 64) -> Path:
    """Alpaca records whose outputs are longer than ``max_length`` tokens (truncated to it: full rows)."""
    rng = random.Random(0)
    with open(path, "w") as handle:
        for i in range(count):
            output = " ".join(rng.choice(WORDS) for _ in range(2 * max_length))
            handle.write(json.dumps({"instruction": f"Summarise case {i}.", "output": output}) + "\n")
    return path


def peak_rss(command: list, log: Path, env: dict) -> int:
    """Run ``command`` (its output into ``log``) and return its peak resident memory in bytes."""
    started = time.time()
    with open(log, "w") as handle:
        process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise SystemExit(f"{shlex.join(command)} failed ({process.returncode}); see {log}")
    print(f"  {time.time() - started:6.0f} s  peak {usage.ru_maxrss / 2 ** 20:.2f} GiB  {log.name}", flush=True)
    return usage.ru_maxrss * 1024  # Linux: kilobytes


def planned(overrides: list, env: dict) -> dict:
    """``tuneforge plan``'s parts for these overrides, in bytes (parsed from its table)."""
    completed = subprocess.run([sys.executable, "-m", "tuneforge", "plan", *overrides], capture_output=True,
                               text=True, env=env)
    if completed.returncode not in (0, 1):
        raise SystemExit(f"tuneforge plan failed: {completed.stderr.strip()}")
    parts = {}
    for line in completed.stdout.splitlines():
        match = re.match(r"\s{2}(\S.*?)\s{2,}([\d.]+) (B|KiB|MiB|GiB)\b", line)
        if match:
            parts[match.group(1).strip()] = float(match.group(2)) * UNITS[match.group(3)]
    return parts


def print_result(result: dict) -> None:
    small, large = result["batch_sizes"]
    peak, plan = result["peak_rss"][large], result["plan"]
    gib = 2 ** 30
    print(f"{result['config']}  (batch {large}; activations from batch {small} -> {large})")
    print(f"  {'':<12} {'measured':>10} {'plan':>10} {'plan/measured':>14}")
    print(f"  {'total':<12} {peak / gib:>9.2f}G {plan['total'] / gib:>9.2f}G {plan['total'] / peak:>14.2f}")
    act = result["measured_activations"]
    print(f"  {'activations':<12} {act / gib:>9.2f}G {plan['activations'] / gib:>9.2f}G "
          f"{plan['activations'] / act:>14.2f}")


if __name__ == "__main__":
    sys.exit(main())
