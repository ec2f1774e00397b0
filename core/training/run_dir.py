"""Reading and writing a run directory: atomic JSON, the redacted config, the resume decision,
the metric history across resumes, and the final outputs (metrics, predictions, report)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Optional

from omegaconf import DictConfig, OmegaConf

from tuneforge.atomic import write_json  # noqa: F401 - re-exported: the run directory's JSON writer
from tuneforge.errors import TuneforgeError, first_line

log = logging.getLogger("tuneforge")


#: a small file kept next to status.json while a run writes it: deleting it frees the space the final
#: status needs when the disk is full (:func:`write_status`)
STATUS_RESERVE = ".status-reserve"
STATUS_RESERVE_BYTES = 8192


def write_status(run_dir: Path, value: dict) -> None:
    """``<run_dir>/status.json``, atomically.

    The first call also writes :data:`STATUS_RESERVE` (8 KiB).  When a write fails because the disk
    is full, that reserve is deleted and the write tried once more, so the final status (``failed``,
    with the run's one-line error) still gets written; only when that fails too is the ``OSError``
    raised (the next start then reports that the last status could not be written).
    """
    from tuneforge.errors import is_disk_full

    path = Path(run_dir) / "status.json"
    reserve = Path(run_dir) / STATUS_RESERVE
    try:
        write_json(path, value)
    except OSError as exc:
        if not is_disk_full(exc) or not reserve.exists():
            raise
        reserve.unlink()
        log.warning("the disk is full: freed the space kept for the run's status (%s)", reserve)
        write_json(path, value)
        return
    if not reserve.exists():
        try:
            reserve.write_bytes(b"\0" * STATUS_RESERVE_BYTES)
        except OSError:
            try:
                reserve.unlink(missing_ok=True)
            except OSError:
                pass


def redacted_config(cfg: DictConfig) -> dict:
    """The resolved config as plain containers with secrets (tokens, API keys) replaced by ``***``."""
    from tuneforge.secrets import redact

    return redact(OmegaConf.to_container(cfg, resolve=True))


def resolved_config_yaml(cfg: DictConfig) -> str:
    """The resolved config as YAML with secrets (tokens, API keys) replaced by ``***``."""
    return OmegaConf.to_yaml(OmegaConf.create(redacted_config(cfg)))


def read_status(run_dir: Path) -> dict:
    """``<run_dir>/status.json`` as a dict ({} when absent or unreadable)."""
    try:
        value = json.loads((Path(run_dir) / "status.json").read_text())
        return value if isinstance(value, dict) else {}
    except (OSError, ValueError):
        return {}


def trained_nothing(status: dict) -> bool:
    """True for a run that failed or was interrupted before its first optimizer step."""
    return status.get("status") in ("failed", "interrupted") and not status.get("steps")


def starts_over(resume) -> bool:
    """True when the ``resume`` setting says never to resume (``never``, ``none``, ``false``)."""
    return str(resume) in ("never", "none", "false")


def prepare_run_dir(cfg: DictConfig, run_dir: Path, world_size: Optional[int] = None,
                    data_files: Optional[dict] = None) -> Optional[Path]:
    """Check the run directory against ``cfg.resume``; return the checkpoint to resume from.

    * A completed run is refused (``resume=never`` or another directory to
      train again; ``tuneforge eval`` re-scores it), whatever ``resume`` says
      otherwise: its final checkpoint would "resume" into a 0-step run that
      overwrites the real run's metrics and report.
    * A directory that holds another run (different model, adapter or data)
      is refused unless ``resume=never`` — except a run that failed before its
      first optimizer step (bad data, say): nothing was trained, so the next
      attempt may reuse the directory with other settings.
    * A checkpoint written by another number of processes than ``world_size``
      (when given) is refused: its data position and per-rank RNG states
      belong to that number.
    * A checkpoint trained on other data file contents than ``data_files``
      (``{file: sha256}``, when given; :mod:`tuneforge.training.data_files`) is
      refused unless ``cfg.allow_changed_data``.
    """
    from tuneforge.training.checkpoint import CheckpointError, check_same_run, check_same_world_size, resolve_resume

    never = starts_over(cfg.resume)
    status = read_status(run_dir)
    if status.get("status") == "completed" and not never:
        _refuse_another_run(cfg, run_dir)
        steps = f" ({status['steps']} steps)" if status.get("steps") else ""
        raise CheckpointError(f"run_dir={run_dir} holds a completed run{steps}; re-score it with `tuneforge eval "
                              f"run_dir={run_dir}`, or train again with resume=never or another run_dir")
    checkpoint = resolve_resume(str(cfg.resume), run_dir)
    if checkpoint is not None:
        check_same_run(checkpoint, cfg)
        if world_size is not None:
            check_same_world_size(checkpoint, world_size)
        if data_files is not None:
            from tuneforge.training.data_files import check_same_data

            change = check_same_data(checkpoint, data_files, bool(cfg.get("allow_changed_data", False)))
            if change:
                log.warning("resuming on changed data (allow_changed_data=true): %s", change)
        check_resumed_length(cfg, run_dir, checkpoint)
        log.info("resuming from %s", checkpoint)
        return checkpoint
    if not (never or trained_nothing(status)):
        _refuse_another_run(cfg, run_dir)
    return None


#: the sections every ``config.yaml`` tuneforge writes holds, each a mapping with a ``name``
RUN_CONFIG_SECTIONS = ("model", "adapter", "data")


class ForeignConfig(TuneforgeError):
    """A run directory's ``config.yaml`` that tuneforge did not write (a user's own file)."""


def saved_config(run_dir: Path, then: str) -> DictConfig:
    """``<run_dir>/config.yaml``, the resolved config a run saved.  :class:`ForeignConfig` (one line ending
    with ``then``: what the caller's user can do) when it is not one tuneforge wrote: not YAML, not a
    mapping, or without the :data:`RUN_CONFIG_SECTIONS` every run's config holds (e.g. ``model: foo``)."""
    path = Path(run_dir) / "config.yaml"
    try:
        cfg = OmegaConf.load(path)
    except OSError:
        raise
    except Exception as exc:  # yaml's errors come in several classes
        raise ForeignConfig(f"{path} is not a tuneforge run config: it cannot be read as YAML "
                            f"({first_line(exc)}); {then}") from None
    missing = [section for section in RUN_CONFIG_SECTIONS if not _named_section(cfg, section)]
    if missing:
        named = " or ".join(filter(None, [", ".join(missing[:-1]), missing[-1]]))
        raise ForeignConfig(f"{path} was not written by tuneforge: it has no {named} section with a name, as "
                            f"every tuneforge run's config.yaml has; {then}")
    return cfg


def _named_section(cfg, section: str) -> bool:
    """True when ``cfg`` is a mapping whose ``section`` is a mapping with a ``name``."""
    try:
        node = cfg.get(section) if isinstance(cfg, DictConfig) else None
        return isinstance(node, DictConfig) and bool(node.get("name"))
    except Exception:  # an interpolation that does not resolve, a value marked missing (???)
        return False


def check_resumed_length(cfg: DictConfig, run_dir: Path, checkpoint: Path) -> None:
    """A checkpoint past ``trainer.max_steps`` is refused (the run would report more steps than its config
    says; one at it is a run interrupted after training, which resumes into its evaluation); a run length other than the one the run started with is
    warned about: the learning-rate schedule is rebuilt for the new length, so the rate jumps."""
    from tuneforge.training.checkpoint import CheckpointError
    from tuneforge.training.run_stop import checkpoint_step

    step, max_steps = checkpoint_step(checkpoint), int(OmegaConf.select(cfg, "trainer.max_steps", default=-1))
    if 0 < max_steps < step:
        raise CheckpointError(f"{checkpoint} is at step {step}, past trainer.max_steps={max_steps}: it cannot be "
                              f"resumed into a shorter run; set trainer.max_steps >= {step} to continue, or start "
                              "over with resume=never")
    if not (run_dir / "config.yaml").is_file():
        return
    saved = saved_config(run_dir, _NOT_THIS_RUN)
    for key in ("trainer.max_steps", "trainer.max_epochs"):
        before, now = OmegaConf.select(saved, key, default=None), OmegaConf.select(cfg, key, default=None)
        if before != now:
            scheduler = OmegaConf.select(cfg, "optim.scheduler", default=None)
            log.warning("%s was %s when this run started and is %s now: the learning-rate schedule "
                        "(optim.scheduler=%s) is rebuilt for the new run length, so from step %d the learning rate "
                        "follows another curve than the checkpoint's", key, before, now, scheduler, step)


#: the job log Hydra writes into the run directory (``<job name>.log``, the job being ``train``)
LOG_FILE = "train.log"
#: what stays in place when ``resume=never`` moves an earlier run's outputs aside: the lock, the job log
#: (:data:`LOG_FILE`: only its earlier runs' part moves, :func:`move_earlier_log`) and the earlier runs
#: moved aside before
KEPT_IN_PLACE = (".lock", LOG_FILE)
PREVIOUS_PREFIX = "previous-"
#: ``{train.log path: its size when this command started}``, noted before the command's log handler opened
#: it (:func:`note_log_start`): the bytes before that size are earlier commands' lines
_LOG_STARTS: dict = {}


def note_log_start(log_dir, unless_noted: bool = False) -> None:
    """Note how long ``<log_dir>/train.log`` is now (0: absent), before this command's log handler opens it
    for appending (``tuneforge train`` calls this before Hydra sets up logging, :func:`move_earlier_log`
    reads it).  ``log_dir``: the directory Hydra writes the job log into (``hydra.run.dir``).
    ``unless_noted``: keep a length noted earlier; a job calls it so when it starts (its log handler is open
    but has written nothing yet), for the logs noted nowhere before (a ``-m`` sweep's jobs)."""
    path = _log_key(Path(log_dir) / LOG_FILE)
    if unless_noted and path in _LOG_STARTS:
        return
    try:
        _LOG_STARTS[path] = path.stat().st_size
    except OSError:
        _LOG_STARTS[path] = 0


def _log_key(path: Path) -> Path:
    return Path(path).expanduser().resolve()


def move_earlier_outputs(resume: str, run_dir: Path, resuming: bool = False) -> Optional[Path]:
    """With ``resume=never`` (the run's ``resume`` setting), move everything an earlier run left in ``run_dir`` into
    ``<run_dir>/previous-<n>/`` (n = 1, 2, ...) before anything new is written; return that folder
    (None when there was nothing to move).  The same, with a warning, when ``resume=auto`` finds no
    checkpoint to resume from (``resuming`` false) although an earlier run trained there (:func:`lost_progress`):
    the run starts over, and the earlier run's history is kept instead of being overwritten.
    ``train.log`` stays in place with this command's lines only; the earlier ones go to
    ``previous-<n>/train.log`` (:func:`move_earlier_log`).

    So a retrain that fails never leaves a mixed directory (the earlier ``model/`` and report next to
    the new ``config.yaml``), and a later ``resume=auto`` finds only the new run's checkpoints.
    Called by the main process only, after :func:`prepare_run_dir`, while it holds the run lock.
    """
    if not run_dir.is_dir():
        return None
    lost = None if starts_over(resume) or resuming or str(resume) != "auto" else lost_progress(run_dir)
    if not starts_over(resume) and lost is None:
        return None
    earlier = [p for p in run_dir.iterdir()
               if p.name not in KEPT_IN_PLACE and not p.name.startswith((PREVIOUS_PREFIX, ".write-test-"))]
    earlier_log = earlier_log_size(run_dir)
    if not earlier and not earlier_log:
        return None
    taken = [int(p.name[len(PREVIOUS_PREFIX):]) for p in run_dir.glob(f"{PREVIOUS_PREFIX}*")
             if p.name[len(PREVIOUS_PREFIX):].isdigit()]
    target = run_dir / f"{PREVIOUS_PREFIX}{max(taken, default=0) + 1}"
    target.mkdir()
    for path in earlier:
        path.rename(target / path.name)
    move_earlier_log(run_dir, target, earlier_log)
    if lost is not None:
        log.warning("the earlier run in %s (%s) left no checkpoint to resume from (checkpoint.every_n_steps=0, the "
                    "default, saves one only at the end and on SIGTERM/SIGINT; a killed process or a full disk "
                    "saves none): starting over; its files are kept in %s", run_dir, lost, target)
    else:
        log.info("resume=never: moved the earlier run's %d output(s) to %s", len(earlier), target)
    return target


def log_handlers(path: Path) -> list:
    """The root logger's file handlers that write ``path`` (Hydra's job log, a seed's log)."""
    return [h for h in logging.getLogger().handlers
            if isinstance(h, logging.FileHandler) and same_place(h.baseFilename, path)]


def same_place(path, other) -> bool:
    """Whether ``path`` and ``other`` name one file or folder (``~`` expanded, links and ``..`` resolved)."""
    return _log_key(Path(path)) == _log_key(Path(other))


#: the format of a log file when no file handler of the job log gives one (Hydra's job log format)
LOG_FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"


def open_log_file(path: Path, like: Optional[logging.FileHandler] = None) -> logging.FileHandler:
    """A file handler appending to ``path`` (not yet on any logger) that writes like ``like``: its format,
    level, filters and encoding.  Without ``like``, in the format of the job log (the root logger's first
    file handler that has one; :data:`LOG_FORMAT` when none has), at every level.  The job log moved into
    the run directory (:func:`tuneforge.commands.job_log.move_job_log`) and a seed's own log
    (:func:`tuneforge.training.seed_runs.seed_log`) are written by one of these."""
    if like is None:
        formats = [h.formatter for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler)
                   and h.formatter]
        handler = logging.FileHandler(path)
        handler.setFormatter(formats[0] if formats else logging.Formatter(LOG_FORMAT))
        return handler
    handler = logging.FileHandler(path, mode="a", encoding=like.encoding)
    handler.setFormatter(like.formatter)
    handler.setLevel(like.level)
    for kept in like.filters:
        handler.addFilter(kept)
    return handler


