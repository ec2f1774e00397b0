"""Turning records into training examples: reading, formatting, masking, splitting, batching.

The pipeline is: records (dicts, each remembering ``file:line``) -> a chat
``messages`` list (alpaca records are converted) -> text rendered with the
tokenizer's chat template -> ``input_ids`` plus ``labels`` where only
assistant tokens (every assistant turn, and the end-of-turn token that closes
it) carry loss -> a train/validation split -> padded batches.

These are public helpers for dataset plugins; the built-in ``jsonl`` dataset is
a thin plugin over them.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

from tuneforge.errors import DataError

IGNORE_INDEX = -100

#: used when a record has no chat template to render with and the tokenizer has none
ALPACA_PROMPT = "### Instruction:\n{instruction}\n\n### Response:\n"


@dataclass
class Record:
    """One raw record and where it came from (``path:line``)."""

    data: dict
    source: str


@dataclass
class DataSplits:
    """Tokenized train and validation examples plus counts for the data report."""

    train: list
    val: list
    stats: dict = field(default_factory=dict)


def read_jsonl(path: str | Path) -> list[Record]:
    """Read a JSON-lines file; a malformed line raises ``DataError`` with ``file:line``."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file not found: {path} (set data.path to an existing .jsonl file)")
    records = []
    with path.open(encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{lineno}: invalid JSON ({exc.msg} at column {exc.colno})") from None
            if not isinstance(value, dict):
                raise DataError(f"{path}:{lineno}: expected a JSON object per line, got {type(value).__name__}")
            records.append(Record(value, f"{path}:{lineno}"))
    return records


def detect_format(record: Record) -> str:
    """``"chat"`` for ``messages`` records, ``"alpaca"`` for ``instruction``/``output`` records."""
    keys = record.data.keys()
    if "messages" in keys:
        return "chat"
    if "instruction" in keys and "output" in keys:
        return "alpaca"
    raise DataError(
        f"{record.source}: cannot tell the record's format from its keys {sorted(keys)}; "
        "expected 'messages' (chat) or 'instruction' + 'output' (alpaca)")


def _require_str(record: Record, key: str, value: Any) -> str:
    if not isinstance(value, str):
        raise DataError(f"{record.source}: field '{key}' must be a string, got {type(value).__name__}")
    return value


def to_messages(record: Record, fmt: str = "auto") -> list[dict]:
    """Convert a record to a list of ``{"role", "content"}`` messages."""
    fmt = detect_format(record) if fmt == "auto" else fmt
    data = record.data
    if fmt == "alpaca":
        for key in ("instruction", "output"):
            if key not in data:
                raise DataError(f"{record.source}: alpaca record is missing '{key}' (has {sorted(data)})")
        prompt = _require_str(record, "instruction", data["instruction"])
        extra = data.get("input") or ""
        if extra:
            prompt = f"{prompt}\n\n{_require_str(record, 'input', extra)}"
        messages = []
        if data.get("system"):
            messages.append({"role": "system", "content": _require_str(record, "system", data["system"])})
        messages.append({"role": "user", "content": prompt})
        messages.append({"role": "assistant", "content": _require_str(record, "output", data["output"])})
        return messages
    if fmt == "chat":
        messages = data.get("messages")
        if not isinstance(messages, list) or not messages:
            raise DataError(f"{record.source}: 'messages' must be a non-empty list of {{role, content}} objects")
        out = []
        for i, message in enumerate(messages):
            if not isinstance(message, dict) or "role" not in message or "content" not in message:
                raise DataError(f"{record.source}: messages[{i}] must be an object with 'role' and 'content'")
            if message["role"] not in ("system", "user", "assistant"):
                raise DataError(f"{record.source}: messages[{i}].role is '{message['role']}'; "
                                "valid: system, user, assistant")
            out.append({"role": message["role"], "content": _require_str(record, f"messages[{i}].content",
                                                                         message["content"])})
        if not any(m["role"] == "assistant" for m in out):
            raise DataError(f"{record.source}: chat record has no assistant message to learn from")
        return out
    raise DataError(f"{record.source}: unknown format '{fmt}'; valid: auto, alpaca, chat")


def _render(tokenizer, messages: list[dict], chat_template: Optional[str], generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt,
                                         chat_template=chat_template)


def has_chat_template(tokenizer, chat_template: Optional[str] = None) -> bool:
    return bool(chat_template or getattr(tokenizer, "chat_template", None))


def render_prompt(tokenizer, messages: list[dict], chat_template: Optional[str] = None) -> str:
    """The text a model sees before it answers (the messages plus the generation prompt)."""
    if has_chat_template(tokenizer, chat_template):
        return _render(tokenizer, messages, chat_template, True)
    user = "\n\n".join(m["content"] for m in messages if m["role"] != "assistant")
    return ALPACA_PROMPT.format(instruction=user)


def assistant_spans(tokenizer, messages: list[dict], chat_template: Optional[str]) -> tuple[str, list]:
    """Render the conversation and return ``(text, [(start, end) character spans of assistant turns])``.

    A turn's span runs from the end of the generation prompt before it to the
    end of the render that includes it, so the end-of-turn marker is trained.
    """
    if not has_chat_template(tokenizer, chat_template):
        if [m["role"] for m in messages if m["role"] != "system"] != ["user", "assistant"]:
            raise DataError("multi-turn chat needs a chat template: the tokenizer has none; "
                            "set data.chat_template")
        prompt = render_prompt(tokenizer, messages[:-1])
        answer = messages[-1]["content"] + (tokenizer.eos_token or "")
        return prompt + answer, [(len(prompt), len(prompt) + len(answer))]
    text = _render(tokenizer, messages, chat_template, False)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = _render(tokenizer, messages[:i], chat_template, True) if i else ""
        upto = _render(tokenizer, messages[: i + 1], chat_template, False)
        if not text.startswith(upto) or not upto.startswith(before):
            raise DataError("the chat template does not render conversations prefix by prefix, so "
                            "assistant turns cannot be located; set data.chat_template")
        spans.append((len(before), len(upto)))
    return text, spans


def tokenize_messages(tokenizer, messages: list[dict], *, chat_template: Optional[str] = None,
                      train_on_inputs: bool = False) -> dict:
    """Tokenize a conversation; labels are ``IGNORE_INDEX`` outside assistant spans.

    An end-of-sequence token is appended when the rendered text does not end
    with one, so every target is closed.
    """
    text, spans = assistant_spans(tokenizer, messages, chat_template)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    input_ids = list(encoded["input_ids"])
    labels, last_turn_ids = [], []
    for token_id, (start, end) in zip(input_ids, encoded["offset_mapping"]):
        inside = any(start < span_end and end > span_start for span_start, span_end in spans)
        labels.append(token_id if (inside or train_on_inputs) else IGNORE_INDEX)
        if spans and start < spans[-1][1] and end > spans[-1][0]:
            last_turn_ids.append(token_id)
    eos = tokenizer.eos_token_id
    if eos is not None and eos not in last_turn_ids and messages[-1]["role"] == "assistant":
        input_ids.append(eos)
        labels.append(eos)
    return {"input_ids": input_ids, "labels": labels}


def tokenize_records(records: Sequence[Record], tokenizer, *, fmt: str = "auto", max_length: int = 1024,
                     truncation: str = "truncate", chat_template: Optional[str] = None,
                     train_on_inputs: bool = False) -> tuple[list, dict]:
    """Tokenize records; returns ``(examples, counts)``.

    ``truncation="truncate"`` cuts over-long examples at ``max_length``;
    ``"drop"`` leaves them out.  Both are counted.  An example with no trained
    token left is an error naming its record.
    """
    if truncation not in ("truncate", "drop"):
        raise DataError(f"data.truncation is '{truncation}'; valid: truncate, drop")
    examples, truncated, dropped = [], 0, 0
    for record in records:
        messages = to_messages(record, fmt)
        try:
            example = tokenize_messages(tokenizer, messages, chat_template=chat_template,
                                        train_on_inputs=train_on_inputs)
        except DataError as exc:
            raise DataError(f"{record.source}: {exc}") from None
        if len(example["input_ids"]) > max_length:
            if truncation == "drop":
                dropped += 1
                continue
            truncated += 1
            example = {key: value[:max_length] for key, value in example.items()}
        if all(label == IGNORE_INDEX for label in example["labels"]):
            raise DataError(f"{record.source}: no token of the example is trained (empty target, or "
                            f"the prompt fills all data.max_length={max_length} tokens)")
        example["record"] = record.data
        example["messages"] = messages
        example["source"] = record.source
        examples.append(example)
    return examples, {"truncated": truncated, "dropped": dropped}


def split_records(records: list, *, val_fraction: float = 0.1, val_size: Optional[int] = None,
                  seed: int = 0, shuffle: bool = True) -> tuple[list, list]:
    """Deterministically split records into (train, validation)."""
    order = list(records)
    if shuffle:
        random.Random(seed).shuffle(order)
    n_val = val_size if val_size is not None else int(round(len(order) * val_fraction))
    if val_fraction and val_size is None and len(order) > 1:
        n_val = max(1, n_val)
    if n_val >= len(order):
        raise DataError(f"validation split of {n_val} leaves no training records out of {len(order)}")
    return order[n_val:], order[:n_val]


def pad_batch(examples: Iterable[dict], pad_token_id: int, pad_to_multiple_of: Optional[int] = None) -> dict:
    """Right-pad every int-list field of the examples into tensors.

    Fields named ``*labels`` pad with ``IGNORE_INDEX``, ``*attention_mask`` with 0
    and the rest with ``pad_token_id``; an ``attention_mask`` is added for
    ``input_ids``.  Non-list fields (the source record) are dropped from the
    batch.
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
