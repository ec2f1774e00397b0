"""Data layouts of other projects: OpenAI/Axolotl per-message ``weight``/``train``, LLaMA-Factory alpaca
``history``, TRL prompt-completion SFT, implicit-prompt preference pairs, and the warning that names the
record keys nothing reads.

As in ``test_data_formats.py``, expectations are the ChatML text each segment
renders to, tokenized segment by segment on the tiny byte-level tokenizer
(one token per byte plus special tokens), independently of the code under test.
"""

from __future__ import annotations

import json
import logging
import re

import pytest

from tuneforge.data import (
    IGNORE_INDEX,
    DataConfig,
    Record,
    detect_format,
    marked_text,
    prepare_splits,
    read_records,
    tokenize_records,
)
from tuneforge.data.record_keys import record_keys_read_elsewhere, run_record_keys
from tuneforge.errors import DataError
from tuneforge.testing import assert_labels, tiny_tokenizer

M = IGNORE_INDEX
GEN = "<|im_start|>assistant\n"
END = "<|im_end|>\n"


def enc(text: str) -> list:
    return tiny_tokenizer()(text, add_special_tokens=False)["input_ids"]


def turn(role: str, content: str) -> str:
    return f"<|im_start|>{role}\n{content}{END}"


def expected(segments) -> tuple[list, list]:
    """``segments`` = [(text, trained)]: the ids of their texts, and labels -100 where not trained."""
    ids, labels = [], []
    for text, trained in segments:
        ids += enc(text)
        labels += enc(text) if trained else [M] * len(enc(text))
    return ids, labels


def one(data: dict, **options) -> dict:
    examples, _ = tokenize_records([Record(data, "mem.jsonl:3")], tiny_tokenizer(), **options)
    assert len(examples) == 1
    return examples[0]


def refused(data: dict, **options) -> str:
    with pytest.raises(DataError) as info:
        one(data, **options)
    message = str(info.value)
    assert "\n" not in message and message.startswith("mem.jsonl:3: "), message
    return message


def user(text: str, **extra) -> dict:
    return {"role": "user", "content": text, **extra}


def bot(text: str, **extra) -> dict:
    return {"role": "assistant", "content": text, **extra}


# ---------------------------------------------------------------------------
# 1. Per-message training marks: OpenAI ``weight``, Axolotl ``train``
# ---------------------------------------------------------------------------

TWO_TURNS = [("<|im_start|>system\nS" + END + turn("user", "U1") + GEN, False), ("NOTRAIN" + END, False),
             (turn("user", "U2") + GEN, False), ("YES" + END, True)]


@pytest.mark.parametrize("mark", [{"weight": 0}, {"train": False}, {"weight": 0.0}, {"weight": 0, "train": False},
                                  {"loss_weight": 0.0}, {"loss_weight": 0, "weight": 0}])
def test_an_assistant_turn_marked_not_to_train_is_masked_and_the_others_are_trained(mark):
    ex = one({"messages": [{"role": "system", "content": "S"}, user("U1"), bot("NOTRAIN", **mark), user("U2"),
                           bot("YES", weight=1)]})
    assert (ex["input_ids"], ex["labels"]) == expected(TWO_TURNS)
    assert ex["messages"][2] == {"role": "assistant", "content": "NOTRAIN"}  # the mark is not passed on


def test_sharegpt_conversations_read_train_false_too():
    ex = one({"system": "S", "conversations": [{"from": "human", "value": "U1"},
                                               {"from": "gpt", "value": "NOTRAIN", "train": False},
                                               {"from": "human", "value": "U2"}, {"from": "gpt", "value": "YES"}]})
    assert (ex["input_ids"], ex["labels"]) == expected(TWO_TURNS)


@pytest.mark.parametrize("mark", [{}, {"weight": 1}, {"train": True}, {"weight": None}, {"train": None},
                                  {"loss_weight": 1.0}])
def test_weight_1_train_true_or_no_mark_keep_the_default(mark):
    ex = one({"messages": [user("U1"), bot("A", **mark), user("U2"), bot("B")]})
    assert (ex["input_ids"], ex["labels"]) == expected([(turn("user", "U1") + GEN, False), ("A" + END, True),
                                                        (turn("user", "U2") + GEN, False), ("B" + END, True)])


def test_a_final_turn_not_trained_gets_no_trained_eos():
    ex = one({"messages": [user("U1"), bot("A"), user("U2"), bot("B", train=False)]})
    assert (ex["input_ids"], ex["labels"]) == expected([(turn("user", "U1") + GEN, False), ("A" + END, True),
                                                        (turn("user", "U2") + GEN + "B" + END, False)])


