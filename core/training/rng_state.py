"""The RNG states a checkpoint holds: every rank's, so each rank resumes with its own.

:func:`gather_rng_states` collects them for the checkpoint (a collective under
DDP), :func:`rank_rng_states` picks this rank's on resume, :func:`set_rng_states`
restores them (torch, Python, NumPy, CUDA).
"""

from __future__ import annotations

import random

import torch

from tuneforge.training.checkpoint import CheckpointError


def rng_states() -> dict:
    """All RNG states that influence training (dropout, sampling)."""
    import numpy as np

    states = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def gather_rng_states(trainer) -> list:
    """``[rng_states() of rank 0, of rank 1, ...]``, the same list on every rank.

    A collective under DDP: every rank must call it (Lightning's
    ``trainer.save_checkpoint`` runs the checkpoint hooks on all ranks).  The
    small state dicts travel through ``torch.distributed.all_gather_object``
    (in memory; the checkpoint itself stays safetensors + JSON).
    """
    import torch.distributed as dist

    mine = rng_states()
    if trainer.world_size < 2 or not (dist.is_available() and dist.is_initialized()):
        return [mine]
    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, mine)
    return gathered


def rank_rng_states(saved, rank: int, world_size: int) -> dict:
    """This rank's entry of the checkpoint's ``rng_states`` (a list from :func:`gather_rng_states`;
    a dict in checkpoints written before per-rank states, restored on every rank)."""
    if isinstance(saved, dict):
        return saved
    if len(saved) != world_size:
        raise CheckpointError(f"checkpoint written by {len(saved)} rank(s), this launch has {world_size}: resume "
                              "with the same number of processes, or resume=never")
    return saved[rank]


def set_rng_states(states: dict) -> None:
    import numpy as np

    torch.set_rng_state(states["torch"])
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    np.random.set_state(tuple(states["numpy"]))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(states["cuda"]))
