"""Tool-calling chat data, LLaMA-Factory preference and KTO layouts, and the data error messages.

Masking expectations are written out as the text each segment must render to
and tokenized segment by segment on the tiny byte-level tokenizer (one token
per byte plus special tokens), independently of the code under test.
Fixtures in ``tests/data_fixtures`` are small files in the layouts
LLaMA-Factory and OpenAI use.
"""

from __future__ import annotations

import functools
import json
import logging
from pathlib import Path

import pytest

from helpers import run_cli
from tuneforge.data import (
    IGNORE_INDEX,
    DataConfig,
    Record,
    prepare_splits,
    read_records,
    render_prompt,
    template_supports_tools,
    tokenize_records,
)
from tuneforge.errors import ConfigError, DataError
from tuneforge.plugins.models import TINY_CHAT_TEMPLATE, build_tiny_tokenizer
from tuneforge.testing import run_tiny_fit

FIXTURES = Path(__file__).parent / "data_fixtures"
TOOLS_TEMPLATE = str(FIXTURES / "qwen_tools.jinja")
M = IGNORE_INDEX


@functools.lru_cache(maxsize=None)
def tiny():
    return build_tiny_tokenizer()


def enc(text: str) -> list:
    return tiny()(text, add_special_tokens=False)["input_ids"]


def one(data: dict, tokenizer=None, **options) -> dict:
    examples, _ = tokenize_records([Record(data, "mem.jsonl:1")], tokenizer or tiny(), **options)
    assert len(examples) == 1
    return examples[0]


def expected_ids_and_labels(segments) -> tuple[list, list]:
    """``segments`` = [(text, trained)]: the ids of their texts, and labels -100 where not trained."""
    ids, labels = [], []
    for text, trained in segments:
        ids += enc(text)
        labels += enc(text) if trained else [M] * len(enc(text))
    return ids, labels


def loss_table(ids, labels) -> list:
    """(token text, carries loss) per token; printed so ``pytest -s`` shows the masking token by token."""
    rows = [(tiny().decode([t]), label != M) for t, label in zip(ids, labels)]
    print("\n".join(f"{'LOSS' if trained else '    '} {token!r}" for token, trained in rows))
    return rows


WEATHER_SCHEMA = {"name": "get_weather", "description": "Current weather",
                  "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}
WEATHER_TOOL = {"type": "function", "function": WEATHER_SCHEMA}
WEATHER_JSON = ('{"type": "function", "function": {"name": "get_weather", "description": "Current weather", '
                '"parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}')

GLAIVE = {"conversations": [
    {"from": "human", "value": "Weather in Paris?"},
    {"from": "function_call", "value": json.dumps({"name": "get_weather", "arguments": {"city": "Paris"}})},
    {"from": "observation", "value": '{"temp": 21}'},
    {"from": "gpt", "value": "It is 21 C."}],
    "tools": json.dumps([WEATHER_SCHEMA])}

OPENAI = {"messages": [
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": '{"temp": 21}'},
    {"role": "assistant", "content": "It is 21 C."}],
    "tools": [WEATHER_TOOL]}


# ---------------------------------------------------------------------------
# Tool calls: normalization, rendering, masking
# ---------------------------------------------------------------------------


def test_template_tool_support_is_detected_from_the_jinja_source():
    assert not template_supports_tools(TINY_CHAT_TEMPLATE)
    assert template_supports_tools(Path(TOOLS_TEMPLATE).read_text())
    assert template_supports_tools("{% for call in message.tool_calls %}{% endfor %}")


@pytest.mark.parametrize("record", [GLAIVE, OPENAI], ids=["sharegpt-glaive", "openai"])
def test_fallback_rendering_trains_tool_calls_and_masks_tools_and_results_token_by_token(record):
    """The tiny ChatML template knows no tools: they are written as text (docs/data.md, 'Fallback rendering')."""
    ex = one(record)
    segments = [
        ("<|im_start|>system\nYou can call these tools. To call one, reply with <tool_call>{\"name\": <tool name>, "
         "\"arguments\": <arguments object>}</tool_call>.\n<tools>\n" + WEATHER_JSON + "\n</tools><|im_end|>\n"
         "<|im_start|>user\nWeather in Paris?<|im_end|>\n<|im_start|>assistant\n", False),
        ('<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call><|im_end|>\n', True),
        ('<|im_start|>user\n<tool_response>{"temp": 21}</tool_response><|im_end|>\n<|im_start|>assistant\n', False),
        ("It is 21 C.<|im_end|>\n", True),
    ]
    ids, labels = expected_ids_and_labels(segments)
    table = loss_table(ex["input_ids"], ex["labels"])
    assert ex["input_ids"] == ids and ex["labels"] == labels
    assert table == [(tiny().decode([t]), label != M) for t, label in zip(ids, labels)]
    trained = "".join(token for token, loss in table if loss)
    assert trained == ('<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call><|im_end|>\n'
                       "It is 21 C.<|im_end|>\n")
    assert ex["tools"] == [WEATHER_TOOL]
    assert ex["messages"][1] == {"role": "assistant", "content": "", "tool_calls": [
        {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}},
         **({"id": "call_1"} if record is OPENAI else {})}]}
    assert ex["messages"][2]["role"] == "tool"


