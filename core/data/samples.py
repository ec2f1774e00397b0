"""Records normalized to one format: :class:`Sample`.

A record is first seen through the column mapping (``data.columns``,
:mod:`tuneforge.data.columns`), then normalized into a :class:`Sample` of one
of these formats (message lists and tool calls: :mod:`tuneforge.data.messages`):

* ``alpaca``: ``instruction``, optional ``input``, ``output``, optional ``system``
  and ``history`` (LLaMA-Factory: ``[[question, answer], ...]``, earlier turns)
  -> a system/user/assistant conversation;
* ``chat``: OpenAI ``messages`` [{role, content}] or ShareGPT ``conversations``
  [{from, value}] (roles ``human``/``gpt``/``system`` accepted), optional
  top-level ``system``; tool calling in both spellings (OpenAI ``tool_calls``
  and ``role: tool``, ShareGPT ``function_call``/``observation`` turns) with a
  top-level ``tools`` list; an assistant message with ``weight: 0`` (OpenAI) or
  ``train: false`` (Axolotl) is not trained;
* ``completion``: ``text`` (continued pre-training: every token trained);
* ``preference``: ``chosen`` + ``rejected`` (each a string, a message list or
  one message object) with the prompt in ``prompt``, ``conversations``/``messages``
  (LLaMA-Factory) or ``instruction`` (+ ``input``);
* ``kto``: one answer marked desirable or not, unpaired: TRL's ``prompt`` +
  ``completion`` + ``label`` (true/false; prompt and completion strings or
  message lists), or LLaMA-Factory's alpaca (``instruction``/``input``/``output``)
  or chat (``conversations``/``messages``, the last assistant turn is the
  answer) record with ``kto_tag`` (true/false).  Only a loss declaring
  ``requires=("kto",)`` trains on it (SFT would also learn the undesirable
  answers; the host refuses that, see :data:`~tuneforge.data.columns.KINDS_NEEDING_THEIR_LOSS`).
* ``prompt_completion``: TRL's prompt-completion SFT layout, ``prompt`` +
  ``completion`` without a ``label``: strings become a user turn and the
  assistant answer (rendered with the chat template, as every other prompt
  and answer), message lists a conversation; the completion's assistant turns
  are trained, the prompt is not.
* ``input_output``: Axolotl's template-free layout, ``segments``
  [{``label``: true/false, ``text``}]: the texts are the raw example (no chat
  template, no EOS added), the segments labelled true are trained.
* ``prompt``: ``prompt`` alone (a string or a message list ending with a user
  turn), optional ``system``; its other fields are reference fields that
  rewards read from the record (online objectives such as ``loss=grpo``
  generate the answers; no other loss trains on such examples).

Multimodal records are refused.  Every record is read through a
:class:`~tuneforge.data.record_keys.KeyReads` view, so the keys no layout
read are named in :attr:`Sample.unused` (and reported, :mod:`tuneforge.data.record_keys`).

Rendering a sample with a chat template is :mod:`tuneforge.data.chat_templates`;
token ids and masked labels are :mod:`tuneforge.data.tokenization`.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any, Optional, Sequence

from tuneforge.data.columns import (
    FORMATS,
    check_columns,
    detect_format,
    field_name,
    kto_mark_key,
    record_key,
    record_view,
    refuse_unsupported,
)
from tuneforge.data.messages import (
    UNTRAINED_MARKS,
    as_string,
    json_value,
    message_list,
    normalize_tools,
    parse_messages,
    refuse_untrained,
    untrained_turns,
)
from tuneforge.data.record_keys import KeyReads, log_unused_keys, peek, unused_key_summary, unused_keys
from tuneforge.data.sources import Record
from tuneforge.errors import DataError

log = logging.getLogger("tuneforge")

#: an unfilled template placeholder such as ``{{name}}`` in a target
PLACEHOLDER = re.compile(r"\{\{[^{}\n]{0,80}\}\}")
#: how many record locations a summary log line names
SHOWN_PLACES = 5


@dataclass
class Sample:
    """A record normalized to one format.

    ``messages`` is the conversation (alpaca, chat) or the prompt (preference,
    kto, prompt_completion); ``chosen``/``rejected`` are the preference
    responses as message lists; ``text`` is the completion text (input_output: the segments' texts
    joined); ``segments`` the input_output ``(trained, text)`` pairs.
    ``completion`` is a kto or prompt_completion answer (messages after the
    prompt in ``messages``) and ``desirable`` a kto mark.  ``plain`` marks single-turn records that
    may be rendered with :data:`~tuneforge.data.chat_templates.ALPACA_PROMPT`
    when no chat template exists.
    ``tools`` are the tool schemas the conversation may call
    (``[{"type": "function", "function": {...}}]``), or None.  ``untrained``:
    the indices (in ``messages`` + ``completion``) of assistant turns marked
    not to train.  ``unused``: the record's keys that nothing read.
    """

    format: str
    messages: Optional[list] = None
    text: Optional[str] = None
    chosen: Optional[list] = None
    rejected: Optional[list] = None
    plain: bool = False
    tools: Optional[list] = None
    completion: Optional[list] = None
    desirable: Optional[bool] = None
    untrained: tuple = ()
    unused: tuple = ()
    segments: Optional[list] = None


def _require(record: Record, view: dict, fields: Sequence[str], fmt: str, columns: dict) -> None:
    """An error naming the first of ``fields`` the record lacks (with its keys and the mapping)."""
    missing = [field for field in fields if view.get(field) is None]
    if missing:
        names = ", ".join(field_name(field, columns) for field in missing)
        null = [field_name(field, columns) for field in missing if field in view]
        if null:  # the key is there, its value is JSON null
            raise DataError(f"{record.source}: {fmt} record has {', '.join(null)} set to null; give it a value (a "
                            "string), or leave the record out")
        prompt_in_input = (fmt == "alpaca" and "instruction" in missing and "instruction" not in columns
                           and isinstance(view.get("input"), str) and view["input"].strip())
        hint = (" (the prompt in 'input', as torchtune's input/output records: data.columns={instruction: input})"
                if prompt_in_input else "")
        spaced = [str(key) for key in record.data if str(key) != str(key).strip()
                  and str(key).strip() in [columns.get(field, field) for field in missing]]
        if spaced:
            hint += (f" (its key {spaced[0]!r} has spaces around the name: remove them, in a CSV header too, or "
                     f"map it with data.columns)")
        raise DataError(f"{record.source}: {fmt} record is missing {names} (its keys: "
                        f"{', '.join(sorted(map(str, record.data)))}); map other key names with data.columns{hint}")


def _history(record: Record, view: dict, columns: dict) -> list[dict]:
    """LLaMA-Factory's ``history``, ``[[question, answer], ...]``, as user/assistant turns (none: [])."""
    value = view.get("history")
    what = "field " + field_name("history", columns)
    if isinstance(value, str) and value.lstrip().startswith("["):  # e.g. a CSV cell holding JSON
        value = json_value(record, what, value)
    if value is None or value == []:
        return []
    valid = f"valid: {what[6:]} as a list of [question, answer] string pairs, earliest first"
    if not isinstance(value, list):
        raise DataError(f"{record.source}: {what} must be a list of [question, answer] pairs, got "
                        f"{type(value).__name__}; {valid}")
    turns = []
    for i, pair in enumerate(value):
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(p, str) for p in pair)):
            got = (type(pair).__name__ if not isinstance(pair, list) else f"a list of {len(pair)}"
                   if len(pair) != 2 else f"[{', '.join(type(p).__name__ for p in pair)}]")
            raise DataError(f"{record.source}: {what}[{i}] must be a [question, answer] pair of strings, got "
                            f"{got}; {valid}")
        turns += [{"role": "user", "content": as_string(record, f"{what}[{i}][0]", pair[0])},
                  {"role": "assistant", "content": as_string(record, f"{what}[{i}][1]", pair[1])}]
    return turns


