"""The directories Hydra makes for a job before tuneforge validates its config, and taking them back.

``hydra.main`` creates the job's output directory (``hydra.run.dir``; with
``-m``, ``hydra.sweep.dir`` and the job's subdirectory) and opens its job log
there before it calls the task function, so before tuneforge can check the
composed config.  :class:`OutputDirWatch`, a Hydra callback configured in
``conf/config.yaml``, notes which of those directories did not exist yet; when
validation refuses the run (or a sweep job's config cannot be composed),
:func:`discard_new_output_dir` removes what Hydra made for it -- never a
directory that existed before the command started (an existing
``hydra.run.dir`` given to resume a run stays as it was).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Optional

from hydra.experimental.callback import Callback

#: what the callback noted for the current command: the outermost missing directory of
#: ``hydra.run.dir`` (``run``) or ``hydra.sweep.dir`` (``sweep``), and the sweep directory itself
_NEW: dict = {}


def _outermost_missing(path) -> Optional[Path]:
    """The outermost directory on the way to ``path`` that does not exist (None: ``path`` exists)."""
    path = Path(str(path)).absolute()
    if path.exists():
        return None
    while not path.parent.exists():
        path = path.parent
    return path


class OutputDirWatch(Callback):
    """Notes, before Hydra makes them, which output directories of this command are new."""

    def on_run_start(self, config: Any, **kwargs: Any) -> None:
        _NEW.clear()
        _NEW["run"] = _outermost_missing(config.hydra.run.dir)

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        _NEW.clear()
        _NEW["sweep"] = _outermost_missing(config.hydra.sweep.dir)
        _NEW["sweep_dir"] = Path(str(config.hydra.sweep.dir)).absolute()


def current_sweep_dir() -> Optional[Path]:
    """The sweep directory of the ``-m`` sweep this command ran (None before one started)."""
    return _NEW.get("sweep_dir")


def _inside(path: Path, root: Optional[Path]) -> bool:
    return root is not None and (path == root or root in path.parents)


def discard_new_output_dir(output_dir=None) -> None:
    """Remove the job's output directory if this command created it (a refused run leaves nothing).

    In a sweep only the job's own directory goes, and the sweep directory when
    nothing but Hydra's ``multirun.yaml`` is left in it (also when a job's
    config could not be composed: ``output_dir`` None).
    """
    if output_dir is not None:
        output_dir = Path(str(output_dir)).absolute()
        if _inside(output_dir, _NEW.get("run")):
            shutil.rmtree(_NEW["run"], ignore_errors=True)
            return
        if not _inside(output_dir, _NEW.get("sweep")):
            return
        shutil.rmtree(output_dir, ignore_errors=True)
    sweep_dir = _NEW.get("sweep_dir")
    if _NEW.get("sweep") is not None and sweep_dir.is_dir() and all(
            p.name == "multirun.yaml" for p in sweep_dir.iterdir()):
        shutil.rmtree(_NEW["sweep"], ignore_errors=True)
