"""Small helpers shared by the tests (not a pytest plugin)."""

import csv
import os
import subprocess
import sys
from pathlib import Path

FIXTURES = Path(__file__).parent / "plugin_fixtures"
TUNEFORGE = [sys.executable, "-m", "tuneforge"]


def run_cli(args, *, site_dirs=(), env=None, timeout=300, cwd=None):
    """Run ``python -m tuneforge`` with fixture site directories on PYTHONPATH."""
    full_env = dict(os.environ)
    paths = [str(FIXTURES / d) for d in site_dirs]
    if full_env.get("PYTHONPATH"):
        paths.append(full_env["PYTHONPATH"])
    full_env["PYTHONPATH"] = os.pathsep.join(paths)
    full_env.update(env or {})
    return subprocess.run([*TUNEFORGE, *args], capture_output=True, text=True, env=full_env,
                          timeout=timeout, cwd=cwd)


def train_losses(run_dir) -> list:
    """The per-step ``train/loss`` column of a run's metrics.csv."""
    with open(Path(run_dir) / "metrics.csv") as handle:
        return [float(row["train/loss"]) for row in csv.DictReader(handle) if row.get("train/loss")]


def adamw_component():
    """The built-in ``optimizer=adamw`` as the run gives it to ``FineTuneModule`` (spec + typed config)."""
    import tuneforge
    from tuneforge.host.components import Component
    from tuneforge.plugins.optimizers import AdamWConfig, build_adamw

    return Component(tuneforge.OptimizerSpec("adamw", AdamWConfig, build=build_adamw), AdamWConfig())
