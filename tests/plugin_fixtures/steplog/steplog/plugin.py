"""A callback plugin for fault tests: logs every micro-batch, can SIGKILL itself or go slowly."""

import hashlib
import json
import os
import signal
import time
from dataclasses import dataclass
from typing import Optional

import tuneforge


@dataclass
class BatchLogConfig:
    """path: JSON-lines file receiving {rank, step, epoch, batch, lr, ids, loss} per micro-batch
    (loss: the train/loss logged so far, None before the first optimizer step).
    kill_at_step: SIGKILL this process when this optimizer step is about to start.
    kill_rank: with kill_at_step: only the process of this global rank (None: every process).
    kill_in_checkpoint_at_step: SIGKILL this process in the middle of writing the checkpoint of this
        step (its tensors written, its state and COMPLETE marker not).
    kill_after_checkpoint_at_step: SIGKILL this process right after the checkpoint of this step is
        complete, before Lightning logs that step's metrics row.
    sleep_s: pause per micro-batch (to give a test time to send a signal)."""

    path: str = "???"
    kill_at_step: Optional[int] = None
    kill_rank: Optional[int] = None
    kill_in_checkpoint_at_step: Optional[int] = None
    kill_after_checkpoint_at_step: Optional[int] = None
    sleep_s: float = 0.0


def build_batch_log(config):
    import lightning.pytorch as pl

    class BatchLog(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if (config.kill_at_step is not None and trainer.global_step == config.kill_at_step
                    and config.kill_rank in (None, trainer.global_rank)):
                os.kill(os.getpid(), signal.SIGKILL)
            digest = hashlib.sha1(batch["input_ids"].numpy().tobytes()).hexdigest()[:16]
            lr = trainer.optimizers[0].param_groups[0]["lr"]
            loss = trainer.callback_metrics.get("train/loss")
            with open(config.path, "a") as handle:
                handle.write(json.dumps({"rank": trainer.global_rank, "step": trainer.global_step,
                                         "epoch": trainer.current_epoch, "batch": batch_idx, "lr": lr,
                                         "ids": digest, "loss": None if loss is None else float(loss)}) + "\n")
            if config.sleep_s:
                time.sleep(config.sleep_s)

        def on_save_checkpoint(self, trainer, pl_module, checkpoint):
            if config.kill_after_checkpoint_at_step == trainer.global_step:
                from tuneforge.training import checkpoint_callback

                real_prune = checkpoint_callback.prune_checkpoints

                def prune_then_die(*args, **kwargs):  # runs once the checkpoint is complete and renamed
                    real_prune(*args, **kwargs)
                    os.kill(os.getpid(), signal.SIGKILL)

                checkpoint_callback.prune_checkpoints = prune_then_die
            if config.kill_in_checkpoint_at_step is None or trainer.global_step != config.kill_in_checkpoint_at_step:
                return
            import safetensors.torch

            real_save_file = safetensors.torch.save_file

            def save_then_die(*args, **kwargs):  # the checkpoint writer's first file, then nothing more
                real_save_file(*args, **kwargs)
                os.kill(os.getpid(), signal.SIGKILL)

            safetensors.torch.save_file = save_then_die

    return BatchLog()


@tuneforge.hookimpl
def tuneforge_callbacks():
    return [tuneforge.CallbackSpec("batch_log", BatchLogConfig, "log batches for fault tests",
                                   build=build_batch_log)]
