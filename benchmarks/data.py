"""The benchmark's data: alpaca records, tokenized by tuneforge, cut into one fixed list of batches.

* :func:`generate_records` - ``n`` alpaca records of varied length from a seeded generator
  (word-list tasks: upper-case, reverse, sort, first letters, count, copy; the input has
  3 to ``max_words`` words, log-uniformly, so batch padding is realistic).  Same arguments,
  same records, on every machine: no download.
* :func:`read_alpaca` - the alpaca rows of a local ``.jsonl`` file (e.g. the shipped
  ``plugins/data/sample.jsonl``; chat rows are left out).
* :func:`build_plan` - tokenize with tuneforge's own ``jsonl`` dataset (the same options the
  tuneforge run uses), draw a seeded permutation per epoch, cut it into full batches of
  ``batch_size`` until there are ``steps`` of them, and pad each with
  :func:`tuneforge.data.pad_batch` (the collator tuneforge's loader uses).  Saved as
  ``batches.safetensors`` + ``plan.json``, and the records in that order as ``ordered.jsonl``.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

WORDS = (
    "apple river stone cloud forest garden window silver tiger ocean planet bridge candle desert "
    "engine falcon guitar harbor island jacket kettle lemon marble needle orange pencil quartz rabbit "
    "saddle tunnel umbrella valley wagon yellow zebra anchor basket castle dragon eagle feather glacier "
    "hammer igloo jungle kitten ladder meadow nickel orchid parrot quiver rocket shadow thunder violin "
    "walnut lantern mirror puzzle blanket compass harvest journey library morning notebook picture "
    "station teacher village weather blossom cabinet diamond fountain gravity horizon"
).split()

TASKS = (
    ("Write the words in capital letters.", lambda words: " ".join(w.upper() for w in words)),
    ("Write the words in reverse order.", lambda words: " ".join(reversed(words))),
    ("Sort the words alphabetically.", lambda words: " ".join(sorted(words))),
    ("Give the first letter of every word.", lambda words: "".join(w[0] for w in words)),
    ("How many words are there?", lambda words: str(len(words))),
    ("Copy the text exactly.", lambda words: " ".join(words)),
)


def generate_records(n: int, seed: int = 0, max_words: int = 120) -> list:
    """``n`` alpaca records (``instruction``, ``input``, ``output``); every fifth one has no ``input``
    (the words are in the instruction).  Deterministic in ``(n, seed, max_words)``."""
    if n < 1 or max_words < 3:
        raise ValueError(f"generate_records: need n >= 1 and max_words >= 3, got n={n}, max_words={max_words}")
    rng = random.Random(seed)
    records = []
    for index in range(n):
        count = int(round(math.exp(rng.uniform(math.log(3), math.log(max_words)))))
        words = [rng.choice(WORDS) for _ in range(count)]
        instruction, answer = TASKS[index % len(TASKS)]
        text = " ".join(words)
        if index % 5 == 4:
            records.append({"instruction": f"{instruction} Words: {text}", "output": answer(words)})
        else:
            records.append({"instruction": instruction, "input": text, "output": answer(words)})
    return records


def read_alpaca(path) -> list:
    """The alpaca rows (with ``instruction`` and ``output``) of a ``.jsonl`` file, in file order."""
    records = []
    with open(path) as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{number}: not JSON ({exc.msg})") from None
            if isinstance(row, dict) and "instruction" in row and "output" in row:
                records.append({k: row[k] for k in ("instruction", "input", "output") if k in row})
    if not records:
        raise ValueError(f"{path}: no alpaca records (objects with 'instruction' and 'output')")
    return records


def write_jsonl(path, records) -> None:
    with open(path, "w") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")


def tokenize(records_path, tuneforge_overrides):
    """Tokenized examples and the pad id, through tuneforge's model source and ``jsonl`` dataset.

    ``tuneforge_overrides`` are the tuneforge run's overrides; ``data.path`` is pointed at
    ``records_path``.  Returns ``(examples, pad_token_id, cfg)``.
    """
    from tuneforge.host.components import run_components
    from tuneforge.host.compose import compose, load_plugins

    overrides = [o for o in tuneforge_overrides if not o.startswith(("data.path=", "callbacks="))]
    overrides.append(f"data.path={records_path}")
    plugins = load_plugins(overrides)
    run = run_components(compose(overrides), plugins)  # the plugins get their typed configs, as in a run
    model, tokenizer = run.model.spec.load(run.model.config)
    del model
    splits = run.data.spec.load(run.data.config, tokenizer)
    return splits.train, tokenizer.pad_token_id, run.config


def build_plan(workdir, records: list, tuneforge_overrides, *, batch_size: int, steps: int, seed: int):
    """Tokenize ``records``, fix the batch sequence and save it (see the module docstring).

    Returns ``(plan, cfg)``: the ``plan.json`` content (per step: example indices, real,
    padded and trained token counts, digest) and the composed tuneforge config.
    """
    import torch
    from safetensors.torch import save_file

    from common import BATCH_KEYS, batch_digest, real_tokens
    from tuneforge.data import IGNORE_INDEX, pad_batch

    workdir = Path(workdir)
    write_jsonl(workdir / "records.jsonl", records)
    examples, pad_token_id, cfg = tokenize(workdir / "records.jsonl", tuneforge_overrides)
    if len(examples) != len(records):
        raise ValueError(f"tokenizing {len(records)} records gave {len(examples)} examples (some dropped); "
                         "raise --max-length")
    for index, example in enumerate(examples):
        labels = example["labels"]
        if labels[0] != IGNORE_INDEX or all(t == IGNORE_INDEX for t in labels[1:]):
            raise ValueError(f"record {index}: its first token must be an untrained prompt token and some "
                             "later token trained (HF's loss counts labels before the shift); check the data")
    if len(examples) < batch_size:
        raise ValueError(f"{len(examples)} examples are fewer than one batch of {batch_size}")
    batches, epoch = [], 0
    while len(batches) < steps:
        order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(seed + epoch)).tolist()
        for start in range(0, len(order) - batch_size + 1, batch_size):
            if len(batches) < steps:
                batches.append(order[start:start + batch_size])
        epoch += 1
    padded = [pad_batch([examples[i] for i in indices], pad_token_id) for indices in batches]
    for step, batch in enumerate(padded):
        if set(batch) != set(BATCH_KEYS):
            raise ValueError(f"batch {step} has fields {sorted(batch)}; the benchmark handles {list(BATCH_KEYS)}")
    save_file({f"{key}.{step}": batch[key].to(torch.int64).contiguous() for step, batch in enumerate(padded)
               for key in BATCH_KEYS}, str(workdir / "batches.safetensors"))
    write_jsonl(workdir / "ordered.jsonl", [records[i] for indices in batches for i in indices])
    plan = {"examples": len(examples), "epochs": epoch, "batch_size": batch_size, "batches": batches,
            "tokens": [real_tokens(b) for b in padded], "padded_tokens": [int(b["input_ids"].numel()) for b in padded],
            "trained_tokens": [int((b["labels"][:, 1:] != IGNORE_INDEX).sum()) for b in padded],
            "digests": [batch_digest(b) for b in padded], "pad_token_id": pad_token_id}
    (workdir / "plan.json").write_text(json.dumps(plan))
    return plan, cfg
