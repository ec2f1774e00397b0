"""Keys of a record that its layout does not read: counted, logged once and kept in the data stats.

A record is normalized through a :class:`KeyReads` view, which remembers the
fields the normalizer read (and, inside message lists, the message keys it did
not read).  :func:`unused_keys` then names the record's keys that held
something and that nothing read: ``history`` in a dataset whose layout has no
history, ``weight in messages`` where a message key went unread.  Nothing is
dropped silently: :func:`unused_key_summary` counts them per key with the first
record holding each, :func:`log_unused_keys` writes ONE warning line, and the
dataset's stats keep the summary (``unused_keys``, in ``metrics.json`` ``data``).

Keys that tuneforge reads elsewhere are not reported: ``id`` (a record's name
in many datasets), every key of a ``prompt`` record (the reference fields
rewards read), and the record fields the run's other components name
(``evidence.slice_by``, an evaluator's ``choices_field``, a reward's
``field`` ...: :func:`run_record_keys`), which the host declares around loading
the data with :func:`record_keys_read_elsewhere`.
"""

from __future__ import annotations

import dataclasses
import logging
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Iterable, Iterator, Sequence

log = logging.getLogger("tuneforge")

#: record keys never reported: identifiers that datasets carry and nothing trains on
NOT_REPORTED = ("id",)
#: formats whose records keep every other key for the run's rewards (reference fields)
ALL_KEYS_READ = ("prompt",)
#: how many keys the warning line names
SHOWN_KEYS = 10

_READ_ELSEWHERE: ContextVar[frozenset] = ContextVar("record_keys_read_elsewhere", default=frozenset())


@contextmanager
def record_keys_read_elsewhere(keys: Iterable[str]) -> Iterator[None]:
    """While loading data, treat ``keys`` as read (by evaluators, rewards, ``evidence.slice_by`` ...): they
    are not reported as unused."""
    token = _READ_ELSEWHERE.set(_READ_ELSEWHERE.get() | {str(key) for key in keys if key})
    try:
        yield
    finally:
        _READ_ELSEWHERE.reset(token)


def _named_fields(config: Any) -> set:
    """The string values of a component config's fields that name record keys: ``field``, ``*_field``."""
    if not dataclasses.is_dataclass(config):
        return set()
    return {value for item in dataclasses.fields(config)
            if (item.name == "field" or item.name.endswith("_field"))
            and isinstance(value := getattr(config, item.name, None), str) and value}


def run_record_keys(run: Any) -> set:
    """The record keys a run's components read besides the data layout: ``evidence.slice_by`` and every
    ``field``/``*_field`` setting of its loss, evaluators, rewards, baselines and callbacks."""
    keys = set()
    evidence = getattr(getattr(run, "settings", None), "evidence", None)
    if getattr(evidence, "slice_by", None):
        keys.add(str(evidence.slice_by))
    components = [getattr(run, "loss", None)]
    for group in ("evaluators", "rewards", "baselines", "callbacks"):
        components += list((getattr(run, group, None) or {}).values())
    for component in components:
        keys |= _named_fields(getattr(component, "config", None))
    return keys


def holds_something(value: Any) -> bool:
    """False for a value that carries nothing to train on: None, an empty string, list or object."""
    return value is not None and not (isinstance(value, (str, list, dict, tuple)) and not value)


class KeyReads(dict):
    """A record's fields under their canonical names that remember which ones were read (``get``,
    ``[]``; ``peek`` looks without reading) and which message keys went unread (:meth:`unread_in`)."""

    def __init__(self, view: dict):
        super().__init__(view)
        self.read: set = set()
        self.unread_message_keys: dict = {}

    def get(self, key, default=None):
        self.read.add(key)
        return super().get(key, default)

    def __getitem__(self, key):
        self.read.add(key)
        return super().__getitem__(key)

    def peek(self, key) -> Any:
        """The field's value without counting it as read."""
        return super().get(key)

    def unread_in(self, what: str, message: dict, read: Iterable[str]) -> None:
        """Note the keys of ``message`` (in the record's ``what`` list) outside ``read`` that hold something."""
        read = set(read)
        for key, value in message.items():
            if key not in read and holds_something(value):
                self.unread_message_keys.setdefault(f"{key} in {what}", None)


def peek(view: dict, key: str) -> Any:
    """``view[key]`` or None, without counting it as read (also for a plain dict)."""
    return view.peek(key) if isinstance(view, KeyReads) else view.get(key)


def unused_keys(data: dict, view: KeyReads, columns: dict, fmt: str) -> tuple:
    """The keys of ``data`` (the raw record) that hold something and that neither the normalizer (as
    ``view`` recorded) nor another part of the run reads, then ``"<key> in <list>"`` for message keys."""
    from tuneforge.data.columns import RECORD_FIELDS

    mapped = {canonical: key for canonical, key in columns.items() if canonical in RECORD_FIELDS}
    canonical_of = {key: canonical for canonical, key in mapped.items()}
    skip = set(NOT_REPORTED) | _READ_ELSEWHERE.get()
    found = []
    if fmt not in ALL_KEYS_READ:
        for key, value in data.items():
            key = str(key)
            if key in skip or not holds_something(value):
                continue
            canonical = canonical_of.get(key, None if key in mapped else key)  # a mapped-away name: unread
            if canonical is None or canonical not in view.read:
                found.append(key)
    return tuple(found) + tuple(view.unread_message_keys)


def unused_key_summary(sources: Sequence[str], unused: Sequence[tuple]) -> dict:
    """``{key: {"records": count, "first": source}}`` over records (``sources``) and their unused keys."""
    summary: dict = {}
    for source, keys in zip(sources, unused):
        for key in keys:
            entry = summary.setdefault(key, {"records": 0, "first": source})
            entry["records"] += 1
    return summary


def unused_keys_text(summary: dict) -> str:
    """``history (120 records, first train.jsonl:1), weight in messages (3 records, first ...)``."""
    parts = [f"{key} ({entry['records']} record{'s' if entry['records'] != 1 else ''}, first {entry['first']})"
             for key, entry in list(summary.items())[:SHOWN_KEYS]]
    more = f" and {len(summary) - SHOWN_KEYS} more keys" if len(summary) > SHOWN_KEYS else ""
    return ", ".join(parts) + more


def log_unused_keys(summary: dict) -> None:
    """ONE warning line naming the unused keys (nothing when there are none)."""
    if summary:
        log.warning("data: keys not used for training: %s; map a key that holds training data to its field with "
                    "data.columns (docs/data.md), or remove it", unused_keys_text(summary))
