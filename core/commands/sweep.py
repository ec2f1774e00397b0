"""Sweeps that finish: in ``tuneforge train -m ...`` a failing job is recorded, and the others run.

A job of a ``-m`` sweep that fails (a one-line error such as bad data, or any other exception) does
not stop the sweep: :func:`record_failed_job` prints its one line, and writes it into the job's own
directory as ``status.json`` (``"status": "failed"``, ``"error"``, and ``"job"``: its number and
overrides), next to what the run itself wrote.  A run directory of its own (``run_dir=``) gets the job's
number and overrides only when the job started its run there; a run that was there before (completed,
another run, one that another process trains) stays as it was.  This happens inside the job, so it holds for Hydra's
basic launcher (jobs one after another in this process) and for submitit's (each job a process of its
own).  When the sweep has ended, :func:`failed_jobs` reads those files back, and ``tuneforge train``
prints one line per failed job and exits with status 2.

A sweep interrupted by SIGTERM/SIGINT prints the command that resumes it: the same ``-m`` command into the
same ``hydra.sweep.dir`` (:func:`tuneforge.commands.train.resume_command`).  Run so, a job whose run completed
is skipped (:func:`skip_completed_job`), the interrupted job resumes from its checkpoint (``resume=auto``) and
the jobs the sweep had not reached run.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Optional

from tuneforge.errors import TuneforgeError

log = logging.getLogger("tuneforge")


class SweepFailed(TuneforgeError):
    """Some jobs of a sweep failed (one line per failed job)."""


#: where a failed job's record goes when its directory is a run directory that holds another run, which the job
#: was refused and leaves as it is (a sweep run again into the same ``hydra.sweep.dir`` finds its completed runs)
FAILED_JOB_FILE = "failed_job.json"


def record_failed_job(exc: BaseException, hydra_config, run_dir=None, began_ns: int = 0) -> None:
    """Print the one-line error of a failed sweep job and record it in the job's directory.

    ``run_dir``: the job's ``run_dir`` setting (None: the run is in the job's directory); ``began_ns``: when
    the job began (``time.monotonic_ns()``).  Hydra's job directory gets ``status.json`` (``failed``, the
    error, the job, its ``run_dir``).  The run directory gets the job too only when this job started its
    own run there (:func:`tuneforge.training.run_dir.started_since`), whose status the run wrote; one the
    job was refused (a completed run, another run, one another process trains) is left as it is, and when
    that is the job's directory itself the record goes to :data:`FAILED_JOB_FILE` beside it."""
    from tuneforge.host.paths import setting_path
    from tuneforge.training.run_dir import read_status, started_since

    error = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    if not isinstance(exc, TuneforgeError):  # a bug, not bad input: its traceback goes to the job's log
        log.error("sweep job %s failed", hydra_config.job.num, exc_info=exc)
        error = f"{type(exc).__name__}: {error}"
    job = {"num": int(hydra_config.job.num), "overrides": list(hydra_config.overrides.task)}
    print(f"tuneforge: error: sweep job {job['num']}: {error}", file=sys.stderr, flush=True)
    job_dir = Path(str(hydra_config.runtime.output_dir)).absolute()
    run = Path(setting_path(str(run_dir))) if run_dir else job_dir
    failed = {"status": "failed", "error": error, "steps": None}
    records = []
    if started_since(run, began_ns):  # the job's own run: its status (failed, with its steps), and the job
        status = read_status(run)
        status = status if status.get("status") in ("failed", "interrupted") else failed
        records.append((run / "status.json", dict(status, job=job)))
        failed["steps"] = status.get("steps")
    if run != job_dir:
        records.append((job_dir / "status.json", dict(failed, job=job, run_dir=str(run))))
    elif not records:
        name = FAILED_JOB_FILE if read_status(job_dir) else "status.json"  # another run's status stays
        records.append((job_dir / name, dict(failed, job=job)))
    for path, status in records:
        _write_record(path, status, job["num"])


def skip_completed_job(config, run_dir: Path, hydra_config, keys: Optional[set] = None) -> bool:
    """Whether the sweep job of ``config`` (its validated run config) skips its run: ``run_dir`` holds this
    job's completed run (``status.json`` completed, its ``metrics.json``, and the same settings in its
    ``config.yaml`` but for ``run_dir`` and ``resume``), so a sweep resumed (the ``Resume with:`` command of
    an interrupted job), or run again into its ``hydra.sweep.dir``, leaves it as it is and goes on with the
    next job.  Logs one line saying so (``keys``: the swept keys, the overrides it names).  Not with
    ``resume=never`` (the run starts over), nor for a run with other settings, which the run refuses as it
    refuses any completed run (the job is then recorded as failed)."""
    from tuneforge.training.run_dir import read_status, starts_over
    from tuneforge.training.seed_runs import setting_differences

    if starts_over(config.resume) or read_status(run_dir).get("status") != "completed" \
            or not (run_dir / "metrics.json").is_file():
        return False
    try:
        if setting_differences(run_dir / "config.yaml", config):
            return False
    except Exception:  # a config.yaml that is not one tuneforge wrote: the run says so
        return False
    overrides = [o for o in hydra_config.overrides.task if keys is None or o.partition("=")[0].lstrip("+~") in keys]
    which = f"sweep job {hydra_config.job.num}" + (f" ({' '.join(overrides)})" if overrides else "")
    log.info("%s: completed in %s; skipped (resume=never trains it again)", which, run_dir)
    return True


def _write_record(path: Path, status: dict, num: int) -> None:
    from tuneforge.atomic import write_json

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, status)
    except OSError as write_error:
        log.error("could not record the failure of sweep job %s in %s: %s", num, path.parent,
                  write_error.strerror or write_error)


def swept_keys(overrides: list) -> set:
    """The keys that a sweep varies among its command line's ``overrides`` (``key=a,b``, ``range(...)``,
    ``choice(...)``, ``glob(...)``)."""
    keys = set()
    for override in overrides:
        key, _, value = override.partition("=")
        if "," in value or value.strip().startswith(("range(", "choice(", "glob(", "interval(")):
            keys.add(key.lstrip("+~"))
    return keys


def failed_jobs(sweep_dir: Optional[Path], since: float = 0.0, keys: Optional[set] = None) -> list:
    """One line per job of the sweep in ``sweep_dir`` whose ``status.json`` or :data:`FAILED_JOB_FILE` (written
    after ``since``) says ``failed``: its number, overrides (those of ``keys`` when given: the swept ones), error and
    directory."""
    if sweep_dir is None or not Path(sweep_dir).is_dir():
        return []
    lines = []
    found = [*Path(sweep_dir).rglob("status.json"), *Path(sweep_dir).rglob(FAILED_JOB_FILE)]
    for path in sorted(found, key=_job_order):
        if any(part.startswith("previous-") for part in path.relative_to(sweep_dir).parts):
            continue
        try:
            if path.stat().st_mtime < since:
                continue
            status = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(status, dict) or status.get("status") != "failed":
            continue
        job = status.get("job") or {}
        shown = [o for o in job.get("overrides") or [] if keys is None or o.partition("=")[0].lstrip("+~") in keys]
        which = f"sweep job {job['num']} ({' '.join(shown)})" if "num" in job else f"sweep job in {path.parent}"
        lines.append(f"{which} failed: {status.get('error') or 'no error recorded'} [{path.parent}]")
    return lines


def _job_order(path: Path):
    name = path.parent.name
    return (0, int(name), "") if name.isdigit() else (1, 0, str(path))
