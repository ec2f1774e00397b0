"""Records normalized to one of four formats: :class:`Sample`.

A record is first seen through the column mapping (``data.columns``,
:mod:`tuneforge.data.columns`), then normalized into a :class:`Sample` of one
of four formats:

* ``alpaca``: ``instruction``, optional ``input``, ``output``, optional ``system``
  -> a system/user/assistant conversation;
* ``chat``: OpenAI ``messages`` [{role, content}] or ShareGPT ``conversations``
  [{from, value}] (roles ``human``/``gpt``/``system`` accepted), optional
  top-level ``system``; tool calling in both spellings (OpenAI ``tool_calls``
  and ``role: tool``, ShareGPT ``function_call``/``observation`` turns) with a
  top-level ``tools`` list;
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
* ``prompt``: ``prompt`` alone (a string or a message list ending with a user
  turn), optional ``system``; its other fields are reference fields that
  rewards read from the record (online objectives such as ``loss=grpo``
  generate the answers; no other loss trains on such examples).

Multimodal records are refused.

Tool calls are normalized to one representation: an assistant message with
``tool_calls`` = ``[{"type": "function", "function": {"name", "arguments": {...}},
"id"?}]`` (``content`` a string, often empty), tool results as
``{"role": "tool", "content", "tool_call_id"?, "name"?}``, and the tools as
``[{"type": "function", "function": {schema}}]`` in :attr:`Sample.tools`.

Rendering a sample with a chat template is :mod:`tuneforge.data.chat_templates`;
token ids and masked labels are :mod:`tuneforge.data.tokenization`.
"""

from __future__ import annotations

import json
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
from tuneforge.data.sources import Record, json_problem
from tuneforge.errors import DataError

log = logging.getLogger("tuneforge")

#: accepted message roles (OpenAI and ShareGPT spellings) -> role in the normalized conversation;
#: a ShareGPT ``function_call`` turn becomes an assistant message with ``tool_calls``
ROLE_ALIASES = {"system": "system", "user": "user", "human": "user", "assistant": "assistant",
                "gpt": "assistant", "function_call": "assistant", "tool": "tool", "observation": "tool",
                "function": "tool"}
#: an unfilled template placeholder such as ``{{name}}`` in a target
PLACEHOLDER = re.compile(r"\{\{[^{}\n]{0,80}\}\}")
#: how many record locations a summary log line names
SHOWN_PLACES = 5


