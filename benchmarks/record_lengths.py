"""Record the field lengths of a real alpaca data set into ``benchmarks/alpaca_lengths.json``.

    .venv/bin/python benchmarks/record_lengths.py ALPACA.json [GGUF] [--out benchmarks/alpaca_lengths.json]

Run once by hand (not by the benchmark): the benchmark's default data (``data.py``:
:func:`~data.generate_records`) draws its records' instruction, input and output lengths from
the file this writes, so it needs neither the data set nor a download at run time.

The shipped file was made from ``data/alpaca_en_demo.json`` of the sdist of LLaMA-Factory on PyPI
(``pip download --no-deps --no-binary :all: llamafactory==0.9.5``; 999 alpaca records, English,
GPT-4-written answers as in alpaca-gpt4) with the tokenizer of SmolLM2-135M-Instruct (the
benchmark's model, read from its GGUF file).  Only lengths are kept, no text.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

HERE = Path(__file__).resolve().parent
FIELDS = ("instruction", "input", "output")
DEFAULT_GGUF = Path.home() / ".cache" / "tuneforge" / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"


def quantiles(values) -> dict:
    ordered = sorted(values)
    return {f"p{int(q * 100)}": ordered[round(q * (len(ordered) - 1))] for q in (0, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99, 1)}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", help="alpaca .json (a list) or .jsonl file")
    parser.add_argument("gguf", nargs="?", default=str(DEFAULT_GGUF), help="GGUF file whose tokenizer counts tokens")
    parser.add_argument("--source", default="data/alpaca_en_demo.json of the llamafactory 0.9.5 sdist (PyPI)",
                        help="where the data came from (written into the file)")
    parser.add_argument("--out", default=str(HERE / "alpaca_lengths.json"))
    args = parser.parse_args(argv)
    from transformers import AutoTokenizer

    text = Path(args.data).read_text()
    records = json.loads(text) if text.lstrip().startswith("[") else [json.loads(line) for line in text.splitlines()
                                                                        if line.strip()]
    gguf = Path(args.gguf)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)

    def count(value) -> int:
        return len(tokenizer(value, add_special_tokens=False)["input_ids"]) if value else 0

    lengths = [[count(record.get(field) or "") for field in FIELDS] for record in records]
    words = [[len((record.get(field) or "").split()) for field in FIELDS] for record in records]
    summary = {}
    for index, field in enumerate(FIELDS):
        summary[field] = {"tokens": quantiles([row[index] for row in lengths]),
                          "tokens_mean": round(statistics.mean(row[index] for row in lengths), 1),
                          "words_mean": round(statistics.mean(row[index] for row in words), 1)}
    summary["empty_input_share"] = round(sum(row[1] == 0 for row in lengths) / len(lengths), 3)
    document = {
        "source": args.source,
        "tokenizer": f"{gguf.name} (SmolLM2's BPE tokenizer, add_special_tokens=False, field by field)",
        "fields": list(FIELDS),
        "records": len(lengths),
        "summary": summary,
        "lengths": lengths,
    }
    body = json.dumps({k: v for k, v in document.items() if k != "lengths"}, indent=1)
    rows = ",\n  ".join(json.dumps(row, separators=(",", ":")) for row in lengths)
    Path(args.out).write_text(body[:-2] + ',\n "lengths": [\n  ' + rows + "\n ]\n}\n")
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
