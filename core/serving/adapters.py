"""The runs a server answers for: one base model, each run's adapter on it by name, and ``base``.

The first run is loaded exactly as ``tuneforge generate`` loads it
(:func:`tuneforge.commands.run_loading.load_run`: its adapter plugin's ``load``; a model folder written by
``tuneforge export``, with its ``system_prompt.json``, is served alone).  Every further
run must have trained an adapter that peft saved (``model/adapter_config.json``) on the same base
(the same ``model.*`` config); its adapter is added to the first run's peft model with
``load_adapter`` under a name of its own, so the base weights are in memory once.  A request's
``model`` field picks the run by its name (the run directory's name) or ``base``: the model with
the adapters disabled.  Each run keeps its own tokenizer, which carries the chat template it was
trained with, and its own training system prompt (``model/system_prompt.json``, when every training
example started with the same one), which a chat request without a system message gets; ``base``
uses the first run's tokenizer and system prompt, so base and tuned are asked alike.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from tuneforge.commands.run_loading import (LoadedRun, RunDirectoryError, load_run, load_run_tokenizer,
                                            read_run_config, recorded_system_prompt)
from tuneforge.errors import first_line

#: the ``model`` name that selects the base model without any adapter
BASE = "base"


@dataclass
class ServedModel:
    """One name a request can give as ``model``: its tokenizer (with the run's chat template), the peft
    adapter it activates (None for ``base`` or a run without a peft adapter), its run directory, and the
    system prompt a chat request without a system message gets (the run's training one, or None)."""

    name: str
    tokenizer: Any
    adapter: Optional[str]
    run_dir: Optional[Path]
    system_prompt: Optional[str] = None


class AdapterRegistry:
    """The loaded model and the names it answers to (see the module docstring)."""

    def __init__(self, loaded: LoadedRun, models: dict):
        self.loaded = loaded
        self.models: dict[str, ServedModel] = models

    @property
    def model(self):
        return self.loaded.model

    @property
    def device(self):
        return self.loaded.device

    @property
    def context_length(self) -> int:
        """The longest sequence (prompt plus reply) the model takes."""
        config = self.model.config
        for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
            if isinstance(getattr(config, key, None), int):
                return getattr(config, key)
        return int(getattr(self.loaded.tokenizer, "model_max_length", 2048))

    def get(self, name: str) -> Optional[ServedModel]:
        return self.models.get(name)

    @contextlib.contextmanager
    def activate(self, name: str):
        """Generate with ``name``'s adapter active (or none for ``base``) inside the block."""
        served = self.models[name]
        if served.adapter is None and is_peft_model(self.model):
            with self.model.disable_adapter():
                yield
            return
        if served.adapter is not None:
            self.model.set_adapter(served.adapter)
        yield


def is_peft_model(model) -> bool:
    return all(hasattr(model, name) for name in ("peft_config", "load_adapter", "set_adapter", "disable_adapter"))


def find_run_dirs(paths) -> list[Path]:
    """Each path as a run directory (or a model folder ``tuneforge export`` wrote), or, for a folder that is
    neither, the run directories in it (sorted by name); a path that is none of these is a one-line error."""
    from tuneforge.commands.export_folder import is_export_folder

    found: list[Path] = []
    for given in paths:
        path = Path(given).expanduser()
        if (path / "config.yaml").is_file() or is_export_folder(path) or not path.is_dir():
            found.append(path)  # read_run_config reports what is wrong with it
            continue
        runs = sorted(child for child in path.iterdir() if (child / "config.yaml").is_file() and (child / "model").is_dir())
        if not runs:
            raise RunDirectoryError(f"run_dir={given} is neither a run directory nor a folder of run directories "
                                    "(none of its subfolders has config.yaml and model/)")
        found += runs
    return found


def base_identity(cfg) -> dict:
    """The run's ``model.*`` config (flat), which says which base its adapter was trained on."""
    from tuneforge.training.model_io import model_config_identity

    return {key: value for key, value in model_config_identity(cfg).items() if key.startswith("model.")}


def _served_names(run_dirs: list) -> list[str]:
    names = [path.resolve().name for path in run_dirs]
    for path, name in zip(run_dirs, names):
        if name == BASE:
            raise RunDirectoryError(f"run_dir={path}: a run named '{BASE}' cannot be served: the name selects the "
                                    "base model; rename or copy the run directory")
        if names.count(name) > 1:
            twins = [str(p) for p, n in zip(run_dirs, names) if n == name]
            raise RunDirectoryError(f"run_dir: two runs are named '{name}' ({', '.join(twins)}); requests pick a "
                                    "run by its directory's name, so rename or copy one")
    return names


def _check_same_base(first_dir, first_cfg, run_dir, cfg) -> None:
    want, have = base_identity(first_cfg), base_identity(cfg)
    if want != have:
        differ = sorted(k for k in set(want) | set(have) if want.get(k) != have.get(k))
        shown = ", ".join(f"{k}={have.get(k)!r} (not {want.get(k)!r})" for k in differ[:3])
        raise RunDirectoryError(f"run_dir={run_dir} was trained on another base than run_dir={first_dir}: {shown}; "
                                "serve runs of one base together (one server per base)")


def _load_extra_adapter(registry: AdapterRegistry, run_dir: Path, name: str, peft_name: str, force: bool,
                        first_dir: Path) -> ServedModel:
    from tuneforge.commands.export_folder import is_export_folder

    if is_export_folder(run_dir):
        raise RunDirectoryError(f"run_dir={run_dir} is an exported (merged) model, so it cannot share a base with "
                                "other runs; serve it alone")
    cfg = read_run_config(run_dir, force=force)
    _check_same_base(first_dir, registry.loaded.config, run_dir, cfg)
    if not (run_dir / "model" / "adapter_config.json").is_file():
        adapter = (cfg.get("adapter") or {}).get("name")
        raise RunDirectoryError(f"run_dir={run_dir} saved no peft adapter (adapter={adapter}: no "
                                "model/adapter_config.json), so it cannot share a base with other runs; serve it alone")
    try:
        registry.model.load_adapter(str(run_dir / "model"), adapter_name=peft_name)
    except (ValueError, KeyError, RuntimeError, OSError) as exc:
        raise RunDirectoryError(f"run_dir={run_dir}: its adapter cannot be added to run_dir={first_dir}'s base: "
                                f"{first_line(exc)}") from None
    return ServedModel(name, load_run_tokenizer(run_dir, cfg), peft_name, run_dir, recorded_system_prompt(run_dir))


def load_registry(paths, force: bool = False, device: str = "auto") -> AdapterRegistry:
    """Load the runs at ``paths`` (run directories or folders of them) onto one base model."""
    run_dirs = find_run_dirs(paths)
    names = _served_names(run_dirs)
    first_dir = run_dirs[0]
    loaded = load_run(first_dir, force=force, device=device)
    peft = is_peft_model(loaded.model)
    if len(run_dirs) > 1 and not peft:
        adapter = (loaded.config.get("adapter") or {}).get("name")
        what = f"trained no peft adapter (adapter={adapter})" if adapter else "is an exported (merged) model"
        raise RunDirectoryError(f"run_dir={first_dir} {what}, so other runs cannot share its base; serve it alone, "
                                "or list a LoRA run first")
    first_adapter = getattr(loaded.model, "active_adapter", None) if peft else None
    models = {names[0]: ServedModel(names[0], loaded.tokenizer, first_adapter, first_dir, loaded.system_prompt)}
    registry = AdapterRegistry(loaded, models)
    for index, (run_dir, name) in enumerate(zip(run_dirs[1:], names[1:]), start=1):
        models[name] = _load_extra_adapter(registry, run_dir, name, f"served_{index}", force, first_dir)
    if peft:
        models[BASE] = ServedModel(BASE, loaded.tokenizer, None, None, loaded.system_prompt)
        loaded.model.set_adapter(first_adapter)
    loaded.model.eval()
    return registry