@dataclass
class Sample:
    """A record normalized to one format.

    ``messages`` is the conversation (alpaca, chat) or the prompt (preference);
    ``chosen``/``rejected`` are the preference responses as message lists;
    ``text`` is the completion text.  ``completion`` is a kto answer (messages
    after the prompt in ``messages``) and ``desirable`` its mark.  ``plain`` marks single-turn records that
    may be rendered with :data:`~tuneforge.data.chat_templates.ALPACA_PROMPT`
    when no chat template exists.
    ``tools`` are the tool schemas the conversation may call
    (``[{"type": "function", "function": {...}}]``), or None.
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


def _string(record: Record, what: str, value: Any) -> str:
    if not isinstance(value, str):
        raise DataError(f"{record.source}: {what} must be a string, got {type(value).__name__}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise DataError(f"{record.source}: {what} holds an unpaired surrogate (a broken \\u escape); "
                        "text must be valid Unicode") from None
    return value


def _content(record: Record, what: str, value: Any) -> str:
    """Message content: a string, or OpenAI content parts ``[{"type": "text", "text": ...}]``.

    A text part may name its text ``value`` instead of ``text`` (as some
    converted datasets do); any other part (an image, ...) is an error naming it.
    """
    if isinstance(value, list):
        texts = []
        for i, part in enumerate(value):
            if not isinstance(part, dict):
                raise DataError(f"{record.source}: {what}[{i}] must be a text part {{\"type\": \"text\", \"text\": "
                                f"...}}, got {type(part).__name__}")
            if part.get("type") != "text":
                raise DataError(f"{record.source}: {what}[{i}] is a {part.get('type')!r} part; only text parts "
                                "({\"type\": \"text\", \"text\": ...}) are supported")
            text = part.get("text", part.get("value"))
            if not isinstance(text, str):
                raise DataError(f"{record.source}: {what}[{i}] needs its text as a string in 'text' (or 'value'); "
                                f"it has {sorted(map(str, part))}")
            texts.append(text)
        if texts:
            value = "".join(texts)
    if not isinstance(value, str):
        got = "an empty list" if value == [] else type(value).__name__
        raise DataError(f"{record.source}: {what} must be a string (or a list of text parts), got {got}")
    return _string(record, what, value)


def _json_value(record: Record, what: str, value: Any) -> Any:
    """``value`` itself, or parsed when it is a string (tool calls and tool lists are often JSON text)."""
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError as exc:
        raise DataError(f"{record.source}: {what} is not valid JSON ({json_problem(exc)})") from None
    except RecursionError:
        raise DataError(f"{record.source}: {what}: JSON nested too deeply") from None


def _tool_calls(record: Record, what: str, value: Any) -> list[dict]:
    """Normalize tool calls: OpenAI ``[{"type": "function", "function": {"name", "arguments"}, "id"}]`` or
    bare ``{"name", "arguments"}`` objects (one or a list; ``arguments``, or ``parameters``, an object or
    its JSON text; missing or empty: ``{}``)."""
    calls = [value] if isinstance(value, dict) else value
    if not isinstance(calls, list) or not calls:
        raise DataError(f"{record.source}: {what} must be a tool call {{\"name\": ..., \"arguments\": {{...}}}} or a "
                        f"non-empty list of them, got {'an empty list' if calls == [] else type(calls).__name__}")
    normalized = []
    for i, call in enumerate(calls):
        where = f"{what}[{i}]" if isinstance(value, list) else what
        function = call.get("function") if isinstance(call, dict) and "function" in call else call
        if not isinstance(function, dict) or not isinstance(function.get("name"), str) or not function["name"]:
            raise DataError(f"{record.source}: {where} must be a tool call with a 'name' (OpenAI: "
                            "{\"type\": \"function\", \"function\": {\"name\": ..., \"arguments\": ...}}), got "
                            f"{sorted(map(str, function)) if isinstance(function, dict) else type(function).__name__}")
        arguments = function.get("arguments", function.get("parameters"))  # Llama 3.1 writes 'parameters'
        if arguments is None or arguments == "":
            arguments = {}
        arguments = _json_value(record, f"{where} arguments", arguments)
        if not isinstance(arguments, dict):
            raise DataError(f"{record.source}: {where} arguments must be a JSON object, got {type(arguments).__name__}")
        entry = {"type": "function", "function": {"name": _string(record, f"{where} name", function["name"]),
                                                  "arguments": arguments}}
        if isinstance(call, dict) and isinstance(call.get("id"), str):
            entry["id"] = call["id"]
        normalized.append(entry)
    return normalized


def _tools(record: Record, what: str, value: Any) -> Optional[list]:
    """Normalize a ``tools`` field: a list of tool schemas, or its JSON text (LLaMA-Factory).

    Bare schemas ``{"name", "description", "parameters"}`` are wrapped as
    ``{"type": "function", "function": schema}``; empty means no tools (None).
    """
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    tools = _json_value(record, f"field '{what}'", value)
    tools = [tools] if isinstance(tools, dict) else tools
    if not isinstance(tools, list):
        raise DataError(f"{record.source}: field '{what}' must be a list of tool schemas (or its JSON text), "
                        f"got {type(tools).__name__}")
    normalized = []
    for i, tool in enumerate(tools):
        if isinstance(tool, dict) and isinstance(tool.get("function"), dict):
            normalized.append(tool if "type" in tool else {"type": "function", **tool})
        elif isinstance(tool, dict) and isinstance(tool.get("name"), str):
            normalized.append({"type": "function", "function": tool})
        else:
            raise DataError(f"{record.source}: field '{what}'[{i}] must be a tool schema with a 'name' (or "
                            "{\"type\": \"function\", \"function\": {...}}), got "
                            f"{sorted(map(str, tool)) if isinstance(tool, dict) else type(tool).__name__}")
    return normalized or None


def _tool_result(record: Record, what: str, value: Any) -> str:
    """A tool's result as text: a string (or text parts), or a JSON value written as JSON."""
    if isinstance(value, (dict, list, int, float, bool)) and not (
            isinstance(value, list) and value and all(isinstance(p, dict) and p.get("type") == "text" for p in value)):
        value = json.dumps(value, ensure_ascii=False)
    return _content(record, what, value)


