"""How a step of the GPU check ends other than passing: :class:`Skipped` (with the reason) or :class:`Failed`."""

from __future__ import annotations


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