def _instruction_prompt(record: Record, view: dict, columns: dict, fmt: str) -> list[dict]:
    """``system``, the ``history`` turns and the user turn of ``instruction`` (+ ``input`` after a blank line)."""
    text = as_string(record, f"{fmt} field {field_name('instruction', columns)}", view["instruction"])
    extra = view.get("input")
    if extra:
        text = f"{text}\n\n{as_string(record, f'{fmt} field ' + field_name('input', columns), extra)}"
    return _system_first(record, view, columns, _history(record, view, columns) + [{"role": "user", "content": text}])


def _alpaca(record: Record, view: dict, columns: dict) -> Sample:
    """An instruction record: ``system``, ``history`` turns, ``instruction`` (+ ``input``) and ``output``."""
    _require(record, view, ("instruction", "output"), "alpaca", columns)
    messages = _instruction_prompt(record, view, columns, "alpaca")
    messages.append({"role": "assistant",
                     "content": as_string(record, f"alpaca field {field_name('output', columns)}", view["output"])})
    plain = [m["role"] for m in messages if m["role"] != "system"] == ["user", "assistant"]
    return Sample("alpaca", messages=messages, plain=plain)


def _chat(record: Record, view: dict, columns: dict) -> Sample:
    """A conversation (``messages`` or ``conversations``; a top-level ``system`` unless it has one); the
    assistant turns marked not to train are in ``untrained``."""
    key = "messages" if peek(view, "messages") is not None else "conversations"
    if view.get(key) is None:
        raise DataError(f"{record.source}: chat record is missing {field_name('messages', columns)} or "
                        f"{field_name('conversations', columns)} (its keys: {', '.join(sorted(map(str, record.data)))})")
    messages, marks = parse_messages(record, record_key(key, columns), view[key], columns, view)
    if messages[0]["role"] != "system" and view.get("system"):
        messages.insert(0, {"role": "system", "content": as_string(record, "field " + field_name("system", columns),
                                                                   view["system"])})
        marks.insert(0, None)
    if not any(m["role"] == "assistant" for m in messages):
        raise DataError(f"{record.source}: chat record has no assistant (or 'gpt') message to learn from")
    untrained = untrained_turns(messages, marks)
    if untrained and all(i in untrained for i, m in enumerate(messages) if m["role"] == "assistant"):
        raise DataError(f"{record.source}: every assistant turn of the chat record is marked not to train "
                        f"({UNTRAINED_MARKS}), so it has nothing to learn from; mark at least one "
                        "with weight 1 (or leave its mark out), or remove the record")
    return Sample("chat", messages=messages, untrained=untrained,
                  tools=normalize_tools(record, record_key("tools", columns), view.get("tools")))