def _require(record: Record, view: dict, fields: Sequence[str], fmt: str, columns: dict) -> None:
    missing = [field for field in fields if view.get(field) is None]
    if missing:
        names = ", ".join(field_name(field, columns) for field in missing)
        raise DataError(f"{record.source}: {fmt} record is missing {names} (its keys: "
                        f"{', '.join(sorted(map(str, record.data)))}); map other key names with data.columns")


def _message_list(record: Record, what: str, value: Any, columns: dict) -> list[dict]:
    """Normalize a list of OpenAI ``{role, content}`` or ShareGPT ``{from, value}`` messages.

    Tool calling, in either spelling, becomes assistant messages with
    ``tool_calls`` (OpenAI ``tool_calls`` / legacy ``function_call`` on an
    assistant message; a ShareGPT ``function_call`` turn whose value is the call
    as JSON) and ``tool`` messages (OpenAI ``role: tool``/``function``,
    ShareGPT ``observation``), which must follow a tool call.
    """
    if isinstance(value, str) and value.lstrip().startswith("["):  # e.g. a CSV cell holding JSON
        try:
            value = json.loads(value)
        except (json.JSONDecodeError, RecursionError):
            raise DataError(f"{record.source}: {what} is a string that is not a JSON list of messages") from None
    if not isinstance(value, list) or not value:
        raise DataError(f"{record.source}: {what} must be a non-empty list of {{role, content}} or "
                        f"{{from, value}} objects, got {type(value).__name__ if value != [] else 'an empty list'}")
    role_key, content_key = columns.get("role", "role"), columns.get("content", "content")
    messages = []
    for i, message in enumerate(value):
        where = f"{what}[{i}]"
        if not isinstance(message, dict):
            raise DataError(f"{record.source}: {where} must be an object with 'role' and 'content', "
                            f"got {type(message).__name__}")
        calls = message.get("tool_calls") or message.get("function_call")
        if role_key in message and (content_key in message or calls):
            role, content = message[role_key], message.get(content_key)
        elif "from" in message and "value" in message:
            role, content = message["from"], message["value"]
        else:
            raise DataError(f"{record.source}: {where} needs '{role_key}' and '{content_key}' (OpenAI) or "
                            f"'from' and 'value' (ShareGPT); it has {sorted(map(str, message))}")
        if not isinstance(role, str) or role.lower() not in ROLE_ALIASES:
            raise DataError(f"{record.source}: {where} has role {role!r}; valid: {', '.join(ROLE_ALIASES)}")
        role = role.lower()
        if role == "function_call":  # ShareGPT: the turn's value is the call (or a list of calls) as JSON
            messages.append({"role": "assistant", "content": "", "tool_calls": _tool_calls(
                record, f"{where} value", _json_value(record, f"{where} value", content))})
        elif ROLE_ALIASES[role] == "assistant" and calls:
            key = "tool_calls" if message.get("tool_calls") else "function_call"
            text = "" if content is None else _content(record, f"{where} content", content)
            messages.append({"role": "assistant", "content": text,
                             "tool_calls": _tool_calls(record, f"{where} {key}", calls)})
        elif ROLE_ALIASES[role] == "tool":
            if not messages or not (messages[-1].get("tool_calls") or messages[-1]["role"] == "tool"):
                raise DataError(f"{record.source}: {where} is a tool result ({role!r}) that does not follow a tool "
                                "call; put it after the assistant turn that calls the tool ('function_call' turn, "
                                "or 'tool_calls')")
            result = {"role": "tool", "content": _tool_result(record, f"{where} content", content)}
            for key in ("tool_call_id", "name"):
                if isinstance(message.get(key), str):
                    result[key] = message[key]
            messages.append(result)
        else:
            messages.append({"role": ROLE_ALIASES[role], "content": _content(record, f"{where} content", content)})
    return messages


