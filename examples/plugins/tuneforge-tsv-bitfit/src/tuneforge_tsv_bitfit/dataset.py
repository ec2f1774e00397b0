"""Dataset ``tsv``: instruction/answer pairs from a tab-separated file.

The file has a header row naming its columns: ``instruction`` and ``output``
(other names: ``data.instruction_column``, ``data.output_column``), and
optionally ``input`` and ``system``.  Inside a value ``\t``, ``\n`` and
``\\`` stand for a tab, a newline and a backslash.  Each row becomes an
alpaca record that remembers ``file:line``.  A separate held-out file can be
given as ``data.val_path``.  tuneforge's shared pipeline
(:func:`tuneforge.data.prepare_splits`) renders it with the model's chat
template, masks the prompt (only the answer carries loss), holds out the
validation share, caches and counts.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Optional

import tuneforge
from tuneforge.data import DataConfig, Record, prepare_splits

#: the sample shipped with the plugin (package data), used when ``data.path`` is empty
SAMPLE = Path(__file__).parent / "data" / "sample.tsv"
_ESCAPES = {"t": "\t", "n": "\n", "\\": "\\"}


@dataclass
class TsvDataConfig(DataConfig):
    """Instruction/answer pairs from a TSV file with a header row.

    path: the ``.tsv`` file (empty: the sample shipped with the plugin).
    val_path: a separate held-out ``.tsv`` file with the same columns; when unset,
        ``val_fraction`` or ``val_size`` of ``path`` is held out.
    instruction_column: header of the column holding the prompt.
    output_column: header of the column holding the answer.
    min_rows: refuse a training file with fewer data rows than this (at least 1).
    """

    path: str = ""
    val_path: Optional[str] = None
    instruction_column: str = "instruction"
    output_column: str = "output"
    min_rows: int = 2

    #: fields naming data files: tuneforge records them as absolute paths and checks their content on resume
    DATA_FILES: ClassVar[tuple] = (*DataConfig.DATA_FILES, "path", "val_path")

    def __post_init__(self):
        parent = getattr(super(), "__post_init__", None)
        if parent is not None:
            parent()
        # values may still be omegaconf's "???" or an interpolation while Hydra checks types
        if isinstance(self.min_rows, int) and self.min_rows < 1:
            raise ValueError(f"min_rows must be at least 1, got {self.min_rows}")


def unescape(value: str) -> str:
    """``\\t``, ``\\n``, ``\\\\`` -> tab, newline, backslash; any other backslash stays as written."""
    out, i = [], 0
    while i < len(value):
        if value[i] == "\\" and i + 1 < len(value) and value[i + 1] in _ESCAPES:
            out.append(_ESCAPES[value[i + 1]])
            i += 2
        else:
            out.append(value[i])
            i += 1
    return "".join(out)


def read_tsv(path, instruction_column: str = "instruction", output_column: str = "output") -> list:
    """The rows of a TSV file as alpaca records (``tuneforge.data.Record``), each with its ``file:line``.

    A missing file, a missing column or a row with the wrong number of cells
    raises ``tuneforge.DataError`` naming the file and line.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise tuneforge.DataError(f"data.path={path}: no such file")
    with path.open(encoding="utf-8", newline="") as handle:
        rows = list(csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))
    if not rows:
        raise tuneforge.DataError(f"{path}: empty file; expected a header row ({instruction_column}, {output_column})")
    header = [cell.strip() for cell in rows[0]]
    for column in (instruction_column, output_column):
        if column not in header:
            raise tuneforge.DataError(f"{path}:1: no column '{column}' in the header {header}")
    records = []
    for line, cells in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in cells):
            continue  # blank line
        if len(cells) != len(header):
            raise tuneforge.DataError(f"{path}:{line}: {len(cells)} cells, but the header has {len(header)} "
                                      "(a tab inside a value is written \\t)")
        row = dict(zip(header, (unescape(cell) for cell in cells)))
        record = {"instruction": row[instruction_column], "output": row[output_column]}
        record.update({key: row[key] for key in ("input", "system") if row.get(key)})
        records.append(Record(record, f"{path}:{line}"))
    return records


def load_tsv(config: TsvDataConfig, tokenizer):
    """Read ``config.path`` (or the shipped sample), and ``config.val_path``, and prepare the tokenized splits."""
    path = Path(config.path) if config.path else SAMPLE
    records = read_tsv(path, config.instruction_column, config.output_column)
    if len(records) < config.min_rows:
        raise tuneforge.DataError(f"{path}: {len(records)} data rows; data.min_rows is {config.min_rows}")
    val_records = None
    if config.val_path:
        val_records = read_tsv(config.val_path, config.instruction_column, config.output_column)
        if not val_records:
            raise tuneforge.DataError(f"data.val_path={config.val_path}: no data rows")
    return prepare_splits(records, tokenizer, config, val_records=val_records, origin=str(path))


@tuneforge.hookimpl
def tuneforge_datasets():
    return [tuneforge.DatasetSpec("tsv", TsvDataConfig, "instruction/answer pairs from a TSV file",
                                  load=load_tsv)]
