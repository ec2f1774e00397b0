"""Record formats and their tokenization with label masking.

A record is first seen through the column mapping (``data.columns``), then
normalized into a :class:`Sample` of one of four formats:

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
  (LLaMA-Factory) or ``instruction`` (+ ``input``).

KTO data (``kto_tag``, or a true/false ``label``, per record) and multimodal
records are refused: there is no loss that could use the labels, and SFT would
train on the answers marked undesirable.

Tool calls are normalized to one representation: an assistant message with
``tool_calls`` = ``[{"type": "function", "function": {"name", "arguments": {...}},
"id"?}]`` (``content`` a string, often empty), tool results as
``{"role": "tool", "content", "tool_call_id"?, "name"?}``, and the tools as
``[{"type": "function", "function": {schema}}]`` in :attr:`Sample.tools`.

Conversations are rendered with the tokenizer's chat template; ``data.chat_template``
supplies one for a tokenizer that has none (and replaces the tokenizer's own
when set).  A template that handles tools (its source names ``tools`` or
``tool_calls``) gets them as they are (``tools=`` of ``apply_chat_template``);
for any other template tool calls are written as text first
(:func:`tool_messages_as_text`).  Labels
are ``IGNORE_INDEX`` (-100) outside assistant turns; every assistant turn (and
the end-of-turn marker the template writes after it) is trained, tool-call
turns included, and an EOS token closes the final target when the template
does not write one.  Tool results and the tools list are never trained.
"""

from __future__ import annotations

import json
import logging
import re
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

from tuneforge.data.sources import Record, json_problem
from tuneforge.errors import DataError

log = logging.getLogger("tuneforge")

IGNORE_INDEX = -100

#: prompt used for single-turn records (alpaca, string preference pairs) when no chat template exists
ALPACA_PROMPT = "### Instruction:\n{instruction}\n\n### Response:\n"

#: ``data.chat_template=chatml`` selects this template
CHATML_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
NAMED_TEMPLATES = {"chatml": CHATML_TEMPLATE}

FORMATS = ("auto", "alpaca", "chat", "completion", "preference")
#: field names ``data.columns`` may map (canonical name -> the record's own key)
RECORD_FIELDS = ("instruction", "input", "output", "system", "messages", "conversations", "text", "prompt",
                 "chosen", "rejected", "tools")
MESSAGE_FIELDS = ("role", "content")
#: accepted message roles (OpenAI and ShareGPT spellings) -> role in the normalized conversation;
#: a ShareGPT ``function_call`` turn becomes an assistant message with ``tool_calls``
ROLE_ALIASES = {"system": "system", "user": "user", "human": "user", "assistant": "assistant",
                "gpt": "assistant", "function_call": "assistant", "tool": "tool", "observation": "tool",
                "function": "tool"}
#: the record layouts tuneforge trains, as named in errors about other layouts
SUPPORTED_LAYOUTS = ("supported layouts: chat ('messages' [{role, content}] or 'conversations' [{from, value}], "
                     "tool calls included), alpaca ('instruction' + 'output'), completion ('text'), preference "
                     "('chosen' + 'rejected' with 'prompt', 'conversations' or 'instruction'; loss=dpo)")
#: record keys of multimodal data (LLaMA-Factory), refused when they hold anything
MEDIA_FIELDS = ("images", "videos", "audios")
#: an unfilled template placeholder such as ``{{name}}`` in a target
PLACEHOLDER = re.compile(r"\{\{[^{}\n]{0,80}\}\}")
#: how many record locations a summary log line names
SHOWN_PLACES = 5


