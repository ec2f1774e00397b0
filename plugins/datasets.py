"""Built-in datasets: local files (``files``, and ``jsonl``/``json``/``csv``/``parquet`` by name) and ``hf``.

All of them read records and hand them to :func:`tuneforge.data.prepare_splits`,
which detects each record's format (``tuneforge.data.FORMATS``: alpaca, chat,
completion, preference, kto, prompt_completion, prompt), tokenizes with label masking, splits, caches and
counts.  Before any model loads, each config checks its values (``__post_init__``) and the file datasets
tell the host which example kinds they hold from the first record
(``example_kinds``), so ``loss=dpo`` on instruction data stops at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, ClassVar, Optional

from omegaconf import MISSING

import tuneforge
from tuneforge.data import (DATA_CONFIG_FIELDS, DataConfig, DataSplits, detect_format, first_record, prepare_splits,
                            read_hf, read_records)
from tuneforge.errors import DataError
from tuneforge.validation import at_least, check, existing_path, non_empty

SAMPLE_DIR = Path(__file__).parent / "data"


def sample_path(name: str) -> str:
    """Path of a data file shipped with the built-in plugins (in a config: ``${pkg:tuneforge.plugins/data/<name>}``)."""
    path = SAMPLE_DIR / name
    if not path.is_file():
        raise ValueError(f"no shipped sample '{name}'; available: {sorted(p.name for p in SAMPLE_DIR.iterdir())}")
    return str(path)

_FILES_FIELDS = """
    path: a data file or a folder of them (read recursively, sorted by path).
    val_path: a separate held-out file or folder; when unset, ``val_fraction`` or
        ``val_size`` of ``path`` is held out.
    field: for a ``.json`` file holding one object that wraps the records, e.g.
        ``{"data": [...]}``: the key holding the array of records (``data.field=data``;
        null: the file holds the array itself, or JSON lines).
"""

_REHEARSAL_FIELDS = """
    rehearsal_path: a data file of general-ability examples (e.g. the shipped
        ``${pkg:tuneforge.plugins/data/rehearsal_general.jsonl}``: questions answered by the base
        model itself) mixed into the training split only, spread evenly, against forgetting;
        never held out.  null: none.
    rehearsal_count: how many of its records to mix in, from its start (null: all).
"""


@dataclass
class FilesDataConfig(DataConfig):
    """Records from local files."""

    path: str = sample_path("sample.jsonl")
    val_path: Optional[str] = None
    field: Optional[str] = None
    rehearsal_path: Optional[str] = None
    rehearsal_count: Optional[int] = None

    DATA_FILES: ClassVar[tuple] = (*DataConfig.DATA_FILES, "path", "val_path", "rehearsal_path")

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self, path=existing_path(), val_path=existing_path(), field=non_empty,
              rehearsal_path=existing_path("file"), rehearsal_count=at_least(1))


FilesDataConfig.__doc__ = (
    "Records from local ``.jsonl``, ``.json`` (an array of objects, or JSON lines), ``.csv`` (with a\n"
    "    header row) or ``.parquet`` files, or a folder of them; ``.jsonl``, ``.json`` and ``.csv`` may be\n"
    "    gzip-compressed (``train.jsonl.gz``).  ``data=files`` picks the reader by suffix;\n"
    "    ``data=jsonl|json|csv|parquet`` use that reader.  ``path`` defaults to a small\n"
    "    shipped sample of alpaca and chat records.\n" + _FILES_FIELDS + _REHEARSAL_FIELDS + DATA_CONFIG_FIELDS)


@dataclass
class TypedFilesDataConfig(FilesDataConfig):
    """Records from local files of one type."""

    path: str = MISSING


TypedFilesDataConfig.__doc__ = (
    "Records from local files of one type (``data=json``, ``csv`` or ``parquet``): a file is read\n"
    "    with that reader whatever its suffix; from a folder, only files with that suffix are read.\n"
    + _FILES_FIELDS + _REHEARSAL_FIELDS + DATA_CONFIG_FIELDS)


@dataclass
class HFDataConfig(DataConfig):
    """Records from a Hugging Face dataset."""

    path: str = MISSING
    subset: Optional[str] = None
    split: str = "train"
    val_split: Optional[str] = None
    data_files: Any = None
    revision: Optional[str] = None
    hf_cache_dir: Optional[str] = None
    connect_timeout: float = 5.0
    rehearsal_path: Optional[str] = None
    rehearsal_count: Optional[int] = None

    #: a local file or folder in ``path`` is hashed (a hub name is not), and so are the local files of
    #: ``data_files`` (a builder name's records) and the rehearsal file
    DATA_FILES: ClassVar[tuple] = (*DataConfig.DATA_FILES, "path", "data_files", "rehearsal_path")

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self, path=non_empty, split=non_empty, val_split=non_empty, connect_timeout=at_least(0),
              rehearsal_path=existing_path("file"), rehearsal_count=at_least(1))


HFDataConfig.__doc__ = """Records from a Hugging Face dataset, loaded with ``datasets.load_dataset``.

    path: a hub name (``tatsu-lab/alpaca``), a local folder or file, or a builder name
        (``json``, ``csv``, ``parquet``) used with ``data_files``.
    subset: the dataset's configuration name (``load_dataset(path, name=subset)``).
    split: the split to train on.
    val_split: a split to validate on; when unset, ``val_fraction`` or ``val_size`` of
        ``split`` is held out.
    data_files: files for a builder name or a folder (a path, a list, or a mapping
        split -> files).
    revision: git revision of a hub dataset.
    hf_cache_dir: the ``datasets`` cache folder (default: its own, ``~/.cache/huggingface``).
    connect_timeout: seconds to wait for the hub before loading from the local cache only;
        with ``HF_HUB_OFFLINE=1`` the hub is never contacted.  A hub dataset that is not
        cached then fails at once with a clear message.
