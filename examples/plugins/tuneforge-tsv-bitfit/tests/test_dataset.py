"""Tests of the ``tsv`` dataset: reading, errors, label masking, a tiny fit."""

import pytest

import tuneforge
from tuneforge.testing import assert_labels, tiny_tokenizer

from tuneforge_tsv_bitfit import plugin
from tuneforge_tsv_bitfit.dataset import SAMPLE, TsvDataConfig, load_tsv, read_tsv


def test_rows_become_records_that_remember_their_line(tmp_path):
    path = tmp_path / "pairs.tsv"
    path.write_text("instruction\toutput\tsystem\nSay hi.\thi\tBe brief.\nJoin a and b.\ta\\tb\t\n")
    records = read_tsv(path)
    assert [r.data for r in records] == [{"instruction": "Say hi.", "output": "hi", "system": "Be brief."},
                                         {"instruction": "Join a and b.", "output": "a\tb"}]
    assert [r.source for r in records] == [f"{path}:2", f"{path}:3"]


def test_bad_rows_name_the_file_and_line(tmp_path):
    path = tmp_path / "bad.tsv"
    path.write_text("instruction\toutput\nok\tfine\ntoo\tmany\tcells\n")
    with pytest.raises(tuneforge.DataError, match=r"bad.tsv:3: 3 cells, but the header has 2"):
        read_tsv(path)
    with pytest.raises(tuneforge.DataError, match=r"bad.tsv:1: no column 'answer'"):
        read_tsv(path, output_column="answer")


def test_min_rows_must_be_positive():
    with pytest.raises(ValueError, match="min_rows must be at least 1"):
        TsvDataConfig(min_rows=0)


def test_only_the_answer_and_its_end_of_turn_carry_loss():
    tokenizer = tiny_tokenizer()
    splits = load_tsv(TsvDataConfig(cache=False), tokenizer)
    assert len(splits.train) + len(splits.val) == len(read_tsv(SAMPLE))
    for example in splits.train:
        # the tiny model's ChatML template closes the assistant turn with <|im_end|> and a newline
        assert_labels(example, tokenizer, trained=[example["record"]["output"] + "<|im_end|>\n"])


def test_a_tiny_fit_trains_on_the_dataset(tuneforge_fit):
    result = tuneforge_fit(plugins=[plugin], overrides=["data=tsv", "data.cache=false"])
    data = result.metrics["data"]
    assert data["train_records"] + data["val_records"] == len(read_tsv(SAMPLE))
    assert result.metrics["steps"] == 5
    assert result.config.data.name == "tsv"


def test_a_separate_held_out_file(tmp_path, tuneforge_fit):
    held_out = tmp_path / "held_out.tsv"
    held_out.write_text("instruction\toutput\nWhat is the capital of Peru?\tLima\nAdd 1 and 1.\t2\n")
    splits = load_tsv(TsvDataConfig(val_path=str(held_out), cache=False), tiny_tokenizer())
    assert [ex["record"]["output"] for ex in splits.val] == ["Lima", "2"]
    assert len(splits.train) == len(read_tsv(SAMPLE))  # nothing of the training file is held out
    result = tuneforge_fit(plugins=[plugin], overrides=["data=tsv", f"data.val_path={held_out}", "data.cache=false"])
    assert result.metrics["data"]["val_examples"] == 2
