"""Safe, atomic, resumable checkpoints.

A checkpoint is a directory ``<run_dir>/checkpoints/step-00000012/`` holding

* ``tensors.safetensors`` - every tensor of Lightning's checkpoint dict
  (trainable weights, optimizer moments, RNG states);
* ``state.json`` - everything else (loop progress, scheduler state, data
  position, the run's identity), with tensors referenced by name;
* ``COMPLETE`` - written last, with the sha256 of both files.

It is written under a temporary name and renamed into place, so a crash
leaves either the previous checkpoint or a complete new one.  No pickle is
written or read: Lightning's ``CheckpointIO`` is replaced by :class:`SafeCheckpointIO`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Optional

from tuneforge.errors import TuneforgeError, is_disk_full, os_error_number

log = logging.getLogger("tuneforge")

CHECKPOINT_DIR = "checkpoints"
TENSORS = "tensors.safetensors"
STATE = "state.json"
COMPLETE = "COMPLETE"
#: config sections whose change makes a checkpoint belong to a different run (``optimizer``: its state in
#: the checkpoint is that optimizer's, so resuming with another one, or other settings of it, is refused)
IDENTITY_SECTIONS = ("model", "adapter", "data", "optimizer")
#: identity sections added after checkpoints were first written: one that a saved identity does not record
#: at all was written before the section existed (then always the section's default, ``adamw``), not compared
LATER_SECTIONS = ("optimizer",)


class CheckpointError(TuneforgeError):
    """A checkpoint cannot be written or read."""


# ---------------------------------------------------------------------------
# Encoding a Lightning checkpoint dict into (tensors, JSON)
# ---------------------------------------------------------------------------


def encode(value: Any, tensors: dict, path: str = "") -> Any:
    """JSON-able form of ``value``; tensors move into ``tensors`` under a unique key."""
    import numpy as np
    import torch

    if isinstance(value, torch.Tensor):
        key = f"t{len(tensors)}"
        tensors[key] = value.detach().cpu().contiguous().clone()
        return {"__tensor__": key}
    if isinstance(value, dict):
        if all(isinstance(k, str) for k in value) and "__tensor__" not in value:
            return {k: encode(v, tensors, f"{path}.{k}") for k, v in value.items()}
        return {"__dict__": [[encode(k, tensors, path), encode(v, tensors, f"{path}.{k}")]
                             for k, v in value.items()]}
    if isinstance(value, tuple):
        return {"__tuple__": [encode(v, tensors, path) for v in value]}
    if isinstance(value, list):
        return [encode(v, tensors, path) for v in value]
    if isinstance(value, np.ndarray):
        return {"__ndarray__": value.tolist(), "dtype": str(value.dtype)}
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (torch.dtype, torch.device)):
        return {"__torch__": str(value)}
    raise CheckpointError(f"checkpoint value at '{path or '<root>'}' has type {type(value).__name__}, which "
                          "cannot be stored without pickle")


def decode(value: Any, tensors: dict) -> Any:
    import numpy as np
    import torch

    if isinstance(value, list):
        return [decode(v, tensors) for v in value]
    if not isinstance(value, dict):
        return value
    if "__tensor__" in value:
        return tensors[value["__tensor__"]]
    if "__dict__" in value:
        return {decode(k, tensors): decode(v, tensors) for k, v in value["__dict__"]}
    if "__tuple__" in value:
        return tuple(decode(v, tensors) for v in value["__tuple__"])
    if "__ndarray__" in value:
        return np.array(value["__ndarray__"], dtype=value["dtype"])
    if "__torch__" in value:
        text = value["__torch__"]
        return getattr(torch, text.split(".", 1)[1]) if text.startswith("torch.") else torch.device(text)
    return {k: decode(v, tensors) for k, v in value.items()}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_checkpoint(checkpoint: dict, directory: Path) -> None:
    """Write ``checkpoint`` atomically to ``directory`` (replacing an older one of that name)."""
    from safetensors.torch import save_file

    directory = Path(directory)
    tmp = directory.with_name(f"{directory.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        tensors: dict = {}
        state = encode(checkpoint, tensors)
        save_file(tensors, str(tmp / TENSORS))
        (tmp / STATE).write_text(json.dumps(state))
        for name in (TENSORS, STATE):
            _fsync(tmp / name)
        marker = {"sha256": {name: _sha256(tmp / name) for name in (TENSORS, STATE)}}
        (tmp / COMPLETE).write_text(json.dumps(marker))
        _fsync(tmp / COMPLETE)
        if directory.exists():
            shutil.rmtree(directory)
        tmp.rename(directory)
        _fsync(directory.parent)
    except CheckpointError:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    except Exception as exc:  # OSError, or safetensors' own error type wrapping one
        shutil.rmtree(tmp, ignore_errors=True)
        if not isinstance(exc, OSError) and os_error_number(exc) is None:
            raise
        if is_disk_full(exc):
            raise CheckpointError(f"disk full while saving checkpoint {directory}: free space, or keep fewer "
                                  "checkpoints (checkpoint.keep_last)") from exc
        raise CheckpointError(f"cannot write checkpoint {directory}: {getattr(exc, 'strerror', None) or exc}") from exc


def verify_checkpoint(directory: Path) -> Optional[str]:
    """``None`` when ``directory`` is a complete, uncorrupted checkpoint, else the reason it is not."""
    directory = Path(directory)
    marker = directory / COMPLETE
    if not marker.is_file():
        return "incomplete (no COMPLETE marker: the save was interrupted)"
    try:
        expected = json.loads(marker.read_text())["sha256"]
    except (ValueError, KeyError):
        return "corrupt COMPLETE marker"
    for name, digest in expected.items():
        if not (directory / name).is_file():
            return f"missing {name}"
        if _sha256(directory / name) != digest:
            return f"{name} does not match its checksum (corrupt)"
    return None


def read_checkpoint(directory: Path) -> dict:
    from safetensors.torch import load_file

    directory = Path(directory)
    problem = verify_checkpoint(directory)
    if problem:
        raise CheckpointError(f"checkpoint {directory} is {problem}")
    tensors = load_file(str(directory / TENSORS))
    return decode(json.loads((directory / STATE).read_text()), tensors)


def _lightning_checkpoint_io():
    from lightning.fabric.plugins.io.checkpoint_io import CheckpointIO

    class SafeCheckpointIO(CheckpointIO):
        """Lightning ``CheckpointIO`` that writes safetensors + JSON directories instead of pickles."""

        def save_checkpoint(self, checkpoint, path, storage_options=None):
            write_checkpoint(checkpoint, Path(path))

        def load_checkpoint(self, path, map_location=None, weights_only=None):
            path = Path(path)
            if path.is_file():
                raise CheckpointError(f"{path} is a single-file (pickle) checkpoint; tuneforge reads only its "
                                      "safetensors checkpoint directories")
            return read_checkpoint(path)

        def remove_checkpoint(self, path):
            shutil.rmtree(path, ignore_errors=True)

    return SafeCheckpointIO


def safe_checkpoint_io():
    return _lightning_checkpoint_io()()


# ---------------------------------------------------------------------------
# Finding what to resume
# ---------------------------------------------------------------------------


def checkpoint_name(step: int) -> str:
    return f"step-{step:08d}"


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Checkpoint directories of a run, newest (highest step) first.

    Besides tuneforge's ``checkpoints/step-N``, the ``hpc_ckpt_K.ckpt``
    directories that Lightning writes on SLURM's requeue signal (through the
    same safe format) count too, ordered by the step recorded inside them.
    """
    run_dir = Path(run_dir)
    folder = run_dir / CHECKPOINT_DIR
    found = [p for p in folder.iterdir() if p.is_dir() and p.name.startswith("step-")
             and ".tmp-" not in p.name] if folder.is_dir() else []
    found += [p for p in run_dir.glob("hpc_ckpt_*.ckpt") if p.is_dir()]
    return sorted(found, key=_recorded_step, reverse=True)


