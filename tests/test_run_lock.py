"""The run-directory lock: one writer at a time, a dead holder's lock is taken over, unusable
directories give one-line errors."""

import os
import signal
import subprocess
import sys
import time

import pytest

from tuneforge.training.run_lock import (
    RunDirectoryBusy,
    RunDirectoryUnusable,
    RunLock,
    ensure_writable_directory,
    read_holder,
)

HOLD = ("import sys, time; from tuneforge.training.run_lock import RunLock; "
        "lock = RunLock(sys.argv[1], 'train').acquire(); print('held', flush=True); time.sleep(60)")


def _holder(run_dir):
    process = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir)], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "held"
    return process


def test_a_second_writer_is_refused_at_once_naming_the_holder(tmp_path):
    holder = _holder(tmp_path)
    try:
        started = time.monotonic()
        with pytest.raises(RunDirectoryBusy) as refused:
            RunLock(tmp_path, "train").acquire()
        assert time.monotonic() - started < 1.0
        message = str(refused.value)
        assert "\n" not in message
        assert f"pid {holder.pid}" in message and "tuneforge train" in message
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.fault(fault="the lock of a SIGKILLed run left behind",
                   outcome="the next run takes it over (the operating system dropped it); nothing to clean up by hand")
def test_the_lock_of_a_killed_process_is_taken_over(tmp_path):
    holder = _holder(tmp_path)
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    assert read_holder(tmp_path / ".lock")["pid"] == holder.pid  # stale text left behind
    with RunLock(tmp_path, "eval") as lock:
        assert lock.held
        assert read_holder(tmp_path / ".lock")["pid"] == os.getpid()
    assert read_holder(tmp_path / ".lock") is None  # released: nothing claims the directory


def test_a_file_in_place_of_the_run_directory_is_one_line(tmp_path):
    target = tmp_path / "taken"
    target.write_text("not a directory")
    with pytest.raises(RunDirectoryUnusable, match="is a file, not a directory"):
        ensure_writable_directory(target)
    with pytest.raises(RunDirectoryUnusable, match="is a file, so the directory cannot be created"):
        ensure_writable_directory(target / "below")


def test_a_read_only_mount_is_one_line(tmp_path):
    mount_point = tmp_path / "ro"
    mount_point.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(mount_point)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a read-only tmpfs here (needs root)")
    try:
        with pytest.raises(RunDirectoryUnusable, match="read-only file system") as refused:
            ensure_writable_directory(mount_point / "run")
        assert "\n" not in str(refused.value)
    finally:
        subprocess.run(["umount", str(mount_point)], check=True)