def test_weight_0_or_train_false_on_a_user_turn_is_what_happens_anyway():
    ex = one({"messages": [user("U1", weight=0), bot("A"), user("U2", train=False), bot("B")]})
    assert ex["input_ids"] == one({"messages": [user("U1"), bot("A"), user("U2"), bot("B")]})["input_ids"]
    assert ex["labels"] == one({"messages": [user("U1"), bot("A"), user("U2"), bot("B")]})["labels"]


@pytest.mark.parametrize("mark, pattern", [
    ({"weight": 0.5}, r"messages\[1\] has 'weight': 0\.5; valid: 0 \(the turn is not trained\) or 1"),
    ({"weight": "0"}, r"messages\[1\] has 'weight': \"0\"; valid: 0 .* or 1"),
    ({"weight": True}, r"messages\[1\] has 'weight': true; valid: 0 .* or 1"),
    ({"train": "no"}, r"messages\[1\] has 'train': \"no\"; valid: false \(the turn is not trained\) or true"),
    ({"train": 0}, r"messages\[1\] has 'train': 0; valid: false .* or true"),
    ({"weight": 0, "train": True}, r"messages\[1\] has 'weight': 0 and 'train': true, which disagree"),
    ({"loss_weight": 0.5}, r"messages\[1\] has 'loss_weight': 0\.5; valid: 0 .* or 1 .*\(a fractional weight cannot "
                           r"be trained"),
    ({"loss_weight": 1.0, "train": False}, r"messages\[1\] has 'loss_weight': 1\.0 and 'train': false, which "
                                           r"disagree"),
])
def test_other_mark_values_are_one_line_errors_naming_the_message_and_the_valid_values(mark, pattern):
    with pytest.raises(DataError, match=r"^mem\.jsonl:3: " + pattern):
        one({"messages": [user("U"), bot("A", **mark), user("U2"), bot("B")]})


def test_a_true_mark_on_a_user_turn_is_refused_not_ignored():
    message = refused({"messages": [user("U", train=True), bot("A")]})
    assert "messages[0] is a user message with 'train': true; only assistant turns are trained" in message
    assert "data.train_on_inputs=true" in message
    assert "messages[0] is a system message with 'weight': 1" in refused(
        {"messages": [{"role": "system", "content": "S", "weight": 1}, user("U"), bot("A")]})


def test_nothing_left_to_train_and_marks_with_train_on_inputs_are_errors():
    assert "every assistant turn of the chat record is marked not to train" in refused(
        {"messages": [user("U"), bot("A", weight=0)]})
    assert "data.train_on_inputs=true trains every token" in refused(
        {"messages": [user("U"), bot("A", weight=0), user("U2"), bot("B")]}, train_on_inputs=True)


def test_a_preference_response_marked_not_to_train_is_refused_a_marked_prompt_turn_is_not():
    message = refused({"prompt": "p", "chosen": [bot("C", weight=0)], "rejected": "R"})
    assert "chosen[0] is marked not to train" in message and "trains its answers whole" in message
    ex = one({"prompt": [user("U"), bot("X", weight=0), user("U2")], "chosen": "C", "rejected": "R"})
    prompt = turn("user", "U") + turn("assistant", "X") + turn("user", "U2") + GEN
    assert (ex["chosen_input_ids"], ex["chosen_labels"]) == expected([(prompt, False), ("C" + END, True)])


def test_llama_factory_v1_messages_with_content_parts_and_loss_weight_train_the_weighted_turns(tmp_path):
    """LLaMA-Factory's v1 SFT files (data/v1_sft_demo.jsonl): content as [{type: text, value}] parts, and a
    loss_weight of 0.0 on user turns and 1.0 on assistant turns; 0.0 on an assistant turn masks it."""
    def part(text):
        return [{"type": "text", "value": text}]

    record = {"messages": [{"role": "user", "content": part("U1"), "loss_weight": 0.0},
                           {"role": "assistant", "content": part("NOTRAIN"), "loss_weight": 0.0},
                           {"role": "user", "content": part("U2"), "loss_weight": 0.0},
                           {"role": "assistant", "content": part("YES"), "loss_weight": 1.0}]}
    path = tmp_path / "v1_sft.jsonl"
    path.write_text(json.dumps(record) + "\n")
    splits = prepare_splits(read_records(path), tiny_tokenizer(), DataConfig(val_size=0, shuffle=False, cache=False))
    assert_labels(splits.train[0], tiny_tokenizer(), [f"YES{END}"])


