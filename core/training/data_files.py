"""The content of a run's data files: recorded when the run starts, checked on resume and by ``eval``.

A run's data is identified by more than its config: the same ``data.path``
may hold other records tomorrow.  Every component config class lists the
fields that name data files or folders in ``DATA_FILES`` (the training and
held-out files, a rehearsal set, a forgetting reference set, a retrieval
corpus ...; see :mod:`tuneforge.host.paths`).  :func:`data_file_hashes` hashes
the content of each of those files (every data file inside a folder), keyed by
absolute path.  The hashes go into every checkpoint, into
``<run_dir>/data_files.json`` when the run starts and into ``metrics.json``
(``data_files``).

``resume=auto`` onto changed content is refused (:func:`check_same_data`), as
is ``tuneforge eval`` of a run whose data files changed since it trained; both
name the file and the two hashes, and ``allow_changed_data=true`` goes on
anyway.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Optional

from tuneforge.host.paths import declared_data_fields, path_values

#: the file in the run directory holding the data files' hashes of the run's latest start
DATA_FILES_FILE = "data_files.json"
#: how many hex digits of a hash a message shows
SHOWN_DIGITS = 12


def declared_data_paths(components) -> list[str]:
    """The existing files and folders named by the ``DATA_FILES`` fields of every selected component
    (:class:`~tuneforge.host.components.RunConfig`), in config order, each once."""
    selected = [components.model, components.data, components.adapter, components.loss]
    for group in ("evaluators", "callbacks", "loggers", "baselines"):
        selected += list((getattr(components, group, None) or {}).values())
    paths: list[str] = []
    for component in selected:
        if component is None:
            continue
        for field in declared_data_fields(type(component.config)):
            for item in path_values(getattr(component.config, field, None)):
                if item and os.path.exists(item) and item not in paths:
                    paths.append(item)
    return paths




def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def hash_paths(paths) -> dict:
    """``{absolute file path: sha256}`` of each file, and of every file inside each folder (hidden
    files and folders left out, as the data readers leave them out).  A path that is not a regular file
    (a FIFO, a device) is never opened (reading a FIFO waits forever): the data readers refuse it."""
    hashes: dict = {}
    for path in map(Path, paths):
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file()
                           and not any(part.startswith(".") for part in p.relative_to(path).parts))
        else:
            files = [path] if path.is_file() else []
        for file in files:
            hashes.setdefault(os.path.abspath(file), file_sha256(file))
    return hashes


def data_file_hashes(components) -> dict:
    """:func:`hash_paths` of the :func:`declared_data_paths` of a run."""
    return hash_paths(declared_data_paths(components))


def data_change(recorded: dict, current: dict, only_common: bool = False) -> Optional[str]:
    """The first difference between two ``{file: sha256}`` records as one phrase, or None.

    ``only_common``: compare only the files in both (``eval`` with other held-out data is no change).
    """
    def short(digest: str) -> str:
        return digest[:SHOWN_DIGITS]

    for path in sorted(set(recorded) & set(current)):
        if recorded[path] != current[path]:
            return f"{path} changed (sha256 {short(recorded[path])}... then, {short(current[path])}... now)"
    if only_common:
        return None
    for path in sorted(set(recorded) - set(current)):
        state = "is gone" if not os.path.exists(path) else "is no longer part of the data"
        return f"{path} {state} (sha256 {short(recorded[path])}... then)"
    for path in sorted(set(current) - set(recorded)):
        return f"{path} is new in the data (sha256 {short(current[path])}... now)"
    return None


def checkpoint_data_files(checkpoint_dir: Path) -> Optional[dict]:
    """The data hashes a checkpoint recorded (None: written before they were recorded)."""
    from tuneforge.training.checkpoint import STATE

    state = json.loads((Path(checkpoint_dir) / STATE).read_text())
    recorded = state.get("tuneforge", {}).get("data_files")
    return recorded if isinstance(recorded, dict) else None


def check_same_data(checkpoint_dir: Path, current: dict, allow_changed: bool = False) -> Optional[str]:
    """Refuse (one-line :class:`~tuneforge.training.checkpoint.CheckpointError`) to resume
    ``checkpoint_dir`` when a data file's content differs from what it was trained on; with
    ``allow_changed`` return the difference (to log) instead."""
    from tuneforge.training.checkpoint import CheckpointError

    recorded = checkpoint_data_files(checkpoint_dir)
    change = None if recorded is None else data_change(recorded, current)
    if change is None or allow_changed:
        return change
    raise CheckpointError(f"resume: the data changed since checkpoint {checkpoint_dir}: {change}; start over with "
                          "resume=never, or continue on the new data with allow_changed_data=true")


def read_recorded(run_dir: Path) -> Optional[dict]:
    """The hashes ``<run_dir>/data_files.json`` recorded (None: absent or unreadable)."""
    try:
        value = json.loads((Path(run_dir) / DATA_FILES_FILE).read_text())
    except (OSError, ValueError):
        return None
    files = value.get("files") if isinstance(value, dict) else None
    return files if isinstance(files, dict) else None


def check_run_data(run_dir: Path, current: dict, allow_changed: bool = False) -> Optional[str]:
    """For ``eval``: refuse (one-line :class:`~tuneforge.errors.DataError`) data files whose content
    differs from what the run in ``run_dir`` trained on; with ``allow_changed`` return the difference."""
    from tuneforge.errors import DataError

    recorded = read_recorded(run_dir)
    change = None if recorded is None else data_change(recorded, current, only_common=True)
    if change is None or allow_changed:
        return change
    raise DataError(f"run_dir={run_dir}: the data changed since the run trained: {change}; evaluate anyway "
                    "with allow_changed_data=true")
