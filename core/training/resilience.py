"""The Lightning pieces that make a run survive crashes and preemption, re-exported from where they live.

* :mod:`tuneforge.training.resumable_sampler` - :class:`ResumableSampler` and
  :class:`ResumableDataLoader`: a data order that depends only on (seed,
  epoch), sharded by rank, with its position in every checkpoint;
* :mod:`tuneforge.training.rng_state` - every rank's RNG states for the
  checkpoint (:func:`gather_rng_states`) and back (:func:`set_rng_states`);
* :mod:`tuneforge.training.checkpoint_callback` - :class:`CheckpointAndInterrupt`:
  checkpoints every N steps and at the end, SIGTERM/SIGINT/SIGUSR1 turned into
  "finish this step, checkpoint, stop" on all ranks at the same step.

New code imports from those modules; this one keeps ``tuneforge.training.resilience``
imports working.
"""

from tuneforge.training.checkpoint_callback import (
    CheckpointAndInterrupt,
    check_resume_agreement,
    flush_loggers,
    requeue_slurm_job,
)
from tuneforge.training.resumable_sampler import ResumableDataLoader, ResumableSampler
from tuneforge.training.rng_state import gather_rng_states, rank_rng_states, rng_states, set_rng_states

__all__ = [
    "CheckpointAndInterrupt", "ResumableDataLoader", "ResumableSampler", "check_resume_agreement", "flush_loggers",
    "gather_rng_states", "rank_rng_states", "requeue_slurm_job", "rng_states", "set_rng_states",
]
