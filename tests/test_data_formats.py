"""Formats -> exact input_ids / labels on the tiny byte-level tokenizer.

Expectations are built independently of the code under test: the ChatML text
each segment should render to is written out here, and each segment is
tokenized on its own (the tiny tokenizer has one token per byte plus special
tokens, so segment-wise tokenization equals tokenizing the whole text).
"""

from __future__ import annotations

import functools
import json
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tuneforge.data import (
    ALPACA_PROMPT,
    IGNORE_INDEX,
    Record,
    detect_format,
    pad_batch,
    render_prompt,
    tokenize_records,
)
from tuneforge.errors import DataError
from tuneforge.plugins.models import build_tiny_tokenizer

M = IGNORE_INDEX


@functools.lru_cache(maxsize=None)
def tiny():
    return build_tiny_tokenizer()


def enc(text: str) -> list:
    return tiny()(text, add_special_tokens=False)["input_ids"]


def turn(role: str, content: str) -> str:
    return f"<|im_start|>{role}\n{content}<|im_end|>\n"


GEN = "<|im_start|>assistant\n"


def masked(text: str) -> list:
    return [M] * len(enc(text))


def one(data: dict, tokenizer=None, **options) -> dict:
    examples, counts = tokenize_records([Record(data, "mem.jsonl:1")], tokenizer or tiny(), **options)
    assert len(examples) == 1
    return examples[0]


def test_alpaca_with_input_and_system_masks_the_prompt_and_trains_output_and_eos():
    ex = one({"system": "Be terse.", "instruction": "Upper-case it.", "input": "oak", "output": "OAK"})
    prompt = turn("system", "Be terse.") + turn("user", "Upper-case it.\n\noak") + GEN
    target = "OAK<|im_end|>\n"
    assert ex["input_ids"] == enc(prompt) + enc(target)
    assert ex["labels"] == masked(prompt) + enc(target)
    assert tiny().eos_token_id in [t for t in ex["labels"] if t != M]
    assert ex["messages"][-1] == {"role": "assistant", "content": "OAK"}
    assert ex["format"] == "alpaca" and ex["source"] == "mem.jsonl:1"
    assert ex["record"]["input"] == "oak"


def test_alpaca_empty_or_null_input_is_left_out():
    for extra in ("", None):
        ex = one({"instruction": "Say hi.", "input": extra, "output": "hi"})
        assert ex["input_ids"] == enc(turn("user", "Say hi.") + GEN + "hi<|im_end|>\n")


def test_openai_multi_turn_trains_every_assistant_turn_and_masks_the_rest():
    messages = [{"role": "system", "content": "One word."}, {"role": "user", "content": "First of stone?"},
                {"role": "assistant", "content": "s"}, {"role": "user", "content": "And of cloud?"},
                {"role": "assistant", "content": "c"}]
    ex = one({"messages": messages})
    p1 = turn("system", "One word.") + turn("user", "First of stone?") + GEN
    a1 = "s<|im_end|>\n"
    p2 = turn("user", "And of cloud?") + GEN
    a2 = "c<|im_end|>\n"
    assert ex["input_ids"] == enc(p1 + a1 + p2 + a2)
    assert ex["labels"] == masked(p1) + enc(a1) + masked(p2) + enc(a2)
    assert ex["messages"] == messages


def test_sharegpt_conversations_equal_the_openai_form():
    sharegpt = {"conversations": [{"from": "system", "value": "One word."}, {"from": "human", "value": "Hi?"},
                                  {"from": "gpt", "value": "yo"}, {"from": "human", "value": "Again?"},
                                  {"from": "gpt", "value": "yo2"}]}
    openai = {"messages": [{"role": "system", "content": "One word."}, {"role": "user", "content": "Hi?"},
                           {"role": "assistant", "content": "yo"}, {"role": "user", "content": "Again?"},
                           {"role": "assistant", "content": "yo2"}]}
    a, b = one(sharegpt), one(openai)
    assert a["input_ids"] == b["input_ids"] and a["labels"] == b["labels"]
    assert a["format"] == "chat" and detect_format(Record(sharegpt, "x")) == "chat"
    assert a["labels"].count(tiny().eos_token_id) == 2


def test_sharegpt_top_level_system_field_becomes_the_system_turn():
    ex = one({"system": "Sys.", "conversations": [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}]})
    prompt = turn("system", "Sys.") + turn("user", "Q") + GEN
    assert ex["input_ids"] == enc(prompt + "A<|im_end|>\n")
    assert ex["labels"] == masked(prompt) + enc("A<|im_end|>\n")


