"""Data files as other projects ship them: gzip-compressed, a JSON array wrapped in an object, and the
exact column of a malformed JSON line."""

from __future__ import annotations

import functools
import gzip
import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tuneforge.data import read_records
from helpers import assert_read_or_refused_in_one_line
from tuneforge.errors import DataError
from tuneforge.plugins.datasets import FilesDataConfig, files_example_kinds, load_files
from tuneforge.plugins.models import build_tiny_tokenizer
from tuneforge.training.data_files import hash_paths

ROWS = [{"instruction": f"Say item {i}", "output": f"Item {i}."} for i in range(6)]
LINES = "".join(json.dumps(r) + "\n" for r in ROWS)


@functools.lru_cache(maxsize=None)
def tiny():
    return build_tiny_tokenizer()


def gz(path: Path, text: str) -> Path:
    path.write_bytes(gzip.compress(text.encode("utf-8")))
    return path


# ---------------------------------------------------------------------------
# The column of a malformed JSON line
# ---------------------------------------------------------------------------


def test_a_malformed_json_line_names_its_own_column(tmp_path):
    """The line was parsed with its newline: json said "line 2 column 1" and the column shown was 1."""
    path = tmp_path / "bad.jsonl"
    broken = '{"instruction": "broken", "output": "x"'
    path.write_text("".join(LINES.splitlines(keepends=True)[:2]) + broken + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=rf"^{path}:3: invalid JSON \(Expecting ',' delimiter at column "
                                        rf"{len(broken) + 1}\)") as info:
        read_records(path)
    assert "\n" not in str(info.value)
    path.write_text('{"text": "a"}\r\n{"text": "b" "c"}\r\n', encoding="utf-8")  # CRLF line ends too
    with pytest.raises(DataError, match=r":2: invalid JSON \(Expecting ',' delimiter at column 14\)"):
        read_records(path)