def test_the_openai_weight_file_trains_only_the_weight_1_turns(tmp_path):
    path = tmp_path / "oai.jsonl"
    path.write_text("\n".join(json.dumps({"messages": [user(f"U{i}"), bot(f"NOTRAIN{i}", weight=0), user("again"),
                                                       bot(f"YES{i}", weight=1)]}) for i in range(3)) + "\n")
    splits = prepare_splits(read_records(path), tiny_tokenizer(), DataConfig(val_size=0, shuffle=False, cache=False))
    for i, ex in enumerate(splits.train):
        assert_labels(ex, tiny_tokenizer(), [f"YES{i}{END}"])
    assert splits.stats["unused_keys"] == {}


# ---------------------------------------------------------------------------
# 2. LLaMA-Factory alpaca ``history``
# ---------------------------------------------------------------------------

HISTORY = {"system": "S", "instruction": "Q3", "input": "", "output": "A3", "history": [["Q1", "A1"], ["Q2", "A2"]]}
HISTORY_TRAINED = [(turn("system", "S") + turn("user", "Q1") + GEN, False), ("A1" + END, True),
                   (turn("user", "Q2") + GEN, False), ("A2" + END, True), (turn("user", "Q3") + GEN, False),
                   ("A3" + END, True)]


def test_history_pairs_become_earlier_turns_after_the_system_and_every_answer_is_trained():
    ex = one(HISTORY)
    assert (ex["input_ids"], ex["labels"]) == expected(HISTORY_TRAINED)
    assert ex["format"] == "alpaca" and [m["content"] for m in ex["messages"]] == ["S", "Q1", "A1", "Q2", "A2",
                                                                                    "Q3", "A3"]


def test_history_under_another_key_json_text_and_empty_history():
    mapped = one({"system": "S", "q": "Q3", "a": "A3", "turns": [["Q1", "A1"], ["Q2", "A2"]]},
                 columns={"instruction": "q", "output": "a", "history": "turns"})
    assert (mapped["input_ids"], mapped["labels"]) == expected(HISTORY_TRAINED)
    as_text = one(dict(HISTORY, history=json.dumps(HISTORY["history"])))  # a CSV cell
    assert (as_text["input_ids"], as_text["labels"]) == expected(HISTORY_TRAINED)
    for empty in ([], None):
        ex = one({"instruction": "Q", "output": "A", "history": empty})
        assert (ex["input_ids"], ex["labels"]) == expected([(turn("user", "Q") + GEN, False), ("A" + END, True)])


@pytest.mark.parametrize("history, pattern", [
    ("Q1", r"field 'history' must be a list of \[question, answer\] pairs, got str"),
    ({"Q1": "A1"}, r"field 'history' must be a list of \[question, answer\] pairs, got dict"),
    ([["Q1", "A1"], ["Q2"]], r"field 'history'\[1\] must be a \[question, answer\] pair of strings, got a list of 1"),
    ([["Q1", "A1", "x"]], r"field 'history'\[0\] must be .* got a list of 3"),
    ([["Q1", 2]], r"field 'history'\[0\] must be .* got \[str, int\]"),
    (["Q1", "A1"], r"field 'history'\[0\] must be .* got str"),
])
def test_malformed_history_is_a_one_line_error_naming_the_pair_and_what_is_valid(history, pattern):
    message = refused({"instruction": "Q", "output": "A", "history": history})
    assert re.search(pattern, message), message
    assert "valid: 'history' as a list of [question, answer] string pairs" in message


def test_history_is_prompt_in_kto_and_preference_records():
    kto = one({"instruction": "Q", "output": "A", "history": [["Q1", "A1"]], "kto_tag": True})
    assert (kto["input_ids"], kto["labels"]) == expected([(turn("user", "Q1") + turn("assistant", "A1") +
                                                           turn("user", "Q") + GEN, False), ("A" + END, True)])
    pair = one({"instruction": "Q", "chosen": "C", "rejected": "R", "history": [["Q1", "A1"]]})
    prompt = turn("user", "Q1") + turn("assistant", "A1") + turn("user", "Q") + GEN
    assert (pair["rejected_input_ids"], pair["rejected_labels"]) == expected([(prompt, False), ("R" + END, True)])


# ---------------------------------------------------------------------------
# 3. Keys nothing reads: one warning line, kept in the stats
# ---------------------------------------------------------------------------

