"""Atomic writes: a file or a folder is built under a temporary name next to its target and renamed into
place only when complete, so a failed write (a full disk, an interrupt) never leaves a half-written file
or folder under the target's name, and removes its temporary file or folder where it can.

:func:`write_json` (the run directory's files and ``metrics.json``), :func:`write_text` (``report.md``,
``report.html``), :func:`open_atomic` (a file written piece by piece: ``predictions.jsonl``, the plots)
and :func:`atomic_dir` (a folder written by another library: ``tuneforge export``).  Temporary files are
named ``<name>.tmp`` (a run directory's leftovers are removed at the next start); temporary folders
``.<name>.tmp-<pid>``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path
from typing import Iterator


def write_json(path: Path, value) -> None:
    """Write ``value`` as JSON (indented, keys sorted) atomically (temporary file, then rename); a failed
    write (a full disk) leaves no temporary file behind when it can be removed."""
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    try:
        tmp.write_text(json.dumps(value, indent=2, sort_keys=True) + "\n")
        tmp.replace(path)
    except OSError:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        raise


def temporary_name(path: Path) -> Path:
    """The temporary file :func:`write_text` and :func:`open_atomic` write before renaming: ``<name>.tmp``."""
    path = Path(path)
    return path.with_name(path.name + ".tmp")


@contextlib.contextmanager
def open_atomic(path: Path, mode: str = "w", encoding: str = "utf-8") -> Iterator:
    """A file handle (``mode`` ``"w"`` or ``"wb"``) on ``path``'s temporary file; when the block ends
    without an error the file is flushed, synced to the disk (``fsync``) and renamed over ``path`` (and
    the folder synced, best effort).  An error (``OSError``: a full disk; anything else) removes the
    temporary file and leaves whatever was at ``path`` as it was."""
    if mode not in ("w", "wb"):
        raise ValueError(f"open_atomic writes a new file: mode 'w' or 'wb', not {mode!r}")
    path = Path(path)
    tmp = temporary_name(path)
    try:
        with open(tmp, mode, **({} if "b" in mode else {"encoding": encoding})) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        _remove_quietly(tmp)
        raise
    sync_folder(path.parent)


def commit_file(tmp: Path, path: Path) -> None:
    """Sync the finished temporary file ``tmp`` to the disk and rename it over ``path`` (then sync the
    folder, best effort); for a file another library wrote (a plot)."""
    _fsync_file(tmp)
    os.replace(tmp, path)
    sync_folder(Path(path).parent)


def write_text(path: Path, text: str, encoding: str = "utf-8") -> None:
    """Write ``text`` to ``path`` atomically: temporary file, ``fsync``, rename (:func:`open_atomic`)."""
    with open_atomic(path, "w", encoding=encoding) as handle:
        handle.write(text)


def write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically: temporary file, ``fsync``, rename (:func:`open_atomic`)."""
    with open_atomic(path, "wb") as handle:
        handle.write(data)


def sync_folder(folder: Path) -> None:
    """``fsync`` a folder, so a rename inside it survives a crash; best effort (not every system or file
    system opens folders)."""
    try:
        fd = os.open(str(folder), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_dir(target: Path, replace: bool = False) -> Iterator[Path]:
    """A new empty folder next to ``target`` (``.<name>.tmp-<pid>``) to write into; when the block ends
    without an error its files are synced and it is renamed to ``target``.

    ``target`` must not exist, or be an empty folder (removed first), or, with ``replace``, a folder that
    is replaced: it is moved aside, the new folder renamed into its place, and only then deleted (it is put
    back when that rename fails).  An error in the block or in the rename removes the temporary folder:
    nothing half-written is left under ``target``'s name."""
    target = Path(target)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        for file in tmp.rglob("*"):
            if file.is_file() and not file.is_symlink():
                _fsync_file(file)
        _move_into_place(tmp, target, replace)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    sync_folder(target.parent)


def _move_into_place(tmp: Path, target: Path, replace: bool) -> None:
    was_empty = target.is_dir() and not target.is_symlink() and not any(target.iterdir())
    if was_empty:
        target.rmdir()
    if not (target.exists() or target.is_symlink()):
        try:
            tmp.rename(target)
        except BaseException:
            if was_empty:
                target.mkdir(exist_ok=True)  # the empty folder given stays as it was
            raise
        return
    if not replace:
        raise FileExistsError(17, "File exists", str(target))
    aside = target.with_name(f".{target.name}.old-{os.getpid()}")
    shutil.rmtree(aside, ignore_errors=True)
    target.rename(aside)
    try:
        tmp.rename(target)
    except BaseException:
        aside.rename(target)
        raise
    shutil.rmtree(aside, ignore_errors=True)


def _fsync_file(path: Path) -> None:
    fd = os.open(str(path), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove_quietly(path: Path) -> None:
    try:
        Path(path).unlink(missing_ok=True)
    except OSError:
        pass