def _completion(record: Record, view: dict, columns: dict) -> Sample:
    _require(record, view, ("text",), "completion", columns)
    text = as_string(record, f"completion field {field_name('text', columns)}", view["text"])
    if not text:
        raise DataError(f"{record.source}: completion field {field_name('text', columns)} is empty")
    return Sample("completion", text=text)


def _input_output(record: Record, view: dict, columns: dict) -> Sample:
    """Axolotl's template-free record: ``segments`` [{label: true/false, text}], the texts concatenated as
    raw text, the tokens of the segments labelled true trained.  A label must be a JSON boolean (not 0/1 or
    "true": Axolotl reads any truthy value, which would train a segment marked "false")."""
    _require(record, view, ("segments",), "input_output", columns)
    what = "input_output field " + field_name("segments", columns)
    value = view["segments"]
    if isinstance(value, str) and value.lstrip().startswith("["):  # e.g. a CSV cell holding JSON
        value = json_value(record, what, value)
    valid = "valid: a non-empty list of {\"label\": true|false, \"text\": \"...\"} objects"
    if not isinstance(value, list) or not value:
        got = "an empty list" if isinstance(value, list) else type(value).__name__
        raise DataError(f"{record.source}: {what} must be a non-empty list of segments, got {got}; {valid}")
    key, segments = record_key("segments", columns), []
    for i, segment in enumerate(value):
        place = f"{what}[{i}]"
        if not isinstance(segment, dict):
            raise DataError(f"{record.source}: {place} must be an object, got {type(segment).__name__}; {valid}")
        if "text" not in segment or segment["text"] is None:
            raise DataError(f"{record.source}: {place} has no 'text' (its keys: "
                            f"{', '.join(sorted(map(str, segment))) or 'none'}); {valid}")
        text = as_string(record, f"{place}['text']", segment["text"])
        label = segment.get("label")
        if not isinstance(label, bool):
            got = "no 'label'" if label is None else f"'label' {label!r}"
            raise DataError(f"{record.source}: {place} has {got}; each segment's 'label' must be true (trained) "
                            "or false (not trained), a JSON boolean (0/1 and strings are refused)")
        if isinstance(view, KeyReads):
            view.unread_in(key, segment, ("label", "text"))
        segments.append((label, text))
    if not any(label and text for label, text in segments):
        raise DataError(f"{record.source}: no segment of {what} is trained ('label': true with a non-empty "
                        "'text'), so the record has nothing to learn from; label at least one true, or remove "
                        "the record")
    return Sample("input_output", text="".join(text for _, text in segments), segments=segments)


