"""How a step of the GPU check ends other than passing: :class:`Skipped` (with the reason) or :class:`Failed`."""

from __future__ import annotations

import importlib.util

#: why flash-attn is missing on the lent GPU machine
FLASH_ATTN_MISSING = ("flash-attn is not installed: its wheels are built per torch/CUDA version and are larger than "
                      "the 64 MiB a device run can carry")


class Skipped(Exception):
    """The step cannot run here; the message says why (a package not installed, a GPU-only feature)."""


class Failed(Exception):
    """The step ran and found a problem; ``extra`` (e.g. ``output``: the tail of a run's log,
    ``details``: the numbers) goes into its result."""

    def __init__(self, message: str, **extra):
        super().__init__(message)
        self.extra = extra


def require(condition: bool, message: str, **extra) -> None:
    """Raise :class:`Failed` with ``message`` unless ``condition``."""
    if not condition:
        raise Failed(message, **extra)


def relative_difference(a: float, b: float) -> float:
    return abs(a - b) / max(abs(a), abs(b), 1e-12)


def needs_cuda_and(context, feature: str, module: str, missing: str) -> None:
    """Raise :class:`Skipped` in a dry run (``feature`` runs on CUDA GPUs only) or when ``module`` cannot be
    imported (``missing`` says why)."""
    if context.device != "cuda":
        raise Skipped(f"{feature} runs on CUDA GPUs only (the dry run has none)")
    if importlib.util.find_spec(module) is None:
        raise Skipped(missing)
