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


def describe_setup(run, data_stats: dict, *, with_adapter: bool = True, device: str = "cpu",
                   processes: int = 1) -> dict:
    """``{"model", "data", "adapter", "machine"}`` of a run.

    ``run``: the :class:`~tuneforge.host.components.RunConfig` (its ``model``, ``data`` and ``adapter``
    components, each a spec with its typed config); ``data_stats``: the dataset's
    :attr:`~tuneforge.data.DataSplits.stats`; ``with_adapter``: describe the adapter (False: an
    evaluation of a bare model); ``device``: the torch device the model ran on (``cpu``, ``cuda:0``);
    ``processes``: how many processes trained.
    """
    setup = {"model": {"name": run.model.name, "source": _model_source(run.model.config)},
             "data": data_summary(run.data, data_stats),
             "machine": machine_summary(device, processes)}
    if with_adapter:
        setup["adapter"] = {"name": run.adapter.name, "settings": adapter_settings(run.adapter.config)}
    return setup


def _model_source(config) -> Optional[str]:
    """The model's path or hub id (its ``path`` setting), None when the model plugin takes none (``tiny``)."""
    path = getattr(config, "path", None)
    return str(path) if isinstance(path, str) and path and path != "???" else None


def data_summary(data, stats: dict) -> dict:
    """The data section: its plugin ``name``; ``files``, ``{field: path}`` of every set ``path``-like field
    (``path``, ``val_path``, ``rehearsal_path`` ...) of the dataset's typed config; ``train_examples`` and
    ``val_examples``; ``parts``, ``[[part, count], ...]`` from the stats' other ``<part>_examples`` counts in
    the dataset's order (e.g. ``task`` and ``rehearsal``; pairs, so that ``metrics.json``'s sorted keys keep
    the order).  ``data``: the selected dataset component."""
    files = {}
    for item in (dataclasses.fields(data.config) if dataclasses.is_dataclass(data.config) else ()):
        value = getattr(data.config, item.name)
        if (item.name == "path" or item.name.endswith("_path")) and isinstance(value, str) and value \
                and value != "???":
            files[item.name] = value
    parts = [[key[: -len("_examples")], int(value)] for key, value in (stats or {}).items()
             if key.endswith("_examples") and key not in ("train_examples", "val_examples")
             and isinstance(value, int)]
    return {"name": data.name, "files": files,
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
