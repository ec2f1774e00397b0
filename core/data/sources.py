"""Reading raw records: local ``.jsonl`` / ``.json`` / ``.csv`` / ``.parquet`` files (the first three
also gzip-compressed, ``.jsonl.gz`` ...), folders of them, and Hugging Face ``datasets``.

Every reader returns :class:`Record` objects that remember where they came
from, so any later error can name the place: ``path:LINE`` (1-based line of a
JSON-lines or CSV file, or of a JSON array element's parse error) or
``path:row N`` (0-based index in a JSON array, a Parquet table or a Hugging Face
split).  A gzip-compressed file (told by its first bytes, whatever its suffix) is read
as the text it holds, with the same line numbers.  Anything unreadable raises
:class:`tuneforge.errors.DataError` with a one-line message; nothing is skipped silently.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import logging
import os
import socket
import stat
import threading
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional
from urllib.parse import urlparse

from tuneforge.data.encodings import SNIFF_BYTES, refuse_wide_encoding
from tuneforge.errors import DataError, first_line

log = logging.getLogger("tuneforge")

#: file kind -> the suffixes it reads
FILE_KINDS = {"jsonl": (".jsonl",), "json": (".json",), "csv": (".csv",), "parquet": (".parquet",)}
#: accepted values of the ``kind`` argument of :func:`read_records`
VALID_KINDS = ("auto", *FILE_KINDS)
#: the kinds also read gzip-compressed, from files named ``<suffix>.gz`` (``train.jsonl.gz``)
GZIP_KINDS = ("jsonl", "json", "csv")
#: the first two bytes of every gzip file
GZIP_MAGIC = b"\x1f\x8b"


@dataclass
class Record:
    """One raw record (a dict) and where it came from (``path:line`` or ``path:row N``)."""

    data: dict
    source: str


def as_records(items, origin: str, argument: str = "records") -> Optional[list]:
    """``items`` (records handed to ``prepare_splits``) as :class:`Record`\\ s: a ``Record`` as it is, a
    plain dict wrapped with the source ``<origin>:row N`` (its 0-based index; ``<origin>:<argument> row N``
    for another ``argument`` than ``records``); None stays None.  Anything else is a one-line ``TypeError``
    naming the argument, the index and the type (a dataset plugin's mistake, which the host's guard names)."""
    if items is None:
        return None
    where = origin if argument == "records" else f"{origin}:{argument}"
    records = []
    for index, item in enumerate(items):
        if isinstance(item, Record):
            records.append(item)
        elif isinstance(item, dict):
            records.append(Record(item, f"{where}{':' if where == origin else ' '}row {index}"))
        else:
            text = repr(item).replace("\n", " ")
            raise TypeError(f"{origin}: {argument}[{index}] is {type(item).__name__} "
                            f"({text if len(text) <= 40 else text[:37] + '...'}); prepare_splits takes each record as "
                            "a dict or a tuneforge.data.Record(data, source)")
    return records


def json_problem(exc: json.JSONDecodeError, column: Optional[int] = None) -> str:
    """What a JSON parse error says, with its column: ``Expecting ',' delimiter at column 42``
    (``column``: that column instead of the error's own).

    Some of Python's messages already end in "at" (``Unterminated string
    starting at``, ``Invalid control character at``); that word is not repeated.
    """
    message = exc.msg[: -len(" at")] if exc.msg.endswith(" at") else exc.msg
    return f"{message} at column {exc.colno if column is None else column}"


def _check_object(value: Any, where: str, hint: str = "") -> dict:
    if not isinstance(value, dict):
        raise DataError(f"{where}: expected a JSON object (a record with named fields), "
                        f"got {type(value).__name__}{hint}")
    return value


def read_jsonl(path: str | Path) -> list[Record]:
    """Read a JSON-lines file; a malformed line raises ``DataError`` naming ``file:line``."""
    path = _existing_file(path)
    records = []
    with _open_bytes(path) as handle:
        for lineno, raw in _numbered_lines(path, handle):
            if lineno == 1:  # UTF-16 or UTF-32 is refused, saying so; a UTF-8 byte-order mark is skipped
                refuse_wide_encoding(path, raw[:SNIFF_BYTES], isinstance(handle, gzip.GzipFile))
                raw = raw.removeprefix(b"\xef\xbb\xbf")  # a file holding only a byte-order mark has no records
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(f"{path}:{lineno}: not UTF-8 text (byte {exc.start} of the line); "
                                "save the file as UTF-8") from None
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as exc:
                # an error past the line's end (json skips the newline, then says "line 2 column 1") is at
                # its end: the column just after the last character
                column = min(exc.pos, len(line.rstrip("\r\n"))) + 1
                raise DataError(f"{path}:{lineno}: invalid JSON ({json_problem(exc, column)}); "
                                f"each line must be one JSON object{_array_hint(line, lineno)}") from None
            except RecursionError:
                raise DataError(f"{path}:{lineno}: JSON nested too deeply") from None
            hint = _array_hint(line, lineno) if isinstance(value, list) else ""
            records.append(Record(_check_object(value, f"{path}:{lineno}", hint), f"{path}:{lineno}"))
    return records


def _array_hint(line: str, lineno: int) -> str:
    """For a JSON Lines file whose first line opens a JSON array (a .json array under a .jsonl name): the reader
    that reads it; "" otherwise."""
    if lineno != 1 or not line.lstrip().startswith("["):
        return ""
    return " (the file holds a JSON array: read it with data=json, or name it .json and use data=files)"


def read_json(path: str | Path, *, field: Optional[str] = None, columns: Optional[dict] = None) -> list[Record]:
    """Read a ``.json`` file holding an array of objects (or JSON lines, as many ``.json`` files are).

    ``field`` (``data.field``): the file is one object and its ``field`` key holds the array.  Without
    it, a file holding one object is one record, unless none of its keys is a record field (canonical,
    or one ``columns`` maps) and a key holds a list of objects: such a wrapper
    (``{"data": [...]}``) is a one-line error naming the key to pick.
    """
    path = _existing_file(path)
    text = _read_text(path).lstrip("\ufeff")
    if not text.strip():  # empty, or only a byte-order mark / whitespace: no records
        return []
    if text.lstrip().startswith("{") and field is None:
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            return read_jsonl(path)  # several objects, one per line
        except RecursionError:
            raise DataError(f"{path}: JSON nested too deeply") from None
        return [_single_object(path, value, columns)]
    try:
        value = json.loads(text)  # leading whitespace is JSON's too: lines and columns are the file's
    except json.JSONDecodeError as exc:
        shape = f"one object with the key data.field={field}" if field is not None else "an array of objects"
        raise DataError(f"{path}:{exc.lineno}: invalid JSON ({json_problem(exc)}); "
                        f"a .json file must hold {shape}") from None
    except RecursionError:
        raise DataError(f"{path}: JSON nested too deeply") from None
    if field is not None:
        value = _field_value(path, value, field)
    elif not isinstance(value, list):
        raise DataError(f"{path}: a .json data file must hold an array of objects (or one object "
                        f"per line), got a top-level {type(value).__name__}")
    return [Record(_check_object(item, f"{path}:row {i}"), f"{path}:row {i}") for i, item in enumerate(value)]


def _record_lists(value: dict) -> list:
    """The keys of ``value`` that hold a non-empty list of objects."""
    return [str(key) for key, item in value.items()
            if isinstance(item, list) and item and all(isinstance(entry, dict) for entry in item)]


def _single_object(path: Path, value: dict, columns: Optional[dict]) -> Record:
    """A ``.json`` file holding one object: one record, or (no record field, a key holding a list of
    objects) a wrapper of the records, refused in one line that names the key."""
    from tuneforge.data.columns import RECORD_FIELDS
    from tuneforge.data.registries import registry_problem

    problem = registry_problem(path, value)
    if problem:
        raise DataError(problem)
    record_keys = set(RECORD_FIELDS) | {key for key in (columns or {}).values() if isinstance(key, str)}
    lists = _record_lists(value)
    if not lists or record_keys & set(map(str, value)):
        return Record(value, f"{path}:row 0")
    found = f"found an object with keys {sorted(map(str, value))}"
    if len(lists) == 1:
        hint = (f"its '{lists[0]}' holds a list of {len(value[lists[0]])} objects: read them with "
                f"data.field={lists[0]}, or save that list alone as the file")
    else:
        hint = f"{', '.join(repr(k) for k in lists)} hold lists of objects: choose one with data.field=<key>"
    raise DataError(f"{path}: a .json file must hold an array of records (or JSON Lines, one record per "
                    f"line); {found}, and {hint}")


def _field_value(path: Path, value: Any, field: str) -> list:
    """The list of records under ``field`` (``data.field``) of a ``.json`` file's top-level object."""
    if not isinstance(value, dict):
        raise DataError(f"{path}: data.field={field} reads the records under a key of the file's top-level "
                        f"object, but the file holds a {type(value).__name__}; unset data.field")
    if field not in value:
        raise DataError(f"{path}: data.field={field}: the file's top-level object has no key '{field}'; "
                        f"its keys: {sorted(map(str, value))}")
    if not isinstance(value[field], list):
        raise DataError(f"{path}: data.field={field}: '{field}' holds a {type(value[field]).__name__}, not an "
                        "array of records")
    return value[field]


