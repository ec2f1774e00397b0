"""Sources: local files of every kind, folders, Hugging Face datasets, splits, and the Hydra data group."""

from __future__ import annotations

import csv
import functools
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tuneforge.data import DataConfig, prepare_splits, read_hf, read_records
from helpers import assert_read_or_refused_in_one_line
from tuneforge.errors import DataError
from tuneforge.plugins.datasets import FilesDataConfig, HFDataConfig, hf_example_kinds, load_files, load_hf
from tuneforge.plugins.models import build_tiny_tokenizer

ROWS = [{"instruction": f"Upper-case word {i}.", "input": f"w{i}", "output": f"W{i}"} for i in range(6)]


@functools.lru_cache(maxsize=None)
def tiny():
    return build_tiny_tokenizer()


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def write_csv(path: Path, rows) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_parquet(path: Path, rows) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def test_every_file_kind_reads_the_same_records_with_their_places(tmp_path):
    files = {
        "jsonl": write_jsonl(tmp_path / "d.jsonl", ROWS),
        "json": tmp_path / "d.json",
        "csv": write_csv(tmp_path / "d.csv", ROWS),
        "parquet": write_parquet(tmp_path / "d.parquet", ROWS),
    }
    files["json"].write_text(json.dumps(ROWS, indent=1), encoding="utf-8")
    for kind, path in files.items():
        records = read_records(path)
        assert [r.data for r in records] == ROWS, kind
        assert read_records(path, kind) == records
    assert [r.source for r in read_records(files["jsonl"])] == [f"{files['jsonl']}:{i}" for i in range(1, 7)]
    assert [r.source for r in read_records(files["csv"])] == [f"{files['csv']}:{i}" for i in range(2, 8)]
    assert read_records(files["json"])[2].source == f"{files['json']}:row 2"
    assert read_records(files["parquet"])[5].source == f"{files['parquet']}:row 5"


def test_json_file_holding_json_lines_is_read_line_by_line(tmp_path):
    path = write_jsonl(tmp_path / "lines.json", ROWS[:2])
    assert [r.source for r in read_records(path)] == [f"{path}:1", f"{path}:2"]


def test_csv_multiline_cells_keep_their_start_line_and_json_message_cells_parse(tmp_path):
    path = tmp_path / "chat.csv"
    messages = [{"role": "user", "content": "a\nb"}, {"role": "assistant", "content": "c"}]
    write_csv(path, [{"messages": json.dumps(messages)}, {"messages": json.dumps(messages)}])
    records = read_records(path)
    assert [r.source for r in records] == [f"{path}:2", f"{path}:3"]
    splits = prepare_splits(records, tiny(), DataConfig(val_size=0, cache=False))
    assert splits.train[0]["messages"] == messages


@pytest.mark.parametrize("quoted", [False, True])
def test_csv_cells_holding_unicode_line_separators_stay_one_cell_on_their_line(tmp_path, quoted):
    """Rows were cut at U+2028, U+2029, form feeds ... (str.splitlines), as Python's csv module writes them
    unquoted: 'row has 1 cells but the header names 2 columns', and later lines numbered wrong when quoted."""
    answers = ["one\u2028two", "page\x0cbreak", "para\u2029graph", "sep\x1crecord", "plain"]
    rows = [{"instruction": f"q{i}", "output": answer} for i, answer in enumerate(answers)]
    path = tmp_path / "scraped.csv"
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["instruction", "output"],
                                quoting=csv.QUOTE_ALL if quoted else csv.QUOTE_MINIMAL)
        writer.writeheader()
        writer.writerows(rows)
    records = read_records(path)
    assert [r.data for r in records] == rows
    assert [r.source for r in records] == [f"{path}:{line}" for line in range(2, 7)]