DEFAULT_SYSTEM_TEMPLATE = (  # as Qwen's: a default system turn when the conversation has none
    "{% if messages[0]['role'] != 'system' %}<|im_start|>system\nDefault.<|im_end|>\n{% endif %}"
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


@pytest.mark.parametrize("template, opening", [(None, ""), (DEFAULT_SYSTEM_TEMPLATE, turn("system", "Default."))])
def test_a_conversation_opening_with_an_assistant_turn_trains_its_text_not_its_role_header(template, opening):
    # a greeting first (ShareGPT bot logs): the header before it is prompt, as before every other turn
    ex = one({"conversations": [{"from": "gpt", "value": "Hello!"}, {"from": "human", "value": "Hi"},
                                {"from": "gpt", "value": "Yo"}]}, chat_template=template)
    assert ex["input_ids"] == enc(opening + GEN + "Hello!<|im_end|>\n" + turn("user", "Hi") + GEN + "Yo<|im_end|>\n")
    assert ex["labels"] == (masked(opening + GEN) + enc("Hello!<|im_end|>\n") + masked(turn("user", "Hi") + GEN)
                            + enc("Yo<|im_end|>\n"))


def test_openai_text_content_parts_are_joined():
    ex = one({"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
                           {"role": "assistant", "content": "c"}]})
    assert ex["input_ids"] == enc(turn("user", "ab") + GEN + "c<|im_end|>\n")


def test_train_on_inputs_trains_every_token():
    ex = one({"instruction": "Q", "output": "A"}, train_on_inputs=True)
    assert ex["labels"] == ex["input_ids"] == enc(turn("user", "Q") + GEN + "A<|im_end|>\n")


def test_completion_trains_all_tokens_and_appends_eos():
    ex = one({"text": "Domain text, twice."})
    expected = enc("Domain text, twice.") + [tiny().eos_token_id]
    assert ex["input_ids"] == expected and ex["labels"] == expected
    assert ex["format"] == "completion" and ex["text"] == "Domain text, twice." and "messages" not in ex


def _preference_expectation(prompt_text: str, chosen: str, rejected: str):
    prompt = turn("user", prompt_text) + GEN
    return (enc(prompt) + enc(chosen + "<|im_end|>\n"), masked(prompt) + enc(chosen + "<|im_end|>\n"),
            enc(prompt) + enc(rejected + "<|im_end|>\n"), masked(prompt) + enc(rejected + "<|im_end|>\n"))


@pytest.mark.parametrize("record", [
    {"prompt": "Capital of Peru?", "chosen": "Lima", "rejected": "Cusco"},
    {"prompt": [{"role": "user", "content": "Capital of Peru?"}],
     "chosen": [{"role": "assistant", "content": "Lima"}], "rejected": [{"role": "assistant", "content": "Cusco"}]},
    {"prompt": "Capital of Peru?",  # UltraFeedback layout: responses repeat the prompt
     "chosen": [{"role": "user", "content": "Capital of Peru?"}, {"role": "assistant", "content": "Lima"}],
     "rejected": [{"role": "user", "content": "Capital of Peru?"}, {"role": "assistant", "content": "Cusco"}]},
    {"chosen": [{"role": "user", "content": "Capital of Peru?"}, {"role": "assistant", "content": "Lima"}],
     "rejected": [{"role": "user", "content": "Capital of Peru?"}, {"role": "assistant", "content": "Cusco"}]},
], ids=["strings", "message-lists", "responses-repeat-prompt", "no-prompt-field"])
def test_preference_yields_chosen_and_rejected_with_the_prompt_masked(record):
    ex = one(record)
    c_ids, c_labels, r_ids, r_labels = _preference_expectation("Capital of Peru?", "Lima", "Cusco")
    assert ex["chosen_input_ids"] == c_ids and ex["chosen_labels"] == c_labels
    assert ex["rejected_input_ids"] == r_ids and ex["rejected_labels"] == r_labels
    assert ex["input_ids"] == c_ids and ex["labels"] == c_labels
    assert ex["format"] == "preference"
    assert ex["messages"] == [{"role": "user", "content": "Capital of Peru?"},
                              {"role": "assistant", "content": "Lima"}]


def test_preference_prompt_stays_masked_even_with_train_on_inputs():
    ex = one({"prompt": "P", "chosen": "C", "rejected": "R"}, train_on_inputs=True)
    assert ex["chosen_labels"][: len(enc(turn("user", "P") + GEN))] == masked(turn("user", "P") + GEN)