def read_csv(path: str | Path) -> list[Record]:
    """Read a ``.csv`` file with a header row; each record maps column names to cell strings.

    Sources are ``path:LINE`` where LINE is the file line on which the row starts.
    """
    path = _existing_file(path)
    text = _read_text(path).lstrip("\ufeff")
    if not text.strip():  # empty, or only a byte-order mark / whitespace: no records
        return []
    rows = csv.reader(io.StringIO(text, newline=""))  # lines end at \n, \r\n or \r only (not U+2028, \f ...)
    records = []
    try:
        header = next(rows)
        _check_header(path, header)
        line_after = rows.line_num
        for row in rows:
            start, line_after = line_after + 1, rows.line_num
            if not row or len(row) == 1 < len(header) and not row[0].strip():  # a blank or whitespace line
                continue
            where = f"{path}:{start}"
            if len(row) != len(header):
                raise DataError(f"{where}: row has {len(row)} cells but the header names {len(header)} "
                                f"columns ({', '.join(header)})")
            records.append(Record(dict(zip(header, row)), where))
    except csv.Error as exc:
        raise DataError(f"{path}:{rows.line_num}: malformed CSV ({exc})") from None
    return records


def _check_header(path: Path, header: list) -> None:
    """A CSV header names every column once; one that is a pandas index or uses another separator says so."""
    if len(header) == 1:
        separator = next((sep for sep in (";", "\t", "|") if len(header[0].split(sep)) > 1
                          and all(part.strip() for part in header[0].split(sep))), None)
        if separator:
            raise DataError(f"{path}:1: the CSV header is one column {header[0]!r}: the file looks separated by "
                            f"{separator!r}; save it with ',' between cells (comma-separated CSV)")
    if len(set(header)) != len(header) or not all(name.strip() for name in header):
        index = (" (an unnamed first column is a pandas index: save with to_csv(..., index=False))"
                 if not header[0].strip() and len(header) > 1 and all(name.strip() for name in header[1:]) else "")
        raise DataError(f"{path}:1: the CSV header must name every column once, got {header}{index}")