@pytest.mark.parametrize("record", [GLAIVE, OPENAI], ids=["sharegpt-glaive", "openai"])
def test_tools_capable_template_gets_the_tools_and_trains_only_assistant_turns_token_by_token(record):
    ex = one(record, chat_template=TOOLS_TEMPLATE)
    segments = [
        ("<|im_start|>system\n# Tools\n<tools>\n" + WEATHER_JSON + "\n</tools><|im_end|>\n"
         "<|im_start|>user\nWeather in Paris?<|im_end|>\n<|im_start|>assistant\n", False),
        ('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>\n', True),
        ('<|im_start|>user\n<tool_response>\n{"temp": 21}\n</tool_response><|im_end|>\n<|im_start|>assistant\n',
         False),
        ("It is 21 C.<|im_end|>\n", True),
    ]
    ids, labels = expected_ids_and_labels(segments)
    table = loss_table(ex["input_ids"], ex["labels"])
    assert ex["input_ids"] == ids and ex["labels"] == labels
    assert [loss for _, loss in table].count(True) == len(enc(segments[1][0])) + len(enc(segments[3][0]))


def test_parallel_calls_with_text_and_consecutive_results_in_both_renderings():
    record = {"messages": [
        {"role": "user", "content": "Paris and Rome?"},
        {"role": "assistant", "content": "Checking.", "tool_calls": [
            {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}},
            {"type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'}}]},
        {"role": "tool", "content": "18"}, {"role": "tool", "content": "24"},
        {"role": "assistant", "content": "18 and 24."}]}
    fallback = one(record)
    ids, labels = expected_ids_and_labels([
        ("<|im_start|>user\nParis and Rome?<|im_end|>\n<|im_start|>assistant\n", False),
        ('Checking.\n<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>\n'
         '<tool_call>{"name": "get_weather", "arguments": {"city": "Rome"}}</tool_call><|im_end|>\n', True),
        ("<|im_start|>user\n<tool_response>18</tool_response>\n<tool_response>24</tool_response><|im_end|>\n"
         "<|im_start|>assistant\n", False),
        ("18 and 24.<|im_end|>\n", True)])
    assert fallback["input_ids"] == ids and fallback["labels"] == labels
    native = one(record, chat_template=TOOLS_TEMPLATE)
    ids, labels = expected_ids_and_labels([
        ("<|im_start|>user\nParis and Rome?<|im_end|>\n<|im_start|>assistant\n", False),
        ('Checking.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
         '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Rome"}}\n</tool_call><|im_end|>\n', True),
        ("<|im_start|>user\n<tool_response>\n18\n</tool_response>\n<tool_response>\n24\n</tool_response><|im_end|>\n"
         "<|im_start|>assistant\n", False),
        ("18 and 24.<|im_end|>\n", True)])
    assert native["input_ids"] == ids and native["labels"] == labels


def test_sharegpt_and_openai_tool_layouts_give_the_same_tokens():
    for template in (None, TOOLS_TEMPLATE):
        a, b = one(GLAIVE, chat_template=template), one(OPENAI, chat_template=template)
        assert a["input_ids"] == b["input_ids"] and a["labels"] == b["labels"]


def test_the_tools_list_goes_after_an_existing_system_message():
    record = dict(GLAIVE, conversations=[{"from": "system", "value": "Be brief."}, *GLAIVE["conversations"]])
    text = tiny().decode(one(record)["input_ids"])
    assert text.startswith("<|im_start|>system\nBe brief.\n\nYou can call these tools.")


def test_evaluation_prompts_render_tools_like_training():
    """The prompt before the final answer is exactly the masked text training saw before it."""
    for template in (None, TOOLS_TEMPLATE):
        ex = one(OPENAI, chat_template=template)
        answer = enc("It is 21 C.<|im_end|>\n")
        prompt = render_prompt(tiny(), ex["messages"][:-1], template, tools=ex["tools"])
        assert enc(prompt) == ex["input_ids"][: -len(answer)]


@pytest.mark.parametrize("messages, pattern", [
    ([{"from": "human", "value": "q"}, {"from": "observation", "value": "r"}, {"from": "gpt", "value": "a"}],
     r"conversations\[1\] is a tool result \('observation'\) that does not follow a tool call"),
    ([{"from": "human", "value": "q"}, {"from": "function_call", "value": '{"name": "f", "arguments": '},
      {"from": "gpt", "value": "a"}],
     r"conversations\[1\] value is not valid JSON \(Expecting value at column \d+\)"),
    ([{"from": "human", "value": "q"}, {"from": "function_call", "value": '{"name": "f", "arguments": [1]}'},
      {"from": "observation", "value": "r"}, {"from": "gpt", "value": "a"}],
     r"conversations\[1\] value arguments must be a JSON object, got list"),
    ([{"from": "human", "value": "q"}, {"from": "function_call", "value": '{"arguments": {}}'},
      {"from": "gpt", "value": "a"}],
     r"conversations\[1\] value must be a tool call with a 'name'"),
])
def test_bad_tool_calls_are_one_line_errors_naming_the_turn(messages, pattern):
    with pytest.raises(DataError, match=r"^mem\.jsonl:1: " + pattern) as info:
        one({"conversations": messages})
    assert "\n" not in str(info.value)


def test_bad_tools_field_is_an_error_and_empty_tools_mean_none():
    chat = [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]
    with pytest.raises(DataError, match=r"mem\.jsonl:1: field 'tools' is not valid JSON"):
        one({"conversations": chat, "tools": "[{"})
    with pytest.raises(DataError, match=r"field 'tools'\[0\] must be a tool schema with a 'name'"):
        one({"conversations": chat, "tools": [{"description": "no name"}]})
    assert "tools" not in one({"conversations": chat, "tools": ""})
    assert one({"conversations": chat, "tools": "[]"})["input_ids"] == one({"conversations": chat})["input_ids"]


def test_glaive_tool_call_file_trains_and_evaluation_prompts_hold_the_tools(tmp_path):
    result = run_tiny_fit(tmp_path / "run", overrides=[
        "data=files", f"data.path={FIXTURES / 'glaive_toolcall.json'}", "data.val_size=1", "data.shuffle=false",
        f"data.cache_dir={tmp_path / 'cache'}", "trainer.max_steps=2", "evaluators=[contains]"])
    assert result.metrics["steps"] == 2
    assert result.metrics["data"]["formats"] == {"chat": 5}
    rows = [json.loads(line) for line in (tmp_path / "run" / "predictions.jsonl").read_text().splitlines()]
    rows = [row for row in rows if row["set"] == "val"]  # not the memorisation sample
    assert len(rows) == 1 and rows[0]["source"].endswith("glaive_toolcall.json:row 0")
    assert "<tools>\n" in rows[0]["prompt"] and '"name": "search_recipes"' in rows[0]["prompt"]
    assert "<tool_response>" in rows[0]["prompt"] and rows[0]["prompt"].endswith("<|im_start|>assistant\n")


def test_openai_tool_call_file_trains_with_a_tools_capable_template(tmp_path):
    result = run_tiny_fit(tmp_path / "run", overrides=[
        "data=jsonl", f"data.path={FIXTURES / 'openai_tools.jsonl'}", "data.val_size=1",
        f"data.chat_template={TOOLS_TEMPLATE}", "data.cache=false", "trainer.max_steps=2",
        "quality.min_train_examples=3"])
    assert result.metrics["steps"] == 2 and result.metrics["data"]["formats"] == {"chat": 4}


# ---------------------------------------------------------------------------
# LLaMA-Factory preference layouts
# ---------------------------------------------------------------------------


def turn(role: str, content: str) -> str:
    return f"<|im_start|>{role}\n{content}<|im_end|>\n"


GEN = "<|im_start|>assistant\n"


def test_llamafactory_sharegpt_preference_with_message_objects():
    record = json.loads((FIXTURES / "lf_preference.json").read_text())[1]
    ex = one(record)
    prompt = (turn("user", "Name a prime number between 10 and 15.") + turn("assistant", "11 is one.")
              + turn("user", "Another one?") + GEN)
    for side, answer in (("chosen", "13 is also prime."), ("rejected", "12 is prime.")):
        ids, labels = expected_ids_and_labels([(prompt, False), (answer + "<|im_end|>\n", True)])
        assert ex[f"{side}_input_ids"] == ids and ex[f"{side}_labels"] == labels
    assert ex["format"] == "preference"


def test_llamafactory_alpaca_preference():
    ex = one({"instruction": "Translate to French.", "input": "cat", "chosen": "chat", "rejected": "chien",
              "system": "Be exact."})
    prompt = turn("system", "Be exact.") + turn("user", "Translate to French.\n\ncat") + GEN
    ids, labels = expected_ids_and_labels([(prompt, False), ("chien<|im_end|>\n", True)])
    assert ex["rejected_input_ids"] == ids and ex["rejected_labels"] == labels


def test_llamafactory_preference_file_trains_with_dpo(tmp_path):
    result = run_tiny_fit(tmp_path / "run", overrides=[
        "data=files", f"data.path={FIXTURES / 'lf_preference.json'}", "data.val_size=1", "data.cache=false",
        "loss=dpo", "trainer.max_steps=2", "evaluators=[]", "quality.min_train_examples=2"])
    assert result.metrics["steps"] == 2
    assert result.metrics["data"]["formats"] == {"preference": 3} and result.metrics["data"]["train_examples"] == 2


# ---------------------------------------------------------------------------
# KTO and other unsupported layouts
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name, where, field", [("lf_kto.json", "row 0", "label"), ("kto_tag.jsonl", "1", "kto_tag")])
def test_kto_data_with_another_loss_or_format_is_refused_in_one_line_naming_loss_kto(tmp_path, name, where, field):
    with pytest.raises(ConfigError) as info:  # SFT on KTO data: before the model loads
        run_tiny_fit(tmp_path / "run0", overrides=["data=files", f"data.path={FIXTURES / name}"])
    message = str(info.value)
    assert "loss: loss=cross_entropy cannot train on the kto examples data=files gives: its answers are marked " \
           "desirable or undesirable" in message and message.endswith("; use loss=kto") and "\n" not in message
    with pytest.raises(DataError) as info:  # read as chat, it would be SFT on the undesirable answers too
        run_tiny_fit(tmp_path / "run1", overrides=["data=files", f"data.path={FIXTURES / name}", "data.format=chat"])
    message = str(info.value)
    assert message.startswith(f"{FIXTURES / name}:{where}: a KTO record ('{field}': true/false) read as "
                              "data.format=chat: ") and message.endswith("set data.format=kto (or auto) and use loss=kto")
    assert "\n" not in message


def test_kto_data_trains_with_loss_kto(tmp_path):
    result = run_tiny_fit(tmp_path / "run", overrides=[
        "data=files", f"data.path={FIXTURES / 'kto_tag.jsonl'}", "data.val_size=1", "data.cache=false",
        "loss=kto", "trainer.max_steps=2", "evaluators=[]", "baselines=[]", "quality.min_train_examples=2"])
    assert result.metrics["steps"] == 2 and result.metrics["data"]["formats"] == {"kto": 3}


def test_sft_on_kto_data_on_the_command_line_is_one_line_and_exit_2(tmp_path):
    result = run_cli(["train", "data=files", f"data.path={FIXTURES / 'lf_kto.json'}",
                      f"hydra.run.dir={tmp_path / 'run'}"])
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("tuneforge: error:")]
    assert len(lines) == 1 and "cannot train on the kto examples" in lines[0] and "use loss=kto" in lines[0]


def test_a_classification_label_is_not_mistaken_for_kto():
    assert one({"instruction": "Sentiment of 'great'?", "output": "positive", "label": "positive"})


def test_unsupported_layouts_name_the_supported_ones():
    with pytest.raises(DataError, match=r"mem\.jsonl:1: multimodal records \('images'\) are not supported, only "
                                        r"text; supported layouts: chat"):
        one({"messages": [{"role": "user", "content": "<image>What is it?"},
                          {"role": "assistant", "content": "A cat."}], "images": ["cat.png"]})
    with pytest.raises(DataError, match=r"cannot tell the record's format from its keys \['query', 'response'\]; "
                                        r"supported layouts: chat .*preference .*data\.columns"):
        one({"query": "q", "response": "r"})


# ---------------------------------------------------------------------------
# Data errors: order, text-part alias, summaries, placeholders, JSON messages
# ---------------------------------------------------------------------------


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_the_first_bad_line_in_file_order_is_reported_not_a_shuffled_one(tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"instruction": f"q{i}"} for i in range(60)])
    with pytest.raises(DataError, match=rf"^{path}:1: alpaca record is missing 'output'"):
        prepare_splits(read_records(path), tiny(), DataConfig(cache=False, seed=3))
    # an error found while tokenizing (no chat template) also names the first line
    bare = build_tiny_tokenizer()
    bare.chat_template = None
    chats = write_jsonl(tmp_path / "chat.jsonl", [{"messages": [{"role": "user", "content": f"q{i}"},
                                                                {"role": "assistant", "content": "a"}]}
                                                  for i in range(60)])
    with pytest.raises(DataError, match=rf"^{chats}:1: the tokenizer has no chat template"):
        prepare_splits(read_records(chats), bare, DataConfig(cache=False, seed=3))
    # a separate validation file comes after the training file
    good = write_jsonl(tmp_path / "good.jsonl", [{"instruction": "q", "output": "a"}] * 5)
    with pytest.raises(DataError, match=rf"^{path}:1: "):
        prepare_splits(read_records(good), tiny(), DataConfig(cache=False), val_records=read_records(path))