@dataclass
class Sample:
    """A record normalized to one format.

    ``messages`` is the conversation (alpaca, chat) or the prompt (preference);
    ``chosen``/``rejected`` are the preference responses as message lists;
    ``text`` is the completion text.  ``plain`` marks single-turn records that
    may be rendered with :data:`ALPACA_PROMPT` when no chat template exists.
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


# ---------------------------------------------------------------------------
# Column mapping and format detection
# ---------------------------------------------------------------------------


def check_columns(columns: Optional[dict]) -> dict:
    """Validate ``data.columns`` (canonical field -> record key) and return it as a plain dict."""
    from collections.abc import Mapping

    if columns is not None and not isinstance(columns, Mapping):
        raise DataError(f"data.columns must be a mapping like {{instruction: question}}, got {columns!r}")
    columns = dict(columns or {})
    for canonical, actual in columns.items():
        if canonical not in RECORD_FIELDS + MESSAGE_FIELDS:
            raise DataError(f"data.columns has unknown field '{canonical}'; valid: "
                            f"{', '.join(RECORD_FIELDS + MESSAGE_FIELDS)} (map each to your record's key)")
        if not isinstance(actual, str) or not actual:
            raise DataError(f"data.columns.{canonical} must be a record key name, got {actual!r}")
    return columns


def _view(record: Record, columns: dict) -> dict:
    """The record's fields under canonical names (``columns`` maps canonical -> the record's key)."""
    data = record.data
    if not isinstance(data, dict):
        raise DataError(f"{record.source}: a record must be an object with named fields, got {type(data).__name__}")
    record_columns = {k: v for k, v in columns.items() if k in RECORD_FIELDS}
    mapped = set(record_columns.values())
    view = {key: value for key, value in data.items() if key not in mapped}
    for canonical, actual in record_columns.items():
        view.pop(canonical, None)
        if actual in data:
            view[canonical] = data[actual]
    return view


def _key(field: str, columns: dict) -> str:
    """The record key that holds a canonical field."""
    return columns.get(field, field)


def _name(field: str, columns: dict) -> str:
    """How to name a canonical field in an error: its record key, noting the mapping."""
    actual = columns.get(field)
    return f"'{actual}' (data.columns.{field})" if actual else f"'{field}'"


def detect_format(record: Record, columns: Optional[dict] = None) -> str:
    """The format a record's keys announce: ``preference``, ``chat``, ``alpaca`` or ``completion``."""
    keys = _view(record, dict(columns or {})).keys()
    if "chosen" in keys or "rejected" in keys:
        return "preference"
    if "messages" in keys or "conversations" in keys:
        return "chat"
    if "instruction" in keys or "output" in keys:
        return "alpaca"
    if "text" in keys:
        return "completion"
    raise DataError(f"{record.source}: cannot tell the record's format from its keys "
                    f"{sorted(map(str, record.data))}; {SUPPORTED_LAYOUTS} "
                    "(map other key names with data.columns, or set data.format)")


def _refuse_unsupported(record: Record, view: dict) -> None:
    """KTO and multimodal records are errors whatever ``data.format`` says: nothing could train them right."""
    field = "kto_tag" if "kto_tag" in view else "label" if isinstance(view.get("label"), bool) else None
    if field:
        raise DataError(f"{record.source}: KTO data ('{field}': true/false per record) is not supported: there is "
                        f"no kto loss, and SFT would also train on the answers marked undesirable ({field}: false); "
                        f"{SUPPORTED_LAYOUTS}")
    media = next((key for key in MEDIA_FIELDS if view.get(key)), None)
    if media:
        raise DataError(f"{record.source}: multimodal records ('{media}') are not supported, only text; "
                        f"{SUPPORTED_LAYOUTS}")


# ---------------------------------------------------------------------------
# Normalization
# ---------------------------------------------------------------------------


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
        names = ", ".join(_name(field, columns) for field in missing)
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
    prompt = _string(record, f"alpaca field {_name('instruction', columns)}", view["instruction"])
    extra = view.get("input")
    if extra:
        prompt = f"{prompt}\n\n{_string(record, 'alpaca field ' + _name('input', columns), extra)}"
    messages = []
    if view.get("system"):
        messages.append({"role": "system", "content": _string(record, "field " + _name("system", columns),
                                                              view["system"])})
    messages.append({"role": "user", "content": prompt})
    messages.append({"role": "assistant",
                     "content": _string(record, f"alpaca field {_name('output', columns)}", view["output"])})
    return Sample("alpaca", messages=messages, plain=True)


