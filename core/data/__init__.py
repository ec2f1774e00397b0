"""Turning records into training examples: reading, formatting, masking, caching, splitting, batching.

The pipeline is: records (dicts, each remembering ``file:line``; see
:mod:`tuneforge.data.sources`) -> every record normalized to its format
(alpaca, chat with or without tool calls, completion, input_output, preference, kto,
prompt: :data:`FORMATS`; see :mod:`tuneforge.data.columns` and
:mod:`tuneforge.data.samples`) in file
order, so the first bad one is reported -> a deterministic train/validation
split -> token ids plus labels where only assistant tokens carry loss
(rendered with :mod:`tuneforge.data.chat_templates`, tokenized by
:mod:`tuneforge.data.tokenization`) -> an on-disk cache
(:mod:`tuneforge.data.cache`) -> padded batches (:func:`pad_batch`), or packed
rows (:mod:`tuneforge.data.packing`).  :func:`marked_text` shows which tokens of an
example are trained (:mod:`tuneforge.data.trained_text`).

This module is the public helper API for dataset plugins: a plugin reads its
records (:func:`read_records`, :func:`read_hf` or its own code) and hands them
to :func:`prepare_splits` with a config that subclasses :class:`DataConfig`.
The built-in ``files``/``jsonl``/``json``/``csv``/``parquet`` and ``hf``
datasets are thin plugins over it.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterable, Optional, Sequence

from tuneforge.data.cache import (
    cache_key,
    cache_path,
    default_cache_dir,
    load_cached,
    records_fingerprint,
    save_cached,
    tokenizer_fingerprint,
)
from tuneforge.data.chat_templates import (
    ALPACA_PROMPT,
    CHATML_TEMPLATE,
    assistant_spans,
    has_chat_template,
    message_text,
    render_prompt,
    resolve_chat_template,
    template_supports_tools,
    tool_messages_as_text,
)
from tuneforge.data.columns import (
    FORMATS,
    ANSWERLESS_KINDS,
    MESSAGE_FIELDS,
    RECORD_FIELDS,
    SUPPORTED_LAYOUTS,
    check_columns,
    detect_format,
)
from tuneforge.data.messages import ROLE_TARGETS, roles_problem
from tuneforge.data.record_keys import unused_key_summary
from tuneforge.data.samples import Sample, normalize, normalize_records, to_messages
from tuneforge.data.sources import (
    Record,
    as_records,
    first_record,
    hub_reachable,
    read_csv,
    read_hf,
    read_json,
    read_jsonl,
    read_parquet,
    read_records,
)
from tuneforge.data.tokenization import (
    IGNORE_INDEX,
    check_length_options,
    log_length_summary,
    tokenize_messages,
    tokenize_records,
    tokenize_sample,
    tokenize_samples,
    tokenize_text,
)
from tuneforge.data.trained_text import label_runs, marked_text, token_counts
from tuneforge.errors import DataError
from tuneforge.validation import at_least, between, check, existing_path, one_of

log = logging.getLogger("tuneforge")

__all__ = [
    "ALPACA_PROMPT", "CHATML_TEMPLATE", "DATA_CONFIG_FIELDS", "DataConfig", "DataSplits", "FORMATS",
    "IGNORE_INDEX", "ANSWERLESS_KINDS", "Record", "SUPPORTED_LAYOUTS", "Sample", "assistant_spans", "cache_key", "check_columns",
    "default_cache_dir", "detect_format", "first_record", "has_chat_template", "hub_reachable", "interleave", "label_runs",
    "marked_text", "message_text", "normalize", "normalize_records", "pad_batch", "prepare_splits", "read_csv",
    "read_hf", "read_json", "read_jsonl", "read_parquet", "read_records", "records_fingerprint", "render_prompt", "resolve_chat_template", "split_records",
    "template_supports_tools", "to_messages", "tokenize_messages", "tokenize_records", "tokenize_sample",
    "token_counts", "tokenize_text", "tokenizer_fingerprint", "tool_messages_as_text",
]


@dataclass
class DataSplits:
    """Tokenized train and validation examples plus counts for the data report.

    ``stats`` holds ``train_records``, ``val_records``, ``train_examples``,
    ``val_examples``, ``truncated``, ``dropped``, ``formats`` (examples per
    format), ``unused_keys`` (record keys nothing read: ``{key: {"records": n,
    "first": source}}``, :mod:`tuneforge.data.record_keys`) and ``cache``
    (``hit``, ``miss`` or ``off``).

    ``chat_template`` is the Jinja text the examples were rendered with when
    the dataset chose one (e.g. ``data.chat_template``; see
    :func:`resolve_chat_template`), or None when the tokenizer's own template
    (or, without one, the Alpaca prompt) was used.  The run renders
    evaluation prompts with it and saves it as the chat template of the
    tokenizer in ``model/``, so ``generate``, ``chat`` and ``export``
    render prompts as training did.
    """

    train: list
    val: list
    stats: dict = field(default_factory=dict)
    chat_template: Optional[str] = None


#: notes on some formats for the ``format`` doc below; the formats themselves are read from ``FORMATS``
_FORMAT_NOTES = {
    "auto": "each record's keys decide",
    "kto": "answers marked desirable or undesirable, for ``loss=kto``",
    "prompt_completion": "TRL's ``prompt`` + ``completion`` without a ``label``: supervised, the prompt masked",
    "prompt": "prompts alone, for online objectives such as ``loss=grpo``",
    "input_output": "Axolotl's template-free ``segments``: raw text, trained where ``label`` is true",
}
_FORMAT_CHOICES = ", ".join(f"``{name}``" + (f" ({_FORMAT_NOTES[name]})" if name in _FORMAT_NOTES else "")
                            for name in FORMATS)

#: documentation of the :class:`DataConfig` fields, reused in the docstrings of its subclasses; the format
#: names and the canonical column fields are those the code reads (``FORMATS``, ``RECORD_FIELDS``)
DATA_CONFIG_FIELDS = f"""
    format: the records' format, one of
        {_FORMAT_CHOICES}.
    columns: a mapping canonical field -> your records' key, for data with other key
        names, e.g. ``data.columns={{instruction: question, output: answer}}`` (null: none).
        Canonical fields: {", ".join(RECORD_FIELDS)}, and
        {", ".join(MESSAGE_FIELDS)} (the keys inside each message).
    roles: a mapping your role name -> tuneforge's role, for messages whose roles are named
        otherwise, e.g. ``data.roles={{model: assistant, BOT: assistant}}`` (Gemini, custom names;
        null: none).  Roles: {", ".join(ROLE_TARGETS)}; Axolotl's ``roles`` (tuneforge's role -> a
        list of your names, ``{{assistant: [model, bot]}}``) is read too.  Names match in any case.
