"""Start-up: the wall time of one tiny training run, through tuneforge's CLI and by hand.

    python benchmarks/startup.py [--repeat 3] [--systems tuneforge,plain,hf_trainer]

Three commands, each a fresh process timed from launch to exit (``docs/performance.md``, "Start-up"):

* ``tuneforge``: ``tuneforge train model=tiny trainer.max_steps=1 run_dir=<tmp>`` (the default
  sample data, LoRA, the perplexity evaluator and both prompting baselines, the report);
* ``plain``: this file as a plain PyTorch + PEFT script: the same tiny model
  (``tuneforge.plugins.models.load_tiny``, its tokenizer), the sample data tokenized, LoRA r=8
  on all linear layers, one AdamW step on a batch of 8, the adapter saved;
* ``hf_trainer``: the same with ``transformers.Trainer`` (``max_steps=1``, no evaluation, no
  checkpoint, no tracker), the adapter saved.

The systems run interleaved (``tuneforge, plain, hf_trainer, tuneforge, ...``) so that a noisy
neighbour hits them alike; the median of ``--repeat`` runs is printed per system, with the
difference to HF Trainer's.  Run it on a quiet machine: every process starts torch.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SYSTEMS = ("tuneforge", "plain", "hf_trainer")
SAMPLE = Path(__file__).resolve().parent.parent / "plugins" / "data" / "sample.jsonl"
#: the tiny run's settings (tuneforge's defaults for model=tiny adapter=lora)
BATCH_SIZE, LR, LORA_R, LORA_ALPHA, LORA_DROPOUT = 8, 2e-4, 8, 16, 0.05


def record_text(record: dict) -> str:
    """One training text of a sample record (alpaca fields or chat messages), plainly joined."""
    if "messages" in record:
        return "\n".join(f"{m['role']}: {m['content']}" for m in record["messages"])
    return "\n".join(str(record[key]) for key in ("instruction", "input", "output") if record.get(key))


def tiny_model_and_batches():
    """The tiny model with LoRA, and the sample data as tokenized rows (``input_ids``, ``labels``)."""
    from peft import LoraConfig, TaskType, get_peft_model

    from tuneforge.plugins.models import TinyModelConfig, load_tiny

    model, tokenizer = load_tiny(TinyModelConfig())
    model = get_peft_model(model, LoraConfig(task_type=TaskType.CAUSAL_LM, r=LORA_R, lora_alpha=LORA_ALPHA,
                                             lora_dropout=LORA_DROPOUT, target_modules="all-linear"))
    rows = []
    with open(SAMPLE, encoding="utf-8") as lines:
        for line in lines:
            ids = tokenizer(record_text(json.loads(line)) + tokenizer.eos_token)["input_ids"][:1024]
            rows.append({"input_ids": ids, "labels": list(ids)})
    return model, tokenizer, rows


def pad(rows, pad_id: int) -> dict:
    """A batch of rows padded on the right (labels -100 on padding)."""
    import torch

    length = max(len(row["input_ids"]) for row in rows)
    ids = [row["input_ids"] + [pad_id] * (length - len(row["input_ids"])) for row in rows]
    labels = [row["labels"] + [-100] * (length - len(row["labels"])) for row in rows]
    mask = [[1] * len(row["input_ids"]) + [0] * (length - len(row["input_ids"])) for row in rows]
    return {"input_ids": torch.tensor(ids), "attention_mask": torch.tensor(mask), "labels": torch.tensor(labels)}


def plain(out_dir: Path) -> None:
    """One AdamW step by hand, then the adapter saved."""
    import torch

    torch.manual_seed(42)
    model, tokenizer, rows = tiny_model_and_batches()
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=LR)
    loss = model(**pad(rows[:BATCH_SIZE], tokenizer.pad_token_id)).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    print(f"plain: loss {float(loss):.4f}")
    model.save_pretrained(out_dir / "model")


def hf_trainer(out_dir: Path) -> None:
    """One step of ``transformers.Trainer``, then the adapter saved."""
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments

    model, tokenizer, rows = tiny_model_and_batches()
    args = TrainingArguments(output_dir=str(out_dir), max_steps=1, per_device_train_batch_size=BATCH_SIZE,
                             learning_rate=LR, lr_scheduler_type="cosine", max_grad_norm=1.0, logging_steps=1,
                             save_strategy="no", eval_strategy="no", report_to=[], use_cpu=True, seed=42)
    trainer = Trainer(model=model, args=args, train_dataset=Dataset.from_list(rows),
                      data_collator=lambda batch: pad(batch, tokenizer.pad_token_id))
    trainer.train()
    trainer.save_model(str(out_dir / "model"))


def command(system: str, out_dir: Path) -> list:
    """The command line of one run of ``system`` writing into ``out_dir``."""
    if system == "tuneforge":  # the console script as a user runs it (python -m tuneforge without one)
        cli = Path(sys.executable).with_name("tuneforge")
        program = [str(cli)] if cli.is_file() else [sys.executable, "-m", "tuneforge"]
        return [*program, "train", "model=tiny", "trainer.max_steps=1", f"run_dir={out_dir}"]
    return [sys.executable, __file__, "--child", system, str(out_dir)]


def children_cpu_s() -> float:
    """User + system CPU seconds of this process's finished children so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def machine_cpu_s() -> float:
    """CPU seconds all processes of the machine have used so far (``/proc/stat``; 0 where there is none)."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except OSError:
        return 0.0
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def measure(repeat: int, systems) -> tuple:
    """``({system: [wall seconds, ...]}, {system: [CPU seconds, ...]})``: each command ``repeat`` times,
    interleaved, each in a fresh directory of one temp dir.  Each run also prints the CPU time other
    processes used meanwhile ("others"): on a shared machine a run where that is more than a few tenths
    of a second is slowed by them (torch's threads wait for a core), and is better repeated."""
    times, cpu = {system: [] for system in systems}, {system: [] for system in systems}
    with tempfile.TemporaryDirectory(prefix="tuneforge-startup-") as tmp:
        for number in range(repeat):
            for system in systems:
                out_dir = Path(tmp) / f"{system}-{number}"
                started, cpu_before, machine_before = time.perf_counter(), children_cpu_s(), machine_cpu_s()
                done = subprocess.run(command(system, out_dir), cwd=tmp, capture_output=True, text=True)
                wall, used = time.perf_counter() - started, children_cpu_s() - cpu_before
                others = max(0.0, machine_cpu_s() - machine_before - used)
                if done.returncode != 0:
                    raise SystemExit(f"{system} failed ({done.returncode}):\n{done.stderr[-3000:]}")
                times[system].append(wall)
                cpu[system].append(used)
                print(f"{system:11s} run {number + 1}: {wall:.2f} s wall, {used:.2f} s CPU "
                      f"(others {others:.2f} s CPU meanwhile)", flush=True)
    return times, cpu


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--systems", default=",".join(SYSTEMS))
    parser.add_argument("--child", choices=SYSTEMS[1:], help=argparse.SUPPRESS)
    parser.add_argument("out_dir", nargs="?", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return {"plain": plain, "hf_trainer": hf_trainer}[args.child](Path(args.out_dir))
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = sorted(set(systems) - set(SYSTEMS))
    if unknown:
        raise SystemExit(f"unknown systems {unknown}; valid: {', '.join(SYSTEMS)}")
    times, cpu = measure(args.repeat, systems)
    medians = {system: statistics.median(values) for system, values in times.items()}
    print(f"\nmedian of {args.repeat} (cpu count {os.cpu_count()}):")
    for system, median in medians.items():
        versus = f" ({median - medians['hf_trainer']:+.2f} s vs hf_trainer)" if "hf_trainer" in medians else ""
        print(f"  {system:11s} {median:.2f} s wall{versus}, {statistics.median(cpu[system]):.2f} s CPU")


if __name__ == "__main__":
    main()