def load(records, **options):
    config = DataConfig(val_size=0, shuffle=False, cache=False, **options)
    return prepare_splits([Record(r, f"train.jsonl:{i}") for i, r in enumerate(records, 1)], tiny_tokenizer(),
                          config)


def unused_lines(caplog) -> list:
    return [m for m in caplog.messages if m.startswith("data: keys not used for training")]


def test_unused_record_and_message_keys_are_logged_once_with_counts_and_kept_in_the_stats(caplog):
    records = [{"instruction": "Q", "output": "A", "extra": "x"},
               {"instruction": "Q", "output": "A", "extra": "y", "meta": {"k": 1}},
               {"messages": [user("U", name="bob"), bot("A")]}]
    with caplog.at_level(logging.WARNING, logger="tuneforge"):
        splits = load(records)
    assert unused_lines(caplog) == [
        "data: keys not used for training: extra (2 records, first train.jsonl:1), meta (1 record, first "
        "train.jsonl:2), name in messages (1 record, first train.jsonl:3); map a key that holds training data "
        "to its field with data.columns (docs/data.md), or remove it"]
    assert splits.stats["unused_keys"] == {"extra": {"records": 2, "first": "train.jsonl:1"},
                                           "meta": {"records": 1, "first": "train.jsonl:2"},
                                           "name in messages": {"records": 1, "first": "train.jsonl:3"}}


def test_keys_that_are_read_empty_or_read_elsewhere_are_not_reported(caplog):
    records = [{"id": 7, "instruction": "Q", "input": "", "output": "A", "system": None, "tools": [], "lang": "en"},
               {"messages": [user("U", weight=0), bot("A", tool_calls=[], refusal=None)]},
               {"q": "Q", "a": "A", "h": [["Q1", "A1"]]}]
    with caplog.at_level(logging.WARNING, logger="tuneforge"), record_keys_read_elsewhere(["lang"]):
        splits = load(records[:2])
        mapped = load(records[2:], columns={"instruction": "q", "output": "a", "history": "h"})
    assert unused_lines(caplog) == [] and splits.stats["unused_keys"] == mapped.stats["unused_keys"] == {}
    prompts, _ = tokenize_records([Record({"prompt": "P", "reference": "R", "answer": 4}, "g:1")], tiny_tokenizer())
    assert prompts[0]["format"] == "prompt"  # a prompt record's other keys are its reward references


def test_a_key_the_layout_skips_is_reported(caplog):
    records = [{"output": "A", "answer": "B", "instruction": "Q"},  # output mapped away from: unread
               {"system": "TOP", "conversations": [{"from": "system", "value": "IN"}, {"from": "human", "value": "U"},
                                                   {"from": "gpt", "value": "A"}]},  # the inner system wins
               {"prompt": "P", "chosen": "C", "rejected": "R", "messages": [user("U")]},  # prompt wins
               {"messages": [user("U"), bot("A")], "conversations": [user("V"), bot("B")]}]
    found = [load([r], columns={"output": "answer"} if i == 0 else None).stats["unused_keys"]
             for i, r in enumerate(records)]
    assert [list(f) for f in found] == [["output"], ["system"], ["messages"], ["conversations"]]


def test_the_run_names_the_record_keys_its_evaluators_rewards_and_evidence_read():
    from tuneforge.host.components import run_components
    from tuneforge.host.compose import compose, load_plugins

    overrides = ["evidence.slice_by=lang", "evaluators=[choice]", "evaluators.choice.answer_field=gold"]
    plugins = load_plugins(overrides)
    run = run_components(compose(overrides), plugins)
    assert {"lang", "choices", "gold"} <= run_record_keys(run)


def test_the_quality_report_and_the_run_report_show_the_unused_keys():
    from tuneforge.data import quality
    from tuneforge.evaluation.report_blocks import _quality_blocks

    splits = load([{"instruction": "Q", "output": "A", "extra": "x"}, {"instruction": "Q2", "output": "A2"}])
    report = quality.assess(splits)
    assert report["unused_keys"] == {"extra": {"records": 1, "first": "train.jsonl:1"}}
    assert ("p", "Record keys not used for training: extra (1 record, first train.jsonl:1)") in _quality_blocks(
        {"quality": report})


# ---------------------------------------------------------------------------
# 4. TRL prompt-completion SFT data
# ---------------------------------------------------------------------------