def _alpaca(record: Record, view: dict, columns: dict) -> Sample:
    _require(record, view, ("instruction", "output"), "alpaca", columns)
    prompt = _string(record, f"alpaca field {field_name('instruction', columns)}", view["instruction"])
    extra = view.get("input")
    if extra:
        prompt = f"{prompt}\n\n{_string(record, 'alpaca field ' + field_name('input', columns), extra)}"
    messages = []
    if view.get("system"):
        messages.append({"role": "system", "content": _string(record, "field " + field_name("system", columns),
                                                              view["system"])})
    messages.append({"role": "user", "content": prompt})
    messages.append({"role": "assistant",
                     "content": _string(record, f"alpaca field {field_name('output', columns)}", view["output"])})
    return Sample("alpaca", messages=messages, plain=True)


def _chat(record: Record, view: dict, columns: dict) -> Sample:
    key = "messages" if view.get("messages") is not None else "conversations"
    if view.get(key) is None:
        raise DataError(f"{record.source}: chat record is missing {field_name('messages', columns)} or "
                        f"{field_name('conversations', columns)} (its keys: {', '.join(sorted(map(str, record.data)))})")
    messages = _message_list(record, record_key(key, columns), view[key], columns)
    if view.get("system") and messages[0]["role"] != "system":
        messages.insert(0, {"role": "system", "content": _string(record, "field " + field_name("system", columns),
                                                                 view["system"])})
    if not any(m["role"] == "assistant" for m in messages):
        raise DataError(f"{record.source}: chat record has no assistant (or 'gpt') message to learn from")
    return Sample("chat", messages=messages, tools=_tools(record, record_key("tools", columns), view.get("tools")))


def _completion(record: Record, view: dict, columns: dict) -> Sample:
    _require(record, view, ("text",), "completion", columns)
    text = _string(record, f"completion field {field_name('text', columns)}", view["text"])
    if not text:
        raise DataError(f"{record.source}: completion field {field_name('text', columns)} is empty")
    return Sample("completion", text=text)


def _response(record: Record, what: str, value: Any, prompt: list, columns: dict) -> list:
    """A preference response as messages, with the prompt removed when the response repeats it.

    ``value`` is a string, a message list, or one message object (LLaMA-Factory:
    ``{"from": "gpt", "value": ...}``).
    """
    if isinstance(value, str):
        return [{"role": "assistant", "content": _string(record, f"preference field '{what}'", value)}]
    messages = _message_list(record, what, [value] if isinstance(value, dict) else value, columns)
    if messages[: len(prompt)] == prompt:
        messages = messages[len(prompt):]
    return messages


def _system_first(record: Record, view: dict, columns: dict, prompt: list) -> list:
    """``prompt`` with the top-level ``system`` field as its first message (unless it has one)."""
    if view.get("system") and (not prompt or prompt[0]["role"] != "system"):
        prompt.insert(0, {"role": "system", "content": _string(record, "field " + field_name("system", columns),
                                                               view["system"])})
    return prompt