def test_a_bad_record_beyond_max_examples_is_still_reported(tmp_path):
    rows = [{"instruction": "q", "output": "a"}] * 10 + [{"instruction": "no output"}]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    with pytest.raises(DataError, match=rf"{path}:11: alpaca record is missing 'output'"):
        prepare_splits(read_records(path), tiny(), DataConfig(cache=False, max_examples=2, shuffle=False))


def test_text_parts_may_name_their_text_value():
    plain = one({"messages": [{"role": "user", "content": "ab"}, {"role": "assistant", "content": "c"}]})
    parts = one({"messages": [{"role": "user", "content": [{"type": "text", "value": "a"},
                                                           {"type": "text", "text": "b"}]},
                              {"role": "assistant", "content": [{"type": "text", "value": "c"}]}]})
    assert parts["input_ids"] == plain["input_ids"] and parts["labels"] == plain["labels"]


@pytest.mark.parametrize("content, pattern", [
    ([{"type": "image_url", "image_url": {"url": "x.png"}}],
     r"messages\[0\] content\[0\] is a 'image_url' part; only text parts"),
    ([{"type": "text", "txt": "a"}], r"messages\[0\] content\[0\] needs its text as a string in 'text' \(or "
                                     r"'value'\); it has \['txt', 'type'\]"),
    (["a"], r"messages\[0\] content\[0\] must be a text part"),
    ([], r"messages\[0\] content must be a string \(or a list of text parts\), got an empty list"),
])
def test_bad_content_parts_are_named_accurately(content, pattern):
    with pytest.raises(DataError, match=pattern):
        one({"messages": [{"role": "user", "content": content}, {"role": "assistant", "content": "c"}]})


