"""The tokenized-data cache: keyed by data, tokenizer content, template and options; atomic; never stale."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tuneforge.data import DataConfig, Record, prepare_splits, tokenizer_fingerprint
from tuneforge.data.cache import CACHE_VERSION, cache_key, load_cached, records_fingerprint, save_cached
from tuneforge.plugins.datasets import FilesDataConfig, load_files
from tuneforge.plugins.models import build_tiny_tokenizer

ROWS = [{"messages": [{"role": "user", "content": f"Question {i}?"}, {"role": "assistant", "content": f"A{i}"}]}
        for i in range(8)]
OTHER_TEMPLATE = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}</s>{% endfor %}"
                  "{% if add_generation_prompt %}<assistant>{% endif %}")


def data_file(tmp_path: Path, rows=ROWS) -> str:
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def load(tmp_path, tokenizer, **options):
    config = FilesDataConfig(path=options.pop("path", None) or data_file(tmp_path),
                             cache_dir=str(tmp_path / "cache"), val_size=2, **options)
    return load_files(config, tokenizer)


def cache_files(tmp_path) -> set:
    return {p.name for p in (tmp_path / "cache").glob("*")}


def test_fingerprint_is_about_content_not_identity():
    a, b = build_tiny_tokenizer(), build_tiny_tokenizer()
    assert tokenizer_fingerprint(a) == tokenizer_fingerprint(b)
    b.add_tokens(["<extra>"])
    assert tokenizer_fingerprint(a) != tokenizer_fingerprint(b)
    c = build_tiny_tokenizer()
    c.chat_template = OTHER_TEMPLATE
    assert tokenizer_fingerprint(a) != tokenizer_fingerprint(c)
    d = build_tiny_tokenizer()
    d.eos_token = "<|endoftext|>"
    assert tokenizer_fingerprint(a) != tokenizer_fingerprint(d)


def test_cache_key_changes_with_each_input():
    base = dict(records="r", tokenizer="t", chat_template="x", options={"max_length": 8})
    key = cache_key(**base)
    assert key == cache_key(**dict(base))
    for change in ({"records": "r2"}, {"tokenizer": "t2"}, {"chat_template": "y"}, {"chat_template": None},
                   {"options": {"max_length": 9}}):
        assert cache_key(**{**base, **change}) != key, change
    one = [Record({"text": "a"}, "f:1")]
    assert records_fingerprint(one, []) != records_fingerprint([], one)
    assert records_fingerprint(one) != records_fingerprint([Record({"text": "a"}, "f:2")])


def test_second_load_is_a_hit_with_identical_data(tmp_path):
    first = load(tmp_path, build_tiny_tokenizer())
    assert first.stats["cache"] == "miss" and len(cache_files(tmp_path)) == 1
    second = load(tmp_path, build_tiny_tokenizer())
    assert second.stats["cache"] == "hit"
    assert second.train == first.train and second.val == first.val
    assert {k: v for k, v in second.stats.items() if k != "cache"} == \
        {k: v for k, v in first.stats.items() if k != "cache"}
    uncached = load(tmp_path, build_tiny_tokenizer(), cache=False)
    assert uncached.stats["cache"] == "off" and uncached.train == first.train and uncached.val == first.val


def test_changed_tokenizer_or_template_never_reuses_a_stale_entry(tmp_path):
    original = load(tmp_path, build_tiny_tokenizer())
    changed_vocab = build_tiny_tokenizer()
    changed_vocab.add_tokens(["Question"])  # same name and class, different tokens
    retokenized = load(tmp_path, changed_vocab)
    assert retokenized.stats["cache"] == "miss"
    assert retokenized.train[0]["input_ids"] != original.train[0]["input_ids"]
    assert len(retokenized.train[0]["input_ids"]) < len(original.train[0]["input_ids"])

    changed_template = build_tiny_tokenizer()
    changed_template.chat_template = OTHER_TEMPLATE
    rendered = load(tmp_path, changed_template)
    assert rendered.stats["cache"] == "miss"
    assert changed_template.decode(rendered.train[0]["input_ids"]).startswith("<user>")

    by_option = load(tmp_path, build_tiny_tokenizer(), chat_template=OTHER_TEMPLATE)
    assert by_option.stats["cache"] == "miss"
    assert by_option.train == rendered.train
    assert len(cache_files(tmp_path)) == 4
    assert load(tmp_path, build_tiny_tokenizer()).stats["cache"] == "hit"


def test_changed_data_or_options_miss(tmp_path):
    load(tmp_path, build_tiny_tokenizer())
    for options in ({"max_length": 36}, {"train_on_inputs": True}, {"seed": 5}, {"max_examples": 3},
                    {"truncation": "drop"}):
        assert load(tmp_path, build_tiny_tokenizer(), **options).stats["cache"] == "miss", options
    edited = ROWS[:-1] + [{"messages": [{"role": "user", "content": "new"}, {"role": "assistant", "content": "x"}]}]
    assert load(tmp_path, build_tiny_tokenizer(), path=data_file(tmp_path, edited)).stats["cache"] == "miss"


def test_writes_are_atomic_and_a_corrupt_entry_is_rebuilt(tmp_path):
    first = load(tmp_path, build_tiny_tokenizer())
    (entry,) = (tmp_path / "cache").glob("*.json")
    assert not [p for p in (tmp_path / "cache").iterdir() if p.name.endswith(".tmp")]
    entry.write_bytes(entry.read_bytes()[:50])  # a torn file, as a crash without atomic writes would leave
    rebuilt = load(tmp_path, build_tiny_tokenizer())
    assert rebuilt.stats["cache"] == "miss" and rebuilt.train == first.train
    assert load(tmp_path, build_tiny_tokenizer()).stats["cache"] == "hit"
    with entry.open() as handle:
        assert json.load(handle)["version"] == CACHE_VERSION


def test_unwritable_cache_folder_does_not_fail_the_run(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert save_cached(blocker / "sub" / "x.json", {"train": []}) is False
    splits = prepare_splits([Record(r, f"m:{i}") for i, r in enumerate(ROWS)], build_tiny_tokenizer(),
                            DataConfig(cache_dir=str(blocker / "sub"), val_size=1))
    assert splits.stats["cache"] == "miss" and len(splits.train) == 7
    assert load_cached(blocker / "sub" / "x.json") is None


def test_default_cache_dir_follows_xdg(monkeypatch, tmp_path):
    from tuneforge.data import default_cache_dir

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_cache_dir() == tmp_path / "tuneforge" / "data"
    splits = prepare_splits([Record(r, f"m:{i}") for i, r in enumerate(ROWS)], build_tiny_tokenizer(),
                            DataConfig(val_size=1))
    assert splits.stats["cache"] == "miss" and len(list((tmp_path / "tuneforge" / "data").glob("*.json"))) == 1


@pytest.mark.parametrize("fmt_rows", [
    [{"text": f"plain text {i}"} for i in range(4)],
    [{"prompt": f"p{i}", "chosen": "good", "rejected": "bad"} for i in range(4)],
], ids=["completion", "preference"])
def test_every_format_round_trips_through_the_cache(tmp_path, fmt_rows):
    first = load(tmp_path, build_tiny_tokenizer(), path=data_file(tmp_path, fmt_rows))
    second = load(tmp_path, build_tiny_tokenizer(), path=data_file(tmp_path, fmt_rows))
    assert (first.stats["cache"], second.stats["cache"]) == ("miss", "hit")
    assert second.train == first.train and second.val == first.val