def _recorded_step(directory: Path) -> int:
    if directory.name.startswith("step-"):
        return int(directory.name.split("-")[1])
    try:
        return int(json.loads((directory / STATE).read_text()).get("global_step", -1))
    except (OSError, ValueError, AttributeError):
        return -1


def latest_valid_checkpoint(run_dir: Path) -> Optional[Path]:
    """The newest complete checkpoint; partial or corrupt ones are skipped with a warning."""
    for candidate in list_checkpoints(run_dir):
        problem = verify_checkpoint(candidate)
        if problem is None:
            return candidate
        log.warning("skipping checkpoint %s: %s", candidate, problem)
    return None


def run_identity(cfg) -> dict:
    """The config sections that define which run a checkpoint belongs to (flattened)."""
    from omegaconf import OmegaConf

    from tuneforge.secrets import redact

    identity = {}
    for section in IDENTITY_SECTIONS:
        if section not in cfg:  # a config saved before the section existed (LATER_SECTIONS)
            continue
        container = redact(OmegaConf.to_container(cfg[section], resolve=True), key=section)
        identity.update(_flatten(container, section))
    return identity


def _flatten(value, prefix: str) -> dict:
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            out.update(_flatten(item, f"{prefix}.{key}"))
        return out
    return {prefix: value}


def identity_defaults(cfg) -> dict:
    """The default of every plain setting of the identity sections, flattened like :func:`run_identity`
    (``{"adapter.r": 8, ...}``), from the config classes the composed ``cfg`` was typed with."""
    import dataclasses

    from omegaconf import OmegaConf

    defaults = {}
    for section in IDENTITY_SECTIONS:
        config_class = OmegaConf.get_type(cfg[section]) if section in cfg else None
        if not (isinstance(config_class, type) and dataclasses.is_dataclass(config_class)):
            continue
        for field in dataclasses.fields(config_class):
            if field.default is not dataclasses.MISSING and not isinstance(field.default, (dict, list)):
                defaults[f"{section}.{field.name}"] = field.default
    return defaults