def test_csv_headers_of_other_tools_say_what_is_wrong(tmp_path):
    semicolons = tmp_path / "excel.csv"
    semicolons.write_text("instruction;output\nq;a\n", encoding="utf-8")
    with pytest.raises(DataError) as info:
        read_records(semicolons)
    assert str(info.value) == (f"{semicolons}:1: the CSV header is one column 'instruction;output': the file looks "
                               "separated by ';'; save it with ',' between cells (comma-separated CSV)")
    pandas = tmp_path / "pandas.csv"
    pandas.write_text(",instruction,output\n0,q,a\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"pandas.csv:1: the CSV header must name every column once, got \['', "
                                        r"'instruction', 'output'\] \(an unnamed first column is a pandas index: "
                                        r"save with to_csv\(\.\.\., index=False\)\)$"):
        read_records(pandas)
    spaced = tmp_path / "spaced.csv"
    spaced.write_text("instruction, output\nq, a\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"spaced.csv:2: alpaca record is missing 'output' .* \(its key ' output' "
                                        r"has spaces around the name: remove them, in a CSV header too, or map it "
                                        r"with data.columns\)$"):
        prepare_splits(read_records(spaced), tiny(), DataConfig(val_size=0, cache=False))
    trailing = tmp_path / "trailing.csv"  # a whitespace line is blank, as in JSON Lines
    trailing.write_text("instruction,output\nq,a\n   \n\n", encoding="utf-8")
    assert [r.data for r in read_records(trailing)] == [{"instruction": "q", "output": "a"}]
    single = tmp_path / "text.csv"  # one column is fine
    single.write_text("text\nhello; world\n", encoding="utf-8")
    assert [r.data for r in read_records(single)] == [{"text": "hello; world"}]


def test_folder_reads_every_data_file_sorted_and_skips_others(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", ROWS[:2])
    (tmp_path / "b").mkdir()
    write_csv(tmp_path / "b" / "x.csv", ROWS[2:4])
    write_parquet(tmp_path / "c.parquet", ROWS[4:])
    (tmp_path / "README.md").write_text("not data")
    (tmp_path / ".hidden.jsonl").write_text("{broken")
    assert [r.data for r in read_records(tmp_path)] == ROWS
    assert [r.data for r in read_records(tmp_path, "csv")] == ROWS[2:4]
    with pytest.raises(DataError, match="holds no data file"):
        read_records(tmp_path / "b", "parquet")


def test_bad_json_line_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "ok"}\n\n{"text": "broken"\n', encoding="utf-8")
    with pytest.raises(DataError, match=rf"^{path}:3: invalid JSON") as info:
        read_records(path)
    assert "\n" not in str(info.value)
    path.write_text('{"text": "ok"}\n[1, 2]\n', encoding="utf-8")
    with pytest.raises(DataError, match=rf"{path}:2: expected a JSON object"):
        read_records(path)
    path.write_bytes(b'{"text": "ok"}\n{"text": "\xff"}\n')
    with pytest.raises(DataError, match=rf"{path}:2: not UTF-8"):
        read_records(path)


@pytest.mark.parametrize("encoding, shown, sign", [
    ("utf-16", "UTF-16", "it starts with a UTF-16 byte-order mark"),
    ("utf-16-le", "UTF-16LE", "UTF-16LE without a byte-order mark: every other byte of its text is NUL"),
    ("utf-16-be", "UTF-16BE", "UTF-16BE without a byte-order mark: every other byte of its text is NUL"),
    ("utf-32", "UTF-32", "it starts with a UTF-32 byte-order mark"),
    ("utf-32-le", "UTF-32LE", "UTF-32LE without a byte-order mark: three bytes in four of its text are NUL"),
])
@pytest.mark.parametrize("name", ["train.jsonl", "train.csv", "train.json", "train.jsonl.gz"])
def test_a_utf16_or_utf32_file_is_named_as_such_with_how_to_convert_it(tmp_path, encoding, shown, sign, name):
    """Excel's "Unicode text" and Windows tools save UTF-16: it was "not UTF-8 text (byte 0 of the line)", or
    without a byte-order mark "invalid JSON (Expecting property name ...)", saying neither what nor how."""
    import gzip

    text = ("instruction,output\n" + "".join(f"{r['instruction']},{r['output']}\n" for r in ROWS)
            if name.endswith(".csv") else json.dumps(ROWS) if name.endswith(".json")
            else "".join(json.dumps(r) + "\n" for r in ROWS))
    path = tmp_path / name
    data = text.encode(encoding)
    path.write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
    family = shown[:6]
    plain = name.removesuffix(".gz")
    utf8 = plain.replace("train.", "train.utf8.")
    convert = (f"gunzip -c {name} | iconv -f {shown} -t UTF-8 > {utf8}" if name.endswith(".gz")
               else f"iconv -f {shown} -t UTF-8 {name} > {utf8}")
    for kind in ("auto", "jsonl" if name.startswith("train.jsonl") else name.rsplit(".", 1)[1]):
        with pytest.raises(DataError) as info:
            read_records(path, kind)
        assert str(info.value) == (f"{path}:1: the file is {family} text, not UTF-8 ({sign}); convert it to "
                                   f"UTF-8, e.g. {convert}")
    if name.endswith(".gz"):
        return
    converted = tmp_path / "converted" / name
    converted.parent.mkdir()
    converted.write_bytes(data.decode(encoding).encode("utf-8"))  # what iconv writes
    assert len(read_records(converted)) == len(ROWS)


def test_utf8_text_with_wide_characters_is_not_taken_for_utf16(tmp_path):
    from tuneforge.data.encodings import wide_encoding

    rows = [{"text": "日本語のテキスト 🌤️ " * 3}, {"text": "Ünïcödé"}, {"text": "x"}]
    path = tmp_path / "u.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8-sig")
    assert [r.data for r in read_records(path)] == rows
    assert wide_encoding(path.read_bytes()) is None and wide_encoding(b"") is None and wide_encoding(b"{}") is None


def test_bad_json_array_and_csv_rows_name_their_line(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('[\n {"text": "a"},\n {"text": }\n]', encoding="utf-8")
    with pytest.raises(DataError, match=rf"{path}:3: invalid JSON"):
        read_records(path)
    path.write_text('{"rows": []}', encoding="utf-8")
    assert read_records(path)[0].data == {"rows": []}
    path.write_text('"just a string"', encoding="utf-8")
    with pytest.raises(DataError, match="must hold an array of objects"):
        read_records(path)
    ragged = tmp_path / "bad.csv"
    ragged.write_text("instruction,output\nq,a\nq2,a2,extra\n", encoding="utf-8")
    with pytest.raises(DataError, match=rf"{ragged}:3: row has 3 cells but the header names 2"):
        read_records(ragged)


def test_a_bad_record_deep_in_a_file_is_reported_with_its_line(tmp_path):
    rows = ROWS + [{"instruction": "no output here"}]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    with pytest.raises(DataError, match=rf"{path}:7: alpaca record is missing 'output'"):
        load_files(FilesDataConfig(path=str(path), cache=False, val_size=0), tiny())


def test_missing_and_unknown_files_are_clear_errors(tmp_path):
    with pytest.raises(DataError, match="data file not found"):
        read_records(tmp_path / "nope.jsonl")
    (tmp_path / "d.txt").write_text("x")
    with pytest.raises(DataError, match=r"suffix '.txt'; valid: .jsonl, .json, .csv, .parquet"):
        read_records(tmp_path / "d.txt")
    (tmp_path / "bad.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match="not a readable Parquet file"):
        read_records(tmp_path / "bad.parquet")


def _within(seconds, function, *args, **kwargs):
    """``function(*args, **kwargs)`` in a thread: its result or exception, failing the test when it does not
    return within ``seconds`` (a FIFO opened for reading waits for a writer forever)."""
    import threading

    outcome = {}

    def call():
        try:
            outcome["value"] = function(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            outcome["error"] = exc

    worker = threading.Thread(target=call, daemon=True)
    worker.start()
    worker.join(seconds)
    assert not worker.is_alive(), f"{function.__name__} still waiting after {seconds}s (it opened the FIFO)"
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this system")
@pytest.mark.parametrize("kind", ["auto", "jsonl", "csv", "parquet"])
def test_a_fifo_or_a_device_is_refused_in_one_line_without_being_opened(tmp_path, kind):
    from tuneforge.data import first_record
    from tuneforge.training.data_files import hash_paths

    fifo = tmp_path / "train.jsonl"
    os.mkfifo(fifo)
    expected = (rf"^{fifo} is not a regular file \(a FIFO, a named pipe\): give a data file or a folder of them "
                r"\(data.path\)$")
    for read in (read_records, first_record):
        with pytest.raises(DataError, match=expected):
            _within(20, read, fifo, kind)
    link = tmp_path / "link.jsonl"
    link.symlink_to(fifo)
    with pytest.raises(DataError, match="a FIFO"):
        _within(20, read_records, link, kind)
    assert _within(20, hash_paths, [str(fifo)]) == {}  # the run's data hashes skip it too
    (tmp_path / "folder").mkdir()
    os.mkfifo(tmp_path / "folder" / "more.jsonl")
    write_jsonl(tmp_path / "folder" / "d.jsonl", ROWS)  # in a folder it is not a data file: skipped
    assert len(_within(20, read_records, tmp_path / "folder")) == len(ROWS)
    if os.path.exists("/dev/null"):  # it exists: not "data file not found"
        with pytest.raises(DataError, match=r"^/dev/null is not a regular file \(a character device\)"):
            read_records("/dev/null", kind)


@pytest.mark.fault(fault='a FIFO (or /dev/null, a device) as `data.path`',
                   outcome='one line `<path> is not a regular file (a FIFO, a named pipe): give a data file or a '
                           'folder of them (data.path)`; never opened, so nothing hangs')
def test_a_fifo_as_data_path_stops_a_run_in_one_line(tmp_path):
    from helpers import run_cli

    if not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs on this system")
    os.mkfifo(tmp_path / "train.jsonl")
    result = run_cli(["train", "model=tiny", "threads=1", "baselines=[]", "data=jsonl",
                      f"data.path={tmp_path / 'train.jsonl'}", f"run_dir={tmp_path / 'run'}", "trainer.max_steps=1"],
                     env={"OMP_NUM_THREADS": "1"}, timeout=120)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"tuneforge: error: {tmp_path / 'train.jsonl'} is not a regular file (a FIFO, a named pipe): give a data "
        "file or a folder of them (data.path)")


def test_named_kind_reads_a_file_whatever_its_suffix(tmp_path):
    path = write_jsonl(tmp_path / "train.txt", ROWS)
    splits = load_files(FilesDataConfig(path=str(path), cache=False), tiny(), kind="jsonl")
    assert splits.stats["train_records"] + splits.stats["val_records"] == len(ROWS)


def test_split_by_fraction_count_or_file_is_deterministic(tmp_path):
    rows = [{"instruction": f"q{i}", "output": f"a{i}"} for i in range(20)]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    base = dict(path=str(path), cache=False)
    by_fraction = load_files(FilesDataConfig(**base, val_fraction=0.25), tiny())
    assert (by_fraction.stats["train_examples"], by_fraction.stats["val_examples"]) == (15, 5)
    again = load_files(FilesDataConfig(**base, val_fraction=0.25), tiny())
    assert [e["source"] for e in again.train] == [e["source"] for e in by_fraction.train]
    other_seed = load_files(FilesDataConfig(**base, val_fraction=0.25, seed=1), tiny())
    assert [e["source"] for e in other_seed.train] != [e["source"] for e in by_fraction.train]
    by_count = load_files(FilesDataConfig(**base, val_size=3), tiny())
    assert len(by_count.val) == 3 and len(by_count.train) == 17
    assert not {e["source"] for e in by_count.val} & {e["source"] for e in by_count.train}
    unshuffled = load_files(FilesDataConfig(**base, val_size=2, shuffle=False), tiny())
    assert [e["record"] for e in unshuffled.val] == rows[:2]
    val_file = write_jsonl(tmp_path / "v.jsonl", rows[:4])
    separate = load_files(FilesDataConfig(**base, val_path=str(val_file)), tiny())
    assert len(separate.train) == 20 and [e["source"] for e in separate.val] == [f"{val_file}:{i}" for i in range(1, 5)]
    limited = load_files(FilesDataConfig(**base, val_size=5, max_examples=4), tiny())
    assert (limited.stats["train_records"], limited.stats["val_records"]) == (4, 5)
    with pytest.raises(DataError, match="leaves no training records"):
        load_files(FilesDataConfig(**base, val_size=20), tiny())


def test_a_stratified_split_holds_out_every_label_in_proportion(tmp_path):
    from collections import Counter

    from tuneforge.data import split_records
    from tuneforge.data.quality import assess

    labels = ["billing"] * 40 + ["shipping"] * 30 + ["returns"] * 20 + ["account"] * 8 + ["rare"] * 2
    rows = [{"messages": [{"role": "user", "content": f"ticket {i}"}, {"role": "assistant", "content": label}]}
            for i, label in enumerate(labels)]
    path = write_jsonl(tmp_path / "tickets.jsonl", rows)
    base = dict(path=str(path), cache=False, val_fraction=0.2)
    plain = load_files(FilesDataConfig(**base), tiny())
    strat = load_files(FilesDataConfig(**base, stratify=True), tiny())
    held = Counter(ex["record"]["messages"][-1]["content"] for ex in strat.val)
    assert len(strat.val) == len(plain.val) == 20 and len(strat.train) == 80
    assert held == {"billing": 8, "shipping": 6, "returns": 4, "account": 2}, "20% of each, 'rare' stays in training"
    assert not {e["source"] for e in strat.val} & {e["source"] for e in strat.train}
    again = load_files(FilesDataConfig(**base, stratify=True), tiny())
    assert [e["source"] for e in again.val] == [e["source"] for e in strat.val]
    # the plain split is the one it always was (the same seeded shuffle of the same records)
    import random

    records = [f"r{i}" for i in range(10)]
    shuffled = list(records)
    random.Random(5).shuffle(shuffled)
    assert split_records(records, val_size=3, seed=5) == (shuffled[3:], shuffled[:3])
    # open answers (one record each) still give the requested count
    assert len(split_records(list(range(10)), val_size=3, labels=[str(i) for i in range(10)])[1]) == 3
    # the quality report counts held-out examples per label and warns when one has too few
    report = assess(plain)
    assert set(report["val_labels"]) == set(report["labels"]) and sum(report["val_labels"].values()) == 20
    thin = [w for w in assess(strat)["warnings"] if w.startswith("held-out examples per label")]
    assert thin and "'account' has 2" in thin[0] and "data.stratify=true" in thin[0]
    # records without an answer, and a separate held-out file, are refused
    text = write_jsonl(tmp_path / "text.jsonl", [{"text": f"plain {i}"} for i in range(10)])
    with pytest.raises(DataError, match=r"text\.jsonl:\d+: data\.stratify=true splits by each record's answer"):
        load_files(FilesDataConfig(path=str(text), cache=False, stratify=True), tiny())
    with pytest.raises(DataError, match=r"data\.stratify=true splits the records of data\.path, but the held-out "
                                         r"records are given separately"):
        load_files(FilesDataConfig(path=str(path), val_path=str(path), cache=False, stratify=True), tiny())


def test_truncation_and_drop_are_counted_in_stats(tmp_path):
    rows = [{"instruction": "q", "output": "x" * 200}, {"instruction": "q", "output": "y"}]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    cfg = dict(path=str(path), cache=False, val_size=0, max_length=40)
    assert load_files(FilesDataConfig(**cfg), tiny()).stats["truncated"] == 1
    dropped = load_files(FilesDataConfig(**cfg, truncation="drop"), tiny())
    assert dropped.stats["dropped"] == 1 and dropped.stats["train_examples"] == 1


def test_shipped_sample_loads_with_default_config():
    from omegaconf import OmegaConf

    splits = load_files(OmegaConf.structured(FilesDataConfig(cache=False)), tiny())
    assert splits.stats["formats"] == {"alpaca": 32, "chat": 32}
    assert splits.train and splits.val


# ---------------------------------------------------------------------------
# Hugging Face datasets
# ---------------------------------------------------------------------------


def test_hf_local_folder_and_builder_with_data_files(tmp_path):
    data = tmp_path / "ds"
    data.mkdir()
    write_jsonl(data / "train.jsonl", ROWS)
    write_jsonl(data / "validation.jsonl", ROWS[:2])
    cache = str(tmp_path / "hf-cache")
    records = read_hf(str(data), "train", cache_dir=cache)
    assert [r.data for r in records] == ROWS and records[3].source == f"{data}[train]:row 3"
    splits = load_hf(HFDataConfig(path=str(data), val_split="validation", hf_cache_dir=cache, cache=False), tiny())
    assert splits.stats["train_records"] == 6 and splits.stats["val_records"] == 2
    built = load_hf(HFDataConfig(path="json", data_files=str(data / "train.jsonl"), hf_cache_dir=cache,
                                 cache=False, val_size=1), tiny())
    assert built.stats["train_records"] == 5
    with pytest.raises(DataError, match="Unknown split"):
        read_hf(str(data), "test", cache_dir=cache)


def test_hf_reads_a_local_data_file_as_documented(tmp_path):
    """docs/data.md: data.path may be "a local folder or file"; a file was "Couldn't find any data file at ..."."""
    import gzip

    cache = str(tmp_path / "hf-cache")
    files = [write_jsonl(tmp_path / "train.jsonl", ROWS), write_csv(tmp_path / "train.csv", ROWS),
             write_parquet(tmp_path / "train.parquet", ROWS), tmp_path / "train.json", tmp_path / "t.jsonl.gz"]
    files[3].write_text(json.dumps(ROWS), encoding="utf-8")
    files[4].write_bytes(gzip.compress(files[0].read_bytes()))
    for path in files:
        records = read_hf(str(path), "train", cache_dir=cache)
        assert [r.data for r in records] == ROWS and records[2].source == f"{path}[train]:row 2", path
    splits = load_hf(HFDataConfig(path=str(files[0]), hf_cache_dir=cache, cache=False, val_size=2), tiny())
    assert (splits.stats["train_records"], splits.stats["val_records"]) == (4, 2)
    # a file mixing layouts (docs/data.md: a split may mix alpaca, chat, completion, prompt_completion): the
    # dataset gives every row every column, null where the record had none
    mixed = write_jsonl(tmp_path / "mixed.jsonl", [ROWS[0], {"text": "plain text"}, {"prompt": "p", "completion": "c"},
                                                   {"messages": [{"role": "user", "content": "q"},
                                                                 {"role": "assistant", "content": "a"}]}])
    loaded = load_hf(HFDataConfig(path=str(mixed), hf_cache_dir=cache, cache=False, val_size=0, shuffle=False), tiny())
    assert [e["format"] for e in loaded.train] == ["alpaca", "completion", "prompt_completion", "chat"]
    assert loaded.stats["unused_keys"] == {}
    other = tmp_path / "notes.md"
    other.write_text("x")
    with pytest.raises(DataError, match=r"^data.path: \S+notes.md: data=hf reads a local file by its suffix; valid: "
                                        r"\.json, \.jsonl, \.csv, \.parquet, \.txt, \.arrow \(also \.gz\)"):
        read_hf(str(other), cache_dir=cache)


def test_hf_dataset_takes_rehearsal_records_into_its_training_split_only(tmp_path):
    data = write_jsonl(tmp_path / "train.jsonl", [{"instruction": f"task {i}", "output": f"answer {i}"}
                                                  for i in range(12)])
    general = write_jsonl(tmp_path / "general.jsonl", [
        {"messages": [{"role": "user", "content": f"General {i}?"}, {"role": "assistant", "content": f"G{i}."}]}
        for i in range(5)])
    base = dict(path="json", data_files=str(data), hf_cache_dir=str(tmp_path / "hf-cache"), cache=False, val_size=4)
    mixed = load_hf(HFDataConfig(**base, rehearsal_path=str(general), rehearsal_count=3), tiny())
    rehearsed = [ex["source"] for ex in mixed.train if ex["source"].startswith(str(general))]
    assert len(mixed.train) == 8 + 3 and rehearsed == [f"{general}:{k}" for k in range(1, 4)]
    assert not any(ex["source"].startswith(str(general)) for ex in mixed.val)
    assert mixed.stats["rehearsal_records"] == 3
    plain = load_hf(HFDataConfig(**base), tiny())
    assert [ex["source"] for ex in plain.val] == [ex["source"] for ex in mixed.val], "the split is unchanged"
    assert hf_example_kinds(HFDataConfig(**dict(base, format="alpaca"), rehearsal_path=str(general))) == {
        "alpaca", "chat"}
    with pytest.raises(DataError, match=r"data\.rehearsal_count=2 needs data\.rehearsal_path"):
        load_hf(HFDataConfig(**base, rehearsal_count=2), tiny())


def test_hf_hub_name_fails_fast_and_clearly_when_the_hub_cannot_be_reached(tmp_path):
    started = time.monotonic()
    with pytest.raises(DataError) as info:
        read_hf("tuneforge-tests/no-such-dataset", "train", cache_dir=str(tmp_path), connect_timeout=2)
    assert time.monotonic() - started < 20
    message = str(info.value)
    assert "tuneforge-tests/no-such-dataset" in message and "\n" not in message


def test_hf_offline_env_fails_at_once_with_a_clear_message(tmp_path):
    script = ("from tuneforge.data import read_hf\n"
              "from tuneforge.errors import DataError\n"
              "try:\n"
              f"    read_hf('tatsu-lab/alpaca', 'train', cache_dir={str(tmp_path)!r})\n"
              "except DataError as exc:\n"
              "    print('DataError:', exc)\n")
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert time.monotonic() - started < 30
    assert "DataError: cannot load Hugging Face dataset 'tatsu-lab/alpaca': offline" in result.stdout
    assert "not in the local datasets cache" in result.stdout


def test_hf_missing_local_path_is_an_error():
    with pytest.raises(DataError, match="no such file or folder"):
        read_hf("./definitely/not/here", "train")


# ---------------------------------------------------------------------------
# Hydra: the data group
# ---------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def plugins():
    from tuneforge.host.compose import load_plugins

    return load_plugins([])


def compose(*overrides):
    from tuneforge.host.compose import compose as compose_config

    return compose_config(list(overrides), plugins())


def test_data_group_offers_every_source_and_jsonl_keeps_its_fields(tmp_path):
    path = write_csv(tmp_path / "qa.csv", [{"question": r["instruction"], "answer": r["output"]} for r in ROWS])
    cfg = compose("data=csv", f"data.path={path}", "data.columns={instruction: question, output: answer}",
                  "data.cache=false", "data.val_size=1")
    spec = plugins()["data"].get(cfg.data.name)
    splits = spec.load(cfg.data, tiny())
    assert cfg.data.name == "csv" and splits.stats["train_records"] == 5
    assert [m["role"] for m in splits.train[0]["messages"]] == ["user", "assistant"]
    assert splits.train[0]["messages"][0]["content"].startswith("Upper-case word")
    jsonl = compose("data=jsonl", f"data.path={write_jsonl(tmp_path / 'd.jsonl', ROWS)}", "data.val_fraction=0.5",
                    "data.format=alpaca", "data.max_length=64", "data.truncation=drop", "data.train_on_inputs=true",
                    "data.max_examples=2", "data.seed=3", "data.cache=false")
    splits = plugins()["data"].get("jsonl").load(jsonl.data, tiny())
    assert (splits.stats["train_records"], splits.stats["val_records"]) == (2, 3)
    hf = compose("data=hf", "data.path=json", "data.split=train")
    assert hf.data.name == "hf" and hf.data.val_split is None
    for name in ("files", "json", "parquet"):
        assert compose(f"data={name}", f"data.path={tmp_path}").data.name == name


def test_every_data_config_field_is_documented():
    import dataclasses

    from tuneforge.plugins.datasets import tuneforge_datasets

    for spec in tuneforge_datasets():
        for f in dataclasses.fields(spec.config):
            assert f"\n    {f.name}: " in spec.config.__doc__, (spec.name, f.name)


# ---------------------------------------------------------------------------
# Property: garbled files give DataError or records, never another exception
# ---------------------------------------------------------------------------

_garbage = st.one_of(
    st.binary(max_size=120),
    st.lists(st.one_of(st.text(max_size=30), st.sampled_from(['{"text": "a"}', '{"instruction": "i"}', "[]",
                                                              '{"messages": [{"role": "user"}]}', "", "\x00",
                                                              '"q","a"', 'instruction,output'])),
             max_size=6).map(lambda lines: "\n".join(lines).encode("utf-8", "surrogatepass")))


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(content=_garbage, suffix=st.sampled_from([".jsonl", ".json", ".csv", ".parquet"]))
def test_garbled_files_raise_only_data_error(tmp_path, content, suffix):
    assert_read_or_refused_in_one_line(tmp_path / f"garbled{suffix}", content, tiny())


def test_shipped_preference_sample_trains_with_dpo(tmp_path):
    """The preference keys the data produces are the ones the dpo loss consumes, end to end."""
    from tuneforge.testing import run_tiny_fit

    result = run_tiny_fit(tmp_path, overrides=[
        "data=jsonl", "data.path=${pkg:tuneforge.plugins/data/preference.jsonl}", f"data.cache_dir={tmp_path / 'cache'}",
        "data.val_size=4", "loss=dpo", "adapter=lora", "trainer.max_steps=2", "evaluators=[]"])
    assert result.metrics["steps"] == 2
    assert result.metrics["data"]["formats"] == {"preference": 40}
    assert result.metrics["data"]["train_examples"] == 36 and result.metrics["data"]["cache"] == "miss"


def test_the_default_jsonl_reader_on_a_json_array_file_says_which_reader_reads_it(tmp_path):
    path = tmp_path / "alpaca_en_demo.json"  # LLaMA-Factory's files are JSON arrays, pretty-printed
    path.write_text(json.dumps(ROWS, indent=2))
    with pytest.raises(DataError) as info:
        load_files(FilesDataConfig(path=str(path), cache=False), tiny(), kind="jsonl")
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{path}:1: invalid JSON")
    assert message.endswith("alpaca_en_demo.json is named as a json file: read it with data=json, or data=files "
                            "(the reader from each file's suffix)")
    assert len(load_files(FilesDataConfig(path=str(path), cache=False), tiny(), kind="json").train) > 0


def test_rehearsal_records_join_the_training_split_only_spread_evenly(tmp_path):
    rows = [{"instruction": f"task {i}", "output": f"answer {i}"} for i in range(20)]
    path = write_jsonl(tmp_path / "task.jsonl", rows)
    general = write_jsonl(tmp_path / "general.jsonl", [
        {"messages": [{"role": "user", "content": f"General {i}?"}, {"role": "assistant", "content": f"G{i}."}]}
        for i in range(6)])
    base = dict(path=str(path), cache=False, val_size=5)
    mixed = load_files(FilesDataConfig(**base, rehearsal_path=str(general), rehearsal_count=4), tiny())
    sources = [ex["source"] for ex in mixed.train]
    rehearsed = [i for i, source in enumerate(sources) if source.startswith(str(general))]
    assert len(mixed.train) == 15 + 4 and len(mixed.val) == 5 and rehearsed == [0, 4, 9, 14]
    assert [sources[i] for i in rehearsed] == [f"{general}:{k}" for k in range(1, 5)]  # its first 4, in order
    assert not any(ex["source"].startswith(str(general)) for ex in mixed.val)
    assert mixed.stats["rehearsal_records"] == 4
    plain = load_files(FilesDataConfig(**base), tiny())
    assert [ex["source"] for ex in plain.val] == [ex["source"] for ex in mixed.val], "the split is unchanged"
    limited = load_files(FilesDataConfig(**base, max_examples=3, rehearsal_path=str(general)), tiny())
    assert len(limited.train) == 3 + 6, "max_examples limits the task records, not the rehearsal ones"
    with pytest.raises(DataError, match=r"data\.rehearsal_count=9 but the file holds only 6 records"):
        load_files(FilesDataConfig(**base, rehearsal_path=str(general), rehearsal_count=9), tiny())
    with pytest.raises(DataError, match=r"data\.rehearsal_count=2 needs data\.rehearsal_path"):
        load_files(FilesDataConfig(**base, rehearsal_count=2), tiny())