def test_plain_prompt_and_completion_without_a_label_are_supervised_data():
    record = {"prompt": "The sky is", "completion": " blue."}
    assert detect_format(Record(record, "x:1")) == "prompt_completion"
    ex = one(record)
    assert (ex["input_ids"], ex["labels"]) == expected([(turn("user", "The sky is") + GEN, False),
                                                        (" blue." + END, True)])
    assert ex["format"] == "prompt_completion" and "kto_label" not in ex
    assert ex["messages"] == [user("The sky is"), bot(" blue.")]
    all_trained = one(record, train_on_inputs=True)
    assert all_trained["labels"] == all_trained["input_ids"] == ex["input_ids"]


def test_conversational_prompt_and_completion_train_only_the_completions_assistant_turns():
    ex = one({"prompt": [{"role": "system", "content": "S"}, user("U"), bot("OLD"), user("U2")],
              "completion": [bot("C1"), user("U3"), bot("C2", weight=0), user("U4"), bot("C3")]})
    assert (ex["input_ids"], ex["labels"]) == expected([
        (turn("system", "S") + turn("user", "U") + turn("assistant", "OLD") + turn("user", "U2") + GEN, False),
        ("C1" + END, True), (turn("user", "U3") + GEN + "C2" + END + turn("user", "U4") + GEN, False),
        ("C3" + END, True)])


def test_with_a_label_prompt_and_completion_stay_kto():
    ex = one({"prompt": "P", "completion": "C", "label": False})
    assert ex["format"] == "kto" and ex["kto_label"] == [0]
    assert detect_format(Record({"prompt": "P", "completion": "C", "label": "false"}, "x:1")) == "kto"
    assert "set data.format=prompt_completion" in refused({"prompt": "P", "completion": "C", "label": "sports"})
    assert "read as data.format=prompt_completion" in refused({"prompt": "P", "completion": "C", "label": "true"},
                                                              fmt="prompt_completion")
    named = one({"prompt": "P", "completion": "C", "label": "sports"}, fmt="prompt_completion")
    assert (named["input_ids"], named["labels"]) == expected([(turn("user", "P") + GEN, False), ("C" + END, True)])


def test_prompt_completion_mixes_with_alpaca_but_a_missing_kto_label_is_named():
    examples, counts = tokenize_records([Record({"instruction": "Q", "output": "A"}, "f:1"),
                                         Record({"prompt": "P", "completion": "C"}, "f:2")], tiny_tokenizer())
    assert counts["formats"] == {"alpaca": 1, "prompt_completion": 1}
    kto, plain = {"prompt": "P", "completion": "C", "label": True}, {"prompt": "P", "completion": "C"}
    with pytest.raises(DataError, match=r"^f:2: KTO record without its mark: 'label' \(true/false\) is missing "
                                        r"\(first KTO record of the dataset: f:1\)$"):
        tokenize_records([Record(kto, "f:1"), Record(plain, "f:2")], tiny_tokenizer())
    with pytest.raises(DataError, match=r"^f:2: KTO records cannot be mixed .* \(first other record: f:1, a "
                                        r"prompt/completion record without 'label': give every record its label\)$"):
        tokenize_records([Record(plain, "f:1"), Record(kto, "f:2")], tiny_tokenizer())


def test_prompt_completion_errors_name_the_record():
    assert "must end with an assistant answer" in refused({"prompt": [user("U")], "completion": [user("V")]})
    assert "must end with a user message" in refused({"prompt": [user("U"), bot("A")], "completion": "C"})
    assert "prompt_completion record is missing 'prompt'" in refused({"completion": "C"}, fmt="prompt_completion")
    assert "KTO record has no 'label' (true for a desirable answer" in refused({"prompt": "P", "completion": "C"},
                                                                               fmt="kto")


# ---------------------------------------------------------------------------
# 5. Implicit-prompt preference pairs that do not share their prompt
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("rejected, first", [
    ([{"role": "system", "content": "SYS-B"}, user("u0"), bot("BAD")], 0),  # another system prompt
    ([{"role": "system", "content": "SYS-A"}, user("other"), bot("BAD")], 1),  # another question
])
def test_pairs_that_differ_before_the_final_turn_say_what_would_be_valid(rejected, first):
    message = refused({"chosen": [{"role": "system", "content": "SYS-A"}, user("u0"), bot("GOOD")],
                       "rejected": rejected})
    assert f"do not start with a shared prompt (they differ from message {first} on: chosen[{first}] vs " \
           f"rejected[{first}]); valid: give the prompt in 'prompt'" in message
    assert "make both conversations share every message before their final assistant turn" in message


