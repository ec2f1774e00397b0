"""Which record layout a record has, seen through the column mapping (``data.columns``).

A record's keys name its format (:func:`detect_format`): ``chosen``/``rejected``
-> ``preference``, ``messages``/``conversations`` -> ``chat``,
``instruction``/``output`` -> ``alpaca``, ``text`` -> ``completion``, ``prompt`` alone (no
responses) -> ``prompt``.
``data.columns`` maps the canonical field names to a dataset's own keys
(:func:`check_columns`, :func:`record_view`).  KTO and multimodal records are
refused here whatever ``data.format`` says (:func:`refuse_unsupported`).
Normalizing a record into a :class:`~tuneforge.data.samples.Sample` is
:mod:`tuneforge.data.samples`.
"""

from __future__ import annotations

from typing import Optional

from tuneforge.data.sources import Record
from tuneforge.errors import DataError

FORMATS = ("auto", "alpaca", "chat", "completion", "preference", "prompt")
#: example kinds that only a loss listing them in its ``requires`` trains on (``prompt``: no answer to learn;
#: an online objective generates it); any other loss is refused on them
REQUESTED_KINDS = ("prompt",)
#: field names ``data.columns`` may map (canonical name -> the record's own key)
RECORD_FIELDS = ("instruction", "input", "output", "system", "messages", "conversations", "text", "prompt",
                 "chosen", "rejected", "tools")
MESSAGE_FIELDS = ("role", "content")
#: the record layouts tuneforge trains, as named in errors about other layouts
SUPPORTED_LAYOUTS = ("supported layouts: chat ('messages' [{role, content}] or 'conversations' [{from, value}], "
                     "tool calls included), alpaca ('instruction' + 'output'), completion ('text'), preference "
                     "('chosen' + 'rejected' with 'prompt', 'conversations' or 'instruction'; loss=dpo), prompt ('prompt' "
                     "alone, plus any reference fields; loss=grpo)")
#: record keys of multimodal data (LLaMA-Factory), refused when they hold anything
MEDIA_FIELDS = ("images", "videos", "audios")


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


def record_view(record: Record, columns: dict) -> dict:
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


def record_key(field: str, columns: dict) -> str:
    """The record key that holds a canonical field."""
    return columns.get(field, field)


def field_name(field: str, columns: dict) -> str:
    """How to name a canonical field in an error: its record key, noting the mapping."""
    actual = columns.get(field)
    return f"'{actual}' (data.columns.{field})" if actual else f"'{field}'"


def detect_format(record: Record, columns: Optional[dict] = None) -> str:
    """The format a record's keys announce: ``preference``, ``chat``, ``alpaca``, ``completion`` or ``prompt``."""
    keys = record_view(record, dict(columns or {})).keys()
    if "chosen" in keys or "rejected" in keys:
        return "preference"
    if "messages" in keys or "conversations" in keys:
        return "chat"
    if "instruction" in keys or "output" in keys:
        return "alpaca"
    if "text" in keys:
        return "completion"
    if "prompt" in keys:
        return "prompt"
    raise DataError(f"{record.source}: cannot tell the record's format from its keys "
                    f"{sorted(map(str, record.data))}; {SUPPORTED_LAYOUTS} "
                    "(map other key names with data.columns, or set data.format)")


def refuse_unsupported(record: Record, view: dict) -> None:
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