def test_dropped_records_are_summarised_in_one_line(tmp_path, caplog):
    rows = [{"instruction": f"q{i}", "output": ("x" * 200 if i % 2 else "y")} for i in range(24)]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    with caplog.at_level(logging.INFO, logger="tuneforge"):
        splits = prepare_splits(read_records(path), tiny(), DataConfig(cache=False, val_size=2, max_length=64,
                                                                       truncation="drop"))
    assert splits.stats["dropped"] == 12
    lines = [m for m in caplog.messages if "truncated and" in m]
    first = ", ".join(f"{path}:{line}" for line in (2, 4, 6, 8, 10))
    assert lines == [f"data: 0 example(s) truncated and 12 dropped at data.max_length=64 (data.truncation=drop): "
                     f"{first} and 7 more"]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="tuneforge"):  # a cache hit logs the same line
        for _ in range(2):
            prepare_splits(read_records(path), tiny(), DataConfig(cache_dir=str(tmp_path / "c"), val_size=2,
                                                                  max_length=64, truncation="drop"))
    assert [m for m in caplog.messages if "truncated and" in m] == lines * 2


def test_unfilled_template_placeholders_in_targets_are_one_warning(tmp_path, caplog):
    rows = [{"instruction": f"Greet customer {i}.", "output": "Dear {{customer_name}}, welcome!" if i in (2, 5)
             else f"Dear customer {i}, welcome!"} for i in range(8)]
    rows.append({"messages": [{"role": "user", "content": "Use {{x}} here"}, {"role": "assistant", "content": "ok"}]})
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    with caplog.at_level(logging.WARNING, logger="tuneforge"):
        prepare_splits(read_records(path), tiny(), DataConfig(cache=False, val_size=1))
    assert [m for m in caplog.messages if "placeholder" in m] == [
        f"data: 2 of 9 records have targets with unfilled template placeholders like '{{{{customer_name}}}}' "
        f"({path}:3, {path}:6); the model would learn to write them: fill them in (ignore this if the braces are "
        "meant literally)"]