def test_pairs_sharing_every_message_before_the_final_turn_still_load():
    shared = [{"role": "system", "content": "S"}, user("u"), bot("a"), user("u2")]
    ex = one({"chosen": shared + [bot("GOOD")], "rejected": shared + [bot("BAD")]})
    prompt = turn("system", "S") + turn("user", "u") + turn("assistant", "a") + turn("user", "u2") + GEN
    assert (ex["chosen_input_ids"], ex["chosen_labels"]) == expected([(prompt, False), ("GOOD" + END, True)])
    assert (ex["rejected_input_ids"], ex["rejected_labels"]) == expected([(prompt, False), ("BAD" + END, True)])


# ---------------------------------------------------------------------------
# 6. Axolotl's template-free input_output: raw segments, trained where labelled true
# ---------------------------------------------------------------------------

def segs(*pairs) -> dict:
    return {"segments": [{"label": label, "text": text} for label, text in pairs]}


def test_input_output_trains_exactly_the_segments_labelled_true_raw_and_without_an_added_eos():
    data = segs((False, "<s>Q: hello "), (True, "ANSWER</s>"), (False, "\nmore "), (True, "B<|im_end|>"))
    assert detect_format(Record(data, "m:1")) == "input_output"
    example = one(data)
    assert (example["input_ids"], example["labels"]) == expected(
        [("<s>Q: hello ", False), ("ANSWER</s>", True), ("\nmore ", False), ("B<|im_end|>", True)])
    assert example["format"] == "input_output" and example["text"] == "<s>Q: hello ANSWER</s>\nmore B<|im_end|>"
    assert example["input_ids"][-1] == tiny_tokenizer().convert_tokens_to_ids("<|im_end|>")  # the text's own
    assert "messages" not in example
    assert_labels(example, tiny_tokenizer(), ["ANSWER</s>", "B<|im_end|>"])
    assert marked_text(example, tiny_tokenizer()) == "<s>Q: hello [[ANSWER</s>]]\nmore [[B<|im_end|>]]"
    everything = one(data, train_on_inputs=True)
    assert everything["labels"] == everything["input_ids"]
    mapped = one({"parts": data["segments"]}, columns={"segments": "parts"})
    assert mapped["labels"] == example["labels"]


class _BosTokenizer:
    """The tiny tokenizer, starting every encoding with its BOS token (as Llama's do)."""

    def __init__(self):
        self.inner = tiny_tokenizer()

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def __call__(self, text, add_special_tokens=True, **options):
        encoded = dict(self.inner(text, add_special_tokens=False, **options))
        if add_special_tokens:
            encoded["input_ids"] = [self.inner.bos_token_id] + list(encoded["input_ids"])
        return encoded


def test_input_output_gets_one_untrained_bos_from_a_tokenizer_that_adds_it_never_two():
    tokenizer, bos = _BosTokenizer(), tiny_tokenizer().bos_token
    examples, _ = tokenize_records([Record(segs((False, "Q "), (True, "A")), "m:1"),
                                    Record(segs((False, bos + "Q "), (True, "A")), "m:2")], tokenizer)
    ids, labels = expected([("Q ", False), ("A", True)])
    assert examples[0]["input_ids"] == [tokenizer.bos_token_id] + ids and examples[0]["labels"] == [M] + labels
    assert examples[1]["input_ids"] == examples[0]["input_ids"] and examples[1]["labels"] == [M] + labels
    assert one(segs((False, "Q "), (True, "A")))["input_ids"] == ids  # the tiny tokenizer adds no BOS


@pytest.mark.parametrize("data, pattern", [
    ({"segments": []}, r"input_output field 'segments' must be a non-empty list of segments, got an empty list; "
                       r"valid: a non-empty list of \{\"label\": true\|false, \"text\": \"...\"\} objects"),
    ({"segments": "Q A"}, r"must be a non-empty list of segments, got str; valid"),
    ({"segments": ["Q"]}, r"'segments'\[0\] must be an object, got str; valid"),
    ({"segments": [{"label": True}]}, r"'segments'\[0\] has no 'text' \(its keys: label\); valid"),
    ({"segments": [{"label": True, "text": 5}]}, r"'segments'\[0\]\['text'\] must be a string, got int"),
    ({"segments": [{"label": 1, "text": "A"}]}, r"'segments'\[0\] has 'label' 1; each segment's 'label' must be true "
                                                r"\(trained\) or false \(not trained\), a JSON boolean"),
    ({"segments": [{"label": "false", "text": "A"}]}, r"has 'label' 'false'; each segment's 'label' must be true"),
    ({"segments": [{"text": "A"}]}, r"'segments'\[0\] has no 'label'; each segment's 'label' must be true"),
    ({"segments": [{"label": False, "text": "Q"}, {"label": True, "text": ""}]},
     r"no segment of input_output field 'segments' is trained \('label': true with a non-empty 'text'\)"),
])
def test_malformed_input_output_records_are_one_line_errors_naming_what_is_valid(data, pattern):
    assert re.search(pattern, refused(data)), refused(data)