def _chat(record: Record, view: dict, columns: dict) -> Sample:
    key = "messages" if view.get("messages") is not None else "conversations"
    if view.get(key) is None:
        raise DataError(f"{record.source}: chat record is missing {_name('messages', columns)} or "
                        f"{_name('conversations', columns)} (its keys: {', '.join(sorted(map(str, record.data)))})")
    messages = _message_list(record, _key(key, columns), view[key], columns)
    if view.get("system") and messages[0]["role"] != "system":
        messages.insert(0, {"role": "system", "content": _string(record, "field " + _name("system", columns),
                                                                 view["system"])})
    if not any(m["role"] == "assistant" for m in messages):
        raise DataError(f"{record.source}: chat record has no assistant (or 'gpt') message to learn from")
    return Sample("chat", messages=messages, tools=_tools(record, _key("tools", columns), view.get("tools")))


def _completion(record: Record, view: dict, columns: dict) -> Sample:
    _require(record, view, ("text",), "completion", columns)
    text = _string(record, f"completion field {_name('text', columns)}", view["text"])
    if not text:
        raise DataError(f"{record.source}: completion field {_name('text', columns)} is empty")
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
        prompt.insert(0, {"role": "system", "content": _string(record, "field " + _name("system", columns),
                                                               view["system"])})
    return prompt


def _preference(record: Record, view: dict, columns: dict) -> Sample:
    """A preference pair; the prompt is ``prompt``, else ``conversations``/``messages``, else ``instruction``
    (+ ``input``), else the part the ``chosen`` and ``rejected`` conversations share."""
    _require(record, view, ("chosen", "rejected"), "preference", columns)
    chosen_key, rejected_key = _key("chosen", columns), _key("rejected", columns)
    prompt_value = view.get("prompt")
    conversation = next((k for k in ("conversations", "messages") if view.get(k) is not None), None)
    if prompt_value is None and conversation:
        # LLaMA-Factory (ShareGPT): the prompt turns in 'conversations', one message object per response
        prompt = _system_first(record, view, columns,
                               _message_list(record, _key(conversation, columns), view[conversation], columns))
    elif prompt_value is None and view.get("instruction") is not None:
        # LLaMA-Factory (Alpaca): instruction, optional input, chosen and rejected strings
        text = _string(record, "preference field " + _name("instruction", columns), view["instruction"])
        if view.get("input"):
            text = f"{text}\n\n{_string(record, 'preference field ' + _name('input', columns), view['input'])}"
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
            raise DataError(f"{record.source}: preference record is missing {_name('prompt', columns)} and its "
                            "chosen/rejected conversations do not start with a shared prompt")
        prompt, chosen, rejected = chosen[:shared], chosen[shared:], rejected[shared:]
    elif isinstance(prompt_value, str):
        prompt = _system_first(record, view, columns, [{"role": "user", "content": _string(
            record, "preference field " + _name("prompt", columns), prompt_value)}])
    else:
        prompt = _message_list(record, _key("prompt", columns), prompt_value, columns)
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
                  tools=_tools(record, _key("tools", columns), view.get("tools")))


_NORMALIZERS = {"alpaca": _alpaca, "chat": _chat, "completion": _completion, "preference": _preference}


def normalize(record: Record, fmt: str = "auto", columns: Optional[dict] = None) -> Sample:
    """Convert a record to a :class:`Sample` of format ``fmt`` (``auto``: from its keys)."""
    columns = check_columns(columns)
    if fmt not in FORMATS:
        raise DataError(f"data.format is '{fmt}'; valid: {', '.join(FORMATS)}")
    view = _view(record, columns)
    _refuse_unsupported(record, view)
    fmt = detect_format(record, columns) if fmt == "auto" else fmt
    return _NORMALIZERS[fmt](record, view, columns)


def to_messages(record: Record, fmt: str = "auto", columns: Optional[dict] = None) -> list[dict]:
    """A record as ``{"role", "content"}`` messages (for preference: the prompt plus the chosen response)."""
    sample = normalize(record, fmt, columns)
    if sample.format == "completion":
        raise DataError(f"{record.source}: a completion record has no messages")
    return sample.messages + (sample.chosen or [])


# ---------------------------------------------------------------------------
# Chat templates and rendering
# ---------------------------------------------------------------------------