def test_json_errors_say_at_column_once(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"instruction": "q", "output": "a"}\n{"instruction": "unterminated', encoding="utf-8")
    with pytest.raises(DataError) as info:
        read_records(path)
    assert str(info.value) == (f"{path}:2: invalid JSON (Unterminated string starting at column 17); each line "
                               "must be one JSON object")
    path.write_text('{"instruction": "line\nbreak"}\n', encoding="utf-8")  # a raw newline inside a string
    with pytest.raises(DataError, match=r"invalid JSON \(Invalid control character at column 22\)"):
        read_records(path)
    array = tmp_path / "bad.json"
    array.write_text('[\n {"instruction": "q", "output": "a"},\n {"instruction": "unterminated\n]', encoding="utf-8")
    with pytest.raises(DataError, match=rf"^{array}:3: invalid JSON \(Invalid control character at column 31\)"):
        read_records(array)
    path.write_text('{"instruction": "q", "output": 1,}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"\(Illegal trailing comma before end of object at column 33\)|"
                                        r"\(Expecting property name enclosed in double quotes at column 34\)"):
        read_records(path)


def test_conversations_ending_in_a_tool_call_have_the_call_as_their_target(tmp_path):
    """Single-step function-calling data (the answer IS the call) is neither 'empty targets' nor empty references."""
    from tuneforge.data.quality import prompt_and_target
    from tuneforge.evaluation import split_example

    rows = [{"conversations": [{"from": "human", "value": f"Weather in city {i}?"},
                               {"from": "function_call", "value": json.dumps(
                                   {"name": "get_weather", "arguments": {"city": f"c{i}"}})}],
             "tools": [WEATHER_SCHEMA]} for i in range(6)]
    path = write_jsonl(tmp_path / "calls.jsonl", rows)
    splits = prepare_splits(read_records(path), tiny(), DataConfig(cache=False, val_size=1, shuffle=False))
    call = '<tool_call>{"name": "get_weather", "arguments": {"city": "c0"}}</tool_call>'
    assert split_example(splits.val[0]) == (splits.val[0]["messages"][:1], call)
    assert prompt_and_target(splits.val[0])[1] == call
    result = run_tiny_fit(tmp_path / "run", overrides=[
        "data=jsonl", f"data.path={path}", "data.val_size=1", "data.cache=false", "trainer.max_steps=1"])
    assert result.metrics["steps"] == 1