def _response(record: Record, what: str, value: Any, prompt: list, columns: dict, view: dict) -> tuple:
    """A response as ``(messages, marks)``, with the prompt removed when the response repeats it.

    ``value`` is a string, a message list, or one message object (LLaMA-Factory:
    ``{"from": "gpt", "value": ...}``).
    """
    if isinstance(value, str):
        return [{"role": "assistant", "content": as_string(record, f"field '{what}'", value)}], [None]
    messages, marks = parse_messages(record, what, [value] if isinstance(value, dict) else value, columns, view)
    if messages[: len(prompt)] == prompt:
        messages, marks = messages[len(prompt):], marks[len(prompt):]
    return messages, marks


def _answers(record: Record, what: str, value: Any, prompt: list, columns: dict, view: dict) -> list:
    """A response that a layout trains whole (preference, KTO): a turn marked not to train is an error."""
    messages, marks = _response(record, what, value, prompt, columns, view)
    refuse_untrained(record, what, messages, marks)
    return messages


def _system_first(record: Record, view: dict, columns: dict, prompt: list) -> list:
    """``prompt`` with the top-level ``system`` field as its first message (unless it has one)."""
    if (not prompt or prompt[0]["role"] != "system") and view.get("system"):
        prompt.insert(0, {"role": "system", "content": as_string(record, "field " + field_name("system", columns),
                                                                 view["system"])})
    return prompt


def _prompt_messages(record: Record, view: dict, columns: dict, fmt: str) -> list:
    """The ``prompt`` field as messages: a string is one user turn; the top-level ``system`` goes first."""
    value = view["prompt"]
    if isinstance(value, str):
        prompt = [{"role": "user", "content": as_string(record, f"{fmt} field " + field_name("prompt", columns),
                                                        value)}]
    else:
        prompt = message_list(record, record_key("prompt", columns), value, columns, view, answers=False)
    return _system_first(record, view, columns, prompt)


def _implicit_prompt(record: Record, view: dict, columns: dict) -> tuple:
    """``(prompt, chosen, rejected)`` of full ``chosen``/``rejected`` conversations without a prompt field:
    the prompt is every message both share before the final assistant turn."""
    chosen_key, rejected_key = record_key("chosen", columns), record_key("rejected", columns)
    if isinstance(view["chosen"], (str, dict)) or isinstance(view["rejected"], (str, dict)):
        _require(record, view, ("prompt",), "preference", columns)
    chosen, chosen_marks = parse_messages(record, chosen_key, view["chosen"], columns, view)
    rejected, rejected_marks = parse_messages(record, rejected_key, view["rejected"], columns, view)
    same = 0
    while same < min(len(chosen), len(rejected)) and chosen[same] == rejected[same]:
        same += 1
    shared = same
    while shared and chosen[shared - 1]["role"] == "assistant":
        shared -= 1
    if not shared or any(m["role"] in ("system", "user") for m in chosen[shared:] + rejected[shared:]):
        raise DataError(f"{record.source}: preference record is missing {field_name('prompt', columns)} and its "
                        f"chosen/rejected conversations do not start with a shared prompt (they differ from "
                        f"message {same} on: {chosen_key}[{same}] vs {rejected_key}[{same}]); valid: give the "
                        f"prompt in {field_name('prompt', columns)} (then {chosen_key}/{rejected_key} hold only "
                        "the responses), or make both conversations share every message before their final "
                        "assistant turn")
    refuse_untrained(record, chosen_key, chosen, chosen_marks, shared)
    refuse_untrained(record, rejected_key, rejected, rejected_marks, shared)
    return chosen[:shared], chosen[shared:], rejected[shared:]


