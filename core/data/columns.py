"""Which record layout a record has, seen through the column mapping (``data.columns``).

A record's keys name its format (:func:`detect_format`): ``kto_tag``, a
true/false ``label``, or ``completion`` with a ``label`` -> ``kto`` (unpaired
desirable/undesirable answers, :func:`kto_mark_key`), ``chosen``/``rejected``
-> ``preference``, ``completion`` without a label -> ``prompt_completion``
(TRL's prompt-completion SFT layout), ``messages``/``conversations`` -> ``chat``,
``instruction``/``output`` -> ``alpaca``, ``segments`` -> ``input_output`` (Axolotl's template-free
layout), ``text`` -> ``completion``, ``prompt`` alone (no responses) -> ``prompt``.
``data.columns`` maps the canonical field names to a dataset's own keys
(:func:`check_columns`, :func:`record_view`).  Multimodal records are
refused here whatever ``data.format`` says, and so is KTO data read as another
format (:func:`refuse_unsupported`).
Normalizing a record into a :class:`~tuneforge.data.samples.Sample` is
:mod:`tuneforge.data.samples`.
"""

from __future__ import annotations

from typing import Optional

from tuneforge.data.sources import Record
from tuneforge.errors import DataError

FORMATS = ("auto", "alpaca", "chat", "completion", "preference", "kto", "prompt_completion", "prompt",
           "input_output")
#: field names ``data.columns`` may map (canonical name -> the record's own key)
RECORD_FIELDS = ("instruction", "input", "output", "system", "history", "messages", "conversations", "text",
                 "prompt", "chosen", "rejected", "tools", "completion", "label", "kto_tag",
                 "segments")
MESSAGE_FIELDS = ("role", "content")
#: the record layouts tuneforge trains, as named in errors about other layouts
SUPPORTED_LAYOUTS = ("supported layouts: chat ('messages' [{role, content}] or 'conversations' [{from, value}], "
                     "tool calls included), alpaca ('instruction' + 'output', optional 'history'), completion "
                     "('text'), prompt_completion ('prompt' + 'completion', no 'label'), preference "
                     "('chosen' + 'rejected' with 'prompt', 'conversations' or 'instruction'; loss=dpo, orpo, "
                     "simpo), kto ('prompt' + 'completion' + 'label' true/false, or an alpaca/chat record with "
                     "'kto_tag' true/false; loss=kto), prompt ('prompt' alone, plus any reference fields; loss=grpo), "
                     "input_output ('segments' [{label: true/false, text}], Axolotl's template-free raw text)")
#: example kinds that only a loss naming them in ``LossSpec.requires`` may train on -> why any other
#: loss must not (the host refuses the run in one line naming the losses that do)
KINDS_NEEDING_THEIR_LOSS = {
    "kto": "its answers are marked desirable or undesirable (label/kto_tag true/false), and a loss that does "
           "not read the mark, such as SFT, would also train the model to write the undesirable ones",
    "prompt": "they are prompts without an answer to learn (an online objective such as loss=grpo generates "
              "the answers)",
}
#: example kinds without an answer to train on (the data quality report's target checks skip them)
ANSWERLESS_KINDS = ("prompt",)
#: record keys of multimodal data (LLaMA-Factory), refused when they hold anything
MEDIA_FIELDS = ("images", "videos", "audios")


def reversed_columns_hint(columns: dict) -> str:
    """`` (data.columns maps ... did you mean {instruction: question}?)`` when ``columns`` reads as the reverse
    mapping (your key -> tuneforge's field, as Axolotl's and LLaMA-Factory's read); "" otherwise."""
    fields = RECORD_FIELDS + MESSAGE_FIELDS
    if not any(key not in fields and value in fields for key, value in columns.items()):
        return ""
    swapped = {(value if value in fields else key): (key if value in fields else value)
               for key, value in columns.items()}
    return (" (data.columns maps tuneforge's field to your key; did you mean data.columns={"
            + ", ".join(f"{field}: {key}" for field, key in swapped.items()) + "}?)")


class Columns(dict):
    """``data.columns`` checked (canonical field -> record key), carrying ``roles``: ``data.roles`` checked
    (``{your role name, lowercase: tuneforge's role name}``, :func:`tuneforge.data.messages.check_roles`),
    which the message reader applies wherever the columns go."""

    def __init__(self, columns: Optional[dict] = None, roles: Optional[dict] = None):
        super().__init__(columns or {})
        self.roles = dict(roles or {})