def resolve_chat_template(tokenizer, chat_template: Optional[str] = None) -> Optional[str]:
    """The template conversations are rendered with: ``chat_template`` when given, else the tokenizer's.

    ``chat_template`` (``data.chat_template``) is a Jinja template, the name of
    a built-in one (``chatml``) or a path to a ``.jinja`` file; it serves as the
    template of a tokenizer that has none, and replaces the tokenizer's own
    when set explicitly.  ``None`` means no template is available.
    """
    if chat_template:
        if chat_template in NAMED_TEMPLATES:
            return NAMED_TEMPLATES[chat_template]
        if chat_template.endswith((".jinja", ".j2")):
            path = Path(chat_template).expanduser()
            if not path.is_file():
                raise DataError(f"data.chat_template: template file not found: {path}")
            return path.read_text(encoding="utf-8")
        return chat_template
    own = getattr(tokenizer, "chat_template", None)
    if isinstance(own, dict):
        own = own.get("default") or next(iter(own.values()), None)
    return own or None


def has_chat_template(tokenizer, chat_template: Optional[str] = None) -> bool:
    """Whether conversations can be rendered (``chat_template`` is given or the tokenizer has one)."""
    return bool(getattr(tokenizer, "chat_template", None) or chat_template)


#: fallback rendering of tools (a template that does not handle them): the text before the tool schemas,
#: which follow one JSON object a line, then :data:`TOOLS_END`
TOOLS_PREAMBLE = ("You can call these tools. To call one, reply with "
                  '<tool_call>{"name": <tool name>, "arguments": <arguments object>}</tool_call>.\n<tools>\n')
TOOLS_END = "\n</tools>"


def template_supports_tools(template: str) -> bool:
    """Whether a chat template handles tools itself: its Jinja source names ``tools`` or ``tool_calls``."""
    return bool(re.search(r"\btool_calls\b|\btools\b", template))


def _has_tool_parts(messages: Sequence[dict], tools: Optional[list]) -> bool:
    return bool(tools) or any(m.get("tool_calls") or m["role"] == "tool" for m in messages)