def read_parquet(path: str | Path) -> list[Record]:
    """Read a ``.parquet`` file with pyarrow; sources are ``path:row N`` (0-based)."""
    path = _existing_file(path)
    if _is_gzip(path):
        raise DataError(f"{path}: a gzip-compressed file; Parquet is read uncompressed (it compresses its "
                        "own columns): decompress it with gunzip")
    try:
        import pyarrow.parquet as pq

        rows = pq.read_table(path).to_pylist()
    except ImportError:
        raise DataError(f"{path}: reading .parquet needs pyarrow (pip install pyarrow)") from None
    except Exception as exc:  # pyarrow raises its own ArrowException family and OSError
        raise DataError(f"{path}: not a readable Parquet file ({first_line(exc)})") from None
    return [Record(row, f"{path}:row {i}") for i, row in enumerate(rows)]


READERS = {"jsonl": read_jsonl, "json": read_json, "csv": read_csv, "parquet": read_parquet}


def read_records(path: str | Path, kind: str = "auto", *, field: Optional[str] = None,
                 columns: Optional[dict] = None) -> list[Record]:
    """Records of a data file or of every data file in a folder (recursively, sorted by path).

    ``kind="auto"`` picks the reader from each file's suffix (``.jsonl``,
    ``.json``, ``.csv``, ``.parquet``; ``.jsonl.gz``, ``.json.gz``, ``.csv.gz``
    gzip-compressed); a named kind reads a single file with that reader
    whatever its suffix (compressed or not), and reads only files with that
    suffix from a folder.  Hidden files and files with other suffixes in a
    folder are skipped (and logged); a folder with no data file is an error.
    ``field`` and ``columns`` go to :func:`read_json` (``field`` is refused
    for the other kinds).
    """
    return [record for file in _data_files(path, kind) for record in _read_file(file, kind, field, columns)]


