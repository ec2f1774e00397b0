"""The benchmark's data: alpaca records, tokenized by tuneforge, cut into one fixed list of batches.

* :func:`generate_records` - ``n`` alpaca records whose instruction, input and output lengths are
  those of real instruction data: each record takes the three lengths of one record of
  ``alpaca_lengths.json``, drawn by a seeded generator (the lengths of the 999 alpaca records
  that LLaMA-Factory's PyPI sdist ships as ``data/alpaca_en_demo.json``, counted with
  SmolLM2's tokenizer; ``record_lengths.py`` wrote the file and says how).  The text is filler
  built so that SmolLM2's tokenizer reads it as exactly that many tokens (words that are one
  token each, and ``.``/``,``), so the prompt/response split and the padding of the batches
  are those of the real data.  Same arguments, same records, on every machine: no download.
* :func:`read_records` - the records of a local data file (any file kind tuneforge reads) in any format
  tuneforge trains with its default loss (alpaca, chat / ShareGPT / OpenAI messages, completion,
  prompt/completion, Axolotl's input_output): the user's own data, detected as a tuneforge run
  detects it.  Preference and KTO records are refused (the benchmark trains with cross entropy).
* :func:`read_alpaca` - the alpaca rows of a ``.jsonl`` file (``--data sample``: the shipped
  ``plugins/data/sample.jsonl``, whose other rows are chat, preference and KTO examples).
* :func:`build_plan` - tokenize with tuneforge's own ``jsonl`` dataset (the same options the
  tuneforge run uses), draw a seeded permutation per epoch, cut it into full batches of
  ``batch_size`` until there are ``steps`` of them, and pad each with
  :func:`tuneforge.data.pad_batch` (the collator tuneforge's loader uses).  Saved as
  ``batches.safetensors`` + ``plan.json``, and the records in that order as ``ordered.jsonl``.
* :func:`shares` - the trained-position share and the padding share of a list of batches.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent
#: the recorded lengths (tokens of SmolLM2's tokenizer) of real alpaca records: see record_lengths.py
LENGTHS_FILE = HERE / "alpaca_lengths.json"

#: words that SmolLM2's tokenizer reads as exactly one token after a space (" apple"), checked with
#: the tokenizer of SmolLM2-135M-Instruct; other BPE tokenizers of similar size read them as about one
WORDS = (
    "apple river stone cloud forest garden window silver tiger ocean planet bridge candle desert "
    "engine falcon guitar harbor island jacket kettle lemon marble needle orange pencil quartz rabbit "
    "saddle tunnel umbrella valley wagon yellow zebra anchor basket castle dragon eagle feather glacier "
    "hammer jungle kitten ladder meadow nickel orchid parrot rocket shadow thunder violin "
    "walnut lantern mirror puzzle blanket compass harvest journey library morning notebook picture "
    "station teacher village weather blossom cabinet diamond fountain gravity horizon"
).split()
#: the words of WORDS that are one token without a space too: a field's first word
FIRST_WORDS = ("apple river stone cloud forest window ocean planet bridge engine orange yellow anchor castle "
               "harvest library picture station teacher weather gravity").split()


def recorded_lengths(path=LENGTHS_FILE) -> tuple:
    """``(lengths, source)``: the ``[instruction, input, output]`` token counts of the recorded
    records and where they came from (``alpaca_lengths.json``)."""
    document = json.loads(Path(path).read_text())
    return [tuple(int(x) for x in row) for row in document["lengths"]], document["source"]


def filler(rng: random.Random, tokens: int) -> str:
    """Text of exactly ``tokens`` SmolLM2 tokens (one-token words, some followed by ``.`` or ``,``)."""
    if tokens <= 0:
        return ""
    parts = [rng.choice(FIRST_WORDS)]
    while len(parts) < tokens:
        if parts[-1] not in (".", ",") and rng.random() < 0.12:
            parts.append("." if rng.random() < 0.6 else ",")
        else:
            parts.append(" " + rng.choice(WORDS))
    return "".join(parts)


def generate_records(n: int, seed: int = 0, max_field_tokens: int = 0) -> list:
    """``n`` alpaca records (``instruction``, ``input`` where the drawn record had one, ``output``)
    whose field lengths in SmolLM2 tokens are those of records drawn (with replacement, seeded)
    from ``alpaca_lengths.json``; ``max_field_tokens`` > 0 caps every field at that many tokens
    (the smoke run's tiny byte-level model).  Deterministic in ``(n, seed, max_field_tokens)``."""
    if n < 1 or max_field_tokens < 0:
        raise ValueError(f"generate_records: need n >= 1 and max_field_tokens >= 0, got n={n}, "
                         f"max_field_tokens={max_field_tokens}")
    lengths, _ = recorded_lengths()
    rng = random.Random(seed)
    records = []
    for _ in range(n):
        instruction, extra, output = (min(x, max_field_tokens) if max_field_tokens else x
                                      for x in rng.choice(lengths))
        record = {"instruction": filler(rng, max(instruction, 1))}
        if extra:
            record["input"] = filler(rng, extra)
        record["output"] = filler(rng, max(output, 1))
        records.append(record)
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


#: record formats the benchmark's cross-entropy runs can train (tuneforge.data.detect_format's names)
SFT_FORMATS = ("alpaca", "chat", "completion", "prompt_completion", "input_output")


def read_records(path) -> tuple:
    """``(records, formats)``: the records of a data file in file order, read by tuneforge's own reader
    (``.jsonl``, ``.json``, ``.csv``, ``.parquet``, gzipped too), and ``{format: count}`` as tuneforge
    detects them.  Errors name the place (``file:line``) of the first record whose format cannot be told
    or that the default loss cannot train (preference, KTO)."""
    from tuneforge.data import detect_format
    from tuneforge.data.sources import read_records as read_file_records
    from tuneforge.errors import TuneforgeError

    try:
        rows = read_file_records(path)
        records, formats = [], {}
        for row in rows:
            kind = detect_format(row)
            if kind not in SFT_FORMATS:
                raise ValueError(f"{row.source}: a {kind} record; the benchmark trains with cross entropy on "
                                 f"{', '.join(SFT_FORMATS)} records")
            records.append(row.data)
            formats[kind] = formats.get(kind, 0) + 1
    except TuneforgeError as exc:
        raise ValueError(str(exc).splitlines()[0]) from None
    if not records:
        raise ValueError(f"{path}: no records")
    return records, formats


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

    Records that give no example at ``data.max_length`` (the prompt alone fills it) are left out, with a
    printed count.  Returns ``(plan, cfg)``: the ``plan.json`` content (per step: example indices, real,
    padded and trained token counts, digest) and the composed tuneforge config.
    """
    import torch
    from safetensors.torch import save_file

    from common import BATCH_KEYS, batch_digest, real_tokens
    from tuneforge.data import IGNORE_INDEX, pad_batch

    workdir = Path(workdir)
    write_jsonl(workdir / "records.jsonl", records)
    examples, pad_token_id, cfg = tokenize(workdir / "records.jsonl", tuneforge_overrides)
    dropped = len(records) - len(examples)
    if dropped:  # tuneforge said which and why (its data line above); the plan holds the others only
        print(f"benchmark: {dropped} of {len(records)} records left out (no example at --max-length); "
              f"{len(examples)} remain", flush=True)
        records = [example["record"] for example in examples]
    for index, example in enumerate(examples):
        labels = example["labels"]
        if labels[0] != IGNORE_INDEX or all(t == IGNORE_INDEX for t in labels[1:]):
            what = "trains nothing" if all(t == IGNORE_INDEX for t in labels[1:]) else "is trained from its first token"
            raise ValueError(f"record {index + 1} {what}; the benchmark needs records that start with an untrained "
                             "prompt and train some later token (HF Trainer's loss counts every label, the first "
                             "included, where the others count the labels after the shift), so plain text "
                             "('text' records) cannot be compared: give prompt/completion, chat or alpaca records")
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
    plan = {"examples": len(examples), "dropped_records": dropped, "epochs": epoch, "batch_size": batch_size, "batches": batches,
            "tokens": [real_tokens(b) for b in padded], "padded_tokens": [int(b["input_ids"].numel()) for b in padded],
            "trained_tokens": [int((b["labels"][:, 1:] != IGNORE_INDEX).sum()) for b in padded],
            "digests": [batch_digest(b) for b in padded], "pad_token_id": pad_token_id,
            # sum of the squared example lengths per batch (attention's FLOPs grow with them: gpu_limit.py)
            "squared_lengths": [int((b["attention_mask"].sum(1) ** 2).sum()) for b in padded]}
    (workdir / "plan.json").write_text(json.dumps(plan))
    return plan, cfg


def shares(real, positions, trained) -> dict:
    """The shares of a list of batches, from their per-batch counts (sums are taken here):

    ``trained``: trained positions (those whose next-token label is not -100, i.e. ``labels[:, 1:]
    != -100``) over all positions of the padded batches (batch x padded length), which is the part
    of the output layer a loss on trained positions only computes; ``trained_of_real``: the same
    over the real (attention-mask) tokens; ``padding``: padding positions over all positions.
    """
    real, positions, trained = sum(real), sum(positions), sum(trained)
    return {"trained": trained / max(positions, 1), "trained_of_real": trained / max(real, 1),
            "padding": (positions - real) / max(positions, 1), "real_tokens": real, "positions": positions,
            "trained_positions": trained}