def earlier_log_size(run_dir: Path) -> int:
    """How many bytes at the start of ``<run_dir>/train.log`` earlier commands wrote: all of it when no log
    handler of this process writes it, else what it held when this command started (:func:`note_log_start`);
    0 when that was not noted, or a handler opened it other than for appending (so it emptied it): the file
    is then left as it is."""
    path = run_dir / LOG_FILE
    try:
        size = path.stat().st_size
    except OSError:
        return 0
    handlers = log_handlers(path)
    if not handlers:
        return size
    if any("a" not in handler.mode for handler in handlers):
        return 0
    return min(size, _LOG_STARTS.get(_log_key(path), 0))


def move_earlier_log(run_dir: Path, target: Path, earlier: int) -> None:
    """The first ``earlier`` bytes of ``<run_dir>/train.log`` (earlier commands' lines) moved to
    ``<target>/train.log``: the file is rewritten in place with the rest, this command's lines, while its
    log handlers are held, so the handler that has it open goes on writing this command's log.  The handler
    appends (``FileHandler`` opens ``"a"``: ``O_APPEND``), so each later line goes to the new end."""
    path = run_dir / LOG_FILE
    if earlier <= 0:
        return
    handlers = log_handlers(path)
    if not handlers:  # nobody writes it: the whole file is an earlier run's
        path.rename(target / LOG_FILE)
        return
    for handler in handlers:
        handler.acquire()
    try:
        for handler in handlers:
            handler.flush()
        with path.open("r+b") as live:
            text = live.read()
            (target / LOG_FILE).write_bytes(text[:earlier])
            live.seek(0)
            live.write(text[earlier:])
            live.truncate()
    finally:
        for handler in handlers:
            handler.release()