def test_input_output_truncation_and_drops_are_counted_like_the_other_formats(caplog):
    records = [Record(segs((False, "QQ"), (True, "A" * 20)), "m:1"), Record(segs((False, "Q" * 20), (True, "A")), "m:2")]
    with caplog.at_level(logging.WARNING, logger="tuneforge"):
        examples, counts = tokenize_records(records, tiny_tokenizer(), max_length=8)
    assert [e["source"] for e in examples] == ["m:1"] and counts["truncated"] == 1 and counts["dropped"] == 1
    assert examples[0]["labels"] == [M, M] + enc("A" * 6) and examples[0]["text"] == "QQ" + "A" * 20
    assert any("1 example(s) truncated and 1 dropped" in m and "prompt alone fills" in m for m in caplog.messages)
    _, counts = tokenize_records(records, tiny_tokenizer(), max_length=8, truncation="drop")
    assert counts["dropped"] == 2 and counts["truncated"] == 0


def test_input_output_segment_keys_are_read_and_others_reported(caplog):
    with caplog.at_level(logging.WARNING, logger="tuneforge"):
        splits = load([segs((False, "Q"), (True, "A")),
                       {"segments": [{"label": True, "text": "A", "weight": 2}], "instruction_id": 3}])
    assert splits.stats["unused_keys"] == {"weight in segments": {"records": 1, "first": "train.jsonl:2"},
                                           "instruction_id": {"records": 1, "first": "train.jsonl:2"}}


@pytest.mark.parametrize("loss, kind", [("dpo", "preference"), ("kto", "kto")])
def test_preference_and_kto_losses_refuse_input_output_data(tmp_path, loss, kind):
    from tuneforge.errors import ConfigError
    from tuneforge.testing import run_tiny_fit

    path = tmp_path / "io.jsonl"
    path.write_text("\n".join(json.dumps(segs((False, f"Q{i} "), (True, f"A{i}"))) for i in range(4)) + "\n")
    with pytest.raises(ConfigError) as info:
        run_tiny_fit(tmp_path / "run", overrides=[f"data.path={path}", f"loss={loss}"])
    assert f"{loss} trains on {kind} examples, but data=" in str(info.value)
    assert "gives input_output examples" in str(info.value) and "\n" not in str(info.value)


# ---------------------------------------------------------------------------
# 6. Role names of other projects: data.roles (your role name -> tuneforge's role)
# ---------------------------------------------------------------------------

def _roles_config(roles, tmp_path=None, **options) -> DataConfig:
    return DataConfig(roles=roles, val_size=0, cache=tmp_path is not None,
                      cache_dir=str(tmp_path / "cache") if tmp_path else None, **options)


def test_gemini_model_and_custom_role_names_are_read_with_data_roles():
    """Gemini writes the answer as role 'model', other datasets 'BOT': both were refused with no way to map
    them; with data.roles they train exactly as 'assistant' turns."""
    gemini = {"messages": [user("Hi"), {"role": "model", "content": "Hello."}]}
    want = [(turn("user", "Hi") + GEN, False), ("Hello." + END, True)]
    message = refused(gemini)
    assert ("messages[1] has role 'model'; valid: system, user, human, assistant, gpt, function_call, tool, "
            "observation, function; map another name with data.roles={model: assistant} (your role name -> "
            "tuneforge's: system, user, assistant, tool, function_call)") in message
    assert "data.roles={narrator: <role>}, <role> one of system, user" in refused(
        {"messages": [user("Hi"), {"role": "narrator", "content": "x"}]})
    example = one(gemini, roles={"model": "assistant"})
    assert (example["input_ids"], example["labels"]) == expected(want)
    assert example["messages"][1]["role"] == "assistant"
    custom = {"conversations": [{"from": "USER", "value": "Hi"}, {"from": "BOT", "value": "Hello."}]}
    assert "has role 'BOT'" in refused(custom) and "data.roles={BOT: assistant}" in refused(custom)
    example = one(custom, roles={"BOT": "assistant"})  # USER is 'user' in any case already
    assert (example["input_ids"], example["labels"]) == expected(want)
    # through the shared loader (prepare_splits reads data.roles from the dataset config), names in any case
    splits = prepare_splits([Record(custom, "m:1"), Record(gemini, "m:2")], tiny_tokenizer(),
                            _roles_config({"bot": "Assistant", "MODEL": "assistant"}))
    assert [ex["messages"][1]["role"] for ex in splits.train] == ["assistant", "assistant"]