def _json_text(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def message_text(message: dict) -> str:
    """A message's text; an assistant tool-call turn's is its content, a newline when that is not empty,
    then ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` per call, one a line (the fallback
    rendering, also used as the reference text of such a turn by quality checks and evaluators)."""
    calls = message.get("tool_calls")
    if not calls:
        return message["content"]
    text = "\n".join("<tool_call>" + _json_text({"name": call["function"]["name"],
                                                 "arguments": call["function"]["arguments"]}) + "</tool_call>"
                     for call in calls)
    return (message["content"] + "\n" if message["content"] else "") + text


def tool_messages_as_text(messages: Sequence[dict], tools: Optional[list] = None) -> list[dict]:
    """A tool-calling conversation as plain ``{role, content}`` messages, for templates without tool support.

    * ``tools``: the system message gets :data:`TOOLS_PREAMBLE`, each tool
      schema as one line of JSON, and :data:`TOOLS_END`, after its own content
      and a blank line (a system message holding just that is added when there
      is none);
    * an assistant message with ``tool_calls``: its content, a newline when the
      content is not empty, then ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``
      per call, one a line;
    * tool results: each run of consecutive ``tool`` messages becomes one
      ``user`` message of ``<tool_response>{content}</tool_response>`` lines.

    JSON is written with ``json.dumps(..., ensure_ascii=False)``.
    """
    out: list[dict] = []
    for message in messages:
        if message["role"] == "tool":
            text = f"<tool_response>{message['content']}</tool_response>"
            if out and out[-1].get("_tool_results"):
                out[-1]["content"] += "\n" + text
            else:
                out.append({"role": "user", "content": text, "_tool_results": True})
        elif message.get("tool_calls"):
            out.append({"role": "assistant", "content": message_text(message)})
        else:
            out.append({"role": message["role"], "content": message["content"]})
    for message in out:
        message.pop("_tool_results", None)
    if tools:
        listing = TOOLS_PREAMBLE + "\n".join(_json_text(tool) for tool in tools) + TOOLS_END
        if out and out[0]["role"] == "system":
            out[0]["content"] = (out[0]["content"] + "\n\n" if out[0]["content"] else "") + listing
        else:
            out.insert(0, {"role": "system", "content": listing})
    return out


def _render(tokenizer, messages: list[dict], template: str, generation_prompt: bool,
            tools: Optional[list] = None) -> str:
    """Render with ``template``; tool calls go to a template that handles them, else through
    :func:`tool_messages_as_text`."""
    from jinja2.exceptions import TemplateError

    if _has_tool_parts(messages, tools) and not template_supports_tools(template):
        messages, tools = tool_messages_as_text(messages, tools), None
    try:
        return tokenizer.apply_chat_template(messages, tools=tools or None, tokenize=False,
                                             add_generation_prompt=generation_prompt, chat_template=template)
    except TemplateError as exc:
        raise DataError(f"the chat template rejected the conversation ({exc})") from None


def render_prompt(tokenizer, messages: list[dict], chat_template: Optional[str] = None,
                  tools: Optional[list] = None) -> str:
    """The text a model sees before it answers: the messages plus the generation prompt.

    Uses the same template as training (:func:`resolve_chat_template`: the
    given ``chat_template``, else the tokenizer's) and the same tool rendering
    (``tools``: the example's tool schemas); without any template, the Alpaca
    prompt of the system and user contents.
    """
    template = resolve_chat_template(tokenizer, chat_template)
    if template:
        return _render(tokenizer, messages, template, True, tools)
    user = "\n\n".join(m["content"] for m in messages if m["role"] != "assistant")
    return ALPACA_PROMPT.format(instruction=user)


def assistant_spans(tokenizer, messages: list[dict], template: str, train_from: int = 0,
                    tools: Optional[list] = None) -> tuple[str, list]:
    """Render a conversation and find the character spans of its assistant turns.

    Returns ``(text, [(start, end), ...])`` for the assistant messages at index
    ``train_from`` or later (tool-call turns included).  A turn's span runs
    from the end of the generation prompt before it to the end of the render
    that includes it, so the end-of-turn marker is trained too.  ``tools`` are
    rendered with every prefix (so they stay in the masked prompt).
    """
    text = _render(tokenizer, messages, template, False, tools)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant" or i < train_from:
            continue
        upto = _render(tokenizer, messages[: i + 1], template, False, tools)
        candidates = []
        try:
            candidates.append(_render(tokenizer, messages[:i], template, True, tools))
        except Exception:  # some templates cannot render an empty or assistant-ending prefix
            pass
        if i:
            candidates.append(_render(tokenizer, messages[:i], template, False, tools))
        before = next((c for c in candidates if upto.startswith(c)), "" if not i else None)
        if before is None or not text.startswith(upto):
            raise DataError("the chat template does not render conversations prefix by prefix, so assistant "
                            "turns cannot be located; set a template that does (data.chat_template) on a "
                            "tokenizer without one")
        spans.append((len(before), len(upto)))
    return text, spans


def _plain_spans(tokenizer, prompt: list[dict], response: str) -> tuple[str, list]:
    prefix = ALPACA_PROMPT.format(instruction="\n\n".join(m["content"] for m in prompt))
    target = response + (tokenizer.eos_token or "")
    return prefix + target, [(len(prefix), len(prefix) + len(target))]


def _label_spans(tokenizer, text: str, spans: list, *, special_tokens: bool,
                 train_on_inputs: bool) -> tuple[list, list, list]:
    """Token ids of ``text`` and labels that are ``IGNORE_INDEX`` outside ``spans``.

    Also returns the ids of the tokens in the last span.  Fast tokenizers map
    tokens to characters with offsets; slow ones are tokenized span by span.
    """
    if getattr(tokenizer, "is_fast", False):
        encoded = tokenizer(text, add_special_tokens=special_tokens, return_offsets_mapping=True)
        ids, offsets = list(encoded["input_ids"]), encoded["offset_mapping"]
        inside = [end > start and any(start < b and end > a for a, b in spans) for start, end in offsets]
        last = [t for t, (start, end) in zip(ids, offsets)
                if spans and end > start and start < spans[-1][1] and end > spans[-1][0]]
    else:
        ids, inside, last, pieces, position = [], [], [], [], 0
        for a, b in spans:
            pieces += [(text[position:a], False), (text[a:b], True)]
            position = b
        pieces.append((text[position:], False))
        for piece, trained in pieces:
            if piece:
                piece_ids = tokenizer(piece, add_special_tokens=False)["input_ids"]
                ids += piece_ids
                inside += [trained] * len(piece_ids)
                last = piece_ids if trained else last
    labels = [t if (flag or train_on_inputs) else IGNORE_INDEX for t, flag in zip(ids, inside)]
    return ids, labels, last


def tokenize_messages(tokenizer, messages: list[dict], *, chat_template: Optional[str] = None,
                      train_on_inputs: bool = False, train_from: int = 0, plain: bool = False,
                      tools: Optional[list] = None) -> dict:
    """Tokenize a conversation; labels are ``IGNORE_INDEX`` outside the trained assistant turns.

    ``chat_template`` is the template to use instead of the tokenizer's
    (needed when the tokenizer has none).
    ``train_from`` skips assistant turns before that message index (a
    preference prompt).  ``plain=True`` allows single-turn conversations to use
    :data:`ALPACA_PROMPT` when no template exists; otherwise that is an error.
    ``tools`` are the conversation's tool schemas (see :func:`assistant_spans`).
    An end-of-sequence token is appended when the final assistant turn does
    not already contain one, so every target is closed.
    """
    template = resolve_chat_template(tokenizer, chat_template)
    if template:
        text, spans = assistant_spans(tokenizer, messages, template, train_from, tools)
        special = False
    elif plain:
        text, spans = _plain_spans(tokenizer, messages[:-1], messages[-1]["content"])
        special = True
    else:
        raise DataError("the tokenizer has no chat template to render this conversation; set "
                        "data.chat_template (a Jinja template, or 'chatml')")
    ids, labels, last_turn = _label_spans(tokenizer, text, spans, special_tokens=special,
                                          train_on_inputs=train_on_inputs)
    eos = tokenizer.eos_token_id
    if eos is not None and messages[-1]["role"] == "assistant" and eos not in last_turn:
        ids.append(eos)
        labels.append(eos)
    return {"input_ids": ids, "labels": labels}


def tokenize_text(tokenizer, text: str) -> dict:
    """Tokenize completion text (with the tokenizer's own special tokens) and close it with EOS; all trained."""
    ids = list(tokenizer(text, add_special_tokens=True)["input_ids"])
    eos = tokenizer.eos_token_id
    if eos is not None and (not ids or ids[-1] != eos):
        ids.append(eos)
    return {"input_ids": ids, "labels": list(ids)}


def tokenize_sample(tokenizer, sample: Sample, *, chat_template: Optional[str] = None,
                    train_on_inputs: bool = False) -> dict:
    """The tokenized fields of one sample (without ``record``/``source``).

    alpaca/chat: ``input_ids``, ``labels``, ``messages``.  completion:
    ``input_ids``, ``labels`` (all trained), ``text``.  preference:
    ``chosen_input_ids``, ``chosen_labels``, ``rejected_input_ids``,
    ``rejected_labels`` (prompt tokens always masked), plus ``input_ids`` /
    ``labels`` equal to the chosen ones (so SFT losses and perplexity run on
    the chosen answer) and ``messages`` = prompt + chosen response.  Samples
    with tools also get ``tools`` (the schemas, for rendering prompts later).
    """
    if sample.format == "completion":
        return dict(tokenize_text(tokenizer, sample.text), text=sample.text)
    extra = {"tools": sample.tools} if sample.tools else {}
    if sample.format == "preference":
        out = {}
        for side, response in (("chosen", sample.chosen), ("rejected", sample.rejected)):
            encoded = tokenize_messages(tokenizer, sample.messages + response, chat_template=chat_template,
                                        train_from=len(sample.messages), plain=sample.plain, tools=sample.tools)
            out[f"{side}_input_ids"], out[f"{side}_labels"] = encoded["input_ids"], encoded["labels"]
        out["input_ids"], out["labels"] = list(out["chosen_input_ids"]), list(out["chosen_labels"])
        out["messages"] = sample.messages + sample.chosen
        return dict(out, **extra)
    encoded = tokenize_messages(tokenizer, sample.messages, chat_template=chat_template,
                                train_on_inputs=train_on_inputs, plain=sample.plain, tools=sample.tools)
    return dict(encoded, messages=sample.messages, **extra)


def _sequence_keys(example: dict) -> list:
    return [k for k in example if k.endswith(("input_ids", "labels"))]


def _places(sources: Sequence[str], shown: int = SHOWN_PLACES) -> str:
    """The first ``shown`` record locations, comma-separated, and how many more there are."""
    text = ", ".join(sources[:shown])
    return text + (f" and {len(sources) - shown} more" if len(sources) > shown else "")


def _targets(sample: Sample) -> list[str]:
    """The texts a sample trains on as answers (assistant contents; not completion text)."""
    if sample.format == "completion":
        return []
    messages = (sample.chosen or []) + (sample.rejected or []) if sample.format == "preference" else sample.messages
    return [m["content"] for m in messages if m["role"] == "assistant"]


def normalize_records(records: Sequence[Record], fmt: str = "auto", columns: Optional[dict] = None) -> list[Sample]:
    """Normalize records in the order given (file order), so an error names the first bad record.

    Also an error: preference records mixed with other formats (naming the
    first record of each kind).  Assistant targets holding unfilled template
    placeholders (``{{name}}``) are logged as ONE warning line with their count
    and first locations.
    """
    columns = check_columns(columns)
    samples, first_of_kind, placeholders, example = [], {}, [], None
    for record in records:
        sample = normalize(record, fmt, columns)
        kind = "preference" if sample.format == "preference" else "supervised"
        first_of_kind.setdefault(kind, record.source)
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
                    len(placeholders), len(samples), example, _places(placeholders))
    return samples


