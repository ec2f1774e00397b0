"""The run-directory lock and the checks that a run directory is usable.

One process at a time may write a run directory: the main process of a
``tuneforge train`` (or a ``tuneforge eval`` that writes into it) holds an
exclusive ``fcntl`` lock on ``<run_dir>/.lock`` for as long as it runs.  The
lock file holds the holder's host, pid and command, so a second run fails at
once with one line naming the holder.  The operating system drops the lock
when its process dies (even on SIGKILL), so a lock left by a dead process is
simply taken over; the stale holder text is then overwritten.

Lightning's DDP child processes and read-only commands (``generate``,
``chat``, ``export``) do not take the lock.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Optional

from tuneforge.errors import TuneforgeError, is_disk_full

LOCK_FILE = ".lock"


class RunDirectoryBusy(TuneforgeError):
    """Another live process holds the run directory's lock."""


class RunDirectoryUnusable(TuneforgeError):
    """The run directory cannot be created or written (a file, read-only, no space)."""


def ensure_writable_directory(run_dir: Path) -> Path:
    """Create ``run_dir`` (and its parents) and prove it is writable; one-line errors otherwise."""
    run_dir = Path(run_dir).expanduser()
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirectoryUnusable(f"run_dir={run_dir} is a file, not a directory; give a directory path")
    blocking = next((p for p in [run_dir, *run_dir.parents] if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        raise RunDirectoryUnusable(f"run_dir={run_dir}: {blocking} is a file, so the directory cannot be created")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / f".write-test-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise RunDirectoryUnusable(_explain(run_dir, exc)) from None
    return run_dir


def check_usable(run_dir: Path) -> None:
    """Like :func:`ensure_writable_directory` but creates nothing: the directory, or the nearest
    existing folder above it, must be a writable directory on a writable file system."""
    run_dir = Path(run_dir).expanduser().absolute()
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirectoryUnusable(f"run_dir={run_dir} is a file, not a directory; give a directory path")
    existing = nearest_existing(run_dir)
    if not existing.is_dir():
        raise RunDirectoryUnusable(f"run_dir={run_dir}: {existing} is a file, so the directory cannot be created")
    why = why_not_writable(existing)
    if why:
        raise RunDirectoryUnusable(f"run_dir={run_dir} {why}; choose a writable directory")


def nearest_existing(path: Path) -> Path:
    """``path`` itself when it exists, else its nearest existing parent (the folder it would be made in)."""
    return next(p for p in [path, *path.parents] if p.exists())


def why_not_writable(folder: Path) -> Optional[str]:
    """Why nothing can be written in the existing directory ``folder`` (``"is on a read-only file system"``,
    ``"is not writable by this user"``), or None when it can."""
    if os.statvfs(folder).f_flag & os.ST_RDONLY:
        return "is on a read-only file system"
    if not os.access(folder, os.W_OK | os.X_OK):
        return "is not writable by this user"
    return None


def _explain(run_dir: Path, exc: OSError) -> str:
    if is_disk_full(exc):
        return f"run_dir={run_dir}: no space left on the device; free some space or choose another directory"
    if exc.errno in (errno.EROFS,):
        return f"run_dir={run_dir} is on a read-only file system; choose a writable directory"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return f"run_dir={run_dir} is not writable by this user; choose a writable directory"
    return f"run_dir={run_dir} cannot be written: {exc.strerror or exc}"


class RunLock:
    """An exclusive lock on a run directory, held from :meth:`acquire` to :meth:`release`.

    Use as a context manager (``with RunLock(run_dir, "train"):``).
    """

    def __init__(self, run_dir: Path, command: str = "train"):
        self.path = Path(run_dir) / LOCK_FILE
        self.command = command
        self._handle = None

    def acquire(self) -> "RunLock":
        import fcntl

        try:
            handle = open(self.path, "a+")
        except OSError as exc:
            raise RunDirectoryUnusable(_explain(self.path.parent, exc)) from None
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            handle.close()
            if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise RunDirectoryBusy(f"run_dir={self.path.parent} is in use by {describe_holder(self.path)}; "
                                       "wait for it to finish, or choose another run_dir") from None
            raise RunDirectoryUnusable(_explain(self.path.parent, exc)) from None
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps(holder_record(self.command)) + "\n")
        handle.flush()
        self._handle = handle
        return self

    def release(self) -> None:
        if self._handle is None:
            return
        import fcntl

        try:
            self._handle.seek(0)
            self._handle.truncate()
            fcntl.flock(self._handle.fileno(), fcntl.LOCK_UN)
        finally:
            self._handle.close()
            self._handle = None

    @property
    def held(self) -> bool:
        return self._handle is not None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def holder_record(command: str) -> dict:
    """What the lock file says about its holder."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "command": f"tuneforge {command}",
            "argv": sys.argv[1:], "since": time.strftime("%Y-%m-%dT%H:%M:%S")}


def describe_holder(path: Path) -> str:
    """``"tuneforge train (pid 123 on host, since ...)"``, or a generic phrase when unreadable."""
    holder = read_holder(path)
    if not holder:
        return "another tuneforge process"
    return (f"{holder.get('command', 'tuneforge')} (pid {holder.get('pid', '?')} on {holder.get('host', '?')}, "
            f"since {holder.get('since', '?')})")


def read_holder(path: Path) -> Optional[dict]:
    try:
        text = Path(path).read_text().strip()
        return json.loads(text) if text else None
    except (OSError, ValueError):
        return None


def held_by_a_live_process(run_dir: Path) -> bool:
    """True when a live process holds ``<run_dir>/.lock`` (a ``tuneforge train`` or ``eval`` writing it).

    Probed with a non-blocking lock attempt on a read-only handle, released at once; nothing is
    written.  A directory without a lock file (or one this user cannot open) counts as not held.
    """
    import fcntl

    path = Path(run_dir).expanduser() / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        return exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK)
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


#: what :func:`describe_status` says of a run whose status.json says ``running`` but whose lock no live
#: process holds: it was killed (SIGKILL, out of memory, a lost node) before it could write its status
DIED = "interrupted (the process died)"


def describe_status(run_dir: Path, status: Optional[str]) -> Optional[str]:
    """``status`` (from status.json) as the user should read it: ``running`` only while a live process
    holds the run's lock, else :data:`DIED`."""
    if status == "running" and not held_by_a_live_process(run_dir):
        return DIED
    return status