def first_record(path: str | Path, kind: str = "auto", *, field: Optional[str] = None,
                 columns: Optional[dict] = None) -> Optional[Record]:
    """The first record :func:`read_records` would return, reading as little as it can (None: no record).

    For a look at the data before it is loaded (e.g. its format): a ``.jsonl``
    or ``.csv`` file is read up to its first record, a ``.parquet`` file up to
    its first row, a ``.json`` file whole.  Errors are the ``DataError`` errors of
    :func:`read_records`.
    """
    file = _data_files(path, kind)[0]
    reader = _reader_kind(file, kind)
    if reader == "json" or field is not None:
        records = _read_file(file, kind, field, columns)
        return records[0] if records else None
    try:
        return _peek(file, reader)
    except Exception:  # noqa: BLE001 - the full reader names the problem (file, line) as a DataError
        records = READERS[reader](file)
        return records[0] if records else None


def _peek(path: Path, kind: str) -> Optional[Record]:
    if kind == "jsonl":
        with _open_bytes(path) as handle:
            for lineno, raw in enumerate(handle, start=1):
                if raw.strip():
                    value = json.loads(raw.decode("utf-8").lstrip("\ufeff"))
                    return Record(_check_object(value, f"{path}:{lineno}"), f"{path}:{lineno}")
        return None
    if kind == "csv":
        with io.TextIOWrapper(_open_bytes(path), encoding="utf-8-sig", newline="") as handle:
            rows = csv.reader(handle)
            header = next(rows, None)
            for row in rows:
                if row:
                    if header is None or len(row) != len(header) or len(set(header)) != len(header):
                        raise ValueError("malformed")
                    return Record(dict(zip(header, row)), f"{path}:{rows.line_num}")
        return None
    if kind == "parquet":
        import pyarrow.parquet as pq

        for batch in pq.ParquetFile(path).iter_batches(batch_size=1):
            rows = batch.to_pylist()
            if rows:
                return Record(rows[0], f"{path}:row 0")
        return None
    raise ValueError(f"no quick look for {kind}")


def _name_endings(kinds) -> list:
    """The file name endings of these kinds: their suffixes, then the gzip-compressed ones (``.jsonl.gz``)."""
    return ([s for k in kinds for s in FILE_KINDS[k]]
            + [s + ".gz" for k in kinds if k in GZIP_KINDS for s in FILE_KINDS[k]])


def file_kind(path: Path) -> str:
    """The file kind a file's name announces (``train.jsonl`` and ``train.jsonl.gz``: ``jsonl``); "" when none."""
    name = path.name.lower()
    return next((kind for kind in FILE_KINDS if name.endswith(tuple(_name_endings([kind])))), "")


def _suffixes(kind: str) -> str:
    """The file names a kind (or ``auto``: every kind) reads, for messages: ``.jsonl, .jsonl.gz``."""
    return ", ".join(_name_endings(FILE_KINDS if kind == "auto" else [kind]))


def _data_files(path: str | Path, kind: str) -> list[Path]:
    """The files :func:`read_records` reads for ``path``: the file itself, or a folder's data files."""
    if kind not in VALID_KINDS:
        raise DataError(f"file kind '{kind}' is not known; valid: {', '.join(VALID_KINDS)}")
    path = Path(str(path)).expanduser()
    _refuse_special_file(path)
    if not path.is_dir():
        return [path]
    files, skipped = [], []
    for candidate in sorted(path.rglob("*")):
        relative = candidate.relative_to(path)
        if not candidate.is_file() or any(part.startswith(".") for part in relative.parts):
            continue
        found = file_kind(candidate)
        (files if found and kind in ("auto", found) else skipped).append(candidate)
    if skipped:
        log.info("data: skipped %d file(s) in %s that are not %s", len(skipped), path, _suffixes(kind))
    if not files:
        raise DataError(f"{path}: the folder holds no data file (looked for {_suffixes(kind)})")
    return files


def _reader_kind(path: Path, kind: str) -> str:
    if kind == "auto":
        kind = file_kind(path)
        if not kind:
            _existing_file(path)
            suffix = "".join(path.suffixes[-2:]) if path.suffix.lower() == ".gz" else path.suffix
            raise DataError(f"{path}: cannot tell the file type from its suffix '{suffix}'; valid: "
                            f"{_suffixes('auto')} (or choose the reader with data=jsonl|json|csv|parquet)")
    return kind


