"""What a run tuned and where: the ``setup`` record of ``metrics.json`` behind the report's title and its
one line under the verdict (model, data files with example counts, adapter and its key settings, the
machine).

:func:`describe_setup` builds it from the validated config, the data's stats and the run context;
the report reads it back from ``metrics.json`` with no plugin loaded.
"""

from __future__ import annotations

import dataclasses
import platform
from pathlib import Path
from typing import Any, Optional

#: how many leading fields of the adapter's config are always shown (its key settings: LoRA's
#: ``r``, ``lora_alpha``, ``lora_dropout``, ``target_modules``); later fields only when not default
ADAPTER_LEADING_FIELDS = 4


def describe_setup(cfg, data_stats: dict, *, adapter_config: Any = None, device: str = "cpu",
                   processes: int = 1) -> dict:
    """``{"model", "data", "adapter", "machine"}`` of a run.

    ``cfg``: the validated config (``model``, ``data`` and ``adapter``
    sections); ``data_stats``: the dataset's :attr:`~tuneforge.data.DataSplits.stats`;
    ``adapter_config``: the adapter's typed config (None: no adapter, e.g. an
    evaluation of a bare model); ``device``: the torch device the model ran
    on (``cpu``, ``cuda:0``); ``processes``: how many processes trained.
    """
    model = cfg.get("model") or {}
    setup = {"model": {"name": str(model.get("name")), "source": _model_source(model)},
             "data": data_summary(cfg.get("data") or {}, data_stats),
             "machine": machine_summary(device, processes)}
    if adapter_config is not None:
        setup["adapter"] = {"name": str((cfg.get("adapter") or {}).get("name")),
                            "settings": adapter_settings(adapter_config)}
    return setup


def _model_source(model) -> Optional[str]:
    """The model's path or hub id (``model.path``), None when the model plugin takes none (``tiny``)."""
    path = model.get("path") if hasattr(model, "get") else None
    return str(path) if isinstance(path, str) and path and path != "???" else None


def data_summary(data, stats: dict) -> dict:
    """The data section: its plugin ``name``; ``files``, ``{field: path}`` of every set ``path``-like field
    (``path``, ``val_path``, ``rehearsal_path`` ...); ``train_examples`` and ``val_examples``; ``parts``,
    ``[[part, count], ...]`` from the stats' other ``<part>_examples`` counts in the dataset's order (e.g.
    ``task`` and ``rehearsal``; pairs, so that ``metrics.json``'s sorted keys keep the order)."""
    files = {}
    for key in (data.keys() if hasattr(data, "keys") else []):
        value = data.get(key)
        if (key == "path" or key.endswith("_path")) and isinstance(value, str) and value and value != "???":
            files[key] = value
    parts = [[key[: -len("_examples")], int(value)] for key, value in (stats or {}).items()
             if key.endswith("_examples") and key not in ("train_examples", "val_examples")
             and isinstance(value, int)]
    return {"name": str(data.get("name")) if hasattr(data, "get") else None, "files": files,
            "train_examples": (stats or {}).get("train_examples"), "val_examples": (stats or {}).get("val_examples"),
            "parts": parts}


def adapter_settings(config: Any) -> list:
    """The adapter config's key settings as ``[[field, value], ...]`` in declaration order (pairs, so that
    ``metrics.json``'s sorted keys keep the order): its first :data:`ADAPTER_LEADING_FIELDS` fields that are
    set, then every later field whose value differs from its default (plain values: lists and mappings as
    themselves, anything else as text)."""
    if not dataclasses.is_dataclass(config):
        return []
    settings = []
    for index, item in enumerate(dataclasses.fields(config)):
        value = getattr(config, item.name)
        if value is None:
            continue
        if index >= ADAPTER_LEADING_FIELDS and value == _default(item):
            continue
        settings.append([item.name, _plain(value)])
    return settings


def _default(item: dataclasses.Field):
    if item.default is not dataclasses.MISSING:
        return item.default
    if item.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return item.default_factory()  # type: ignore[misc]
    return dataclasses.MISSING


def _plain(value):
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    if isinstance(value, (bool, int, float, str, list, dict)):
        return value
    if isinstance(value, tuple):
        return list(value)
    return str(value)


def machine_summary(device: str = "cpu", processes: int = 1) -> dict:
    """``{"cpu", "gpu", "devices", "threads"}``: the CPU model, the GPU's name when ``device`` is a CUDA
    device (else None), how many processes (devices) ran, and torch's CPU threads."""
    import torch

    gpu = None
    if str(device).startswith("cuda") and torch.cuda.is_available():
        gpu = torch.cuda.get_device_name(torch.device(device))
    return {"cpu": cpu_model(), "gpu": gpu, "devices": int(processes), "threads": int(torch.get_num_threads())}


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux), else what :mod:`platform` knows."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")) and ":" in line:
                name = " ".join(line.split(":", 1)[1].split())
                if name:
                    return name
    return platform.processor() or platform.machine() or "unknown CPU"