def test_preference_batch_pads_each_side_with_its_own_attention_mask():
    examples, _ = tokenize_records([Record({"prompt": "P", "chosen": "long answer", "rejected": "no"}, "m:1"),
                                    Record({"prompt": "Q", "chosen": "a", "rejected": "longer no"}, "m:2")], tiny())
    batch = pad_batch(examples, tiny().pad_token_id)
    for side in ("chosen", "rejected"):
        assert batch[f"{side}_input_ids"].shape == batch[f"{side}_labels"].shape
        assert batch[f"{side}_attention_mask"].sum(1).tolist() == [len(e[f"{side}_input_ids"]) for e in examples]


def test_column_mapping_reads_other_key_names():
    mapped = one({"question": "Q?", "answer": "A"}, columns={"instruction": "question", "output": "answer"})
    plain = one({"instruction": "Q?", "output": "A"})
    assert mapped["input_ids"] == plain["input_ids"] and mapped["labels"] == plain["labels"]
    assert mapped["record"] == {"question": "Q?", "answer": "A"}


def test_column_mapping_of_message_keys():
    ex = one({"dialog": [{"speaker": "user", "utterance": "Q"}, {"speaker": "assistant", "utterance": "A"}]},
             columns={"messages": "dialog", "role": "speaker", "content": "utterance"})
    assert ex["input_ids"] == enc(turn("user", "Q") + GEN + "A<|im_end|>\n")


def test_unknown_column_name_is_an_error_listing_valid_ones():
    with pytest.raises(DataError, match="unknown field 'question'.*valid: instruction"):
        one({"instruction": "Q", "output": "A"}, columns={"question": "q"})


def test_a_reversed_column_mapping_says_which_way_it_goes():
    """Axolotl's and LLaMA-Factory's mappings read your key -> field; the error listed the fields only."""
    from tuneforge.data import DataConfig

    hint = "(data.columns maps tuneforge's field to your key; did you mean data.columns={instruction: q, output: a}?)"
    with pytest.raises(DataError) as info:
        one({"q": "Q", "a": "A"}, columns={"q": "instruction", "a": "output"})
    assert str(info.value).endswith(hint) and "\n" not in str(info.value)
    with pytest.raises(ValueError, match=re.escape(hint)):  # the config check, before the model loads
        DataConfig(columns={"q": "instruction", "output": "a"})
    with pytest.raises(DataError) as plain:
        one({"q": "Q"}, columns={"question": "q"})
    assert "did you mean" not in str(plain.value)


def test_torchtune_input_output_records_are_told_how_to_map_the_prompt():
    hint = "(the prompt in 'input', as torchtune's input/output records: data.columns={instruction: input})"
    with pytest.raises(DataError) as info:
        one({"input": "2 + 2?", "output": "4"})
    assert str(info.value).endswith(hint)
    mapped = one({"input": "2 + 2?", "output": "4"}, columns={"instruction": "input"})
    assert mapped["input_ids"] == enc(turn("user", "2 + 2?") + GEN + "4<|im_end|>\n")
    with pytest.raises(DataError) as other:
        one({"output": "4"})
    assert "torchtune" not in str(other.value)


def test_explicit_format_overrides_detection():
    # 'output' alone would be detected as alpaca; naming the format reads 'text'
    ex = one({"text": "abc", "output": "x"}, fmt="completion")
    assert ex["input_ids"] == enc("abc") + [tiny().eos_token_id]
    with pytest.raises(DataError, match="valid: auto, alpaca, chat, completion, preference"):
        one({"text": "abc"}, fmt="sharegpt-ish")


@pytest.mark.parametrize("data, fmt", [
    ({"instruction": "a", "output": "b"}, "alpaca"), ({"messages": []}, "chat"),
    ({"conversations": []}, "chat"), ({"text": "t"}, "completion"),
    ({"prompt": "p", "chosen": "c", "rejected": "r"}, "preference"),
])
def test_format_detection_from_keys(data, fmt):
    assert detect_format(Record(data, "x:1")) == fmt


def test_keys_holding_null_do_not_decide_the_format():
    """A Hugging Face dataset of a mixed file gives every record every column (null where it had none): an
    alpaca record with 'prompt': null, 'completion': null was read as prompt_completion and refused."""
    nulls = {"messages": None, "conversations": None, "prompt": None, "completion": None, "text": None,
             "segments": None, "chosen": None, "rejected": None}
    cases = [({"instruction": "a", "output": "b"}, "alpaca"), ({"text": "t"}, "completion"),
             ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}, "chat"),
             ({"prompt": "p", "completion": "c"}, "prompt_completion")]
    for data, fmt in cases:
        record = dict(nulls, **data)
        assert detect_format(Record(record, "x:1")) == fmt
        assert one(record)["input_ids"] == one(data)["input_ids"]
    # only null fields: still named as a field set to null
    with pytest.raises(DataError, match=r"mem.jsonl:1: completion record has 'text' set to null"):
        one({"text": None})