def check_length_options(max_length: Any, truncation: Any) -> None:
    """``data.max_length`` is an integer >= 2 and ``data.truncation`` is ``truncate`` or ``drop``."""
    if truncation not in ("truncate", "drop"):
        raise DataError(f"data.truncation is '{truncation}'; valid: truncate, drop")
    if not isinstance(max_length, int) or max_length < 2:
        raise DataError(f"data.max_length is {max_length!r}; it must be an integer of at least 2")


def longest_token_chars(tokenizer) -> int:
    """The most characters one token of ``tokenizer`` stands for (at most the length of its longest
    vocabulary entry: byte-level and SentencePiece tokens never decode to more characters than they spell)."""
    try:
        vocab = tokenizer.get_vocab()
    except (AttributeError, NotImplementedError):
        return 64
    return max((len(token) for token in vocab), default=1) or 1


def cut_length(tokenizer, max_length: int) -> int:
    """Characters a text field may keep before tokenization without changing the first ``max_length``
    tokens: ``max_length + 1`` tokens of the tokenizer's longest kind.  A longer text still makes more
    than ``max_length`` tokens, so it is truncated or dropped (and counted) exactly as the whole text
    would be, while the tokenizer never sees more than this (a 50 MB record stays a few kB of work)."""
    return (int(max_length) + 1) * longest_token_chars(tokenizer)