""" + _REHEARSAL_FIELDS.replace("a data file of", "a local data file (any file ``data=files`` reads) of") + DATA_CONFIG_FIELDS


def load_files(config: FilesDataConfig, tokenizer, kind: str = "auto") -> DataSplits:
    """Read ``config.path`` (and ``config.val_path``) with the ``kind`` reader and prepare the splits."""
    options = dict(field=config.field, columns=config.columns)
    records = read_records(config.path, kind, **options)
    val_records = read_records(config.val_path, kind, **options) if config.val_path else None
    return prepare_splits(records, tokenizer, config, val_records=val_records, origin=str(config.path),
                          rehearsal=rehearsal_records(config))


def rehearsal_records(config) -> list:
    """The first ``rehearsal_count`` records (all when null) of ``rehearsal_path`` (a local file, for
    every dataset here: files and ``hf``); none without it."""
    if config.rehearsal_path is None:
        if config.rehearsal_count is not None:
            raise DataError(f"data.rehearsal_count={config.rehearsal_count} needs data.rehearsal_path (a data "
                            "file of general-ability examples)")
        return []
    records = read_records(config.rehearsal_path)
    if config.rehearsal_count is not None and len(records) < config.rehearsal_count:
        raise DataError(f"{config.rehearsal_path}: data.rehearsal_count={config.rehearsal_count} but the file holds "
                        f"only {len(records)} records")
    return records[: config.rehearsal_count]


def files_example_kinds(config: FilesDataConfig, kind: str = "auto") -> Optional[set]:
    """The record format of ``config.path`` (its first record, or ``data.format``); None: an empty file."""
    if config.format != "auto":
        return {config.format}
    record = first_record(config.path, kind, field=config.field, columns=config.columns)
    if record is None:
        return None
    return {detect_format(record, config.columns)} | rehearsal_kinds(config)


def rehearsal_kinds(config) -> set:
    """The format of ``rehearsal_path``'s first record (empty without one)."""
    rehearsal = first_record(config.rehearsal_path) if config.rehearsal_path else None
    return {detect_format(rehearsal, config.columns)} if rehearsal is not None else set()


def hf_example_kinds(config: HFDataConfig) -> Optional[set]:
    """``data.format`` (and the rehearsal file's format) when set; with ``auto`` unknown until the dataset
    is loaded."""
    return None if config.format == "auto" else {config.format} | rehearsal_kinds(config)


def load_hf(config: HFDataConfig, tokenizer) -> DataSplits:
    """Read ``config.split`` (and ``config.val_split``) of a Hugging Face dataset and prepare the splits."""
    options = dict(subset=config.subset, data_files=config.data_files, revision=config.revision,
                   cache_dir=config.hf_cache_dir, connect_timeout=config.connect_timeout)
    records = read_hf(config.path, config.split, **options)
    val_records = read_hf(config.path, config.val_split, **options) if config.val_split else None
    return prepare_splits(records, tokenizer, config, val_records=val_records,
                          origin=f"{config.path}[{config.split}]", rehearsal=rehearsal_records(config))


@tuneforge.hookimpl
def tuneforge_datasets():
    files = [
        tuneforge.DatasetSpec("files", FilesDataConfig,
                              ".jsonl/.json/.csv/.parquet files (.gz too) or a folder of them",
                              load=load_files, example_kinds=files_example_kinds, no_validation=no_validation),
        tuneforge.DatasetSpec("jsonl", FilesDataConfig, "records in .jsonl files",
                              load=partial(load_files, kind="jsonl"),
                              example_kinds=partial(files_example_kinds, kind="jsonl"), no_validation=no_validation),
    ]
    for kind, what in (("json", "a .json array"), ("csv", ".csv files with a header"),
                       ("parquet", ".parquet files")):
        files.append(tuneforge.DatasetSpec(kind, TypedFilesDataConfig, f"records in {what}",
                                           load=partial(load_files, kind=kind),
                                           example_kinds=partial(files_example_kinds, kind=kind),
                                           no_validation=no_validation))
    return [*files, tuneforge.DatasetSpec("hf", HFDataConfig, "a Hugging Face dataset (hub name or local path)",
                                          load=load_hf, example_kinds=hf_example_kinds, no_validation=no_validation)]


def no_validation(config) -> Optional[str]:
    """Why this config holds out no validation records (no ``val_path``/``val_split``, and
    ``val_size`` 0 or ``val_fraction`` 0); None when it does."""
    if getattr(config, "val_path", None) or getattr(config, "val_split", None):
        return None
    if config.val_size is not None:
        return f"data.val_size is {config.val_size}" if config.val_size == 0 else None
    return None if config.val_fraction else f"data.val_fraction is {config.val_fraction}"