def _preference(record: Record, view: dict, columns: dict) -> Sample:
    """A preference pair; the prompt is ``prompt``, else ``conversations``/``messages``, else ``instruction``
    (+ ``input``), else the part the ``chosen`` and ``rejected`` conversations share."""
    _require(record, view, ("chosen", "rejected"), "preference", columns)
    chosen_key, rejected_key = record_key("chosen", columns), record_key("rejected", columns)
    prompt_value = view.get("prompt")
    conversation = next((k for k in ("conversations", "messages") if view.get(k) is not None), None)
    if prompt_value is None and conversation:
        # LLaMA-Factory (ShareGPT): the prompt turns in 'conversations', one message object per response
        prompt = _system_first(record, view, columns,
                               _message_list(record, record_key(conversation, columns), view[conversation], columns))
    elif prompt_value is None and view.get("instruction") is not None:
        # LLaMA-Factory (Alpaca): instruction, optional input, chosen and rejected strings
        text = _string(record, "preference field " + field_name("instruction", columns), view["instruction"])
        if view.get("input"):
            text = f"{text}\n\n{_string(record, 'preference field ' + field_name('input', columns), view['input'])}"
        prompt = _system_first(record, view, columns, [{"role": "user", "content": text}])
    elif prompt_value is None:
        # no prompt field: the prompt is what both full conversations share, up to the last user turn
        if isinstance(view["chosen"], (str, dict)) or isinstance(view["rejected"], (str, dict)):
            _require(record, view, ("prompt",), "preference", columns)
        chosen = _message_list(record, chosen_key, view["chosen"], columns)
        rejected = _message_list(record, rejected_key, view["rejected"], columns)
        shared = 0
        while shared < min(len(chosen), len(rejected)) and chosen[shared] == rejected[shared]:
            shared += 1
        while shared and chosen[shared - 1]["role"] == "assistant":
            shared -= 1
        if not shared:
            raise DataError(f"{record.source}: preference record is missing {field_name('prompt', columns)} and its "
                            "chosen/rejected conversations do not start with a shared prompt")
        prompt, chosen, rejected = chosen[:shared], chosen[shared:], rejected[shared:]
    elif isinstance(prompt_value, str):
        prompt = _system_first(record, view, columns, [{"role": "user", "content": _string(
            record, "preference field " + field_name("prompt", columns), prompt_value)}])
    else:
        prompt = _message_list(record, record_key("prompt", columns), prompt_value, columns)
    if prompt_value is not None or conversation or view.get("instruction") is not None:
        chosen = _response(record, chosen_key, view["chosen"], prompt, columns)
        rejected = _response(record, rejected_key, view["rejected"], prompt, columns)
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
                  tools=_tools(record, record_key("tools", columns), view.get("tools")))


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
    raise DataError(f"{record.source}: KTO field {field_name(key, columns)} must be true or false, got {value!r}")


def _kto(record: Record, view: dict, columns: dict) -> Sample:
    """An unpaired answer with its mark: TRL's ``prompt``/``completion``/``label``, or LLaMA-Factory's alpaca or
    chat record with ``kto_tag``; the answer is the final assistant turn."""
    mark = kto_mark_key(view)
    if view.get("completion") is not None or mark is None and view.get("prompt") is not None:
        _require(record, view, ("prompt", "completion"), "kto", columns)
        desirable = _kto_mark(record, view, columns, "label")
        prompt_value, completion_value = view["prompt"], view["completion"]
        if isinstance(prompt_value, str):
            prompt = _system_first(record, view, columns, [{"role": "user", "content": _string(
                record, "kto field " + field_name("prompt", columns), prompt_value)}])
        else:
            prompt = _message_list(record, record_key("prompt", columns), prompt_value, columns)
        completion = _response(record, record_key("completion", columns), completion_value, prompt, columns)
        tools = _tools(record, record_key("tools", columns), view.get("tools"))
    else:
        desirable = _kto_mark(record, view, columns, mark or "kto_tag")
        has_chat = view.get("messages") is not None or view.get("conversations") is not None
        base = _chat(record, view, columns) if has_chat else _alpaca(record, view, columns)
        messages, tools = base.messages, base.tools
        if messages[-1]["role"] != "assistant":
            raise DataError(f"{record.source}: a KTO conversation must end with the assistant answer that "
                            f"{field_name('kto_tag', columns)} marks")
        prompt, completion = messages[:-1], messages[-1:]
    if not completion or completion[-1]["role"] != "assistant":
        raise DataError(f"{record.source}: KTO field {field_name('completion', columns)} must end with an assistant "
                        "answer")
    if not prompt or prompt[-1]["role"] == "assistant":
        raise DataError(f"{record.source}: the KTO prompt must end with a user message")
    plain = ([m["role"] for m in prompt if m["role"] != "system"] == ["user"] and len(completion) == 1
             and not completion[0].get("tool_calls"))
    return Sample("kto", messages=prompt, completion=completion, desirable=desirable, plain=plain, tools=tools)


