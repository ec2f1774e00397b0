"""Reading and writing a run directory: atomic JSON, the redacted config, the resume decision,
the metric history across resumes, and the final outputs (metrics, predictions, report)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Optional

from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("tuneforge")


def write_json(path: Path, value) -> None:
    """Write JSON atomically (temporary file, then rename); a failed write (a full disk) leaves no
    temporary file behind when it can be removed."""
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


def starts_over(cfg: DictConfig) -> bool:
    """True when ``cfg.resume`` says never to resume (``never``, ``none``, ``false``)."""
    return str(cfg.resume) in ("never", "none", "false")


def prepare_run_dir(cfg: DictConfig, run_dir: Path, world_size: Optional[int] = None) -> Optional[Path]:
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
    """
    from tuneforge.training.checkpoint import CheckpointError, check_same_run, check_same_world_size, resolve_resume

    never = starts_over(cfg)
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
        log.info("resuming from %s", checkpoint)
        return checkpoint
    if not (never or trained_nothing(status)):
        _refuse_another_run(cfg, run_dir)
    return None


#: what stays in place when ``resume=never`` moves an earlier run's outputs aside: the lock, this
#: command's own job log (Hydra opened it before the run started) and the earlier runs moved aside before
KEPT_IN_PLACE = (".lock", "train.log")
PREVIOUS_PREFIX = "previous-"


def move_earlier_outputs(cfg: DictConfig, run_dir: Path) -> Optional[Path]:
    """With ``resume=never``, move everything an earlier run left in ``run_dir`` into
    ``<run_dir>/previous-<n>/`` (n = 1, 2, ...) before anything new is written; return that folder
    (None when there was nothing to move).

    So a retrain that fails never leaves a mixed directory (the earlier ``model/`` and report next to
    the new ``config.yaml``), and a later ``resume=auto`` finds only the new run's checkpoints.
    Called by the main process only, after :func:`prepare_run_dir`, while it holds the run lock.
    """
    if not starts_over(cfg) or not run_dir.is_dir():
        return None
    earlier = [p for p in run_dir.iterdir()
               if p.name not in KEPT_IN_PLACE and not p.name.startswith((PREVIOUS_PREFIX, ".write-test-"))]
    if not earlier:
        return None
    taken = [int(p.name[len(PREVIOUS_PREFIX):]) for p in run_dir.glob(f"{PREVIOUS_PREFIX}*")
             if p.name[len(PREVIOUS_PREFIX):].isdigit()]
    target = run_dir / f"{PREVIOUS_PREFIX}{max(taken, default=0) + 1}"
    target.mkdir()
    for path in earlier:
        path.rename(target / path.name)
    log.info("resume=never: moved the earlier run's %d output(s) to %s", len(earlier), target)
    return target


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


def _refuse_another_run(cfg: DictConfig, run_dir: Path) -> None:
    """Refuse a directory whose saved config names another model, adapter or data."""
    from tuneforge.training.checkpoint import CheckpointError, identity_differences, run_identity

    saved_config = run_dir / "config.yaml"
    if saved_config.is_file():
        differences = identity_differences(run_identity(OmegaConf.load(saved_config)), run_identity(cfg))
        if differences:
            raise CheckpointError(f"{run_dir} holds a different run: {'; '.join(differences)}. Use another run "
                                  "directory, or resume=never to overwrite it")


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


def read_metric_rows(path: Path) -> list:
    import csv

    if not path.is_file():
        return []
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def keep_metric_history(path: Path, history: list, before_step: int) -> None:
    """Put the rows logged before a resume (steps < ``before_step``) back in front of the new ones."""
    import csv

    earlier = [row for row in history if row.get("step") and int(row["step"]) < before_step]
    later = read_metric_rows(path)
    columns = list(dict.fromkeys([*(history[0] if history else {}), *(later[0] if later else {})]))
    tmp = path.with_suffix(".csv.tmp")
    with tmp.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(earlier + later)
    tmp.replace(path)


def write_outputs(directory: Path, cfg: DictConfig, metrics: dict, predictions: list,
                  metrics_csv: Optional[Path] = None, title: str = "tuneforge run report") -> None:
    """``metrics.json``, ``predictions.jsonl`` and the report (``report.md``, ``report.html``, PNG plots)."""
    from tuneforge.evaluation.report import overfitting_signal, read_loss_curves, write_predictions, write_report

    directory.mkdir(parents=True, exist_ok=True)
    if metrics_csv is not None:
        metrics["overfitting"] = overfitting_signal(read_loss_curves(metrics_csv), metrics.get("tuned", {}),
                                                    metrics.get("metric_info"))
    write_json(directory / "metrics.json", metrics)
    write_predictions(directory / "predictions.jsonl", predictions)
    write_report(directory, metrics, config_yaml=resolved_config_yaml(cfg), predictions=predictions,
                 metrics_csv=metrics_csv, title=title)