def check_columns(columns: Optional[dict], roles: Optional[dict] = None) -> Columns:
    """Validate ``data.columns`` (canonical field -> record key) and ``data.roles`` (your role name ->
    tuneforge's; None: the roles ``columns`` already carries) and return them as :class:`Columns`."""
    from collections.abc import Mapping

    from tuneforge.data.messages import check_roles

    roles = check_roles(roles) if roles is not None else getattr(columns, "roles", {})
    if columns is not None and not isinstance(columns, Mapping):
        raise DataError(f"data.columns must be a mapping like {{instruction: question}}, got {columns!r}")
    columns = dict(columns or {})
    for canonical, actual in columns.items():
        if canonical not in RECORD_FIELDS + MESSAGE_FIELDS:
            raise DataError(f"data.columns has unknown field '{canonical}'; valid: "
                            f"{', '.join(RECORD_FIELDS + MESSAGE_FIELDS)} (map each to your record's key)"
                            + reversed_columns_hint(columns))
        if not isinstance(actual, str) or not actual:
            raise DataError(f"data.columns.{canonical} must be a record key name, got {actual!r}")
    return Columns(columns, roles)


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
    """The format a record's keys announce: ``kto``, ``preference``, ``prompt_completion``, ``chat``,
    ``alpaca``, ``input_output``, ``completion`` or ``prompt``.  ``completion`` with a ``label`` (of any value) is KTO, so a
    record with a mark that is not true/false is refused as KTO rather than trained as SFT."""
    view = record_view(record, dict(columns or {}))
    # keys holding null say nothing (a Hugging Face dataset gives every record every column of a mixed file,
    # null where it had none); a record with only null fields is named by them, as a field set to null
    found = (_format_of({key for key, value in view.items() if value is not None}, view)
             or _format_of(set(view), view))
    if found:
        return found
    raise DataError(f"{record.source}: cannot tell the record's format from its keys "
                    f"{sorted(map(str, record.data))}; {SUPPORTED_LAYOUTS} "
                    "(map other key names with data.columns, or set data.format)")


def _format_of(keys: set, view: dict) -> Optional[str]:
    """The format these keys of a record announce, in the documented order (None: none)."""
    if kto_mark_key(view) or "completion" in keys and view.get("label") is not None:
        return "kto"
    for fmt, announcing in (("preference", ("chosen", "rejected")), ("prompt_completion", ("completion",)),
                            ("chat", ("messages", "conversations")), ("alpaca", ("instruction", "output")),
                            ("input_output", ("segments",)), ("completion", ("text",)), ("prompt", ("prompt",))):
        if any(key in keys for key in announcing):
            return fmt
    return None


def kto_mark_key(view: dict) -> Optional[str]:
    """The key holding a record's KTO mark: ``kto_tag`` (LLaMA-Factory), or ``label`` when it is true/false
    (TRL; LLaMA-Factory's ``kto_en_demo``); None for a record without one (a string ``label`` is a class)."""
    if "kto_tag" in view:
        return "kto_tag"
    return "label" if isinstance(view.get("label"), bool) else None


def refuse_unsupported(record: Record, view: dict, fmt: str = "auto") -> None:
    """Multimodal records are errors whatever ``data.format`` says (nothing could train them right), and so is
    a KTO record read as another format (SFT would train on the answers marked undesirable; for
    ``prompt_completion`` also a ``label`` spelled ``"true"``/``"false"``/``1``/``0``)."""
    mark = kto_mark_key(view)
    if fmt == "prompt_completion" and str(view.get("label")).strip().lower() in ("true", "false", "1", "0"):
        mark = "label"  # a KTO mark as CSV or parquet spell it: training it as SFT would learn the bad answers
    if mark and fmt not in ("auto", "kto"):
        raise DataError(f"{record.source}: a KTO record ('{mark}': true/false) read as data.format={fmt}: "
                        f"{KINDS_NEEDING_THEIR_LOSS['kto']}; set data.format=kto (or auto) and use loss=kto")
    media = next((key for key in MEDIA_FIELDS if view.get(key)), None)
    if media:
        raise DataError(f"{record.source}: multimodal records ('{media}') are not supported, only text; "
                        f"{SUPPORTED_LAYOUTS}")

