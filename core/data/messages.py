"""Message lists and the text fields inside records, normalized.

OpenAI ``{role, content}`` and ShareGPT ``{from, value}`` messages become
``{"role", "content"}`` dicts (:func:`parse_messages`).  Tool calling, in either
spelling, becomes assistant messages with ``tool_calls`` =
``[{"type": "function", "function": {"name", "arguments": {...}}, "id"?}]`` and
``{"role": "tool", "content", "tool_call_id"?, "name"?}`` results; a record's
tools become ``[{"type": "function", "function": {schema}}]`` (:func:`normalize_tools`).

A message may carry a training mark (:func:`message_mark`): OpenAI's
``weight`` (0 or 1), LLaMA-Factory's ``loss_weight`` (0.0 or 1.0) or Axolotl's
``train`` (false or true).  On an assistant
message 0/false means the turn is not trained; 1/true (or no mark) keeps the
default.  On any other message only 0/false (what happens anyway) is valid:
tuneforge trains no user, system or tool turn by itself.
"""

from __future__ import annotations

import json
from typing import Any, Optional

from tuneforge.data.record_keys import KeyReads
from tuneforge.data.sources import Record, json_problem
from tuneforge.errors import DataError

#: accepted message roles (OpenAI and ShareGPT spellings) -> role in the normalized conversation;
#: a ShareGPT ``function_call`` turn becomes an assistant message with ``tool_calls``
ROLE_ALIASES = {"system": "system", "user": "user", "human": "user", "assistant": "assistant",
                "gpt": "assistant", "function_call": "assistant", "tool": "tool", "observation": "tool",
                "function": "tool"}
#: the roles ``data.roles`` maps your role names to -> what a message of that role is (a name of
#: :data:`ROLE_ALIASES` is accepted as a target too: ``gpt``, ``observation`` ...)
ROLE_TARGETS = {"system": "the system prompt", "user": "the user's turn", "assistant": "the answer, trained",
                "tool": "a tool's result", "function_call": "an assistant turn whose text is the tool call as JSON"}
#: role names other projects use -> the role they most likely mean (the hint of the unknown-role error)
_LIKELY_ROLES = {"model": "assistant", "bot": "assistant", "ai": "assistant", "chatbot": "assistant",
                 "agent": "assistant", "answer": "assistant", "response": "assistant", "usr": "user",
                 "customer": "user", "client": "user", "question": "user", "prompt": "user", "person": "user",
                 "sys": "system", "developer": "system", "instruction": "system", "ipython": "tool",
                 "tool_response": "tool", "tool_result": "tool", "tool_call": "function_call"}
#: per-message training marks: OpenAI fine-tuning's ``weight``, LLaMA-Factory's ``loss_weight`` (its v1
#: messages) and Axolotl's ``train``
MARK_KEYS = ("weight", "loss_weight", "train")
#: the marks written as numbers (0 or 1); ``train`` is a JSON boolean
NUMERIC_MARK_KEYS = ("weight", "loss_weight")
#: how errors write "marked not to train"
UNTRAINED_MARKS = "'weight': 0 / 'loss_weight': 0 / 'train': false"


def _role_names() -> str:
    return ", ".join(ROLE_TARGETS)


