"""The ``jsonl`` dataset: alpaca (``instruction``/``input``/``output``) and chat (``messages``) records."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from omegaconf import OmegaConf

import tuneforge
from tuneforge.data import DataSplits, read_jsonl, split_records, tokenize_records
from tuneforge.errors import DataError


SAMPLE_DIR = Path(__file__).parent / "data"


def sample_path(name: str) -> str:
    """Path of a data file shipped with the built-in plugins (``${tuneforge_sample:sample.jsonl}``)."""
    path = SAMPLE_DIR / name
    if not path.is_file():
        raise ValueError(f"no shipped sample '{name}'; available: {sorted(p.name for p in SAMPLE_DIR.iterdir())}")
    return str(path)


OmegaConf.register_new_resolver("tuneforge_sample", sample_path, replace=True)


@dataclass
class JsonlDataConfig:
    """Records from a JSON-lines file.

    path: the training file (one JSON object per line); defaults to a small
        shipped sample of alpaca and chat records.
    val_path: a separate held-out file; when unset, ``val_fraction`` or
        ``val_size`` of ``path`` is held out (after a shuffle seeded by ``seed``).
    format: ``auto`` (from each record's keys), ``alpaca`` or ``chat``.
    max_length: token limit per example; longer ones are handled by ``truncation``
        (``truncate`` or ``drop``), and counted.
    train_on_inputs: also train on prompt tokens (default: assistant tokens only).
    chat_template: Jinja template used instead of the tokenizer's own.
    max_examples: use only the first N training records (after the shuffle).
    """

    path: str = "${tuneforge_sample:sample.jsonl}"
    val_path: Optional[str] = None
    val_fraction: float = 0.1
    val_size: Optional[int] = None
    format: str = "auto"
    max_length: int = 1024
    truncation: str = "truncate"
    train_on_inputs: bool = False
    chat_template: Optional[str] = None
    max_examples: Optional[int] = None
    seed: int = 0


def load_jsonl(config: JsonlDataConfig, tokenizer) -> DataSplits:
    records = read_jsonl(config.path)
    if not records:
        raise DataError(f"{config.path}: the file holds no records")
    if config.val_path:
        train_records, val_records = records, read_jsonl(config.val_path)
    else:
        train_records, val_records = split_records(records, val_fraction=config.val_fraction,
                                                   val_size=config.val_size, seed=config.seed)
    if config.max_examples is not None:
        train_records = train_records[: config.max_examples]
    options = dict(fmt=config.format, max_length=config.max_length, truncation=config.truncation,
                   chat_template=config.chat_template, train_on_inputs=config.train_on_inputs)
    train, train_counts = tokenize_records(train_records, tokenizer, **options)
    val, val_counts = tokenize_records(val_records, tokenizer, **options)
    if not train:
        raise DataError(f"{config.path}: no training example left (all {len(train_records)} dropped "
                        f"as longer than data.max_length={config.max_length})")
    stats = {"train_records": len(train_records), "val_records": len(val_records),
             "train_examples": len(train), "val_examples": len(val),
             "truncated": train_counts["truncated"] + val_counts["truncated"],
             "dropped": train_counts["dropped"] + val_counts["dropped"]}
    return DataSplits(train=train, val=val, stats=stats)


@tuneforge.hookimpl
def tuneforge_datasets():
    return [tuneforge.DatasetSpec("jsonl", JsonlDataConfig, "alpaca or chat records in a .jsonl file",
                                  load=load_jsonl)]
