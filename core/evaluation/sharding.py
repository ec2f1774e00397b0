"""Sharded evaluation: each rank of a multi-process run computes some batches, every rank gets all results.

:func:`map_batches` is what the evaluation helpers (:func:`tuneforge.evaluation.generate_predictions`,
the ``perplexity`` and ``choice`` evaluators' scoring) use: the items are cut into the same
consecutive batches a single process would use, batch ``i`` is computed by rank ``i % world size``,
and the per-batch results are gathered (``torch.distributed.all_gather_object``) and put back in
the original batch order on every rank.  Because each batch holds exactly the items (and so the
padding) it holds in a single process, and every aggregate is computed afterwards from the
per-item / per-batch values in the original order, a sharded evaluation returns the same numbers
as a single-process one (greedy decoding; same threads and device type per process).

Sharding happens only when an :class:`~tuneforge.evaluation.EvaluationPass` is given and the
default ``torch.distributed`` process group is initialized with more than one process; otherwise
every batch is computed locally.  Every rank must then make the same calls in the same order (the
gather is a collective): an evaluator that uses these helpers must run on all ranks.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence


def distributed_world() -> tuple[int, int]:
    """``(rank, world size)`` of the initialized default process group, or ``(0, 1)`` without one."""
    try:
        import torch.distributed as dist
    except ImportError:  # pragma: no cover - torch always has it on supported platforms
        return 0, 1
    if not (dist.is_available() and dist.is_initialized()):
        return 0, 1
    return dist.get_rank(), dist.get_world_size()


def batches_of(items: Sequence, batch_size: int) -> list:
    """``items`` cut into consecutive batches of ``batch_size`` (the last may be shorter)."""
    items = list(items)
    return [items[start:start + batch_size] for start in range(0, len(items), max(int(batch_size), 1))]


def map_batches(fn: Callable[[list], Any], items: Sequence, batch_size: int, evaluation=None) -> list:
    """``[fn(batch) for batch in batches_of(items, batch_size)]``, the batches shared out across ranks.

    With ``evaluation`` (an :class:`~tuneforge.evaluation.EvaluationPass`) and an initialized
    process group of N > 1 processes, rank ``r`` computes batches ``r, r + N, ...`` and the results
    (which must be picklable) are gathered on every rank, in batch order.  Without either, all
    batches are computed here.  Returns one result per batch.
    """
    batches = batches_of(items, batch_size)
    rank, world = distributed_world() if evaluation is not None else (0, 1)
    if world <= 1:
        return [fn(batch) for batch in batches]
    import torch.distributed as dist

    mine = {index: fn(batches[index]) for index in range(rank, len(batches), world)}
    gathered: list = [None] * world
    dist.all_gather_object(gathered, mine)
    merged: dict = {}
    for part in gathered:
        merged.update(part)
    return [merged[index] for index in range(len(batches))]


def init_process_group(context, backend: Optional[str] = None, store=None, timeout_s: Optional[float] = None) -> bool:
    """Initialize the default process group of a multi-process run before training, so that the
    base evaluation is sharded too (Lightning's DDP/FSDP strategies reuse an initialized group).

    Uses the address and port of the Lightning cluster environment the ranks came from
    (``context.cluster_environment``, :meth:`tuneforge.RunContext.set_main_address`; for processes
    started by tuneforge or Lightning's launcher, ``MASTER_ADDR``/``MASTER_PORT``) and ``nccl`` on
    CUDA devices, else ``gloo``, as Lightning does; or ``store``, the job's store the ranks already
    met at (:func:`tuneforge.training.rank_agreement.meet_ranks`).  ``timeout_s`` bounds every
    collective of the group (``trainer.collective_timeout_s``; None: torch's default).  Returns False
    (nothing done) for a single process, when a group exists already, or when the processes are
    ``LightningEnvironment`` ones that tuneforge does not start (Lightning's launcher starts them only
    inside ``fit``; :attr:`tuneforge.RunContext.process_group_before_fit`).  Call it for ``ddp``/``fsdp``
    runs only, after :func:`tuneforge.training.launch.start_local_processes`: under those strategies
    the process the user started has then started the others, so it makes the group with them.
    """
    from datetime import timedelta

    import torch
    import torch.distributed as dist

    if context.world_size <= 1 or not dist.is_available() or dist.is_initialized():
        return False
    # LightningEnvironment: only when tuneforge starts the processes (tuneforge.training.launch); children of
    # Lightning's own launcher start inside the main process's ``fit`` and must not make a group before it
    if not context.process_group_before_fit:
        return False
    if store is None:
        context.set_main_address()
    if backend is None:
        backend = "nccl" if str(context.device).startswith("cuda") else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(torch.device(context.device))
    options = {} if timeout_s is None else {"timeout": timedelta(seconds=float(timeout_s))}
    if store is not None:
        options["store"] = store
    dist.init_process_group(backend, rank=context.global_rank, world_size=context.world_size, **options)
    if context.is_main:
        import logging

        logging.getLogger("tuneforge").info("process group: %s, all %d processes registered (before the base "
                                            "evaluation, which they share)", backend, context.world_size)
    return True