def lost_progress(run_dir: Path) -> Optional[str]:
    """How far an earlier run in ``run_dir`` got, when it trained (``"interrupted at step 94"``, the process
    killed while running, or failed after training began); None when there is none, it completed, or it
    failed before its first step (nothing to keep)."""
    status = read_status(run_dir)
    state = status.get("status")
    if state == "running" or (state in ("interrupted", "failed") and not trained_nothing(status)):
        steps = max(int(status.get("steps") or 0), reached_step(run_dir, 0))
        ended = "killed while running" if state == "running" else state
        return f"{ended} at step {steps}" if steps else ended
    return None


def report_previous_end(run_dir: Path, status: dict) -> Optional[str]:
    """What the previous start left behind, said once by the next start (the caller holds the lock, so no
    live process is writing): a ``status.json`` that still says ``running`` (the process died: SIGKILL,
    out of memory, a lost node), and a ``status.json.tmp`` (its last status could not be written, e.g. a
    full disk).  Leftover ``*.tmp`` files of interrupted writes are removed.  Returns the warning, or None."""
    notes = []
    if (run_dir / "status.json.tmp").exists():
        notes.append(f"the previous run in {run_dir} ended without writing its last status (status.json.tmp was "
                     "left behind: was the disk full?)")
    elif status.get("status") == "running":
        notes.append(f"the previous run in {run_dir} was interrupted (the process died: its status.json still "
                     "said 'running')")
    for leftover in run_dir.glob("*.tmp"):
        if leftover.is_dir():
            import shutil

            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)
    if notes:
        message = "; ".join(notes)
        log.warning(message)
        return message
    return None