def test_axolotls_roles_mapping_and_tool_roles_map_too():
    """Axolotl's `roles:` lists your names under tuneforge's role; a mapped tool name keeps its meaning."""
    record = {"messages": [{"role": "human", "content": "Weather?"},
                           {"role": "caller", "content": '{"name": "weather", "arguments": {}}'},
                           {"role": "tool_output", "content": "sunny"}, {"role": "model", "content": "Sunny."}]}
    roles = {"assistant": ["model", "bot"], "function_call": ["caller"], "tool": ["tool_output"]}
    example = one(record, roles=roles)
    assert [m["role"] for m in example["messages"]] == ["user", "assistant", "tool", "assistant"]
    assert example["messages"][1]["tool_calls"][0]["function"]["name"] == "weather"


@pytest.mark.parametrize("roles, problem", [
    ({"model": "bot"}, "data.roles: 'model' maps to 'bot', not a role tuneforge reads; valid: system, user, "
                       "assistant, tool, function_call"),
    ({"assistant": "model"}, "(data.roles maps your role name to tuneforge's; did you mean data.roles={model: "
                             "assistant}?)"),
    ({"model": "assistant", "MODEL": "user"}, "data.roles: 'MODEL' is mapped to both assistant and user; keep one"),
    ({"bot": ["model"]}, "data.roles: 'bot' holds a list of role names (Axolotl's form: tuneforge's role -> your "
                         "names), so it must be one of system, user, assistant, tool, function_call"),
    (["model"], "data.roles: must be a mapping your role name -> tuneforge's role, like {model: assistant}"),
])
def test_bad_data_roles_are_refused_when_the_config_is_checked_in_one_line(roles, problem):
    from tuneforge.errors import ConfigError

    with pytest.raises(ConfigError) as info:  # the host names it data.roles (tuneforge: error: data.roles: ...)
        DataConfig(roles=roles)
    assert info.value.field == "roles" and "\n" not in str(info.value), str(info.value)
    assert problem.replace("data.roles: ", "roles: ") in str(info.value)
    with pytest.raises(DataError) as info:  # the shared loader checks a config that was not (any object)
        one({"messages": [user("Hi"), bot("x")]}, roles=roles)
    assert problem in str(info.value)


def test_data_roles_are_part_of_the_cache_key(tmp_path):
    records = [Record({"messages": [user("Hi"), {"role": "model", "content": f"Hello {i}."}]}, f"m:{i}")
               for i in range(3)]
    first = prepare_splits(records, tiny_tokenizer(), _roles_config({"model": "assistant"}, tmp_path))
    again = prepare_splits(records, tiny_tokenizer(), _roles_config({"MODEL": "assistant"}, tmp_path))
    assert (first.stats["cache"], again.stats["cache"]) == ("miss", "hit")
    swapped = [Record({"messages": [{"role": "model", "content": "Hi"}, {"role": "ai", "content": "Yo."}]}, "s:1")]
    as_user = prepare_splits(swapped, tiny_tokenizer(), _roles_config({"model": "user", "ai": "assistant"}, tmp_path))
    as_system = prepare_splits(swapped, tiny_tokenizer(),
                               _roles_config({"model": "system", "ai": "assistant"}, tmp_path))
    assert (as_user.stats["cache"], as_system.stats["cache"]) == ("miss", "miss")
    assert as_user.train[0]["input_ids"] != as_system.train[0]["input_ids"]


def test_data_roles_is_a_data_setting_of_every_dataset_on_the_command_line(tmp_path):
    from tuneforge.commands.data import show

    path = tmp_path / "gemini.jsonl"
    path.write_text("".join(json.dumps({"contents": [user(f"Q{i}"), {"role": "model", "content": f"A{i}"}]}) + "\n"
                            for i in range(4)))
    text = show(["model=tiny", "data=jsonl", f"data.path={path}", "data.columns={messages: contents}",
                 "data.roles={model: assistant}", "data.cache=false", "data.shuffle=false"], count=1)
    assert "<|im_start|>assistant\n[[A1<|im_end|>\n]]" in text