def _roles_and_problem(roles: Any) -> tuple[dict, Optional[str]]:
    """``data.roles`` as ``{your role name, lowercase: a name of ROLE_ALIASES}`` and what is wrong with it
    (None: nothing).  It maps your role name to tuneforge's (``{model: assistant}``); Axolotl's ``roles``
    (tuneforge's role -> a list of your names, ``{assistant: [model, bot]}``) is read too."""
    from collections.abc import Mapping, Sequence

    if roles is None:
        return {}, None
    if not isinstance(roles, Mapping):
        return {}, f"must be a mapping your role name -> tuneforge's role, like {{model: assistant}}, got {roles!r}"
    flat: dict = {}
    for name, target in roles.items():
        if not isinstance(name, str) or not name:
            return {}, f"a role name must be a non-empty string, got {name!r}"
        if isinstance(target, Sequence) and not isinstance(target, str):  # Axolotl: tuneforge's role -> names
            if name.lower() not in ROLE_ALIASES:
                return {}, (f"'{name}' holds a list of role names (Axolotl's form: tuneforge's role -> your names), "
                            f"so it must be one of {_role_names()}")
            pairs = [(item, name.lower()) for item in target]
        elif isinstance(target, str) and target.lower() in ROLE_ALIASES:
            pairs = [(name, target.lower())]
        else:
            reverse = (" (data.roles maps your role name to tuneforge's; did you mean "
                       f"data.roles={{{target}: {name}}}?)" if isinstance(target, str) and name.lower() in ROLE_ALIASES
                       else "")
            return {}, f"'{name}' maps to {target!r}, not a role tuneforge reads; valid: {_role_names()}{reverse}"
        for item, role in pairs:
            if not isinstance(item, str) or not item:
                return {}, f"{name}: a role name must be a non-empty string, got {item!r}"
            if flat.get(item.lower(), role) != role:
                return {}, f"'{item}' is mapped to both {flat[item.lower()]} and {role}; keep one"
            flat[item.lower()] = role
    return flat, None


def roles_problem(roles: Any) -> Optional[str]:
    """What is wrong with a ``data.roles`` value (None: nothing), for the config check."""
    return _roles_and_problem(roles)[1]


def check_roles(roles: Any) -> dict:
    """``data.roles`` checked and flattened: ``{your role name, lowercase: a name of ROLE_ALIASES}``; a bad
    value is a one-line error naming what is valid."""
    flat, problem = _roles_and_problem(roles)
    if problem:
        raise DataError(f"data.roles: {problem}")
    return flat


def resolve_role(role: Any, roles: dict) -> Optional[str]:
    """The name of :data:`ROLE_ALIASES` a message's role value stands for (``roles``: :func:`check_roles`
    first, then the built-in names; case does not matter), or None for a role tuneforge cannot read."""
    if not isinstance(role, str):
        return None
    role = role.lower()
    return roles.get(role) or (role if role in ROLE_ALIASES else None)


def unknown_role(record: Record, where: str, role: Any, roles: dict) -> DataError:
    """The error for a message whose role is neither a built-in name nor one ``data.roles`` maps, suggesting
    the ``data.roles`` entry that would read it."""
    valid = ", ".join([*ROLE_ALIASES, *(f"{name} (data.roles)" for name in roles)])
    hint = ""
    if isinstance(role, str) and role.strip():
        target = _LIKELY_ROLES.get(role.lower(), "<role>")
        hint = (f"; map another name with data.roles={{{role}: {target}}}"
                + (f", <role> one of {_role_names()}" if target == "<role>" else f" (your role name -> "
                   f"tuneforge's: {_role_names()})"))
    return DataError(f"{record.source}: {where} has role {role!r}; valid: {valid}{hint}")


def as_string(record: Record, what: str, value: Any) -> str:
    """``value`` when it is a string of valid Unicode; else a one-line error naming ``what``."""
    if not isinstance(value, str):
        raise DataError(f"{record.source}: {what} must be a string, got {type(value).__name__}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise DataError(f"{record.source}: {what} holds an unpaired surrogate (a broken \\u escape); "
                        "text must be valid Unicode") from None
    return value


def content_text(record: Record, what: str, value: Any) -> str:
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
    return as_string(record, what, value)


def json_value(record: Record, what: str, value: Any) -> Any:
    """``value`` itself, or parsed when it is a string (tool calls and tool lists are often JSON text)."""
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError as exc:
        raise DataError(f"{record.source}: {what} is not valid JSON ({json_problem(exc)})") from None
    except RecursionError:
        raise DataError(f"{record.source}: {what}: JSON nested too deeply") from None


def normalize_tool_calls(record: Record, what: str, value: Any) -> list[dict]:
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
        arguments = json_value(record, f"{where} arguments", arguments)
        if not isinstance(arguments, dict):
            raise DataError(f"{record.source}: {where} arguments must be a JSON object, got {type(arguments).__name__}")
        entry = {"type": "function", "function": {"name": as_string(record, f"{where} name", function["name"]),
                                                  "arguments": arguments}}
        if isinstance(call, dict) and isinstance(call.get("id"), str):
            entry["id"] = call["id"]
        normalized.append(entry)
    return normalized