#: what to do about a run directory whose config.yaml tuneforge did not write (:func:`saved_config`)
_NOT_THIS_RUN = ("give another run_dir, or move config.yaml out of the directory (resume=never moves everything "
                 "in it to previous-<n>/)")


def _refuse_another_run(cfg: DictConfig, run_dir: Path) -> None:
    """Refuse a directory whose saved config names another model, adapter, data or optimizer."""
    from tuneforge.training.checkpoint import CheckpointError, identity_defaults, identity_differences, run_identity

    if (run_dir / "config.yaml").is_file():
        differences = identity_differences(run_identity(saved_config(run_dir, _NOT_THIS_RUN)), run_identity(cfg),
                                           identity_defaults(cfg))
        if differences:
            raise CheckpointError(f"{run_dir} holds a different run: {'; '.join(differences)}. Use another run "
                                  "directory, or resume=never to overwrite it")


#: ``{run directory: time.monotonic_ns() when this process last started a run there}`` (:func:`started_since`)
_RUN_STARTS: dict = {}


def started_since(run_dir, since_ns: int) -> bool:
    """Whether this process started a run of its own in ``run_dir`` (wrote ``running`` into its status.json)
    at ``since_ns`` (``time.monotonic_ns()``) or later: a ``-m`` sweep job records its failure in its run
    directory only then, never in one that holds another run it was refused (:mod:`tuneforge.commands.sweep`)."""
    return _RUN_STARTS.get(_log_key(Path(run_dir)), -1) >= since_ns


