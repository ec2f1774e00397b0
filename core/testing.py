"""Helpers for plugin authors: run a tiny CPU fine-tune with your plugin registered.

    from tuneforge.testing import run_tiny_fit

    def test_my_adapter(tmp_path):
        result = run_tiny_fit(tmp_path, plugins=[my_plugin_module], overrides=["adapter=my_adapter"])
        assert result.metrics["steps"] == 5

The same is available as the pytest fixture ``tuneforge_fit`` (this module is a
pytest plugin through the ``pytest11`` entry point): ``tuneforge_fit(plugins=...,
overrides=...)`` runs in a fresh temporary directory.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

#: overrides that make a run small enough for a unit test on one CPU core
TINY_OVERRIDES = (
    "model=tiny",
    "trainer.max_steps=5",
    "trainer.accelerator=cpu",
    "trainer.devices=1",
    "trainer.enable_progress_bar=false",
    "loader.batch_size=4",
    "threads=1",
)


@dataclass
class FitResult:
    """What a tiny fit produced: final ``metrics``, its ``run_dir``, the composed ``config`` and the
    validated ``components`` (each component's spec and the typed config instance it was given)."""

    metrics: dict
    run_dir: Path
    config: object
    components: object = None


def run_tiny_fit(run_dir, plugins: Iterable = (), overrides: Sequence[str] = ()) -> FitResult:
    """Compose the config with ``TINY_OVERRIDES`` + ``overrides`` and train the tiny model.

    ``plugins`` are modules or objects with ``tuneforge_*`` hooks, registered
    next to the installed ones (their components become Hydra choices).  The
    config is composed once (Hydra's compose API) and validated once, like a
    ``tuneforge train`` run: a bad value raises ``ConfigError`` before the
    model loads.
    """
    from tuneforge.host.components import run_components
    from tuneforge.host.compose import compose, load_plugins, run_train

    all_overrides = [*TINY_OVERRIDES, *overrides, f"run_dir={Path(run_dir)}"]
    loaded = load_plugins(all_overrides, extra_plugins=plugins)
    cfg = compose(all_overrides)
    components = run_components(cfg, loaded)
    metrics = run_train(cfg, loaded, components=components)
    return FitResult(metrics=metrics, run_dir=Path(run_dir), config=cfg, components=components)


try:
    import pytest
except ImportError:  # pragma: no cover - pytest is only needed by plugin test suites
    pytest = None

if pytest is not None:

    @pytest.fixture
    def tuneforge_fit(tmp_path_factory):
        """Call ``tuneforge_fit(plugins=[...], overrides=[...])`` to run :func:`run_tiny_fit`."""

        def fit(plugins: Iterable = (), overrides: Sequence[str] = ()) -> FitResult:
            return run_tiny_fit(tmp_path_factory.mktemp("tuneforge-run"), plugins, overrides)

        return fit