def normalize_tools(record: Record, what: str, value: Any) -> Optional[list]:
    """Normalize a ``tools`` field: a list of tool schemas, or its JSON text (LLaMA-Factory).

    Bare schemas ``{"name", "description", "parameters"}`` are wrapped as
    ``{"type": "function", "function": schema}``; empty means no tools (None).
    """
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    tools = json_value(record, f"field '{what}'", value)
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


def tool_result(record: Record, what: str, value: Any) -> str:
    """A tool's result as text: a string (or text parts), or a JSON value written as JSON."""
    if isinstance(value, (dict, list, int, float, bool)) and not (
            isinstance(value, list) and value and all(isinstance(p, dict) and p.get("type") == "text" for p in value)):
        value = json.dumps(value, ensure_ascii=False)
    return content_text(record, what, value)


def message_mark(record: Record, where: str, message: dict, role: str) -> Optional[bool]:
    """A message's training mark: False (``weight: 0`` / ``loss_weight: 0.0`` / ``train: false``), True
    (``weight: 1`` / ``loss_weight: 1.0`` / ``train: true``) or None (no mark, or null).  Other values, marks
    that disagree, and a true mark on a message that is not an assistant's are one-line errors naming the
    message."""
    marks = []  # (key, the value as written, trained)
    for key in MARK_KEYS:
        value = message.get(key)
        if value is None:
            continue
        if key in NUMERIC_MARK_KEYS:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value not in (0, 1):
                fractional = " (a fractional weight cannot be trained: tuneforge's losses weight every trained " \
                             "token alike)" if isinstance(value, float) and 0 < value < 1 else ""
                raise DataError(f"{record.source}: {where} has '{key}': {json.dumps(value)}; valid: 0 (the turn is "
                                f"not trained) or 1 (trained, the default), on assistant messages{fractional}")
        elif not isinstance(value, bool):
            raise DataError(f"{record.source}: {where} has '{key}': {json.dumps(value)}; valid: false (the turn "
                            "is not trained) or true (trained, the default), on assistant messages")
        marks.append((key, json.dumps(value), bool(value)))
    if len({trained for _, _, trained in marks}) > 1:
        written = " and ".join(f"'{key}': {shown}" for key, shown, _ in marks)
        raise DataError(f"{record.source}: {where} has {written}, which disagree; keep one of them")
    if not marks:
        return None
    key, shown, trained = marks[0]
    if trained and role != "assistant":
        raise DataError(f"{record.source}: {where} is a {role} message with '{key}': {shown}; only assistant "
                        f"turns are trained, so '{key}' on another message may only be "
                        f"{'false' if key == 'train' else '0'} (to train prompts too, set data.train_on_inputs=true)")
    return trained


def _read_keys(message: dict, role_key: str, content_key: str, openai: bool, role: str) -> set:
    """The keys of ``message`` that :func:`parse_messages` reads for a message of this ``role``."""
    read = {role_key, content_key} if openai else {"from", "value"}
    read.update(MARK_KEYS)
    if role == "assistant":
        read.add("tool_calls" if message.get("tool_calls") else "function_call")
    elif role == "tool":
        read.update(("tool_call_id", "name"))
    return read