def identity_differences(saved: dict, current: dict, defaults: Optional[dict] = None) -> list[str]:
    """Keys whose values differ between a checkpoint's identity and the current config.

    A relative path saved by a run from before paths were recorded absolute equals its absolute form
    (resolved against the working directory, as that run read it).  A key the checkpoint does not have
    (a setting added to tuneforge or a plugin after it was written) is unchanged when its current value
    is its default (``defaults``, :func:`identity_defaults`): the run trains as the checkpoint's did."""
    from tuneforge.host.paths import setting_path

    def same(before, now) -> bool:
        if before == now:
            return True
        return (isinstance(before, str) and isinstance(now, str) and os.path.isabs(now)
                and not os.path.isabs(before) and setting_path(before) == now)

    recorded = {key.split(".", 1)[0] for key in saved}
    keys = sorted(key for key in set(saved) | set(current)
                  if key.split(".", 1)[0] in recorded or key.split(".", 1)[0] not in LATER_SECTIONS)
    defaults = defaults or {}

    def added_at_default(key) -> bool:  # (within the same component: another one differs by its name already)
        name = f"{key.split('.', 1)[0]}.name"
        return (key not in saved and key in current and key in defaults and same(defaults[key], current[key])
                and saved.get(name) == current.get(name))

    return [f"{k} ({saved.get(k, '<unset>')!r} -> {current.get(k, '<unset>')!r})" for k in keys
            if not same(saved.get(k, "<unset>"), current.get(k, "<unset>")) and not added_at_default(k)]


def resolve_resume(resume: str, run_dir: Path) -> Optional[Path]:
    """The checkpoint to resume from for ``resume`` = ``auto`` | ``never`` | a path."""
    if resume in ("never", "none", "false", ""):
        return None
    if resume == "auto":
        return latest_valid_checkpoint(run_dir)
    path = Path(resume)
    if not path.exists():
        raise CheckpointError(f"resume={resume}: no such checkpoint directory")
    if path.is_file():
        what = "a single-file (pickle) checkpoint" if path.suffix in (".ckpt", ".pt", ".pth", ".bin") else \
            "a file, not a checkpoint directory"
        raise CheckpointError(f"resume={resume} is {what}; tuneforge resumes only from its own safetensors "
                              "checkpoint directories (<run_dir>/checkpoints/step-N), or resume=auto (the run "
                              "directory's newest)")
    problem = verify_checkpoint(path)
    if problem:
        raise CheckpointError(f"resume={resume}: checkpoint is {problem}")
    return path


def check_same_run(checkpoint_dir: Path, cfg) -> None:
    """Refuse to resume a checkpoint written by a run with another model, adapter, data or optimizer."""
    state = json.loads((Path(checkpoint_dir) / STATE).read_text())
    saved = decode(state.get("tuneforge", {}).get("identity", {}), {})
    differences = identity_differences(saved, run_identity(cfg), identity_defaults(cfg))
    if differences:
        raise CheckpointError(f"checkpoint {checkpoint_dir} belongs to a different run: "
                              f"{'; '.join(differences)}. Use another run directory, or resume=never to start over")


def check_same_world_size(checkpoint_dir: Path, world_size: int) -> None:
    """Refuse to resume on another number of processes than the checkpoint was written by.

    The data position and every rank's RNG state belong to one way of
    sharding the data over ranks: resumed on another world size, examples
    would be repeated or skipped.  Checkpoints written before the world size
    was recorded are not checked.
    """
    state = json.loads((Path(checkpoint_dir) / STATE).read_text())
    saved = state.get("tuneforge", {}).get("world_size")
    if saved is not None and int(saved) != int(world_size):
        raise CheckpointError(f"checkpoint {checkpoint_dir} was written by {saved} rank(s), this launch has "
                              f"{world_size}: resume with the same number of processes, or resume=never")


def prune_checkpoints(run_dir: Path, keep_last: int) -> None:
    """Delete all but the newest ``keep_last`` complete checkpoints, and leftovers of interrupted saves."""
    folder = Path(run_dir) / CHECKPOINT_DIR
    if not folder.is_dir():
        return
    for leftover in folder.glob("*.tmp-*"):
        if leftover.name.split(".tmp-")[-1] != str(os.getpid()):
            shutil.rmtree(leftover, ignore_errors=True)
    if keep_last > 0:
        periodic = [p for p in list_checkpoints(run_dir) if p.name.startswith("step-")]
        for old in periodic[keep_last:]:
            shutil.rmtree(old, ignore_errors=True)