def _prompt(record: Record, view: dict, columns: dict) -> Sample:
    """A prompt without an answer (online objectives generate it); the other fields stay in the record."""
    _require(record, view, ("prompt",), "prompt", columns)
    value = view["prompt"]
    if isinstance(value, str):
        text = _string(record, "prompt field " + field_name("prompt", columns), value)
        if not text.strip():
            raise DataError(f"{record.source}: prompt field {field_name('prompt', columns)} is empty")
        prompt = _system_first(record, view, columns, [{"role": "user", "content": text}])
    else:
        prompt = _system_first(record, view, columns,
                               _message_list(record, record_key("prompt", columns), value, columns))
    if prompt[-1]["role"] != "user":
        raise DataError(f"{record.source}: the prompt must end with a user message, not a "
                        f"{prompt[-1]['role']} one")
    plain = [m["role"] for m in prompt if m["role"] != "system"] == ["user"]
    return Sample("prompt", messages=prompt, plain=plain,
                  tools=_tools(record, record_key("tools", columns), view.get("tools")))


_NORMALIZERS = {"alpaca": _alpaca, "chat": _chat, "completion": _completion, "preference": _preference,
                "kto": _kto, "prompt": _prompt}


def normalize(record: Record, fmt: str = "auto", columns: Optional[dict] = None) -> Sample:
    """Convert a record to a :class:`Sample` of format ``fmt`` (``auto``: from its keys)."""
    columns = check_columns(columns)
    if fmt not in FORMATS:
        raise DataError(f"data.format is '{fmt}'; valid: {', '.join(FORMATS)}")
    view = record_view(record, columns)
    refuse_unsupported(record, view, fmt)
    fmt = detect_format(record, columns) if fmt == "auto" else fmt
    return _NORMALIZERS[fmt](record, view, columns)


def to_messages(record: Record, fmt: str = "auto", columns: Optional[dict] = None) -> list[dict]:
    """A record as ``{"role", "content"}`` messages (for preference: the prompt plus the chosen response;
    kto: the prompt plus the answer)."""
    sample = normalize(record, fmt, columns)
    if sample.format == "completion":
        raise DataError(f"{record.source}: a completion record has no messages")
    return sample.messages + (sample.chosen or sample.completion or [])


def record_places(sources: Sequence[str], shown: int = SHOWN_PLACES) -> str:
    """The first ``shown`` record locations, comma-separated, and how many more there are."""
    text = ", ".join(sources[:shown])
    return text + (f" and {len(sources) - shown} more" if len(sources) > shown else "")


def _targets(sample: Sample) -> list[str]:
    """The texts a sample trains on as answers (assistant contents; not completion text)."""
    if sample.format == "completion":
        return []
    messages = ((sample.chosen or []) + (sample.rejected or []) if sample.format == "preference"
                else sample.completion if sample.format == "kto" else sample.messages)
    return [m["content"] for m in messages if m["role"] == "assistant"]


def normalize_records(records: Sequence[Record], fmt: str = "auto", columns: Optional[dict] = None) -> list[Sample]:
    """Normalize records in the order given (file order), so an error names the first bad record.

    Also an error: preference or kto records mixed with other formats (naming
    the first record of each kind; an alpaca/chat record in a kto dataset is
    one whose ``kto_tag`` is missing).  Assistant targets holding unfilled template
    placeholders (``{{name}}``) are logged as ONE warning line with their count
    and first locations.
    """
    columns = check_columns(columns)
    samples, first_of_kind, placeholders, example, mark_key = [], {}, [], None, None
    for record in records:
        sample = normalize(record, fmt, columns)
        kind = sample.format if sample.format in ("preference", "kto") else "supervised"
        first_of_kind.setdefault(kind, record.source)
        if kind == "kto" and mark_key is None:
            mark_key = kto_mark_key(record_view(record, columns)) or "label"
        if len(first_of_kind) > 1 and "kto" in first_of_kind:
            first = first_of_kind["kto"]
            raise DataError(f"{record.source}: KTO record without its mark: {field_name(mark_key or 'label', columns)} "
                            f"(true/false) is missing (first KTO record of the dataset: {first})" if kind != "kto" else
                            f"{record.source}: KTO records cannot be mixed with other formats in one dataset "
                            f"(first other record: {next(v for k, v in first_of_kind.items() if k != 'kto')})")
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
    return samples

