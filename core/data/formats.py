"""Record formats and their tokenization with label masking.

A record is first seen through the column mapping (``data.columns``), then
normalized into a :class:`Sample` of one of four formats:

* ``alpaca``: ``instruction``, optional ``input``, ``output``, optional ``system``
  -> a system/user/assistant conversation;
* ``chat``: OpenAI ``messages`` [{role, content}] or ShareGPT ``conversations``
  [{from, value}] (roles ``human``/``gpt``/``system`` accepted), optional
  top-level ``system``;
* ``completion``: ``text`` (continued pre-training: every token trained);
* ``preference``: ``prompt`` + ``chosen`` + ``rejected``, each a string or a
  message list.

Conversations are rendered with the tokenizer's chat template; ``data.chat_template``
supplies one for a tokenizer that has none (and replaces the tokenizer's own
when set).  Labels
are ``IGNORE_INDEX`` (-100) outside assistant turns; every assistant turn (and
the end-of-turn marker the template writes after it) is trained, and an EOS
token closes the final target when the template does not write one.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

from tuneforge.data.sources import Record
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
                 "chosen", "rejected")
MESSAGE_FIELDS = ("role", "content")
#: accepted message roles (OpenAI and ShareGPT spellings) -> role given to the chat template
ROLE_ALIASES = {"system": "system", "user": "user", "human": "user", "assistant": "assistant",
                "gpt": "assistant"}
_FORMAT_HELP = ("'messages' or 'conversations' (chat), 'instruction' + 'output' (alpaca), 'text' (completion), "
                "'prompt' + 'chosen' + 'rejected' (preference)")


@dataclass
class Sample:
    """A record normalized to one format.

    ``messages`` is the conversation (alpaca, chat) or the prompt (preference);
    ``chosen``/``rejected`` are the preference responses as message lists;
    ``text`` is the completion text.  ``plain`` marks single-turn records that
    may be rendered with :data:`ALPACA_PROMPT` when no chat template exists.
    """

    format: str
    messages: Optional[list] = None
    text: Optional[str] = None
    chosen: Optional[list] = None
    rejected: Optional[list] = None
    plain: bool = False


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
                    f"{sorted(map(str, record.data))}; expected {_FORMAT_HELP} "
                    "(map other key names with data.columns, or set data.format)")


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
    """Message content: a string, or OpenAI content parts ``[{"type": "text", "text": ...}]``."""
    if isinstance(value, list) and value and all(
            isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)
            for part in value):
        value = "".join(part["text"] for part in value)
    if not isinstance(value, str):
        raise DataError(f"{record.source}: {what} must be a string (or a list of text parts), "
                        f"got {type(value).__name__}")
    return _string(record, what, value)


def _require(record: Record, view: dict, fields: Sequence[str], fmt: str, columns: dict) -> None:
    missing = [field for field in fields if view.get(field) is None]
    if missing:
        names = ", ".join(_name(field, columns) for field in missing)
        raise DataError(f"{record.source}: {fmt} record is missing {names} (its keys: "
                        f"{', '.join(sorted(map(str, record.data)))}); map other key names with data.columns")


def _message_list(record: Record, what: str, value: Any, columns: dict) -> list[dict]:
    """Normalize a list of OpenAI ``{role, content}`` or ShareGPT ``{from, value}`` messages."""
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
        if role_key in message and content_key in message:
            role, content = message[role_key], message[content_key]
        elif "from" in message and "value" in message:
            role, content = message["from"], message["value"]
        else:
            raise DataError(f"{record.source}: {where} needs '{role_key}' and '{content_key}' (OpenAI) or "
                            f"'from' and 'value' (ShareGPT); it has {sorted(map(str, message))}")
        if not isinstance(role, str) or role.lower() not in ROLE_ALIASES:
            raise DataError(f"{record.source}: {where} has role {role!r}; valid: {', '.join(ROLE_ALIASES)}")
        messages.append({"role": ROLE_ALIASES[role.lower()], "content": _content(record, f"{where} content",
                                                                                 content)})
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
    return Sample("chat", messages=messages)


def _completion(record: Record, view: dict, columns: dict) -> Sample:
    _require(record, view, ("text",), "completion", columns)
    text = _string(record, f"completion field {_name('text', columns)}", view["text"])
    if not text:
        raise DataError(f"{record.source}: completion field {_name('text', columns)} is empty")
    return Sample("completion", text=text)


def _response(record: Record, what: str, value: Any, prompt: list, columns: dict) -> list:
    """A preference response as messages, with the prompt removed when the response repeats it."""
    if isinstance(value, str):
        return [{"role": "assistant", "content": _string(record, f"preference field '{what}'", value)}]
    messages = _message_list(record, what, value, columns)
    if messages[: len(prompt)] == prompt:
        messages = messages[len(prompt):]
    return messages


def _preference(record: Record, view: dict, columns: dict) -> Sample:
    _require(record, view, ("chosen", "rejected"), "preference", columns)
    chosen_key, rejected_key = _key("chosen", columns), _key("rejected", columns)
    prompt_value = view.get("prompt")
    if prompt_value is None:
        # no prompt field: the prompt is what both full conversations share, up to the last user turn
        if isinstance(view["chosen"], str) or isinstance(view["rejected"], str):
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
        prompt = [{"role": "user", "content": _string(record, "preference field " + _name("prompt", columns),
                                                      prompt_value)}]
        if view.get("system"):
            prompt.insert(0, {"role": "system", "content": _string(record, "field " + _name("system", columns),
                                                                   view["system"])})
    else:
        prompt = _message_list(record, _key("prompt", columns), prompt_value, columns)
    if prompt_value is not None:
        chosen = _response(record, chosen_key, view["chosen"], prompt, columns)
        rejected = _response(record, rejected_key, view["rejected"], prompt, columns)
    for what, response in ((chosen_key, chosen), (rejected_key, rejected)):
        if not response or response[-1]["role"] != "assistant":
            raise DataError(f"{record.source}: preference field '{what}' must end with an assistant response")
    if prompt[-1]["role"] == "assistant":
        raise DataError(f"{record.source}: the preference prompt must end with a user message, not an "
                        "assistant one")
    plain = ([m["role"] for m in prompt if m["role"] != "system"] == ["user"]
             and len(chosen) == 1 and len(rejected) == 1)
    return Sample("preference", messages=prompt, chosen=chosen, rejected=rejected, plain=plain)


_NORMALIZERS = {"alpaca": _alpaca, "chat": _chat, "completion": _completion, "preference": _preference}


def normalize(record: Record, fmt: str = "auto", columns: Optional[dict] = None) -> Sample:
    """Convert a record to a :class:`Sample` of format ``fmt`` (``auto``: from its keys)."""
    columns = check_columns(columns)
    if fmt not in FORMATS:
        raise DataError(f"data.format is '{fmt}'; valid: {', '.join(FORMATS)}")
    view = _view(record, columns)
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


def _render(tokenizer, messages: list[dict], template: str, generation_prompt: bool) -> str:
    from jinja2.exceptions import TemplateError

    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt,
                                             chat_template=template)
    except TemplateError as exc:
        raise DataError(f"the chat template rejected the conversation ({exc})") from None


def render_prompt(tokenizer, messages: list[dict], chat_template: Optional[str] = None) -> str:
    """The text a model sees before it answers: the messages plus the generation prompt.

    Uses the same template as training (:func:`resolve_chat_template`: the
    given ``chat_template``, else the tokenizer's); without any, the Alpaca
    prompt of the system and user contents.
    """
    template = resolve_chat_template(tokenizer, chat_template)
    if template:
        return _render(tokenizer, messages, template, True)
    user = "\n\n".join(m["content"] for m in messages if m["role"] != "assistant")
    return ALPACA_PROMPT.format(instruction=user)


def assistant_spans(tokenizer, messages: list[dict], template: str, train_from: int = 0) -> tuple[str, list]:
    """Render a conversation and find the character spans of its assistant turns.

    Returns ``(text, [(start, end), ...])`` for the assistant messages at index
    ``train_from`` or later.  A turn's span runs from the end of the generation
    prompt before it to the end of the render that includes it, so the
    end-of-turn marker is trained too.
    """
    text = _render(tokenizer, messages, template, False)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant" or i < train_from:
            continue
        upto = _render(tokenizer, messages[: i + 1], template, False)
        candidates = []
        try:
            candidates.append(_render(tokenizer, messages[:i], template, True))
        except Exception:  # some templates cannot render an empty or assistant-ending prefix
            pass
        if i:
            candidates.append(_render(tokenizer, messages[:i], template, False))
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
                      train_on_inputs: bool = False, train_from: int = 0, plain: bool = False) -> dict:
    """Tokenize a conversation; labels are ``IGNORE_INDEX`` outside the trained assistant turns.

    ``chat_template`` is the template to use instead of the tokenizer's
    (needed when the tokenizer has none).
    ``train_from`` skips assistant turns before that message index (a
    preference prompt).  ``plain=True`` allows single-turn conversations to use
    :data:`ALPACA_PROMPT` when no template exists; otherwise that is an error.
    An end-of-sequence token is appended when the final assistant turn does
    not already contain one, so every target is closed.
    """
    template = resolve_chat_template(tokenizer, chat_template)
    if template:
        text, spans = assistant_spans(tokenizer, messages, template, train_from)
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
    the chosen answer) and ``messages`` = prompt + chosen response.
    """
    if sample.format == "completion":
        return dict(tokenize_text(tokenizer, sample.text), text=sample.text)
    if sample.format == "preference":
        out = {}
        for side, response in (("chosen", sample.chosen), ("rejected", sample.rejected)):
            encoded = tokenize_messages(tokenizer, sample.messages + response, chat_template=chat_template,
                                        train_from=len(sample.messages), plain=sample.plain)
            out[f"{side}_input_ids"], out[f"{side}_labels"] = encoded["input_ids"], encoded["labels"]
        out["input_ids"], out["labels"] = list(out["chosen_input_ids"]), list(out["chosen_labels"])
        out["messages"] = sample.messages + sample.chosen
        return out
    encoded = tokenize_messages(tokenizer, sample.messages, chat_template=chat_template,
                                train_on_inputs=train_on_inputs, plain=sample.plain)
    return dict(encoded, messages=sample.messages)


def _sequence_keys(example: dict) -> list:
    return [k for k in example if k.endswith(("input_ids", "labels"))]


def tokenize_records(records: Sequence[Record], tokenizer, *, fmt: str = "auto", max_length: int = 1024,
                     truncation: str = "truncate", chat_template: Optional[str] = None,
                     train_on_inputs: bool = False, columns: Optional[dict] = None) -> tuple[list, dict]:
    """Tokenize records; returns ``(examples, counts)``.

    Each example holds its tokenized fields (see :func:`tokenize_sample`) plus
    ``record`` (the raw dict), ``source`` (``file:line``) and ``format``.
    ``truncation="truncate"`` cuts over-long sequences at ``max_length``;
    ``"drop"`` leaves the example out.  Both are counted in ``counts``
    (``truncated``, ``dropped``, and ``formats``: examples per format).  A
    truncated example whose prompt fills ``max_length`` has nothing left to
    train on and is dropped (counted, and logged with its source).  An
    example with no trained token without truncation, or a split mixing
    preference and other records, is an error naming the record.
    """
    if truncation not in ("truncate", "drop"):
        raise DataError(f"data.truncation is '{truncation}'; valid: truncate, drop")
    if not isinstance(max_length, int) or max_length < 2:
        raise DataError(f"data.max_length is {max_length!r}; it must be an integer of at least 2")
    columns = check_columns(columns)
    examples, formats, truncated, dropped = [], {}, 0, 0
    first_of_kind: dict = {}
    for record in records:
        sample = normalize(record, fmt, columns)
        try:
            example = tokenize_sample(tokenizer, sample, chat_template=chat_template,
                                      train_on_inputs=train_on_inputs)
        except DataError as exc:
            raise DataError(f"{record.source}: {exc}") from None
        kind = "preference" if sample.format == "preference" else "supervised"
        first_of_kind.setdefault(kind, record.source)
        if len(first_of_kind) > 1:
            raise DataError(f"{record.source}: preference records cannot be mixed with other formats in one "
                            f"dataset (first preference record: {first_of_kind.get('preference')}, first "
                            f"other: {first_of_kind.get('supervised')})")
        keys = _sequence_keys(example)
        was_cut = False
        if any(len(example[k]) > max_length for k in keys):
            if truncation == "drop":
                dropped += 1
                continue
            was_cut = True
            example.update({k: example[k][:max_length] for k in keys})
        untrained = [k for k in keys if k.endswith("labels") and all(t == IGNORE_INDEX for t in example[k])]
        if untrained and was_cut:
            # the prompt alone fills max_length: nothing left to learn from, so leave it out (counted)
            dropped += 1
            log.warning("%s: dropped: its prompt fills all data.max_length=%d tokens", record.source, max_length)
            continue
        if untrained:
            raise DataError(f"{record.source}: no token of '{untrained[0]}' is trained (the chat template "
                            "renders no assistant text to learn from)")
        truncated += was_cut
        example.update(record=record.data, source=record.source, format=sample.format)
        formats[sample.format] = formats.get(sample.format, 0) + 1
        examples.append(example)
    return examples, {"truncated": truncated, "dropped": dropped, "formats": formats}