def _preference(record: Record, view: dict, columns: dict) -> Sample:
    """A preference pair; the prompt is ``prompt``, else ``conversations``/``messages``, else ``instruction``
    (+ ``input``, ``history``), else the part the ``chosen`` and ``rejected`` conversations share."""
    _require(record, view, ("chosen", "rejected"), "preference", columns)
    chosen_key, rejected_key = record_key("chosen", columns), record_key("rejected", columns)
    conversation = next((k for k in ("conversations", "messages") if peek(view, k) is not None), None)
    if view.get("prompt") is not None:
        prompt = _prompt_messages(record, view, columns, "preference")
    elif conversation:
        # LLaMA-Factory (ShareGPT): the prompt turns in 'conversations', one message object per response
        prompt = _system_first(record, view, columns, message_list(
            record, record_key(conversation, columns), view[conversation], columns, view, answers=False))
    elif peek(view, "instruction") is not None:
        # LLaMA-Factory (Alpaca): instruction, optional input, system and history, chosen and rejected strings
        prompt = _instruction_prompt(record, view, columns, "preference")
    else:
        prompt, chosen, rejected = _implicit_prompt(record, view, columns)
    if view.get("prompt") is not None or conversation or peek(view, "instruction") is not None:
        chosen = _answers(record, chosen_key, view["chosen"], prompt, columns, view)
        rejected = _answers(record, rejected_key, view["rejected"], prompt, columns, view)
    for what, response in ((chosen_key, chosen), (rejected_key, rejected)):
        if not response or response[-1]["role"] != "assistant":
            raise DataError(f"{record.source}: preference field '{what}' must end with an assistant response")
    if prompt[-1]["role"] == "assistant":
        raise DataError(f"{record.source}: the preference prompt must end with a user message, not an "
                        "assistant one")
    plain = ([m["role"] for m in prompt if m["role"] != "system"] == ["user"]
             and len(chosen) == 1 and len(rejected) == 1 and not chosen[0].get("tool_calls")
             and not rejected[0].get("tool_calls"))
    return Sample("preference", messages=prompt, chosen=chosen, rejected=rejected, plain=plain,
                  tools=normalize_tools(record, record_key("tools", columns), view.get("tools")))


#: spellings of a KTO mark accepted besides JSON booleans (CSV and parquet files give strings or 0/1)
_MARKS = {"true": True, "false": False, "1": True, "0": False}


def _kto_mark(record: Record, view: dict, columns: dict, key: str) -> bool:
    """The record's desirable/undesirable mark in ``key`` (``label`` or ``kto_tag``), as a bool."""
    value = view.get(key)
    if value is None:
        raise DataError(f"{record.source}: KTO record has no {field_name(key, columns)} (true for a desirable "
                        f"answer, false for an undesirable one); every KTO record needs it")
    if isinstance(value, bool):
        return value
    if isinstance(value, (str, int)) and str(value).strip().lower() in _MARKS:
        return _MARKS[str(value).strip().lower()]
    raise DataError(f"{record.source}: KTO field {field_name(key, columns)} must be true or false, got {value!r}"
                    + ("; for supervised fine-tuning on prompt and completion, remove 'label' or set "
                       "data.format=prompt_completion" if key == "label" else ""))


def _kto(record: Record, view: dict, columns: dict) -> Sample:
    """An unpaired answer with its mark: TRL's ``prompt``/``completion``/``label``, or LLaMA-Factory's alpaca or
    chat record with ``kto_tag``; the answer is the final assistant turn."""
    mark = kto_mark_key(view)
    if peek(view, "completion") is not None or mark is None and peek(view, "prompt") is not None:
        _require(record, view, ("prompt", "completion"), "kto", columns)
        desirable = _kto_mark(record, view, columns, "label")
        prompt = _prompt_messages(record, view, columns, "kto")
        completion = _answers(record, record_key("completion", columns), view["completion"], prompt, columns, view)
        tools = normalize_tools(record, record_key("tools", columns), view.get("tools"))
    else:
        desirable = _kto_mark(record, view, columns, mark or "kto_tag")
        has_chat = peek(view, "messages") is not None or peek(view, "conversations") is not None
        base = _chat(record, view, columns) if has_chat else _alpaca(record, view, columns)
        messages, tools = base.messages, base.tools
        if messages[-1]["role"] != "assistant":
            raise DataError(f"{record.source}: a KTO conversation must end with the assistant answer that "
                            f"{field_name('kto_tag', columns)} marks")
        if len(messages) - 1 in base.untrained:
            raise DataError(f"{record.source}: the answer of a KTO record (its last assistant turn) is marked not "
                            f"to train ({UNTRAINED_MARKS}); the KTO mark says how to learn from it: "
                            "remove the per-message mark")
        prompt, completion = messages[:-1], messages[-1:]
    if not completion or completion[-1]["role"] != "assistant":
        raise DataError(f"{record.source}: KTO field {field_name('completion', columns)} must end with an assistant "
                        "answer")
    if not prompt or prompt[-1]["role"] == "assistant":
        raise DataError(f"{record.source}: the KTO prompt must end with a user message")
    plain = ([m["role"] for m in prompt if m["role"] != "system"] == ["user"] and len(completion) == 1
             and not completion[0].get("tool_calls"))
    return Sample("kto", messages=prompt, completion=completion, desirable=desirable, plain=plain, tools=tools)