def test_undetectable_record_names_keys_source_and_valid_formats():
    with pytest.raises(DataError) as info:
        one({"question": "q", "answer": "a"})
    message = str(info.value)
    assert "mem.jsonl:1" in message and "['answer', 'question']" in message and "data.columns" in message
    assert "\n" not in message


def test_missing_fields_are_named_with_the_record():
    with pytest.raises(DataError, match=r"mem.jsonl:1: alpaca record is missing 'output'"):
        one({"instruction": "x"})
    with pytest.raises(DataError, match=r"mem.jsonl:1: preference record is missing 'rejected'"):
        one({"prompt": "p", "chosen": "c"})
    with pytest.raises(DataError, match=r"missing 'answer' \(data.columns.output\)"):
        one({"question": "q"}, columns={"instruction": "question", "output": "answer"})
    with pytest.raises(DataError, match=r"mem.jsonl:1: alpaca record has 'output' set to null; give it a value"):
        one({"instruction": "x", "output": None})


def test_wrong_types_and_roles_are_errors_naming_the_place():
    with pytest.raises(DataError, match=r"mem.jsonl:1: messages\[1\] has role 'bot'; valid: system, user"):
        one({"messages": [{"role": "user", "content": "q"}, {"role": "bot", "content": "a"}]})
    with pytest.raises(DataError, match=r"messages\[0\] content must be a string"):
        one({"messages": [{"role": "user", "content": 3}, {"role": "assistant", "content": "a"}]})
    with pytest.raises(DataError, match="no assistant"):
        one({"messages": [{"role": "user", "content": "q"}]})
    with pytest.raises(DataError, match="alpaca field 'output' must be a string, got int"):
        one({"instruction": "q", "output": 4})


def test_mixing_preference_with_other_records_is_an_error():
    records = [Record({"instruction": "q", "output": "a"}, "f:1"), Record({"prompt": "p", "chosen": "c",
                                                                         "rejected": "r"}, "f:2")]
    with pytest.raises(DataError, match="f:2: preference records cannot be mixed"):
        tokenize_records(records, tiny())


def test_truncate_cuts_and_counts_drop_removes_and_counts():
    records = [Record({"instruction": "q", "output": "x" * 50}, "f:1"), Record({"instruction": "q", "output": "y"}, "f:2")]
    short = len(enc(turn("user", "q") + GEN + "y<|im_end|>\n"))
    examples, counts = tokenize_records(records, tiny(), max_length=short)
    assert counts["truncated"] == 1 and counts["dropped"] == 0
    assert [len(e["input_ids"]) for e in examples] == [short, short]
    assert len(examples[0]["labels"]) == short
    examples, counts = tokenize_records(records, tiny(), max_length=short, truncation="drop")
    assert counts == {"truncated": 0, "dropped": 1, "formats": {"alpaca": 1}}
    assert [e["source"] for e in examples] == ["f:2"]
    with pytest.raises(DataError, match="valid: truncate, drop"):
        tokenize_records(records, tiny(), truncation="cut")


def test_prompt_filling_max_length_is_dropped_counted_and_logged(caplog):
    records = [Record({"instruction": "q" * 40, "output": "a"}, "f:7"), Record({"instruction": "q", "output": "a"}, "f:8")]
    examples, counts = tokenize_records(records, tiny(), max_length=30)
    assert [e["source"] for e in examples] == ["f:8"]
    assert counts["dropped"] == 1 and counts["truncated"] == 0
    assert caplog.messages == ["data: 0 example(s) truncated and 1 dropped at data.max_length=30 "
                               "(data.truncation=truncate; 1 of them because the prompt alone fills the limit): f:7"]


def test_a_template_that_renders_no_assistant_text_is_an_error():
    silent = "{% for m in messages %}{% if m['role'] != 'assistant' %}{{ m['content'] }}{% endif %}{% endfor %}"
    bare = build_tiny_tokenizer()
    bare.eos_token = None
    with pytest.raises(DataError, match="f:3: no token of 'labels' is trained"):
        tokenize_records([Record({"instruction": "q", "output": "a"}, "f:3")], bare, chat_template=silent)