def _read_file(path: Path, kind: str, field: Optional[str] = None, columns: Optional[dict] = None) -> list[Record]:
    reader = _reader_kind(path, kind)
    try:
        if reader == "json":
            return read_json(path, field=field, columns=columns)
        if field is not None:
            raise DataError(f"{path}: data.field={field} picks the records under a key of a .json file; this is "
                            f"a {reader} file (unset data.field, or read it with data=json)")
        return READERS[reader](path)
    except DataError as exc:
        named = file_kind(path)
        if named in ("", reader):
            raise
        # a named reader (data=jsonl, the default) on a file whose name says another kind: say which reads it
        raise DataError(f"{exc}; {path.name} is named as a {named} file: read it with data={named}, or data=files "
                        "(the reader from each file's suffix)") from None


def _existing_file(path: str | Path) -> Path:
    path = Path(str(path)).expanduser()
    _refuse_special_file(path)
    if not path.is_file():
        raise DataError(f"data file not found: {path} (set data.path to an existing file or folder)")
    return path


#: what :func:`_refuse_special_file` calls a path that exists but is neither a regular file nor a folder
SPECIAL_FILES = ((stat.S_ISFIFO, "a FIFO, a named pipe"), (stat.S_ISCHR, "a character device"),
                 (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def _refuse_special_file(path: Path) -> None:
    """A one-line ``DataError`` when ``path`` exists (through links) but is not a regular file or a folder:
    a FIFO, a device (``/dev/null``), a socket.  Such a path is never opened (reading a FIFO waits for a
    writer, forever)."""
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):  # absent (the readers say "not found"), or a name the system refuses
        return
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return
    kind = next((name for test, name in SPECIAL_FILES if test(mode)), "a special file")
    raise DataError(f"{path} is not a regular file ({kind}): give a data file or a folder of them "
                    "(data.path)")


def _is_gzip(path: Path) -> bool:
    """Whether the file starts with the gzip magic bytes."""
    with path.open("rb") as handle:
        return handle.read(2) == GZIP_MAGIC


def _open_bytes(path: Path):
    """The file opened for reading bytes; a gzip-compressed one is decompressed as it is read."""
    return gzip.open(path, "rb") if _is_gzip(path) else path.open("rb")


#: what a damaged gzip file raises while it is read
GZIP_ERRORS = (OSError, EOFError, zlib.error)


def _numbered_lines(path: Path, handle) -> Iterator[tuple[int, bytes]]:
    """``(1-based line number, line)`` of an open file; damaged gzip data is a one-line ``DataError``."""
    lineno = 0
    try:
        for lineno, raw in enumerate(handle, start=1):
            yield lineno, raw
    except GZIP_ERRORS as exc:
        raise DataError(f"{path}:{lineno + 1}: cannot read the file after line {lineno} ({first_line(exc)}); "
                        "a gzip file may be damaged or cut short") from None


def _read_text(path: Path) -> str:
    data = path.read_bytes()
    compressed = data[:2] == GZIP_MAGIC
    if compressed:
        try:
            data = gzip.decompress(data)
        except GZIP_ERRORS as exc:
            raise DataError(f"{path}: damaged gzip data ({first_line(exc)}); check it with gzip -t") from None
    refuse_wide_encoding(path, data[:SNIFF_BYTES], compressed)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: not UTF-8 text (byte offset {exc.start}); save the file as UTF-8") from None


# ---------------------------------------------------------------------------
# Hugging Face datasets
# ---------------------------------------------------------------------------


def hub_reachable(timeout: float = 5.0) -> bool:
    """Whether a TCP connection to the Hugging Face endpoint opens within ``timeout`` seconds.

    Name resolution runs in a helper thread so a hanging DNS lookup cannot
    block longer than ``timeout`` either.  With an HTTP(S) proxy configured the
    check is skipped (returns ``True``): the hub may be reachable only through it.
    """
    if any(os.environ.get(name) for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    from huggingface_hub import constants

    parsed = urlparse(constants.ENDPOINT)
    host, port = parsed.hostname, parsed.port or (443 if parsed.scheme == "https" else 80)
    result: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            result.append(True)
        except OSError:
            result.append(False)

    worker = threading.Thread(target=probe, daemon=True)
    worker.start()
    worker.join(timeout)
    return bool(result and result[0])


def hf_offline_configured() -> bool:
    """Whether ``HF_HUB_OFFLINE`` / ``HF_DATASETS_OFFLINE`` put ``datasets`` in offline mode."""
    import datasets.config

    return bool(datasets.config.HF_HUB_OFFLINE)


@contextmanager
def hf_offline_mode() -> Iterator[None]:
    """Run ``datasets``/``huggingface_hub`` calls in their offline mode (cache only, no requests).

    Both libraries read ``HF_HUB_OFFLINE`` once at import, so the switch is
    flipped on their config modules for the duration of the block and restored.
    """
    import datasets.config
    from huggingface_hub import constants

    saved = (datasets.config.HF_HUB_OFFLINE, datasets.config.HF_DATASETS_OFFLINE, constants.HF_HUB_OFFLINE)
    datasets.config.HF_HUB_OFFLINE = datasets.config.HF_DATASETS_OFFLINE = constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, datasets.config.HF_DATASETS_OFFLINE, constants.HF_HUB_OFFLINE = saved


#: the ``datasets`` builder that reads a local data file, by suffix (``.gz`` around it too)
HF_BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet", ".txt": "text",
               ".arrow": "arrow"}


def _hf_builder(path: Path) -> str:
    """The builder for ``data=hf data.path=<a local file>`` (load_dataset reads it as that builder's data_files)."""
    suffixes = [s.lower() for s in path.suffixes]
    suffix = suffixes[-2] if len(suffixes) > 1 and suffixes[-1] == ".gz" else (suffixes[-1] if suffixes else "")
    if suffix not in HF_BUILDERS:
        raise DataError(f"data.path: {path}: data=hf reads a local file by its suffix; valid: "
                        f"{', '.join(HF_BUILDERS)} (also .gz), or give the builder as data.path (json, csv, parquet, "
                        "text) with the file as data.data_files")
    return HF_BUILDERS[suffix]


def read_hf(path: str, split: str = "train", *, subset: Optional[str] = None, data_files: Any = None,
            revision: Optional[str] = None, cache_dir: Optional[str] = None,
            connect_timeout: float = 5.0) -> list[Record]:
    """Records of one split of a Hugging Face dataset (``datasets.load_dataset``).

    ``path`` is a hub name (``tatsu-lab/alpaca``), a local folder or file, or a
    builder name (``json``, ``csv``, ``parquet``) used with ``data_files``.
    Local paths and builders load in offline mode.  A hub name is loaded
    offline (from the local cache only) when ``HF_HUB_OFFLINE=1`` is set or the
    hub does not answer within ``connect_timeout`` seconds, so an offline
    machine fails at once with a clear message instead of retrying for
    minutes.  Sources are ``path[split]:row N``.
    """
    try:
        import datasets
    except ImportError:
        raise DataError("data=hf needs the 'datasets' package (pip install datasets)") from None
    path = str(path)
    on_disk = Path(path).expanduser()
    local = on_disk.exists() or path in ("json", "csv", "parquet", "text", "arrow")
    if path.startswith((".", "/", "~")) and not local:
        raise DataError(f"data.path: no such file or folder: {path}")
    offline = local or hf_offline_configured() or not hub_reachable(connect_timeout)
    kwargs = dict(path=str(on_disk) if on_disk.exists() else path, name=subset, split=split,
                  data_files=data_files, revision=revision, cache_dir=cache_dir)
    if on_disk.is_file() and data_files is None:  # load_dataset takes a folder or a builder, not a data file
        kwargs.update(path=_hf_builder(on_disk), data_files=str(on_disk))
    kwargs = {key: value for key, value in kwargs.items() if value is not None}
    try:
        if offline:
            with hf_offline_mode():
                dataset = datasets.load_dataset(**kwargs)
        else:
            dataset = datasets.load_dataset(**kwargs)
    except ConnectionError as exc:
        if offline and not local:
            raise DataError(f"cannot load Hugging Face dataset '{path}': offline (the hub is unreachable or "
                            "HF_HUB_OFFLINE=1) and it is not in the local datasets cache; download it once "
                            "with network access, or point data.path at local files") from None
        raise DataError(f"cannot load Hugging Face dataset '{path}': {first_line(exc)}") from None
    except (OSError, ValueError, TypeError, datasets.exceptions.DatasetsError) as exc:
        hint = " (set data.split / data.val_split)" if "split" in str(exc).lower() else ""
        raise DataError(f"cannot load Hugging Face dataset '{path}' split '{split}': "
                        f"{first_line(exc)}{hint}") from None
    if not isinstance(dataset, datasets.Dataset):
        raise DataError(f"Hugging Face dataset '{path}': data.split='{split}' did not select one split "
                        f"(got {type(dataset).__name__})")
    return [Record(dict(row), f"{path}[{split}]:row {i}") for i, row in enumerate(dataset)]