def test_a_malformed_json_array_names_line_and_column_after_leading_whitespace(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('\n\n   [{"text": }]', encoding="utf-8")
    with pytest.raises(DataError, match=rf"^{path}:3: invalid JSON \(Expecting value at column 14\)"):
        read_records(path)


# ---------------------------------------------------------------------------
# gzip-compressed files
# ---------------------------------------------------------------------------


def test_gzip_files_read_as_their_plain_twins_with_the_same_lines(tmp_path):
    plain = {"jsonl": LINES, "json": json.dumps(ROWS, indent=1),
             "csv": "instruction,output\n" + "".join(f"{r['instruction']},{r['output']}\n" for r in ROWS)}
    for kind, text in plain.items():
        path = gz(tmp_path / f"d.{kind}.gz", text)
        records = read_records(path)
        assert [r.data for r in records] == ROWS, kind
        assert read_records(path, kind) == records  # data=<kind> reads it too
    jsonl = tmp_path / "d.jsonl.gz"
    assert [r.source for r in read_records(jsonl)] == [f"{jsonl}:{i}" for i in range(1, 7)]
    csv = tmp_path / "d.csv.gz"
    assert [r.source for r in read_records(csv)] == [f"{csv}:{i}" for i in range(2, 8)]


def test_a_gzip_file_is_told_by_its_magic_bytes_whatever_its_name(tmp_path):
    path = gz(tmp_path / "export.dat", LINES)
    assert [r.data for r in read_records(path, "jsonl")] == ROWS
    with pytest.raises(DataError, match=r"suffix '.dat'; valid: .jsonl, .json, .csv, .parquet, .jsonl.gz, "
                                        r".json.gz, .csv.gz \(or choose the reader with data=jsonl"):
        read_records(path)
    with pytest.raises(DataError, match=r"suffix '.txt.gz'"):
        read_records(gz(tmp_path / "d.txt.gz", LINES))


def test_a_folder_reads_gzip_files_and_a_malformed_gzip_line_names_its_line(tmp_path):
    gz(tmp_path / "a.jsonl.gz", "".join(json.dumps(r) + "\n" for r in ROWS[:3]))
    (tmp_path / "b.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS[3:]), encoding="utf-8")
    (tmp_path / "c.parquet.gz").write_bytes(gzip.compress(b"PAR1"))  # not a kind read compressed: skipped
    assert [r.data for r in read_records(tmp_path)] == ROWS
    assert [r.data for r in read_records(tmp_path, "jsonl")] == ROWS
    bad = gz(tmp_path / "bad.jsonl.gz", LINES.splitlines(keepends=True)[0] + '{"text": "x" "y"}\n')
    with pytest.raises(DataError, match=rf"^{bad}:2: invalid JSON \(Expecting ',' delimiter at column 14\)"):
        read_records(bad)


def test_damaged_gzip_data_and_gzipped_parquet_are_one_line_errors(tmp_path):
    whole = gzip.compress(LINES.encode() * 50)
    cut = tmp_path / "cut.jsonl.gz"
    cut.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(DataError, match=rf"^{cut}:\d+: cannot read the file after line \d+ .*damaged or cut short"):
        read_records(cut)
    cut_json = tmp_path / "cut.json.gz"
    cut_json.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(DataError, match=rf"^{cut_json}: damaged gzip data"):
        read_records(cut_json)
    parquet = tmp_path / "t.parquet"
    parquet.write_bytes(gzip.compress(b"PAR1 not really"))
    with pytest.raises(DataError, match="gzip-compressed file; Parquet is read uncompressed"):
        read_records(parquet)


def test_gzip_data_trains_caches_and_hashes_like_plain_data(tmp_path):
    path = gz(tmp_path / "d.jsonl.gz", LINES)
    config = FilesDataConfig(path=str(path), cache_dir=str(tmp_path / "cache"), val_size=1)
    first = load_files(config, tiny())
    assert first.stats["cache"] == "miss" and first.stats["train_examples"] == 5
    assert load_files(config, tiny()).stats["cache"] == "hit"
    plain = tmp_path / "d.jsonl"
    plain.write_text(LINES, encoding="utf-8")
    twin = load_files(FilesDataConfig(path=str(plain), cache=False, val_size=1), tiny())
    assert [e["input_ids"] for e in twin.train] == [e["input_ids"] for e in first.train]
    assert files_example_kinds(config) == {"alpaca"}  # the first record, before the model loads
    before = hash_paths([str(path)])
    gz(path, LINES.replace("Item 5.", "Item five."))
    assert hash_paths([str(path)]) != before
    assert load_files(config, tiny()).stats["cache"] == "miss"


_damaged = st.one_of(
    st.binary(max_size=80).map(lambda data: b"\x1f\x8b" + data),
    st.binary(min_size=1, max_size=80).map(lambda data: gzip.compress(data)[: max(2, len(data) // 2)]),
    st.lists(st.sampled_from(['{"text": "a"}', '{"instruction": "i"', "[]", "", "\x00", '"q","a"', "a,b"]),
             max_size=5).map(lambda lines: gzip.compress("\n".join(lines).encode())),
)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(content=_damaged, suffix=st.sampled_from([".jsonl.gz", ".json.gz", ".csv.gz", ".parquet"]))
def test_damaged_or_garbled_gzip_files_raise_only_data_error(tmp_path, content, suffix):
    assert_read_or_refused_in_one_line(tmp_path / f"garbled{suffix}", content, tiny())


# ---------------------------------------------------------------------------
# A .json file whose records are wrapped in an object
# ---------------------------------------------------------------------------


def test_a_wrapped_json_array_is_refused_naming_the_key_and_read_with_data_field(tmp_path):
    """It was read as one record and refused as "cannot tell the record's format from its keys ['data']"."""
    path = tmp_path / "wrapped.json"
    path.write_text(json.dumps({"version": 2, "data": ROWS}), encoding="utf-8")
    with pytest.raises(DataError) as info:
        load_files(FilesDataConfig(path=str(path), cache=False), tiny())
    assert str(info.value) == (
        f"{path}: a .json file must hold an array of records (or JSON Lines, one record per line); found an "
        "object with keys ['data', 'version'], and its 'data' holds a list of 6 objects: read them with "
        "data.field=data, or save that list alone as the file")
    config = FilesDataConfig(path=str(path), field="data", cache=False, val_size=1, shuffle=False)
    splits = load_files(config, tiny())
    assert [e["source"] for e in splits.train] == [f"{path}:row {i}" for i in range(1, 6)]
    assert files_example_kinds(config) == {"alpaca"}
    assert [r.data for r in read_records(gz(tmp_path / "w.json.gz", path.read_text()), field="data")] == ROWS


def test_data_field_errors_and_what_stays_one_record(tmp_path):
    path = tmp_path / "splits.json"
    path.write_text(json.dumps({"train": ROWS, "test": ROWS[:1]}), encoding="utf-8")
    with pytest.raises(DataError, match=r"keys \['test', 'train'\], and 'train', 'test' hold lists of objects: "
                                        r"choose one with data.field=<key>$"):
        read_records(path)
    with pytest.raises(DataError, match=r"data.field=dev: the file's top-level object has no key 'dev'; its keys: "
                                        r"\['test', 'train'\]"):
        read_records(path, field="dev")
    lines = tmp_path / "d.jsonl"
    lines.write_text(LINES, encoding="utf-8")
    with pytest.raises(DataError, match=r"data.field=data picks the records under a key of a .json file; this is a "
                                        r"jsonl file"):
        read_records(lines, field="data")
    array = tmp_path / "a.json"
    array.write_text(json.dumps(ROWS), encoding="utf-8")
    with pytest.raises(DataError, match="but the file holds a list; unset data.field"):
        read_records(array, field="data")
    # one record: a conversation (a record field holds the list), or a mapped key does
    chat = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}
    path.write_text(json.dumps(chat, indent=2), encoding="utf-8")
    assert [r.data for r in read_records(path)] == [chat]
    mapped = {"dialog": chat["messages"]}
    path.write_text(json.dumps(mapped), encoding="utf-8")
    assert [r.data for r in read_records(path, columns={"messages": "dialog"})] == [mapped]
    with pytest.raises(DataError, match="its 'dialog' holds a list of 2 objects"):
        read_records(path)
    with pytest.raises(ValueError, match="must not be empty"):
        FilesDataConfig(path=str(path), field=" ")


# ---------------------------------------------------------------------------
# Files of other projects that hold no records
# ---------------------------------------------------------------------------


def test_llama_factorys_dataset_info_json_is_named_and_translated_into_data_settings(tmp_path):
    """A LLaMA-Factory data folder holds dataset_info.json; read as data it was "cannot tell the record's
    format from its keys ['my_alpaca', 'my_chat']" with every layout listed."""
    folder = tmp_path / "lf"
    folder.mkdir()
    (folder / "alpaca.json").write_text(json.dumps([{"q": r["instruction"], "a": r["output"]} for r in ROWS]))
    info = {"my_alpaca": {"file_name": "alpaca.json", "columns": {"prompt": "q", "response": "a"}},
            "my_chat": {"file_name": "chat.json", "formatting": "sharegpt", "columns": {"messages": "dialog"},
                        "tags": {"role_tag": "speaker", "content_tag": "text", "user_tag": "USER",
                                 "assistant_tag": "model", "observation_tag": "observation"}}}
    (folder / "dataset_info.json").write_text(json.dumps(info, indent=2))
    for path in (folder, folder / "dataset_info.json"):
        with pytest.raises(DataError) as caught:
            load_files(FilesDataConfig(path=str(path), cache=False), tiny())
        assert str(caught.value) == (
            f"{folder / 'dataset_info.json'}: this is LLaMA-Factory's dataset list (dataset_info.json), not "
            "records; tuneforge reads the data files themselves, with their column mapping as data.columns: for "
            f"its entry 'my_alpaca', data.path={folder / 'alpaca.json'} 'data.columns={{instruction: q, output: a}}'"
            " (and 1 more entry); a data folder given as data.path must not hold it")
    # what it says loads
    splits = load_files(FilesDataConfig(path=str(folder / "alpaca.json"), columns={"instruction": "q", "output": "a"},
                                        cache=False, val_size=1), tiny())
    assert len(splits.train) == 5
    # the chat entry: message keys as data.columns, role names tuneforge does not read as they are as data.roles
    # (USER is 'user' in any case, 'observation' is read as it is; 'model' was "not read: rename them")
    (folder / "dataset_info.json").write_text(json.dumps({"my_chat": info["my_chat"]}))
    with pytest.raises(DataError, match=r"data.path=\S+chat.json 'data.columns=\{conversations: dialog, role: "
                                        r"speaker, content: text\}' 'data.roles=\{model: assistant\}'; a data folder"):
        read_records(folder / "dataset_info.json")
    # and what it says loads
    (folder / "dataset_info.json").unlink()
    chat = [{"dialog": [{"speaker": "USER", "text": f"Q{i}"}, {"speaker": "model", "text": f"A{i}"}]} for i in range(3)]
    (folder / "chat.json").write_text(json.dumps(chat))
    splits = load_files(FilesDataConfig(path=str(folder / "chat.json"), cache=False, val_size=0,
                                        columns={"conversations": "dialog", "role": "speaker", "content": "text"},
                                        roles={"model": "assistant"}), tiny())
    assert [m["role"] for m in splits.train[0]["messages"]] == ["user", "assistant"]


def test_llama_factory_role_tags_become_data_roles_only_where_tuneforge_reads_the_name_otherwise():
    from pathlib import Path

    from tuneforge.data.registries import registry_problem

    tags = {"role_tag": "role", "content_tag": "content", "user_tag": "Human", "assistant_tag": "gpt",
            "system_tag": "sys", "observation_tag": "tool_output", "function_tag": "function_call"}
    problem = registry_problem(Path("lf/dataset_info.json"), {"e": {"file_name": "d.json", "tags": tags}})
    assert "data.path=lf/d.json 'data.roles={sys: system, tool_output: observation}'; a data folder" in problem
    # a function tag named like another role is a tool-call turn, not a plain answer
    problem = registry_problem(Path("i.json"), {"e": {"file_name": "d.json", "tags": {"function_tag": "gpt"}}})
    assert "'data.roles={gpt: function_call}'" in problem


def test_a_json_array_under_a_jsonl_name_says_which_reader_reads_it(tmp_path):
    """A .json array saved as train.jsonl was "expected a JSON object ..., got list", or for an indented one
    "invalid JSON (Expecting value at column 2)", without saying what reads it."""
    one_line = tmp_path / "train.jsonl"
    one_line.write_text(json.dumps(ROWS))
    indented = tmp_path / "pretty.jsonl"
    indented.write_text(json.dumps(ROWS, indent=2))
    hint = "(the file holds a JSON array: read it with data=json, or name it .json and use data=files)"
    for path, problem in ((one_line, "expected a JSON object (a record with named fields), got list"),
                          (indented, "invalid JSON (Expecting value at column 2); each line must be one JSON object")):
        with pytest.raises(DataError) as caught:
            read_records(path)
        assert str(caught.value) == f"{path}:1: {problem} {hint}"
        assert [r.data for r in read_records(path, "json")] == ROWS
    later = tmp_path / "later.jsonl"
    later.write_text(LINES + "[1, 2]\n")
    with pytest.raises(DataError, match=r"later.jsonl:7: expected a JSON object \(a record with named fields\), "
                                        r"got list$"):
        read_records(later)
