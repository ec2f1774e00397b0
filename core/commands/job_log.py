"""The job log in the run directory: ``<run_dir>/train.log``, wherever Hydra opened it.

Hydra opens a job's log (``train.log``) in its output directory before tuneforge sees the config.
With ``run_dir=`` on the command line of a single run that is the run directory
(:func:`tuneforge.commands.train.run_dir_overrides` sets ``hydra.run.dir``); a ``run_dir`` Hydra only
knows once it composes the job's config (a ``-m`` sweep's ``run_dir=runs/r${adapter.r}``, a ``run_dir``
set in an experiment file) is not.  :func:`move_job_log` then moves the job's log into the run
directory once the job's config is valid, and Hydra's output directory goes when nothing else is in it.
"""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger("tuneforge")


def move_job_log(output_dir, run_dir) -> None:
    """Move the job's log from Hydra's ``output_dir`` to ``<run_dir>/train.log``: the lines this job wrote so
    far are appended there, the root logger's file handler writes there from now on, and ``output_dir``'s
    ``train.log`` keeps only what earlier commands wrote into it (removed when that is nothing; so is
    ``output_dir`` then, when it is empty and this command made it).  ``resume=never`` still moves the
    run directory's earlier lines aside (the length of its ``train.log`` is noted before this job's lines
    go in, :func:`tuneforge.training.run_dir.note_log_start`).  Nothing happens when ``run_dir`` is
    ``output_dir``, or no handler of this process writes the job log (a worker process logs to the console
    only); when the run directory cannot be written the log stays where it is (the run says why)."""
    from tuneforge.host.hydra_dirs import discard_empty_output_dir
    from tuneforge.training.run_dir import LOG_FILE, earlier_log_size, log_handlers, note_log_start, same_place

    source, target = Path(str(output_dir)) / LOG_FILE, Path(str(run_dir)).expanduser() / LOG_FILE
    handlers = log_handlers(source)
    if same_place(source.parent, target.parent) or not handlers:
        return
    earlier = earlier_log_size(source.parent)  # what earlier commands wrote into Hydra's log: it stays
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        note_log_start(target.parent)  # before this job's lines go in: the rest is earlier runs'
        for handler in handlers:
            handler.flush()
        with source.open("rb") as job_log, target.open("ab") as moved:
            job_log.seek(earlier)
            moved.write(job_log.read())
        for handler in handlers:
            _reopen(handler, target)
    except OSError as exc:
        log.debug("the job log stays in %s: %s", source.parent, exc)
        return
    try:
        if earlier:
            with source.open("r+b") as job_log:
                job_log.truncate(earlier)
        else:
            source.unlink()
    except OSError:
        return
    discard_empty_output_dir(source.parent)


def _reopen(handler: logging.FileHandler, path: Path) -> None:
    """Put a handler like ``handler`` (format, level, filters), appending to ``path``, in its place on the
    root logger; ``handler`` is closed."""
    from tuneforge.training.run_dir import open_log_file

    root = logging.getLogger()
    root.handlers[root.handlers.index(handler)] = open_log_file(path, like=handler)
    handler.close()
