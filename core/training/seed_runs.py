"""``evidence.seeds=N``: one run trained and evaluated N times, with seeds ``seed``, ``seed+1``, ...

The command (``tuneforge train``) loops over :func:`seed_runs`; each is a
complete, normal run directory ``<run_dir>/seed-<seed>/`` whose saved config
has its own ``seed``, ``evidence.seeds=1`` and its own ``run_dir``, so
``eval``, ``generate``, ``compare`` and a resume treat it like any run.  A
rerun of the same command skips the seeds that completed
(:func:`completed_metrics`) and resumes the interrupted one from its
checkpoint.  :func:`write_seed_summary` folds the seeds' ``metrics.json``
(:func:`tuneforge.evaluation.seeds.fold_seed_runs`) into ``<run_dir>/seeds.json``
and ``<run_dir>/seeds.md``.
"""

from __future__ import annotations

import copy
import logging
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from tuneforge.errors import ConfigError

log = logging.getLogger("tuneforge")

#: the folder of one seed's run inside the seeds' run directory
SEED_DIR = "seed-{seed}"
#: the folded result of the seeds, in the seeds' run directory
SEEDS_FILE = "seeds.json"
#: config keys that may differ between a completed seed run and the same command run again
_NOT_SETTINGS = ("run_dir", "resume")


@dataclass(frozen=True)
class SeedRun:
    """One seed of an ``evidence.seeds=N`` run: its seed, its run directory and its resolved config."""

    seed: int
    run_dir: Path
    config: object

    def overrides(self) -> dict:
        """The settings that make the composed config this seed's (for a process started anew, a DDP child)."""
        return {"seed": self.seed, "evidence.seeds": 1, "run_dir": str(self.run_dir)}


def seed_runs(cfg, run_dir: Path) -> list[SeedRun]:
    """One :class:`SeedRun` per seed of ``cfg.evidence.seeds``, in ``run_dir``; a one-line
    :class:`~tuneforge.ConfigError` when ``run_dir`` holds a single run or ``resume`` names one checkpoint."""
    from omegaconf import open_dict

    from tuneforge.training.run_dir import read_status

    run_dir = Path(run_dir)
    count = int(cfg.evidence.seeds)
    if str(cfg.resume) not in ("auto", "never", "none", "false", ""):
        raise ConfigError(f"resume={cfg.resume}: with evidence.seeds={count} each seed resumes from its own "
                          f"{SEED_DIR.format(seed='<seed>')} directory; use resume=auto or resume=never")
    if read_status(run_dir):
        raise ConfigError(f"run_dir={run_dir} holds a single run (status.json); evidence.seeds={count} needs a "
                          "directory of its own (another run_dir)")
    runs = []
    for seed in range(int(cfg.seed), int(cfg.seed) + count):
        config = copy.deepcopy(cfg)
        where = run_dir / SEED_DIR.format(seed=seed)
        with open_dict(config):
            config.seed, config.evidence.seeds, config.run_dir = seed, 1, str(where)
        runs.append(SeedRun(seed, where, config))
    return runs


def completed_metrics(run: SeedRun) -> Optional[dict]:
    """The ``metrics.json`` of ``run``'s directory when it holds this seed's completed run (the
    command skips it); None when the seed still has to be trained or resumed, or ``resume=never``
    trains it again.  A completed run with other settings is refused (one line naming them)."""
    from tuneforge.training.run_dir import read_status, starts_over

    metrics_file = run.run_dir / "metrics.json"
    if starts_over(run.config.resume) or read_status(run.run_dir).get("status") != "completed" \
            or not metrics_file.is_file():
        return None
    differences = setting_differences(run.run_dir / "config.yaml", run.config)
    if differences:
        from tuneforge.training.checkpoint import CheckpointError

        raise CheckpointError(f"{run.run_dir} holds a completed run with other settings: {'; '.join(differences)}; "
                              "train the seeds again with resume=never, or use another run_dir")
    log.info("seed %d: completed in %s, its metrics are reused", run.seed, run.run_dir)
    from tuneforge.evaluation.metrics_file import read_metrics

    return read_metrics(metrics_file)


def setting_differences(saved_config: Path, cfg) -> list[str]:
    """``key (saved -> now)`` for each setting of the saved ``config.yaml`` that ``cfg`` changes (``run_dir`` and
    ``resume`` may differ: a completed seed, or a completed sweep job, run again)."""
    import yaml

    from tuneforge.training.run_dir import resolved_config_yaml

    saved = flat_settings(yaml.safe_load(saved_config.read_text()) if saved_config.is_file() else {})
    now = flat_settings(yaml.safe_load(resolved_config_yaml(cfg)))
    keys = sorted(k for k in set(saved) | set(now) if k not in _NOT_SETTINGS)
    return [f"{k} ({saved.get(k, '<unset>')!r} -> {now.get(k, '<unset>')!r})" for k in keys
            if saved.get(k, "<unset>") != now.get(k, "<unset>")]


def flat_settings(node, prefix: str = "") -> dict:
    """``{dotted key: value}`` of the leaves of a nested dict (a config as plain containers)."""
    if isinstance(node, dict):
        return {key: value for k, v in node.items() for key, value in flat_settings(v, f"{prefix}{k}.").items()}
    return {prefix[:-1]: node}


@contextmanager
def seed_log(run: SeedRun, enabled: bool = True):
    """While a seed trains, the log also goes to ``<seed dir>/train.log`` (formatted like the job log of
    the command, which keeps the whole log), so the seed's directory holds its own log like any run."""
    if not enabled:
        yield
        return
    root = logging.getLogger()
    run.run_dir.mkdir(parents=True, exist_ok=True)
    from tuneforge.training.run_dir import LOG_FILE, note_log_start, open_log_file

    note_log_start(run.run_dir)  # what came before is an earlier run's (resume=never moves it aside)
    handler = open_log_file(run.run_dir / LOG_FILE)  # formatted like the job log
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)
        handler.close()


def write_seed_summary(run_dir: Path, runs: list[SeedRun], metrics: list[dict]) -> dict:
    """Fold the seeds' metrics into ``<run_dir>/seeds.json`` and ``seeds.md``; returns the fold
    (:func:`~tuneforge.evaluation.seeds.fold_seed_runs`, plus ``runs``: each seed's folder name)."""
    from tuneforge.evaluation.seeds import fold_seed_runs, seed_summary_markdown
    from tuneforge.training.run_dir import write_json

    fold = fold_seed_runs(metrics, seeds=[run.seed for run in runs])
    fold["runs"] = [run.run_dir.name for run in runs]
    write_json(Path(run_dir) / SEEDS_FILE, fold)
    (Path(run_dir) / "seeds.md").write_text(seed_summary_markdown(fold, fold["runs"]))
    return fold
