"""Bounded memory for any record: texts are cut before tokenization (without changing the tokens kept), and a
record over data.max_record_chars is reported with its file:line and refused or left out, never silently cut."""

import json
import subprocess
import sys
import textwrap

import pytest

from tuneforge.data import Record, prepare_splits
from tuneforge.data.samples import normalize
from tuneforge.data.tokenization import cut_length, longest_token_chars, tokenize_sample, tokenize_samples
from tuneforge.errors import DataError
from tuneforge.plugins.datasets import FilesDataConfig
from tuneforge.plugins.models import build_tiny_tokenizer

GOOD = [{"instruction": f"Question {i}?", "output": f"Answer {i}."} for i in range(12)]
#: one record of 50 MB (50 million characters of text)
HUGE_CHARS = 50_000_000


def _write(path, rows, huge_at=None):
    """``rows`` as JSON lines; with ``huge_at``, a 50 MB record written in that place (streamed, not built
    in this process's memory as one string twice)."""
    with path.open("w") as handle:
        for i, row in enumerate(rows):
            if i == huge_at:
                handle.write('{"instruction": "Summarise this.", "output": "')
                for _ in range(HUGE_CHARS // 1_000_000):
                    handle.write("lorem ipsum " * 83333 + "lore")
                handle.write('"}\n')
            handle.write(json.dumps(row) + "\n")
    return path


def test_cutting_before_tokenization_keeps_the_first_max_length_tokens():
    tokenizer = build_tiny_tokenizer()
    assert longest_token_chars(tokenizer) == len("<|endoftext|>")
    record = Record({"instruction": "Explain.", "output": "word " * 20_000}, "mem:1")
    sample = normalize(record)
    whole = tokenize_sample(tokenizer, sample)
    [cut], counts, _ = tokenize_samples([(record, sample)], tokenizer, max_length=64)
    assert cut_length(tokenizer, 64) < len(sample.messages[-1]["content"])
    assert cut["input_ids"] == whole["input_ids"][:64] and cut["labels"] == whole["labels"][:64]
    assert counts["truncated"] == 1  # counted as truncated, as the uncut text would be
    assert cut["messages"][-1]["content"] == "word " * 20_000  # the example keeps the record's own text


def test_a_record_over_the_limit_is_refused_with_its_place_or_left_out_and_counted(tmp_path):
    tokenizer = build_tiny_tokenizer()
    big = {"instruction": "Summarise.", "output": "x" * 2_000}
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in [*GOOD[:5], big, *GOOD[5:]]))
    from tuneforge.data import read_records

    records = read_records(path)
    with pytest.raises(DataError) as info:
        prepare_splits(records, tokenizer, FilesDataConfig(path=str(path), max_record_chars=1_000, cache=False))
    assert str(info.value) == (f"{path}:6: the record holds 2,027 characters, over data.max_record_chars=1,000; "
                               "remove or split it, raise data.max_record_chars, or leave such records out with "
                               "data.oversized_records=drop")
    splits = prepare_splits(records, tokenizer, FilesDataConfig(path=str(path), max_record_chars=1_000, cache=False,
                                                                oversized_records="drop"))
    assert splits.stats["oversized"] == 1 and splits.stats["train_records"] + splits.stats["val_records"] == 12
    assert all(len(ex["record"].get("output", "")) < 1_000 for ex in splits.train + splits.val)


MEASURE = textwrap.dedent("""
    import json, logging, resource, sys
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    from tuneforge.host.compose import compose, load_plugins
    from tuneforge.plugins.models import build_tiny_tokenizer
    from tuneforge.errors import DataError
    plugins = load_plugins()
    cfg = compose(["data.path=" + sys.argv[1], "data.cache=false", *sys.argv[2:]], plugins)
    outcome = "loaded"
    try:
        splits = plugins["data"].get("jsonl").load(cfg.data, build_tiny_tokenizer())
        outcome = json.dumps(splits.stats["oversized"])
    except DataError as exc:
        outcome = "error: " + str(exc)
    print(json.dumps({"outcome": outcome, "peak_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
""")


def _load_in_subprocess(path, *overrides):
    result = subprocess.run([sys.executable, "-c", MEASURE, str(path), *overrides], capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1]), result.stderr


@pytest.mark.fault(fault="one 50 MB record in a `.jsonl` file",
                   outcome="one line `data.jsonl:8: the record holds 50,000,032 characters, over "
                           "data.max_record_chars=1,000,000; ...` (with `data.oversized_records=drop`, one warning "
                           "naming it); peak memory stays within 1.5 GB of the data without it")
def test_a_50_mb_record_keeps_peak_memory_within_1_5_gb_of_the_data_without_it(tmp_path):
    baseline, _ = _load_in_subprocess(_write(tmp_path / "small.jsonl", GOOD))
    huge = _write(tmp_path / "huge.jsonl", GOOD, huge_at=7)
    refused, _ = _load_in_subprocess(huge)
    assert refused["outcome"].startswith(f"error: {huge}:8: the record holds 50,000,0")
    assert "over data.max_record_chars=1,000,000" in refused["outcome"] and "\n" not in refused["outcome"]
    dropped, log = _load_in_subprocess(huge, "data.oversized_records=drop")
    assert dropped["outcome"] == "1"
    lines = [line for line in log.splitlines() if "over data.max_record_chars" in line]
    assert len(lines) == 1 and f"{huge}:8 (50,000,0" in lines[0]
    # raised above the record's size, it is cut to what max_length tokens can use before tokenization
    cut, _ = _load_in_subprocess(huge, "data.max_record_chars=60000000")
    assert cut["outcome"] == "0"
    extra_gib = [(run["peak_kib"] - baseline["peak_kib"]) / 2 ** 20 for run in (refused, dropped, cut)]
    print("peak KiB baseline, refused, dropped, cut:", [r["peak_kib"] for r in (baseline, refused, dropped, cut)])
    assert max(extra_gib) < 1.5, extra_gib
