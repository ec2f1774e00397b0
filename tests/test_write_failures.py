"""Writes that fail (a read-only folder, a file in the way, a full disk) and interrupts: one line from the
command line, never a traceback (``--debug`` shows one), and never a half-written file or folder
(:mod:`tuneforge.atomic`)."""

import errno
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from helpers import run_cli
from tuneforge.atomic import atomic_dir, open_atomic, write_text
from tuneforge.commands.cli import describe_os_error, main

FAST = ["model=tiny", "threads=1", "baselines=[]", "evaluators=[]", "trainer.max_steps=1"]


def _one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("tuneforge: error: ")]
    assert len(errors) == 1 and "Traceback" not in stderr, stderr
    return errors[0]


# ---------------------------------------------------------------------------------------------------------
# The command line's last resort: an OSError no command explained, an interrupt
# ---------------------------------------------------------------------------------------------------------


def _failing_status(monkeypatch, error):
    import tuneforge.commands.status

    def status_command(args):
        raise error

    monkeypatch.setattr(tuneforge.commands.status, "status_command", status_command)


@pytest.mark.parametrize("error, expected", [
    (OSError(errno.EROFS, "Read-only file system", "/mnt/ro/out"),
     "tuneforge: error: cannot write: /mnt/ro/out (Read-only file system); give a directory you can write to"),
    (PermissionError(errno.EACCES, "Permission denied", "/root/x"),
     "tuneforge: error: cannot write: /root/x (Permission denied); give a directory you can write to"),
    (OSError(errno.ENOSPC, "No space left on device", "/data/report.html"),
     "tuneforge: error: no space left on the device while writing /data/report.html (No space left on device); "
     "free space on it, or write elsewhere"),
    (FileExistsError(errno.EEXIST, "File exists", "/tmp/a-file"),
     "tuneforge: error: cannot create: /tmp/a-file (File exists): a file of that name is in the way"),
    (NotADirectoryError(errno.ENOTDIR, "Not a directory", "/tmp/a-file/x"),
     "tuneforge: error: cannot open: /tmp/a-file/x (Not a directory): a part of the path is a file, not a folder"),
    (ConnectionResetError(errno.ECONNRESET, "Connection reset by peer"),
     "tuneforge: error: ConnectionResetError: [Errno 104] Connection reset by peer; rerun with --debug"),
])
def test_an_os_error_no_command_explained_is_one_line_with_a_hint(monkeypatch, capsys, error, expected):
    _failing_status(monkeypatch, error)
    with pytest.raises(SystemExit) as stopped:
        main(["status", "somewhere"])
    assert stopped.value.code == 2
    line = _one_error_line(capsys.readouterr().err)
    assert line.startswith(expected), line


def test_debug_shows_the_os_errors_traceback(monkeypatch):
    _failing_status(monkeypatch, OSError(errno.EROFS, "Read-only file system", "/mnt/ro/out"))
    with pytest.raises(OSError, match="Read-only file system"):
        main(["--debug", "status", "somewhere"])
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    with pytest.raises(OSError, match="Read-only file system"):
        main(["status", "somewhere"])


def test_what_failed_is_read_from_the_traceback(tmp_path):
    (tmp_path / "file").write_text("x")
    try:
        (tmp_path / "file" / "sub").mkdir(parents=True)
    except OSError as exc:
        line = describe_os_error(exc, "export")
    assert line.startswith(f"cannot create the folder: {tmp_path / 'file' / 'sub'} (Not a directory)"), line
    try:
        (tmp_path / "missing" / "x.txt").write_text("x")
    except OSError as exc:
        line = describe_os_error(exc)
    assert line.startswith(f"cannot write: {tmp_path / 'missing' / 'x.txt'} (No such file or directory)"), line


def test_an_interrupt_of_another_command_than_train_is_one_line_and_exit_130(monkeypatch, capsys):
    _failing_status(monkeypatch, KeyboardInterrupt())
    with pytest.raises(SystemExit) as stopped:
        main(["status", "somewhere"])
    assert stopped.value.code == 130
    assert capsys.readouterr().err == "tuneforge: status interrupted\n"
    with pytest.raises(KeyboardInterrupt):  # --debug: the traceback
        main(["--debug", "status", "somewhere"])


@pytest.mark.fault(fault='Ctrl-C (SIGINT) while `eval`, `generate`, `chat`, `export`, `serve`, `data show`, `status` '
                         '... works',
                   outcome='one line `tuneforge: <command> interrupted`, exit 130, no traceback (`--debug` shows '
                           'it); `train` keeps its own handling (checkpoint, resume command)')