def cut_sample(sample: Sample, limit: int) -> Sample:
    """``sample`` with every message content and the completion text cut to ``limit`` characters (the
    same object when nothing is longer)."""
    def cut_messages(messages):
        if not messages or all(len(m.get("content") or "") <= limit for m in messages):
            return messages
        return [dict(m, content=m["content"][:limit]) if isinstance(m.get("content"), str) else m
                for m in messages]

    fields = {"messages": cut_messages(sample.messages), "chosen": cut_messages(sample.chosen),
              "rejected": cut_messages(sample.rejected),
              "text": sample.text[:limit] if isinstance(sample.text, str) and len(sample.text) > limit else sample.text}
    if all(fields[key] is getattr(sample, key) for key in fields):
        return sample
    return dataclasses.replace(sample, **fields)


def tokenize_samples(pairs: Sequence[tuple], tokenizer, *, max_length: int = 1024, truncation: str = "truncate",
                     chat_template: Optional[str] = None, train_on_inputs: bool = False) -> tuple[list, dict, list]:
    """Tokenize ``(record, sample)`` pairs in order; returns ``(results, counts, dropped)``.

    Every text is first cut to :func:`cut_length` characters, which leaves the
    first ``max_length`` tokens as they are: memory stays bounded whatever
    the record's size.

    ``results`` is aligned with ``pairs``: an example (see
    :func:`tokenize_records`) or None where the example was dropped;
    ``dropped`` lists ``[source, reason]`` per dropped example, the reason
    ``"too long"`` (``truncation="drop"``) or ``"prompt fills max_length"`` (a
    truncated example with nothing left to train).
    """
    check_length_options(max_length, truncation)
    limit = cut_length(tokenizer, max_length)
    results, formats, truncated, dropped = [], {}, 0, []
    for record, sample in pairs:
        try:
            short = cut_sample(sample, limit)
            example = tokenize_sample(tokenizer, short, chat_template=chat_template,
                                      train_on_inputs=train_on_inputs)
            if short is not sample:  # the tokens come from the cut text; the example keeps the record's own
                example.update({key: value for key, value in (
                    ("messages", sample.messages + sample.chosen if sample.format == "preference"
                     else sample.messages), ("text", sample.text)) if key in example})
        except DataError as exc:
            raise DataError(f"{record.source}: {exc}") from None
        keys = _sequence_keys(example)
        was_cut = False
        if any(len(example[k]) > max_length for k in keys):
            if truncation == "drop":
                dropped.append([record.source, "too long"])
                results.append(None)
                continue
            was_cut = True
            example.update({k: example[k][:max_length] for k in keys})
        untrained = [k for k in keys if k.endswith("labels") and all(t == IGNORE_INDEX for t in example[k])]
        if untrained and was_cut:
            # the prompt alone fills max_length: nothing left to learn from, so leave it out (counted)
            dropped.append([record.source, "prompt fills max_length"])
            results.append(None)
            continue
        if untrained:
            raise DataError(f"{record.source}: no token of '{untrained[0]}' is trained (the chat template "
                            "renders no assistant text to learn from)")
        truncated += was_cut
        example.update(record=record.data, source=record.source, format=sample.format)
        formats[sample.format] = formats.get(sample.format, 0) + 1
        results.append(example)
    return results, {"truncated": truncated, "dropped": len(dropped), "formats": formats}, dropped


