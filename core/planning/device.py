"""The device a run trains on and how much memory it has: a CUDA GPU's memory (``torch.cuda``), the
machine's RAM on CPU (the cgroup limit when one is lower), or the size given with ``--memory`` to plan
for a device this machine does not have."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from tuneforge.errors import ConfigError


@dataclass(frozen=True)
class Device:
    """``kind`` (``cpu`` or ``gpu``), ``memory`` in bytes, a ``label`` saying where the figure comes from,
    ``count``: devices per node the run uses (on CPU the processes share the machine's RAM)."""

    kind: str
    memory: int
    label: str
    count: int = 1


def plan_device(trainer, memory: Optional[int] = None) -> Device:
    """The device of a run with these ``trainer`` settings; ``memory``: its size in bytes when given
    (``--memory``), else read from this machine.  A GPU run on a machine without one needs ``memory``."""
    accelerator = str(trainer.accelerator)
    cuda = _cuda_available() if accelerator in ("auto", "gpu", "cuda") else False
    kind = "gpu" if accelerator in ("gpu", "cuda") or (accelerator == "auto" and cuda) else "cpu"
    count = _device_count(trainer.devices, kind, cuda)
    if memory is not None:
        return Device(kind, int(memory), "given with --memory", count)
    if kind == "gpu":
        if not cuda:
            raise ConfigError(f"trainer.accelerator={accelerator} but this machine has no CUDA GPU: give the "
                              "GPU's memory to plan for it, e.g. --memory 24GiB")
        import torch

        properties = torch.cuda.get_device_properties(0)
        return Device("gpu", int(properties.total_memory), f"{properties.name} (torch.cuda)", count)
    return Device("cpu", machine_ram(), "this machine's RAM", count)


def machine_ram() -> int:
    """Physical memory, or the cgroup's memory limit when that is lower (a container)."""
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(limit_file).read_text().strip()
        except OSError:
            continue
        if text.isdigit():
            ram = min(ram, int(text))
    return int(ram)


#: files a Linux machine has when a GPU driver torch.cuda could use is loaded (NVIDIA's, or ROCm's)
GPU_DRIVER_FILES = ("/proc/driver/nvidia/version", "/dev/nvidiactl", "/dev/kfd")


def _cuda_available() -> bool:
    """``torch.cuda.is_available()``; on a Linux machine with no GPU driver it is False without importing
    torch (seconds on a small CPU, most of a quick plan's time)."""
    if sys.platform.startswith("linux") and not any(os.path.exists(path) for path in GPU_DRIVER_FILES):
        return False
    import torch

    return torch.cuda.is_available()


def _device_count(devices, kind: str, cuda: bool) -> int:
    """Devices per node of ``trainer.devices``: a count, ``auto``/-1 (every GPU, one CPU process), or indices."""
    if isinstance(devices, str) and devices.strip() not in ("auto", "-1"):
        return max(len([part for part in devices.split(",") if part.strip()]), 1)
    if not isinstance(devices, (str, int)) and hasattr(devices, "__len__"):  # a list of indices
        return max(len(devices), 1)
    if isinstance(devices, int) and devices >= 1:
        return devices
    if kind == "gpu" and cuda:
        import torch

        return max(torch.cuda.device_count(), 1)
    return 1