def write_running_status(run_dir: Path, resumed_from, earlier_segments: list, from_step: int, **segment) -> None:
    """``status.json`` of a run that is running: its earlier ``segments`` and this one, from ``from_step``,
    marked ``running`` (with ``segment``'s fields, e.g. its ``precision``), so that a process killed
    later leaves what a resume needs to close it (:func:`close_killed_segments`)."""
    import time

    _RUN_STARTS[_log_key(Path(run_dir))] = time.monotonic_ns()
    write_status(run_dir, {"status": "running", "resumed_from": None if resumed_from is None else str(resumed_from),
                           "segments": [*earlier_segments, {"from_step": from_step, "status": "running", **segment}]})


def segment_history(run_dir: Path) -> list:
    """The training segments recorded so far (one per start or resume), from ``status.json``."""
    return list(read_status(run_dir).get("segments") or [])


def summed_throughput(segments: list) -> dict:
    """Tokens, fit time and tokens/s over all segments of a run (each segment as ``throughput``)."""
    tokens = sum(int(s.get("tokens") or 0) for s in segments)
    seconds = sum(float(s.get("fit_time_s") or 0.0) for s in segments)
    timed = sum(float(s.get("timed_s") or s.get("fit_time_s") or 0.0) for s in segments)
    timed_tokens = sum(int(s.get("timed_tokens") if s.get("timed_tokens") is not None else s.get("tokens") or 0)
                       for s in segments)
    return {"fit_time_s": seconds, "tokens": tokens, "tokens_per_s": timed_tokens / max(timed, 1e-9),
            "segments": len(segments),
            # the first optimizer step of every segment (its warm-up) is left out of tokens_per_s
            "excludes_warmup_steps": sum(int(s.get("excludes_warmup_steps") or 0) for s in segments)}


#: the rows of a run's earlier segments while a resumed segment trains (Lightning's CSV logger starts
#: ``metrics.csv`` afresh on resume); merged back into ``metrics.csv`` when the segment ends
HISTORY_FILE = "metrics_history.csv"


def read_metric_rows(path: Path) -> list:
    import csv

    if not path.is_file():
        return []
    try:
        with path.open(newline="") as handle:
            return [row for row in csv.DictReader(handle) if _step(row) is not None]
    except (OSError, csv.Error, UnicodeDecodeError):
        return []


def _step(row: dict) -> Optional[int]:
    try:
        return int(float(row.get("step")))
    except (TypeError, ValueError):
        return None


def _write_rows(path: Path, rows: list) -> None:
    """``rows`` as CSV at ``path``, atomically (temporary file, fsync, rename)."""
    import csv
    import os

    columns = list(dict.fromkeys(key for row in rows for key in row))
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
        handle.flush()
        os.fsync(handle.fileno())
    tmp.replace(path)


def merged_metric_rows(run_dir: Path, before_step: Optional[int] = None) -> list:
    """Every metric row of the run so far, each logged step once: the saved history of earlier segments
    (``metrics_history.csv``) up to where ``metrics.csv`` starts, then ``metrics.csv``; only the rows of
    steps below ``before_step`` when given (a resume logs the later ones again).

    Holds after a kill at any moment: before the logger truncated ``metrics.csv`` (it still holds the
    killed segment's rows), after (the history has the earlier ones), and after the final merge (then
    ``metrics.csv`` starts at step 0 and the history adds nothing).
    """
    run_dir = Path(run_dir)
    earlier = read_metric_rows(run_dir / HISTORY_FILE)
    current = read_metric_rows(run_dir / "metrics.csv")
    if current:
        start = min(_step(row) for row in current)
        earlier = [row for row in earlier if _step(row) < start]
    rows = earlier + current
    return rows if before_step is None else [row for row in rows if _step(row) < before_step]


