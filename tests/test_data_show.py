"""``tuneforge data show``: the data a run would train on, with its trained tokens marked."""

from __future__ import annotations

import json

import pytest

from helpers import run_cli
from tuneforge.commands.data import show, show_options
from tuneforge.errors import ConfigError

ROWS = [{"instruction": "Say item 0", "output": "Item 0."},
        {"instruction": "Say item 1", "output": "Item 1."},
        {"instruction": "Say item 0", "output": "Item 0."},  # repeats line 1
        {"instruction": "Say nothing", "output": ""},
        {"instruction": "Farbe des Himmels?", "output": "Blau 🌤️"}]


def _write(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def test_data_show_prints_examples_with_places_counts_trained_spans_and_quality(tmp_path):
    train = _write(tmp_path / "train.jsonl", ROWS)
    val = _write(tmp_path / "val.jsonl", [{"instruction": "Other", "output": "Yes."}])
    result = run_cli(["data", "show", "model=tiny", "data=jsonl", f"data.path={train}", f"data.val_path={val}",
                      "data.shuffle=false", f"data.cache_dir={tmp_path / 'cache'}", "--n", "5", "--val"],
                     env={"OMP_NUM_THREADS": "1"}, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert out.startswith("data=jsonl: 5 train / 1 held-out examples from 5 / 1 records; formats: alpaca 6\n")
    assert "trained tokens (labels, not -100) between [[ and ]]" in out  # not a terminal: no color
    assert (f"--- train 1 of 5: {train}:1 (alpaca): 38 tokens, 9 trained\n<|im_start|>user\nSay item 0<|im_end|>\n"
            "<|im_start|>assistant\n[[Item 0.<|im_end|>\n]]\n") in out
    assert f"--- train 5 of 5: {train}:5 (alpaca)" in out and "[[Blau 🌤️<|im_end|>\n]]" in out  # whole characters
    assert f"--- val 1 of 1: {val}:1 (alpaca)" in out and "[[Yes.<|im_end|>\n]]" in out
    assert f"data quality: 1 training example repeats an earlier one (e.g. {train}:3 = {train}:1)" in out
    assert f"data quality: 1 training example has an empty target (e.g. {train}:4)" in out
    assert not (tmp_path / "runs").exists()  # nothing trained, no run directory


def test_data_show_uses_the_model_tokenizer_without_its_weights(tmp_path):
    """model=hf reads the tokenizer files only: a folder without weights is enough."""
    from tuneforge.plugins.models import build_tiny_tokenizer

    folder = tmp_path / "tokenizer-only"
    build_tiny_tokenizer().save_pretrained(folder)
    (folder / "config.json").write_text(json.dumps({"model_type": "llama"}))
    train = _write(tmp_path / "t.jsonl", ROWS[:2] * 3)
    text = show(["model=hf", f"model.path={folder}", "data=jsonl", f"data.path={train}", "data.cache=false",
                 "quality.min_train_examples=1"], count=1)
    assert "(alpaca): 38 tokens, 9 trained" in text and "[[Item" in text
    assert "training stops here" in text  # the leakage a run would stop on is shown, not raised


def test_data_show_marks_both_sides_of_a_preference_pair_and_colors_on_request(tmp_path):
    train = _write(tmp_path / "p.jsonl", [{"prompt": f"Q{i}?", "chosen": "Good.", "rejected": "Bad."}
                                          for i in range(4)])
    text = show(["data=jsonl", f"data.path={train}", "loss=dpo", "data.cache=false", "data.shuffle=false"],
                count=1, color=True)
    assert f"--- train 1 of 3: {train}:2 (preference), chosen: " in text
    assert "\x1b[1;32mGood.<|im_end|>\n\x1b[0m" in text and "--- rejected: " in text
    assert "\x1b[1;32mBad.<|im_end|>\n\x1b[0m" in text and "[[" not in text


def test_data_show_arguments_and_errors():
    assert show_options(["--n=2", "--val", "--no-color", "data.path=x"]) == (2, True, False, ["data.path=x"])
    assert show_options(["model=tiny", "--n", "0"]) == (0, False, None, ["model=tiny"])
    with pytest.raises(ConfigError, match="--n needs a number"):
        show_options(["--n", "many"])
    with pytest.raises(ConfigError, match="unknown option '--all'"):
        show_options(["--all"])
    result = run_cli(["data", "shw"])
    assert result.returncode == 2 and "unknown data subcommand 'shw'" in result.stderr
    assert "did you mean 'show'" in result.stderr or "show" in result.stderr
    result = run_cli(["data", "show", "data=jsonl", "data.path=/no/such.jsonl"])
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "usage: tuneforge data show" in run_cli(["data", "--help"]).stdout


def test_data_show_prints_the_label_balance_of_a_classification_set(tmp_path):
    labels = ["billing"] * 5 + ["shipping"] * 3 + ["returns"] * 2
    rows = [{"messages": [{"role": "user", "content": f"ticket {i}"}, {"role": "assistant", "content": label}]}
            for i, label in enumerate(labels)]
    rows.append({"messages": [{"role": "user", "content": "Capital of France?"},
                              {"role": "assistant", "content": "Paris."}]})  # a rehearsal row
    train = _write(tmp_path / "tickets.jsonl", rows)
    result = run_cli(["data", "show", "model=tiny", f"data.path={train}", "data.val_size=0", "data.cache=false",
                      "--n", "0"], env={"OMP_NUM_THREADS": "1"}, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert ("label balance (training targets): 'billing' 5, 'shipping' 3, 'returns' 2, and 1 targets that occur "
            "once\n") in result.stdout