""" + """    val_fraction: share of the records held out for validation when no separate
        validation data is given (at least one record when > 0).
    val_size: number of records held out instead of ``val_fraction`` (0: none).
    stratify: hold out every label in proportion (a classifier's records, labelled by their answer: the
        last assistant turn), so each class is in both splits; for a split of ``path``, not with separate
        held-out records.
    shuffle: shuffle the records, seeded by ``seed`` (so always the same order), before
        the split and ``max_examples``.
    seed: seed of that shuffle.
    max_examples: use only the first N training records (after the shuffle and split).
    max_length: token limit per sequence; longer ones follow ``truncation``.
    truncation: ``truncate`` (cut at ``max_length``) or ``drop`` (leave the example out);
        both are counted in the data stats and logged.
    train_on_inputs: also train on prompt tokens (default: only assistant/output tokens;
        completion text is always fully trained, preference prompts never are).
    chat_template: chat template for a tokenizer that has none (when set, it also
        replaces the tokenizer's own): a Jinja string, ``chatml``, or a path to a
        ``.jinja`` file.  With no template at all, chat records are an error and
        single-turn records (alpaca, string preference pairs) use the Alpaca prompt.
    cache: keep the tokenized data on disk and reuse it while nothing that changes it
        (records, tokenizer, template, options) changed.
    cache_dir: folder of that cache (default ``~/.cache/tuneforge/data``, or
        ``$XDG_CACHE_HOME/tuneforge/data``).
    max_record_chars: the most characters (all text fields together) one record may hold
        (null: 1,000,000, or 64 x ``max_length`` when that is more).  A longer record is
        reported with its ``file:line`` and follows ``oversized_records``; records under it
        are cut to what ``max_length`` tokens can use before tokenization, so memory stays
        bounded.
    oversized_records: ``error`` (stop, naming the first such record) or ``drop`` (leave
        such records out, counted in the data stats and named in one log line).
"""


@dataclass
class DataConfig:
    """Options every dataset shares: format, columns, split, length and cache."""

    format: str = "auto"
    columns: Any = None
    roles: Any = None
    val_fraction: float = 0.1
    val_size: Optional[int] = None
    stratify: bool = False
    shuffle: bool = True
    seed: int = 0
    max_examples: Optional[int] = None
    max_length: int = 1024
    truncation: str = "truncate"
    train_on_inputs: bool = False
    chat_template: Optional[str] = None
    cache: bool = True
    cache_dir: Optional[str] = None
    max_record_chars: Optional[int] = None
    oversized_records: str = "error"

    #: fields naming data files (a ``.jinja`` template here; subclasses add theirs): their paths are made
    #: absolute and their content hashed into the run's identity (:mod:`tuneforge.host.paths`)
    DATA_FILES: ClassVar[tuple] = ("chat_template",)

    def __post_init__(self) -> None:
        check(self, format=one_of(*FORMATS), columns=_columns_problem, roles=roles_problem,
              val_fraction=between(0, 1, include_high=False), val_size=at_least(0), max_examples=at_least(1),
              max_length=at_least(1), truncation=one_of("truncate", "drop"), chat_template=_template_file_problem,
              max_record_chars=at_least(1), oversized_records=one_of("error", "drop"))


DataConfig.__doc__ += "\n" + DATA_CONFIG_FIELDS


def _columns_problem(columns) -> Optional[str]:
    """``data.columns``: a mapping canonical field -> record key (the rule of :func:`check_columns`)."""
    from collections.abc import Mapping

    from tuneforge.data.columns import reversed_columns_hint

    if not isinstance(columns, Mapping):
        return f"must be a mapping like {{instruction: question}}, got {columns!r}"
    for canonical, actual in columns.items():
        if canonical not in RECORD_FIELDS + MESSAGE_FIELDS:
            return (f"unknown field '{canonical}'; valid: {', '.join(RECORD_FIELDS + MESSAGE_FIELDS)}"
                    + reversed_columns_hint(dict(columns)))
        if not isinstance(actual, str) or not actual:
            return f"{canonical} must be a record key name, got {actual!r}"
    return None


def _template_file_problem(template) -> Optional[str]:
    """``data.chat_template`` naming a ``.jinja``/``.j2`` file: the file must exist."""
    if isinstance(template, str) and template.endswith((".jinja", ".j2")):
        return existing_path("file")(template)
    return None


def split_records(records: list, *, val_fraction: float = 0.1, val_size: Optional[int] = None,
                  seed: int = 0, shuffle: bool = True, labels: Optional[Sequence[str]] = None) -> tuple[list, list]:
    """Deterministically split records into (train, validation); with ``labels`` (one per record) every
    label is held out in proportion (:func:`tuneforge.data.stratify.stratified_split`)."""
    if not 0 <= val_fraction < 1:
        raise DataError(f"data.val_fraction is {val_fraction}; it must be >= 0 and < 1")
    if val_size is not None and val_size < 0:
        raise DataError(f"data.val_size is {val_size}; it must be >= 0")
    order = list(range(len(records)))
    if shuffle:
        random.Random(seed).shuffle(order)
    n_val = val_size if val_size is not None else int(round(len(order) * val_fraction))
    if val_fraction and val_size is None and len(order) > 1:
        n_val = max(1, n_val)
    if n_val >= len(order):
        raise DataError(f"a validation split of {n_val} leaves no training records out of {len(order)}; "
                        "lower data.val_fraction / data.val_size or give data.val_path")
    if labels is None:
        train, val = order[n_val:], order[:n_val]
    else:
        from tuneforge.data.stratify import stratified_split

        train, val = stratified_split(labels, order, n_val)
    return [records[i] for i in train], [records[i] for i in val]


def prepare_splits(records: Sequence[Record | dict], tokenizer, config, *, val_records: Optional[Sequence] = None,
                   origin: str = "data", rehearsal: Sequence[Record] = ()) -> DataSplits:
    """Validate, split, shuffle, limit, tokenize (or load from the cache) and count: the shared dataset loader.

    ``records`` are the training records (the validation split is carved out
    of them unless ``val_records`` are given), each a :class:`Record` or a dict (named
    ``<origin>:row N``, N its index: :func:`~tuneforge.data.sources.as_records`); ``config`` carries the
    :class:`DataConfig` fields (a subclass of it, or any object: absent fields
    take their defaults); ``origin`` names the data in error messages.

    Every record is normalized in file order (``records``, then
    ``val_records``) before the shuffle, and the used ones are tokenized in
    that order too, so an error always names the first bad record of the file.
    """
    records, val_records, rehearsal = (as_records(records, origin), as_records(val_records, origin, "val_records"),
                                       as_records(rehearsal, origin, "rehearsal"))  # plain dicts too
    if not records:
        raise DataError(f"{origin}: no records found")
    config = _Options(config)
    check_length_options(config.max_length, config.truncation)
    limit = record_char_limit(config.max_record_chars, config.max_length)
    (records, val_records, rehearsal), oversized = _all_within_size((records, val_records, rehearsal), limit,
                                                                    config.oversized_records)
    if not records:
        raise DataError(f"{origin}: no records left: all were over data.max_record_chars={limit:,} "
                        "(data.oversized_records=drop)")
    columns = check_columns(config.columns, config.roles)  # carrying data.roles to the message reader
    in_file_order = list(records) + list(val_records or []) + list(rehearsal)
    samples = normalize_records(in_file_order, config.format, columns)
    unused = unused_key_summary([record.source for record in in_file_order], [sample.unused for sample in samples])
    position, sample_of = {}, {}
    for index, (record, sample) in enumerate(zip(in_file_order, samples)):
        position.setdefault(id(record), index)
        sample_of.setdefault(id(record), sample)
    if val_records is None:
        train_records, val_records = split_records(list(records), val_fraction=config.val_fraction,
                                                   val_size=config.val_size, seed=config.seed,
                                                   shuffle=config.shuffle,
                                                   labels=_stratify_labels(records, sample_of, config.stratify))
    else:
        if config.stratify:
            raise DataError(f"{origin}: data.stratify=true splits the records of data.path, but the held-out "
                            "records are given separately (data.val_path / data.val_split): unset one of them")
        train_records, val_records = list(records), list(val_records)
        if config.shuffle:
            random.Random(config.seed).shuffle(train_records)
    if config.max_examples is not None:
        if config.max_examples < 1:
            raise DataError(f"data.max_examples is {config.max_examples}; it must be at least 1 (or null)")
        train_records = train_records[: config.max_examples]
    train_records = interleave(train_records, rehearsal)
    options = dict(fmt=config.format, max_length=config.max_length, truncation=config.truncation,
                   chat_template=config.chat_template, train_on_inputs=config.train_on_inputs,
                   columns=columns, **({"roles": columns.roles} if columns.roles else {}))

    chosen_template = resolve_chat_template(tokenizer, config.chat_template) if config.chat_template else None
    path, cached = None, None
    if config.cache:
        key = cache_key(records=records_fingerprint(train_records, val_records),
                        tokenizer=tokenizer_fingerprint(tokenizer),
                        chat_template=resolve_chat_template(tokenizer, config.chat_template),
                        options={k: v for k, v in options.items() if k != "chat_template"})
        path = cache_path(config.cache_dir, key)
        cached = load_cached(path)
    if cached is not None:
        train, val, counts = cached["train"], cached["val"], cached["counts"]
        dropped = cached.get("dropped", [])
        cache_state = "hit"
    else:
        # tokenize in file order (an error names the first bad record), then put each example in its split
        slots = train_records + val_records
        order = sorted(range(len(slots)), key=lambda k: position[id(slots[k])])
        tokenized, counts, dropped = tokenize_samples(
            [(slots[k], sample_of[id(slots[k])]) for k in order], tokenizer, max_length=config.max_length,
            truncation=config.truncation, chat_template=config.chat_template,
            train_on_inputs=config.train_on_inputs)
        results = [None] * len(slots)
        for k, example in zip(order, tokenized):
            results[k] = example
        train = [example for example in results[: len(train_records)] if example is not None]
        val = [example for example in results[len(train_records):] if example is not None]
        if train and val and ("chosen_input_ids" in train[0]) != ("chosen_input_ids" in val[0]):
            raise DataError(f"{origin}: the training records are {train[0]['format']} ({train[0]['source']}) but "
                            f"the validation records are {val[0]['format']} ({val[0]['source']}); use one kind")
        cache_state = "off"
        if path is not None:
            cache_state = "miss"
            save_cached(path, {"train": train, "val": val, "counts": counts, "dropped": dropped})
    if not train:
        hint = " or set data.truncation=truncate" if config.truncation == "drop" else ""
        raise DataError(f"{origin}: no training example left: all {len(train_records)} were dropped as longer "
                        f"than data.max_length={config.max_length} (raise it{hint})")
    stats = {"train_records": len(train_records), "val_records": len(val_records),
             **({"rehearsal_records": len(rehearsal)} if rehearsal else {}), "train_examples": len(train),
             "val_examples": len(val), **counts, "oversized": len(oversized), "unused_keys": unused,
             "cache": cache_state}
    log_length_summary(counts, dropped, config.max_length, config.truncation)
    log.info("data: %d train / %d val examples, formats %s, cache %s", len(train), len(val),
             counts["formats"], cache_state + (f" ({path})" if path else ""))
    return DataSplits(train=train, val=val, stats=stats, chat_template=chosen_template)


#: the smallest default of ``data.max_record_chars``
DEFAULT_MAX_RECORD_CHARS = 1_000_000


def record_char_limit(max_record_chars: Optional[int], max_length: int) -> int:
    """``data.max_record_chars``, or its default: 1,000,000 characters, or 64 per token of ``max_length``."""
    if max_record_chars:
        return int(max_record_chars)
    return max(DEFAULT_MAX_RECORD_CHARS, 64 * int(max_length))


def record_chars(value: Any) -> int:
    """Characters in every string (keys included) of a record's values, nested lists and dicts too."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, dict):
        return sum(len(str(key)) + record_chars(item) for key, item in value.items())
    if isinstance(value, (list, tuple)):
        return sum(record_chars(item) for item in value)
    return 0


def _all_within_size(groups: tuple, limit: int, action: str) -> tuple[tuple, list]:
    """:func:`_within_size` on each group of records (None stays None): the groups kept, and every record
    over the limit."""
    kept, oversized = [], []
    for group in groups:
        if group is None:
            kept.append(None)
            continue
        within, over = _within_size(group, limit, action)
        kept.append(within)
        oversized += over
    return tuple(kept), oversized


def _within_size(records: Sequence[Record], limit: int, action: str) -> tuple[list, list]:
    """``(records within limit, [(source, characters)] of those over it)``; with ``action="error"`` the
    first one over it is a one-line ``DataError`` naming its ``file:line``."""
    kept, over = [], []
    for record in records:
        size = record_chars(record.data)
        if size <= limit:
            kept.append(record)
            continue
        if action != "drop":
            raise DataError(f"{record.source}: the record holds {size:,} characters, over data.max_record_chars="
                            f"{limit:,}; remove or split it, raise data.max_record_chars, or leave such records "
                            "out with data.oversized_records=drop")
        over.append((record.source, size))
    if over:
        shown = ", ".join(f"{source} ({size:,} characters)" for source, size in over[:5])
        more = f" and {len(over) - 5} more" if len(over) > 5 else ""
        log.warning("data: left out %d record(s) over data.max_record_chars=%s (data.oversized_records=drop): %s%s",
                    len(over), f"{limit:,}", shown, more)
    return kept, over


def interleave(records: list, extra: Sequence) -> list:
    """``records`` with ``extra`` spread evenly through them (the k-th of n before record ``k * len / n``)."""
    out = list(records)
    step = len(out) / len(extra) if extra else 0
    for k, record in reversed(list(enumerate(extra))):
        out.insert(int(k * step), record)
    return out


def _stratify_labels(records: Sequence[Record], sample_of: dict, stratify: bool) -> Optional[list]:
    """Each record's answer label for ``data.stratify`` (None when it is off); a record without an answer
    (completion text, preference pairs) is an error naming it."""
    if not stratify:
        return None
    from tuneforge.data.stratify import answer_label

    labels = []
    for record in records:
        label = answer_label(sample_of[id(record)])
        if label is None:
            raise DataError(f"{record.source}: data.stratify=true splits by each record's answer (its last "
                            f"assistant turn), and this {sample_of[id(record)].format} record has none; "
                            "set data.stratify=false")
        labels.append(label)
    return labels


class _Options:
    """A dataset config seen through the :class:`DataConfig` fields; absent ones take their defaults."""

    def __init__(self, config):
        self._config = config

    def __getattr__(self, name: str):
        return getattr(self._config, name, getattr(DataConfig, name))


def pad_batch(examples: Iterable[dict], pad_token_id: int, pad_to_multiple_of: Optional[int] = None) -> dict:
    """Right-pad every int-list field of the examples into tensors.

    Fields named ``*labels`` pad with ``IGNORE_INDEX``, ``*attention_mask`` with 0
    and the rest with ``pad_token_id``; an ``attention_mask`` is added for
    ``input_ids`` (``chosen_attention_mask`` for ``chosen_input_ids`` ...).
    Other fields (the source record, messages, text) are dropped from the batch.
    """
    import torch

    examples = list(examples)
    keys = [k for k, v in examples[0].items() if isinstance(v, list) and (not v or isinstance(v[0], int))]
    batch = {}
    for key in keys:
        length = max(len(ex[key]) for ex in examples)
        if pad_to_multiple_of:
            length = -(-length // pad_to_multiple_of) * pad_to_multiple_of
        if key.endswith("labels"):
            pad = IGNORE_INDEX
        elif key.endswith("attention_mask"):
            pad = 0
        else:
            pad = pad_token_id
        batch[key] = torch.tensor([ex[key] + [pad] * (length - len(ex[key])) for ex in examples])
        if key.endswith("input_ids"):
            mask_key = key[: -len("input_ids")] + "attention_mask"
            if mask_key not in examples[0]:
                batch[mask_key] = torch.tensor(
                    [[1] * len(ex[key]) + [0] * (length - len(ex[key])) for ex in examples])
    return batch