def parse_messages(record: Record, what: str, value: Any, columns: dict,
                   view: Optional[KeyReads] = None) -> tuple[list[dict], list]:
    """Normalize a list of OpenAI ``{role, content}`` or ShareGPT ``{from, value}`` messages.

    Returns ``(messages, marks)``: each message's training mark (:func:`message_mark`; None: no mark).
    Tool calling, in either spelling, becomes assistant messages with
    ``tool_calls`` (OpenAI ``tool_calls`` / legacy ``function_call`` on an
    assistant message; a ShareGPT ``function_call`` turn whose value is the call
    as JSON) and ``tool`` messages (OpenAI ``role: tool``/``function``,
    ShareGPT ``observation``), which must follow a tool call.  Role names are read case-insensitively:
    the built-in ones (:data:`ROLE_ALIASES`) and those ``data.roles`` maps (``columns.roles``, carried by
    :func:`~tuneforge.data.columns.check_columns`).  ``view`` (the
    record's :class:`~tuneforge.data.record_keys.KeyReads`) notes the message
    keys that went unread.
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
    roles = getattr(columns, "roles", None) or {}  # data.roles, carried by the checked columns
    messages, marks = [], []
    for i, message in enumerate(value):
        where = f"{what}[{i}]"
        if not isinstance(message, dict):
            raise DataError(f"{record.source}: {where} must be an object with 'role' and 'content', "
                            f"got {type(message).__name__}")
        calls = message.get("tool_calls") or message.get("function_call")
        openai = role_key in message and (content_key in message or bool(calls))
        if openai:
            role, content = message[role_key], message.get(content_key)
        elif "from" in message and "value" in message:
            role, content = message["from"], message["value"]
        else:
            raise DataError(f"{record.source}: {where} needs '{role_key}' and '{content_key}' (OpenAI) or "
                            f"'from' and 'value' (ShareGPT); it has {sorted(map(str, message))}")
        if resolve_role(role, roles) is None:
            raise unknown_role(record, where, role, roles)
        role = resolve_role(role, roles)
        messages.append(_message(record, where, role, content, calls, message, messages))
        marks.append(message_mark(record, where, message, messages[-1]["role"]))
        if view is not None:
            view.unread_in(what, message, _read_keys(message, role_key, content_key, openai,
                                                     messages[-1]["role"]))
    return messages, marks


def _message(record: Record, where: str, role: str, content: Any, calls: Any, message: dict,
             earlier: list) -> dict:
    """One normalized message (``earlier``: the messages before it, which a tool result must follow)."""
    if role == "function_call":  # ShareGPT: the turn's value is the call (or a list of calls) as JSON
        return {"role": "assistant", "content": "", "tool_calls": normalize_tool_calls(
            record, f"{where} value", json_value(record, f"{where} value", content))}
    if ROLE_ALIASES[role] == "assistant" and calls:
        key = "tool_calls" if message.get("tool_calls") else "function_call"
        text = "" if content is None else content_text(record, f"{where} content", content)
        return {"role": "assistant", "content": text,
                "tool_calls": normalize_tool_calls(record, f"{where} {key}", calls)}
    if ROLE_ALIASES[role] == "tool":
        if not earlier or not (earlier[-1].get("tool_calls") or earlier[-1]["role"] == "tool"):
            raise DataError(f"{record.source}: {where} is a tool result ({role!r}) that does not follow a tool "
                            "call; put it after the assistant turn that calls the tool ('function_call' turn, "
                            "or 'tool_calls')")
        result = {"role": "tool", "content": tool_result(record, f"{where} content", content)}
        for key in ("tool_call_id", "name"):
            if isinstance(message.get(key), str):
                result[key] = message[key]
        return result
    return {"role": ROLE_ALIASES[role], "content": content_text(record, f"{where} content", content)}


def message_list(record: Record, what: str, value: Any, columns: dict, view: Optional[KeyReads] = None, *,
                 answers: bool = True) -> list[dict]:
    """:func:`parse_messages` for a layout that decides itself which turns are trained (preference, KTO,
    prompt records): ``answers=True`` (responses, trained whole) refuses an assistant turn marked not to
    train; ``answers=False`` (a prompt, never trained) accepts any valid mark."""
    messages, marks = parse_messages(record, what, value, columns, view)
    if answers:
        refuse_untrained(record, what, messages, marks)
    return messages


def refuse_untrained(record: Record, what: str, messages: list, marks: list, start: int = 0) -> None:
    """An error for the first assistant turn at index ``start`` or later marked not to train: the layout
    trains its answers whole and would ignore the mark."""
    for i in range(start, len(messages)):
        if marks[i] is False and messages[i]["role"] == "assistant":
            raise DataError(f"{record.source}: {what}[{i}] is marked not to train ({UNTRAINED_MARKS}), "
                            "but only chat records and the completion of prompt/completion records read that "
                            "mark; this layout trains its answers whole: remove the mark or the turn")


def untrained_turns(messages: list, marks: list, offset: int = 0) -> tuple:
    """The indices (plus ``offset``) of the assistant turns marked not to train."""
    return tuple(offset + i for i, (message, mark) in enumerate(zip(messages, marks))
                 if mark is False and message["role"] == "assistant")