def _prompt_completion(record: Record, view: dict, columns: dict) -> Sample:
    """TRL's prompt-completion SFT record (no ``label``): the prompt masked, the completion's assistant turns
    trained (a turn marked ``weight: 0`` / ``train: false`` is not)."""
    _require(record, view, ("prompt", "completion"), "prompt_completion", columns)
    prompt = _prompt_messages(record, view, columns, "prompt_completion")
    key = record_key("completion", columns)
    completion, marks = _response(record, key, view["completion"], prompt, columns, view)
    if not completion or completion[-1]["role"] != "assistant":
        raise DataError(f"{record.source}: prompt_completion field {field_name('completion', columns)} must end "
                        "with an assistant answer")
    if prompt[-1]["role"] == "assistant":
        raise DataError(f"{record.source}: the prompt of a prompt_completion record must end with a user "
                        f"message, not an assistant one (put the answers in {field_name('completion', columns)})")
    untrained = untrained_turns(completion, marks, offset=len(prompt))
    if len(untrained) == sum(m["role"] == "assistant" for m in completion):
        raise DataError(f"{record.source}: every assistant turn of {field_name('completion', columns)} is marked "
                        f"not to train ({UNTRAINED_MARKS}), so the record has nothing to learn from")
    plain = ([m["role"] for m in prompt if m["role"] != "system"] == ["user"] and len(completion) == 1
             and not completion[0].get("tool_calls"))
    return Sample("prompt_completion", messages=prompt, completion=completion, plain=plain, untrained=untrained,
                  tools=normalize_tools(record, record_key("tools", columns), view.get("tools")))


def _prompt(record: Record, view: dict, columns: dict) -> Sample:
    """A prompt without an answer (online objectives generate it); the other fields stay in the record."""
    _require(record, view, ("prompt",), "prompt", columns)
    if isinstance(view["prompt"], str) and not view["prompt"].strip():
        raise DataError(f"{record.source}: prompt field {field_name('prompt', columns)} is empty")
    prompt = _prompt_messages(record, view, columns, "prompt")
    if prompt[-1]["role"] != "user":
        raise DataError(f"{record.source}: the prompt must end with a user message, not a "
                        f"{prompt[-1]['role']} one")
    plain = [m["role"] for m in prompt if m["role"] != "system"] == ["user"]
    return Sample("prompt", messages=prompt, plain=plain,
                  tools=normalize_tools(record, record_key("tools", columns), view.get("tools")))


_NORMALIZERS = {"alpaca": _alpaca, "chat": _chat, "completion": _completion, "preference": _preference,
                "kto": _kto, "prompt_completion": _prompt_completion, "prompt": _prompt,
                "input_output": _input_output}


def normalize(record: Record, fmt: str = "auto", columns: Optional[dict] = None,
              roles: Optional[dict] = None) -> Sample:
    """Convert a record to a :class:`Sample` of format ``fmt`` (``auto``: from its keys; ``columns``:
    ``data.columns``, ``roles``: ``data.roles``); its ``unused`` names the record's keys that nothing read
    (:func:`~tuneforge.data.record_keys.unused_keys`)."""
    columns = check_columns(columns, roles)
    if fmt not in FORMATS:
        raise DataError(f"data.format is '{fmt}'; valid: {', '.join(FORMATS)}")
    view = record_view(record, columns)
    refuse_unsupported(record, view, fmt)
    fmt = detect_format(record, columns) if fmt == "auto" else fmt
    reads = KeyReads(view)
    sample = _NORMALIZERS[fmt](record, reads, columns)
    sample.unused = unused_keys(record.data, reads, columns, sample.format)
    return sample