def log_length_summary(counts: dict, dropped: Sequence, max_length: int, truncation: str) -> None:
    """ONE log line for the truncated and dropped examples: their counts and the first dropped locations."""
    if not counts["truncated"] and not counts["dropped"]:
        return
    filled = sum(reason == "prompt fills max_length" for _, reason in dropped)
    why = f"; {filled} of them because the prompt alone fills the limit" if filled else ""
    where = f": {_places([source for source, _ in dropped])}" if dropped else ""
    log.warning("data: %d example(s) truncated and %d dropped at data.max_length=%d (data.truncation=%s%s)%s",
                counts["truncated"], counts["dropped"], max_length, truncation, why, where)


def tokenize_records(records: Sequence[Record], tokenizer, *, fmt: str = "auto", max_length: int = 1024,
                     truncation: str = "truncate", chat_template: Optional[str] = None,
                     train_on_inputs: bool = False, columns: Optional[dict] = None) -> tuple[list, dict]:
    """Tokenize records; returns ``(examples, counts)``.

    Each example holds its tokenized fields (see :func:`tokenize_sample`) plus
    ``record`` (the raw dict), ``source`` (``file:line``) and ``format``.
    Records are normalized first, in order (:func:`normalize_records`), so the
    first bad record is the one reported.
    ``truncation="truncate"`` cuts over-long sequences at ``max_length``;
    ``"drop"`` leaves the example out.  Both are counted in ``counts``
    (``truncated``, ``dropped``, and ``formats``: examples per format) and
    summarised in one log line naming the first dropped records.  A
    truncated example whose prompt fills ``max_length`` has nothing left to
    train on and is dropped (counted).  An
    example with no trained token without truncation, or a split mixing
    preference and other records, is an error naming the record.
    """
    check_length_options(max_length, truncation)
    samples = normalize_records(records, fmt, columns)
    results, counts, dropped = tokenize_samples(list(zip(records, samples)), tokenizer, max_length=max_length,
                                                truncation=truncation, chat_template=chat_template,
                                                train_on_inputs=train_on_inputs)
    log_length_summary(counts, dropped, max_length, truncation)
    return [example for example in results if example is not None], counts