def test_ctrl_c_in_a_command_ends_it_with_one_line(tmp_path):
    """A real SIGINT while a command (here ``status``, standing for eval, generate, export ...) works."""
    script = textwrap.dedent("""
        import os, signal, time
        import tuneforge.commands.status as status
        from tuneforge.commands.cli import main

        # as in a terminal: a job started in the background of a non-interactive shell (CI scripts, nohup)
        # inherits SIGINT ignored, and Python then raises no KeyboardInterrupt at all
        signal.signal(signal.SIGINT, signal.default_int_handler)

        def status_command(args):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(30)

        status.status_command = status_command
        main(["status", "somewhere"])
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 130, result.stderr
    assert result.stderr == "tuneforge: status interrupted\n"


# ---------------------------------------------------------------------------------------------------------
# train: where Hydra makes the run directory (before any tuneforge code runs)
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.fault(fault='`hydra.run.dir=` an existing file',
                   outcome='one line `cannot create the folder: <path> (File exists): a file of that name is in the '
                           'way; ...`, exit 2, no traceback')
def test_train_into_an_existing_file_is_one_line(tmp_path):
    (tmp_path / "a-file").write_text("not a folder")
    result = run_cli(["train", *FAST, f"hydra.run.dir={tmp_path / 'a-file'}"], cwd=tmp_path, timeout=240)
    assert result.returncode == 2
    line = _one_error_line(result.stderr)
    assert line == (f"tuneforge: error: cannot create the folder: {tmp_path / 'a-file'} (File exists): a file of "
                    "that name is in the way; give a folder, or a path that does not exist yet")


#: runs ``tuneforge train`` in a child process whose folder argv[1] is read-only (as a read-only mount is:
#: creating anything in it fails with EROFS), so the test needs no root
READ_ONLY_TRAIN = textwrap.dedent("""
    import errno, os, pathlib, sys

    read_only = pathlib.Path(sys.argv[1]).resolve()
    real_mkdir = pathlib.Path.mkdir

    def mkdir(self, *args, **kwargs):
        path = pathlib.Path(os.path.abspath(self))
        if (path == read_only or read_only in path.parents) and path.parent.exists() and not path.exists():
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        return real_mkdir(self, *args, **kwargs)

    pathlib.Path.mkdir = mkdir
    from tuneforge.commands.cli import main
    main(sys.argv[2:])
""")


def _train_read_only(read_only: Path, args: list, cwd: Path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-c", READ_ONLY_TRAIN, str(read_only), "train", *args],
                          capture_output=True, text=True, cwd=cwd, env=env, timeout=240)


@pytest.mark.fault(fault='`hydra.run.dir=` in a read-only folder (a read-only mount)',
                   outcome='one line `cannot create the folder: <path> (Read-only file system); give a directory you '
                           'can write to (run_dir=...)`, exit 2, no traceback')
def test_train_into_a_read_only_folder_is_one_line(tmp_path):
    (tmp_path / "ro").mkdir()
    result = _train_read_only(tmp_path / "ro", [*FAST, f"hydra.run.dir={tmp_path / 'ro' / 'x'}"], tmp_path)
    assert result.returncode == 2
    line = _one_error_line(result.stderr)
    assert line.startswith(f"tuneforge: error: cannot create the folder: {tmp_path / 'ro' / 'x'} (Read-only file "
                           "system); give a directory you can write to (run_dir=<folder>"), line


@pytest.mark.fault(fault='`tuneforge train` without run_dir from a read-only working directory',
                   outcome='one line naming ./runs (Read-only file system) and the ways out (run_dir=, a writable '
                           'working directory); no chained tracebacks')
def test_train_from_a_read_only_working_directory_is_one_line(tmp_path):
    """No run_dir: the run goes to ./runs/<date_time>, which cannot be made (two chained errors before)."""
    (tmp_path / "ro").mkdir()
    result = _train_read_only(tmp_path / "ro", FAST, tmp_path / "ro")
    assert result.returncode == 2
    line = _one_error_line(result.stderr)
    assert line.startswith(f"tuneforge: error: cannot create the folder: {tmp_path / 'ro' / 'runs'} (Read-only "
                           "file system); give a directory you can write to (run_dir=<folder>, or run from a "
                           "writable working directory"), line
    assert not (tmp_path / "ro" / "runs").exists()


# ---------------------------------------------------------------------------------------------------------
# Atomic writes: nothing half-written
# ---------------------------------------------------------------------------------------------------------


def _disk_full_at_fsync(monkeypatch):
    import tuneforge.atomic

    def fsync(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tuneforge.atomic.os, "fsync", fsync)


def test_a_text_file_is_written_whole_or_not_at_all(tmp_path, monkeypatch):
    target = tmp_path / "report.html"
    write_text(target, "old")
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["report.html"]
    with monkeypatch.context() as patch:
        _disk_full_at_fsync(patch)
        with pytest.raises(OSError, match="No space left"):
            write_text(target, "x" * 100_000)
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["report.html"]
    with pytest.raises(RuntimeError):
        with open_atomic(target) as handle:
            handle.write("half")
            raise RuntimeError("stopped while writing")
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["report.html"]


def test_a_folder_is_renamed_into_place_only_when_complete(tmp_path, monkeypatch):
    out = tmp_path / "out"
    with pytest.raises(OSError):
        with atomic_dir(out) as folder:
            (folder / "config.json").write_text("{}")
            raise OSError(errno.ENOSPC, "No space left on device", str(folder / "model.safetensors"))
    assert list(tmp_path.iterdir()) == []
    with atomic_dir(out) as folder:
        (folder / "config.json").write_text("{}")
    assert [p.name for p in out.iterdir()] == ["config.json"] and [p.name for p in tmp_path.iterdir()] == ["out"]
    with pytest.raises(FileExistsError):  # a folder with files is replaced only when asked
        with atomic_dir(out) as folder:
            (folder / "new.json").write_text("{}")
    with pytest.raises(OSError):  # a failed replacement leaves the earlier folder whole
        with atomic_dir(out, replace=True) as folder:
            (folder / "new.json").write_text("{}")
            raise OSError(errno.ENOSPC, "No space left on device")
    assert [p.name for p in out.iterdir()] == ["config.json"] and [p.name for p in tmp_path.iterdir()] == ["out"]
    with atomic_dir(out, replace=True) as folder:
        (folder / "new.json").write_text("{}")
    assert [p.name for p in out.iterdir()] == ["new.json"] and [p.name for p in tmp_path.iterdir()] == ["out"]


@pytest.mark.fault(fault='disk full while report.md/report.html, the plots or predictions.jsonl are written',
                   outcome='the earlier file or none, never a cut one (each written to a temporary file, synced, '
                           'renamed); no `.tmp` file left')
def test_a_full_disk_while_writing_the_report_leaves_no_cut_file(tmp_path, monkeypatch):
    """report.md/report.html (and the plots, predictions.jsonl) are written whole or not at all: a full disk
    during a run's final writes cut report.html at 16384 bytes before."""
    from tuneforge.evaluation.predictions import write_predictions
    from tuneforge.evaluation.report import write_report

    metrics = {"base": {"exact_match": 0.25}, "tuned": {"exact_match": 0.75}}
    written = write_report(tmp_path, metrics)
    before = {name: path.read_bytes() for name, path in written.items()}
    assert before["report.html"].rstrip().endswith(b"</html>")
    write_predictions(tmp_path / "predictions.jsonl", [{"set": "val", "tuned": "x"}])
    with monkeypatch.context() as patch:
        _disk_full_at_fsync(patch)
        with pytest.raises(OSError, match="No space left"):
            write_report(tmp_path, metrics, title="another title")
        with pytest.raises(OSError, match="No space left"):
            write_predictions(tmp_path / "predictions.jsonl", [{"set": "val", "tuned": "y"}] * 1000)
    assert {name: path.read_bytes() for name, path in written.items()} == before
    assert (tmp_path / "predictions.jsonl").read_text() == '{"set": "val", "tuned": "x"}\n'
    assert not [p.name for p in tmp_path.iterdir() if ".tmp" in p.name]


def test_a_file_that_cannot_be_read_is_not_told_to_be_written_elsewhere(tmp_path, monkeypatch):
    import pathlib

    def read_text(self, *args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(self))

    monkeypatch.setattr(pathlib.Path, "read_text", read_text)
    try:
        (tmp_path / "secret.json").read_text()
    except OSError as exc:
        line = describe_os_error(exc, "eval")
    assert line == (f"cannot read: {tmp_path / 'secret.json'} (Permission denied); make it readable, or give "
                    "another path")
