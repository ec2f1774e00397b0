"""A run directory turned back into a model the way the run built it (``generate``, ``chat``,
``eval``, ``export``):

1. ``config.yaml`` names the adapter (``adapter.name``) and the model source;
   both are looked up in the plugin registry, so a run made with a
   third-party adapter or model source needs that plugin installed;
2. ``model/`` holds what the run's adapter saved; the adapter spec's ``load``
   puts it back (onto the base model, loaded through
   :func:`tuneforge.training.model_io.load_model_from_config`, when the
   adapter needs one);
3. the tokenizer saved in ``model/`` is used; it carries the chat template
   the training data was rendered with;
4. ``model/system_prompt.json``, when the run wrote it, holds the system
   prompt every training example started with (:func:`recorded_system_prompt`):
   the default system prompt of ``generate``, ``chat`` and ``serve``.

A model folder written by ``tuneforge export`` (which copies ``system_prompt.json``
into it) is read by :func:`load_run` too (:mod:`tuneforge.commands.export_folder`).

Importing this module is cheap: torch and transformers are imported inside the
functions that need them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from tuneforge.commands.key_values import ArgumentError
from tuneforge.errors import TuneforgeError



class RunDirectoryError(TuneforgeError):
    """The directory is not a usable tuneforge run directory."""


# --------------------------------------------------------------------------- arguments


def read_run_config(run_dir, force: bool = False, allow_interrupted: bool = False):
    """The resolved config of a finished run, after checking the directory is a run directory.

    Raises :class:`RunDirectoryError` (one line) when ``run_dir`` lacks ``config.yaml`` or ``model/``;
    when a live process is still training it (:func:`still_training`; with ``force`` and a ``model/``
    it is read all the same); and, unless ``force``, when ``status.json`` says ``failed`` (its ``model/``
    may be an earlier run's), ``running`` (``allow_interrupted``: only while a live process holds the run), or
    ``interrupted`` (unless ``allow_interrupted``), or when ``model/`` was saved by a run with another
    model, adapter or data config than ``config.yaml`` says (:func:`model_config_differences`).  A
    run whose status says ``running`` but whose process is gone is reported as "interrupted (the
    process died)".
    """
    from tuneforge.training.run_dir import ForeignConfig, saved_config
    from tuneforge.training.run_lock import DIED, describe_status

    run_dir = Path(run_dir).expanduser()
    if not run_dir.is_dir():
        raise RunDirectoryError(f"run_dir={run_dir} does not exist (give a directory written by tuneforge train)")
    status = run_status(run_dir)
    state = describe_status(run_dir, status)
    if state == "running" and not (force and (run_dir / "model").is_dir()):
        raise RunDirectoryError(still_training(run_dir))
    said = f"the run's status is '{status}'" + (f": it was {DIED}" if state == DIED else "")
    if state in (DIED, "failed", "running", "interrupted") and not (run_dir / "model").is_dir():
        error = _status_error(run_dir)
        raise RunDirectoryError(f"run_dir={run_dir}: {said}{error} and it saved no model/; train it again (or "
                                "resume it with the same tuneforge train command)")
    missing = [name for name, ok in (("config.yaml", (run_dir / "config.yaml").is_file()),
                                     ("model/", (run_dir / "model").is_dir())) if not ok]
    if missing:
        raise RunDirectoryError(f"run_dir={run_dir} is not a tuneforge run directory: no {' and no '.join(missing)} "
                                "(give a directory written by tuneforge train)")
    refused = ("failed",) + (("running",) if allow_interrupted else ("running", "interrupted", DIED))
    if state in refused and not force:
        raise RunDirectoryError(f"run_dir={run_dir}: {said}{_status_error(run_dir)}, so its model may be missing, "
                                "stale or an earlier run's; pass force=true to use it anyway")
    if state == DIED:
        import logging

        logging.getLogger("tuneforge").warning("run_dir=%s: %s; using the model/ it saved before", run_dir, said)
    try:
        cfg = saved_config(run_dir, "give the run_dir of a tuneforge train run")
    except ForeignConfig as exc:  # a user's own config.yaml
        raise RunDirectoryError(str(exc)) from None
    differences = model_config_differences(run_dir, cfg)
    if differences and not force:
        raise RunDirectoryError(f"run_dir={run_dir}: model/ was saved by a run with another config than its "
                                f"config.yaml ({'; '.join(differences)}), so it is not this run's model; train "
                                "again, or pass force=true to use it anyway")
    return cfg


def still_training(run_dir: Path) -> str:
    """The one line for a run that a live process is still training (it holds the run's lock and its
    ``status.json`` says ``running``): who holds it, and to wait for it or give a finished run."""
    from tuneforge.training.run_lock import LOCK_FILE, describe_holder

    saved = (" (or pass force=true to use the model/ it holds now)" if (run_dir / "model").is_dir()
             else ", so it has no model/ yet")
    return (f"run_dir={run_dir} is still training: {describe_holder(run_dir / LOCK_FILE)} holds it and its "
            f"status.json says running{saved}; wait for that run to finish (`tuneforge status {run_dir}` says "
            "when) and run this again, or give the run_dir of a finished run")


def model_config_differences(run_dir, cfg) -> list:
    """How the config that saved ``<run_dir>/model`` (its ``run_config.json``, written with it) differs
    from ``cfg`` in the model, adapter and data sections; [] when they agree or ``model/`` has no
    record (saved by an older tuneforge)."""
    from tuneforge.training.checkpoint import identity_differences
    from tuneforge.training.model_io import MODEL_CONFIG_RECORD, model_config_identity

    record = Path(run_dir).expanduser() / "model" / MODEL_CONFIG_RECORD
    try:
        saved = json.loads(record.read_text())
    except (OSError, ValueError):
        return []
    return identity_differences(saved, model_config_identity(cfg)) if isinstance(saved, dict) else []


def _status_error(run_dir) -> str:
    try:
        error = json.loads((Path(run_dir) / "status.json").read_text()).get("error")
    except (OSError, ValueError, AttributeError):
        return ""
    return f" ({error})" if error else ""


def run_status(run_dir) -> Optional[str]:
    """The ``status`` in ``<run_dir>/status.json``, or None when the file is absent or unreadable."""
    try:
        return json.loads((Path(run_dir) / "status.json").read_text()).get("status")
    except (OSError, ValueError, AttributeError):
        return None


def plugins_for_run(cfg):
    """The plugin manager with the run's plugin switches (plus the environment's)."""
    from tuneforge.host.plugin_manager import PluginSelection, create_plugin_manager

    switches = cfg.get("plugins") or {}
    return create_plugin_manager(PluginSelection.from_env(
        disable=list(switches.get("disable") or ()), enable=list(switches.get("enable") or ()),
        autoload=switches.get("autoload")))


def load_run_tokenizer(run_dir, cfg):
    """The tokenizer saved in ``<run_dir>/model``, with a pad token set."""
    from transformers import AutoTokenizer

    model_dir = Path(run_dir).expanduser() / "model"
    trust = bool((cfg.get("model") or {}).get("trust_remote_code", False))
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir), trust_remote_code=trust)
    except (OSError, ValueError) as exc:
        raise RunDirectoryError(f"{model_dir}: cannot load the saved tokenizer: {str(exc).splitlines()[0]}") from exc
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def run_adapter_spec(run_dir, cfg, plugins):
    """The :class:`~tuneforge.specs.AdapterSpec` the run was trained with (its ``adapter.name``)."""
    from tuneforge.errors import PluginError

    name = (cfg.get("adapter") or {}).get("name")
    if not name:
        raise RunDirectoryError(f"{Path(run_dir).expanduser() / 'config.yaml'}: has no adapter.name, so how "
                                "model/ was saved is unknown")
    try:
        return plugins["adapter"].get(name)
    except PluginError:
        raise RunDirectoryError(f"run_dir={run_dir} was trained with adapter '{name}', which no installed plugin "
                                f"provides (installed: {', '.join(plugins['adapter'].names())}); install the "
                                f"plugin that contributes adapter '{name}' to load its model/") from None


def load_run_model(run_dir, cfg, plugins=None, dequantize: bool = False):
    """The tuned model of a run, in eval mode on the CPU, loaded by the run's adapter spec.

    ``dequantize``: a base that the model source loads quantized (its spec's ``base_quantization``)
    is dequantized first (transformers' ``PreTrainedModel.dequantize``: the weights the quantized
    layers compute with, as plain ``nn.Linear``), so the adapter merges into full-precision weights
    (``export``)."""
    from tuneforge.training.model_io import (dequantized_base, load_model_from_config, load_saved_model,
                                             needs_base_model, trained_head)

    plugins = plugins or plugins_for_run(cfg)
    spec = run_adapter_spec(run_dir, cfg, plugins)
    head = trained_head(plugins, cfg)
    model_dir = Path(run_dir).expanduser() / "model"
    base = load_model_from_config(plugins, cfg.model, head=head)[0] if needs_base_model(spec, model_dir) else None
    if dequantize and base is not None:
        base = dequantized_base(plugins, cfg.model, base)
    model = load_saved_model(spec, base, model_dir,
                             trust_remote_code=bool(cfg.model.get("trust_remote_code", False)), head=head)
    model.eval()
    return model


def recorded_system_prompt(run_dir) -> Optional[str]:
    """The system prompt every training example of the run started with (``model/system_prompt.json``,
    which training writes only when they all started with the same one); None when the run wrote none
    (its examples differed or had none, or an older tuneforge saved ``model/``) or the file is unreadable."""
    return system_prompt_in(Path(run_dir).expanduser() / "model")


def system_prompt_in(folder) -> Optional[str]:
    """The system prompt recorded in ``<folder>/system_prompt.json`` (a run's ``model/``, or a folder
    ``tuneforge export`` wrote, which copies it); None without one or when it is unreadable."""
    from tuneforge.training.model_io import SYSTEM_PROMPT_RECORD

    try:
        record = json.loads((Path(folder) / SYSTEM_PROMPT_RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    text = record.get("system_prompt") if isinstance(record, dict) else None
    return text if isinstance(text, str) and text else None


@dataclass
class LoadedRun:
    """A run's tuned model and its tokenizer (which carries the chat template training used);
    ``system_prompt``: the one every training example started with (:func:`recorded_system_prompt`),
    or None."""

    model: Any
    tokenizer: Any
    config: Any
    device: Any
    system_prompt: Optional[str] = None


def resolve_device(name: str):
    """``auto`` -> ``cuda`` when available, else ``cpu``; anything else as given to torch."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(name)
    except RuntimeError as exc:
        raise ArgumentError(f"device='{name}' is not a torch device: {exc}") from None


def load_run(run_dir, force: bool = False, device: str = "auto") -> LoadedRun:
    """Load everything needed to generate with a run (see the module docstring); ``run_dir`` may also be
    a model folder written by ``tuneforge export`` (:mod:`tuneforge.commands.export_folder`)."""
    from tuneforge.commands.export_folder import is_export_folder, load_export_folder

    if is_export_folder(run_dir):
        return load_export_folder(run_dir, device=device)
    cfg = read_run_config(run_dir, force=force)
    target = resolve_device(device)
    tokenizer = load_run_tokenizer(run_dir, cfg)
    model = load_run_model(run_dir, cfg).to(target)
    return LoadedRun(model=model, tokenizer=tokenizer, config=cfg, device=target,
                     system_prompt=recorded_system_prompt(run_dir))


# --------------------------------------------------------------------------- generation