def test_without_any_template_chat_is_an_error_and_alpaca_uses_the_alpaca_prompt():
    bare = build_tiny_tokenizer()
    bare.chat_template = None
    with pytest.raises(DataError, match="f:1: the tokenizer has no chat template.*data.chat_template"):
        tokenize_records([Record({"messages": [{"role": "user", "content": "q"},
                                               {"role": "assistant", "content": "a"}]}, "f:1")], bare)
    ex = one({"instruction": "Q", "output": "A"}, tokenizer=bare)
    prompt = ALPACA_PROMPT.format(instruction="Q")
    assert ex["input_ids"] == enc(prompt) + enc("A<|im_end|>")
    assert ex["labels"] == masked(prompt) + enc("A<|im_end|>")


def test_data_chat_template_serves_a_tokenizer_without_one():
    bare = build_tiny_tokenizer()
    bare.chat_template = None
    record = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    with_named = one(record, tokenizer=bare, chat_template="chatml")
    assert with_named["input_ids"] == one(record)["input_ids"]
    assert render_prompt(bare, record["messages"][:1], "chatml") == turn("user", "q") + GEN


def test_a_template_without_end_of_turn_gets_eos_appended():
    template = ("{% for m in messages %}[{{ m['role'] }}]{{ m['content'] }}{% endfor %}"
                "{% if add_generation_prompt %}[assistant]{% endif %}")
    ex = one({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]},
             chat_template=template)
    eos = tiny().eos_token_id
    assert ex["input_ids"] == enc("[user]q[assistant]a") + [eos]
    assert ex["labels"] == masked("[user]q[assistant]") + enc("a") + [eos]


def test_errors_are_one_line():
    bad = [{"instruction": "x"}, {"messages": "nope"}, {"prompt": "p", "chosen": 1, "rejected": "r"}, {}]
    for data in bad:
        with pytest.raises(DataError) as info:
            one(data)
        assert "\n" not in str(info.value) and "mem.jsonl:1" in str(info.value)


# ---------------------------------------------------------------------------
# Property: garbled records give DataError or examples, never another exception
# ---------------------------------------------------------------------------

_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=8))
_json = st.recursive(_scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                       st.dictionaries(st.text(max_size=6), inner, max_size=3)),
                     max_leaves=8)
_call = st.fixed_dictionaries({}, optional={
    "name": st.sampled_from(["f", ""]) | _scalars, "arguments": st.sampled_from(['{"a": 1}', "{", "[1]"]) | _json,
    "function": st.fixed_dictionaries({}, optional={"name": st.text(max_size=3) | _scalars,
                                                    "arguments": st.text(max_size=6) | _json}),
    "type": st.just("function"), "id": _scalars})
_message = st.fixed_dictionaries({}, optional={
    "role": st.sampled_from(["user", "assistant", "system", "human", "gpt", "tool", "function_call",
                             "observation", ""]) | _scalars,
    "content": st.text(max_size=8) | _json, "from": st.sampled_from(["human", "gpt", "x", "function_call",
                                                                     "observation"]),
    "value": st.text(max_size=8) | _scalars | _call.map(json.dumps),
    "tool_calls": st.lists(_call, max_size=2) | _scalars, "function_call": _call,
    "weight": st.sampled_from([0, 1, 0.5]) | _scalars, "train": _scalars})
_field_value = st.one_of(_json, st.text(max_size=10), st.lists(_message, max_size=4), _message,
                         st.lists(_call, max_size=2).map(json.dumps),
                         st.lists(st.lists(st.text(max_size=4) | _scalars, max_size=3), max_size=3))
_records = st.dictionaries(
    st.sampled_from(["instruction", "input", "output", "system", "messages", "conversations", "text",
                     "prompt", "chosen", "rejected", "tools", "label", "kto_tag", "images", "history",
                     "completion", "other"]),
    _field_value, max_size=5)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(records=st.lists(_records, min_size=1, max_size=3), fmt=st.sampled_from(["auto", "alpaca", "chat",
                                                                                "completion", "preference", "kto",
                                                                                "prompt_completion", "prompt"]))
def test_garbled_records_raise_only_data_error(records, fmt):
    try:
        examples, _ = tokenize_records([Record(r, f"g:{i}") for i, r in enumerate(records, 1)], tiny(), fmt=fmt,
                                       max_length=64)
    except DataError as exc:
        assert "\n" not in str(exc)
        return
    for example in examples:
        assert len(example["input_ids"]) == len(example["labels"]) <= 64
        # every example trains a token, except a prompt's (an online objective generates its answer)
        assert any(label != IGNORE_INDEX for label in example["labels"]) != (example.get("format") == "prompt")
