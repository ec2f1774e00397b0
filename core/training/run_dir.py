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
    """Write JSON atomically (temporary file, then rename)."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(value, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)


def resolved_config_yaml(cfg: DictConfig) -> str:
    """The resolved config as YAML with secrets (tokens, API keys) replaced by ``***``."""
    from tuneforge.secrets import redact

    return OmegaConf.to_yaml(OmegaConf.create(redact(OmegaConf.to_container(cfg, resolve=True))))


def prepare_run_dir(cfg: DictConfig, run_dir: Path) -> Optional[Path]:
    """Check the run directory against ``cfg.resume``; return the checkpoint to resume from.

    A directory that already holds another run (different model, adapter or
    data) or a completed run is refused unless ``resume=never``.
    """
    from tuneforge.training.checkpoint import (
        CheckpointError, check_same_run, identity_differences, resolve_resume, run_identity)

    checkpoint = resolve_resume(str(cfg.resume), run_dir)
    if checkpoint is not None:
        check_same_run(checkpoint, cfg)
        log.info("resuming from %s", checkpoint)
        return checkpoint
    if str(cfg.resume) in ("never", "none", "false"):
        return None
    saved_config, status_file = run_dir / "config.yaml", run_dir / "status.json"
    if saved_config.is_file():
        differences = identity_differences(run_identity(OmegaConf.load(saved_config)), run_identity(cfg))
        if differences:
            raise CheckpointError(f"{run_dir} holds a different run: {'; '.join(differences)}. Use another run "
                                  "directory, or resume=never to overwrite it")
    if status_file.is_file() and json.loads(status_file.read_text()).get("status") == "completed":
        raise CheckpointError(f"{run_dir} holds a completed run; use another run directory, or resume=never to "
                              "train it again from the start")
    return None


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