def save_metric_history(run_dir: Path, before_step: int, checkpoint_row: Optional[dict] = None) -> list:
    """Main process, before a resumed segment's fit: keep the rows of steps below ``before_step`` in
    ``metrics_history.csv`` (atomically), so that Lightning's CSV logger may start ``metrics.csv`` afresh;
    returns them.  A fresh start (``before_step`` 0) removes an old history.

    ``checkpoint_row``: the row of the resumed checkpoint's own step, kept in the checkpoint
    (:func:`~tuneforge.training.checkpoint_callback.pending_step_row`); added when the process was killed
    after writing the checkpoint but before logging that row."""
    run_dir = Path(run_dir)
    rows = merged_metric_rows(run_dir, before_step) if before_step > 0 else []
    if before_step > 0 and checkpoint_row:
        rows = _with_row(rows, checkpoint_row, before_step)
    if rows:
        _write_rows(run_dir / HISTORY_FILE, rows)
    else:
        (run_dir / HISTORY_FILE).unlink(missing_ok=True)
    return rows


def _with_row(rows: list, row: dict, before_step: int) -> list:
    """``rows`` with ``row`` in step order, unless a row of its step already holds its metrics."""
    step = _step(row)
    if step is None or step >= before_step:
        return rows
    metrics = [key for key in row if key not in ("step", "epoch")]
    if any(_step(r) == step and all(r.get(key) not in (None, "") for key in metrics) for r in rows):
        return rows
    position = next((i for i, r in enumerate(rows) if _step(r) > step), len(rows))
    return [*rows[:position], {key: str(value) for key, value in row.items()}, *rows[position:]]


def keep_metric_history(run_dir: Path) -> None:
    """Main process, after a segment's fit: ``metrics.csv`` = the history of earlier segments + this
    segment's rows (atomically), then the history file goes."""
    run_dir = Path(run_dir)
    if (run_dir / HISTORY_FILE).is_file():
        _write_rows(run_dir / "metrics.csv", merged_metric_rows(run_dir))
        (run_dir / HISTORY_FILE).unlink(missing_ok=True)


def reached_step(run_dir: Path, checkpoint_step: int) -> int:
    """How far a killed segment got: the higher of its last checkpoint and its last logged row."""
    steps = [_step(row) + 1 for row in read_metric_rows(Path(run_dir) / "metrics.csv")]
    return max([checkpoint_step, *steps])


def close_killed_segments(segments: list, reached: int) -> list:
    """The recorded segments with one still marked ``running`` (its process died: SIGKILL, a crash, a lost
    node) marked ``interrupted``, ``to_step`` = ``reached`` (at least its ``from_step``)."""
    closed = []
    for segment in segments:
        if segment.get("status") == "running":
            segment = dict(segment, status="interrupted", killed=True,
                           to_step=max(int(segment.get("from_step") or 0), int(reached)))
        closed.append(segment)
    return closed


def write_outputs(directory: Path, cfg: DictConfig, metrics: dict, predictions: list,
                  metrics_csv: Optional[Path] = None, title: str = "tuneforge run report") -> None:
    """``metrics.json`` (through its one writer, :func:`tuneforge.evaluation.metrics_file.write_metrics`, which
    sets ``schema_version``), ``predictions.jsonl`` and the report (``report.md``, ``report.html``, PNG plots)."""
    from tuneforge.evaluation.metrics_file import write_metrics
    from tuneforge.evaluation.report import overfitting_signal, read_loss_curves, write_predictions, write_report

    directory.mkdir(parents=True, exist_ok=True)
    if metrics_csv is not None:
        metrics["overfitting"] = overfitting_signal(read_loss_curves(metrics_csv), metrics.get("tuned", {}),
                                                    metrics.get("metric_info"))
    write_metrics(directory / "metrics.json", metrics)
    write_predictions(directory / "predictions.jsonl", predictions)
    write_report(directory, metrics, config_yaml=resolved_config_yaml(cfg), predictions=predictions,
                 metrics_csv=metrics_csv, title=title)