def to_messages(record: Record, fmt: str = "auto", columns: Optional[dict] = None,
                roles: Optional[dict] = None) -> list[dict]:
    """A record as ``{"role", "content"}`` messages (for preference: the prompt plus the chosen response;
    kto, prompt_completion: the prompt plus the answer)."""
    sample = normalize(record, fmt, columns, roles)
    if sample.format in ("completion", "input_output"):
        raise DataError(f"{record.source}: a{'n' if sample.format[0] == 'i' else ''} {sample.format} record has "
                        "no messages")
    return sample.messages + (sample.chosen or sample.completion or [])


def record_places(sources: Sequence[str], shown: int = SHOWN_PLACES) -> str:
    """The first ``shown`` record locations, comma-separated, and how many more there are."""
    text = ", ".join(sources[:shown])
    return text + (f" and {len(sources) - shown} more" if len(sources) > shown else "")


def _targets(sample: Sample) -> list[str]:
    """The texts a sample trains on as answers (assistant contents, not those marked not to train; the
    trained input_output segments; not completion text)."""
    if sample.format == "completion":
        return []
    if sample.format == "input_output":
        return [text for trained, text in sample.segments if trained]
    if sample.format == "preference":
        return [m["content"] for m in (sample.chosen or []) + (sample.rejected or []) if m["role"] == "assistant"]
    messages = sample.messages + (sample.completion or [])
    start = len(sample.messages) if sample.format in ("kto", "prompt_completion") else 0
    return [m["content"] for i, m in enumerate(messages)
            if i >= start and m["role"] == "assistant" and i not in sample.untrained]


def normalize_records(records: Sequence[Record], fmt: str = "auto", columns: Optional[dict] = None,
                      roles: Optional[dict] = None) -> list[Sample]:
    """Normalize records in the order given (file order), so an error names the first bad record.

    Also an error: preference or kto records mixed with other formats (naming
    the first record of each kind; an alpaca/chat record in a kto dataset is
    one whose ``kto_tag`` is missing, a prompt_completion record one whose
    ``label`` is).  Assistant targets holding unfilled template
    placeholders (``{{name}}``) are logged as ONE warning line with their count
    and first locations, and so are the record keys that nothing read
    (:func:`~tuneforge.data.record_keys.log_unused_keys`; each sample's ``unused``).
    """
    columns = check_columns(columns, roles)
    samples, first_of_kind, placeholders, example, mark_key, other_format = [], {}, [], None, None, None
    for record in records:
        sample = normalize(record, fmt, columns)
        kind = sample.format if sample.format in ("preference", "kto") else "supervised"
        if kind not in first_of_kind and kind != "kto":
            other_format = sample.format
        first_of_kind.setdefault(kind, record.source)
        if kind == "kto" and mark_key is None:
            mark_key = kto_mark_key(record_view(record, columns)) or "label"
        if len(first_of_kind) > 1 and "kto" in first_of_kind:
            first = first_of_kind["kto"]
            other = next(v for k, v in first_of_kind.items() if k != "kto")
            raise DataError(f"{record.source}: KTO record without its mark: {field_name(mark_key or 'label', columns)} "
                            f"(true/false) is missing (first KTO record of the dataset: {first})" if kind != "kto" else
                            f"{record.source}: KTO records cannot be mixed with other formats in one dataset "
                            f"(first other record: {other}" + (
                                f", a prompt/completion record without {field_name('label', columns)}: give every "
                                "record its label)" if other_format == "prompt_completion" else ")"))
        if len(first_of_kind) > 1:
            raise DataError(f"{record.source}: preference records cannot be mixed with other formats in one "
                            f"dataset (first preference record: {first_of_kind.get('preference')}, first "
                            f"other: {first_of_kind.get('supervised')})")
        found = next((m for m in map(PLACEHOLDER.search, _targets(sample)) if m), None)
        if found:
            placeholders.append(record.source)
            example = example or found.group(0)
        samples.append(sample)
    if placeholders:
        log.warning("data: %d of %d records have targets with unfilled template placeholders like %r (%s); the "
                    "model would learn to write them: fill them in (ignore this if the braces are meant literally)",
                    len(placeholders), len(samples), example, record_places(placeholders))
    log_unused_keys(unused_key_summary([record.source for record in records], [s.unused for s in samples]))
    return samples

