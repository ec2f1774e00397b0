"""System (b): Hugging Face ``transformers.Trainer`` over the saved batches.

    python benchmarks/hf_trainer.py <workdir> <result.json>     (started by benchmarks/run.py)

The saved batches become a dataset with one pre-padded batch per row (:class:`BatchRows`); the
Trainer draws one row per step (``per_device_train_batch_size=1``) in order (a sequential
sampler instead of its random one) and the collator unwraps that row, so the Trainer trains on
exactly the saved batches.  The loss is the model's own (``labels`` in the batch, per-token
mean).  The optimizer is ``adamw_torch`` (``torch.optim.AdamW``, like the other systems; the
Trainer's default on torch >= 2.8 is the fused variant), constant learning rate, no warmup,
the same gradient clipping, fp32 (``bf16=True`` when the spec's precision is ``bf16-mixed``), on the
spec's device (``use_cpu`` only for ``cpu``), no gradient checkpointing.  Logging is left at the
Trainer's default; checkpoints, evaluation and reporting are off.

``trl_sft.py`` reuses :func:`recording_trainer`, :func:`batch_dataset` (a ``datasets.Dataset``) and
:func:`common_arguments` for TRL's ``SFTTrainer``.
"""

from __future__ import annotations

import sys

from common import (batch_digest, bf16_mixed, child_args, device, load_batches, load_model, load_spec,
                    setup_process, step_clock, trainable_checksum, write_result)


def batch_dataset(batches):
    """A ``datasets.Dataset`` with one row per saved batch (torch format: rows are ``[batch, length]`` tensors);
    TRL's ``SFTTrainer`` wants one."""
    from datasets import Dataset

    columns = {key: [batch[key].tolist() for batch in batches] for key in ("input_ids", "attention_mask", "labels")}
    return Dataset.from_dict(columns).with_format("torch")


class BatchRows:
    """One saved batch per row, as the saved tensors: what the Trainer reads (a map-style dataset; no
    ``datasets`` conversion per step, and no ``datasets`` package needed, e.g. on the GPU machine)."""

    def __init__(self, batches):
        self.batches = [{key: batch[key] for key in ("input_ids", "attention_mask", "labels")} for batch in batches]

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, index: int) -> dict:
        return self.batches[index]


def unwrap_row(rows):
    """Collator: the Trainer hands over one row (one saved batch); return its tensors unchanged."""
    if len(rows) != 1:
        raise RuntimeError(f"benchmark: expected one pre-batched row per step, got {len(rows)}")
    return {key: rows[0][key] for key in ("input_ids", "attention_mask", "labels")}


def recording_trainer(base):
    """A subclass of ``base`` (``Trainer`` or ``SFTTrainer``) that reads its rows in order and
    records each training step's loss and batch digest; nothing else changes."""
    from torch.utils.data import SequentialSampler
    from transformers import TrainerCallback

    class StepClock(TrainerCallback):
        def __init__(self):
            self.step_end = []

        def on_step_end(self, args, state, control, **kwargs):
            self.step_end.append(step_clock())

    class Recording(base):
        def __init__(self, *args, **kwargs):
            self.clock = StepClock()
            self.recorded_losses, self.recorded_digests = [], []
            super().__init__(*args, callbacks=[self.clock], **kwargs)

        def _get_train_sampler(self, *args, **kwargs):
            return SequentialSampler(self.train_dataset)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if model.training:
                self.recorded_digests.append(batch_digest(inputs))
            result = super().compute_loss(model, inputs, return_outputs=return_outputs,
                                          num_items_in_batch=num_items_in_batch)
            if model.training:
                self.recorded_losses.append((result[0] if return_outputs else result).detach())
            return result

    return Recording


def common_arguments(spec: dict, output_dir) -> dict:
    """``TrainingArguments`` fields shared by the HF Trainer and TRL runs: the held-equal settings."""
    return dict(
        output_dir=str(output_dir), per_device_train_batch_size=1, max_steps=spec["steps"],
        learning_rate=spec["lr"], lr_scheduler_type="constant", warmup_steps=0, weight_decay=spec["weight_decay"],
        adam_beta1=spec["betas"][0], adam_beta2=spec["betas"][1], adam_epsilon=spec["eps"],
        max_grad_norm=spec["max_grad_norm"] or 0.0, optim="adamw_torch", bf16=bf16_mixed(spec), fp16=False,
        gradient_checkpointing=False, use_cpu=device(spec) == "cpu", seed=spec["seed"], report_to="none", save_strategy="no",
        eval_strategy="no", disable_tqdm=True, dataloader_num_workers=0, dataloader_pin_memory=False,
        remove_unused_columns=False, label_names=["labels"])


def run_trainer(trainer, result_path, system: str, checksum) -> None:
    """Train, then write the result (losses, step clock, digests, init checksum)."""
    trainer.train()
    write_result(result_path, system, losses=[float(x) for x in trainer.recorded_losses],
                 step_end=trainer.clock.step_end, digests=trainer.recorded_digests, init_checksum=checksum)


def main(argv) -> None:
    workdir, result_path = child_args(argv)
    spec = load_spec(workdir)
    setup_process(spec)
    from transformers import Trainer, TrainingArguments

    model, tokenizer = load_model(spec)
    checksum = trainable_checksum(model)
    dataset = BatchRows(load_batches(workdir)[: spec["steps"]])
    args = TrainingArguments(**common_arguments(spec, workdir / "hf_trainer_output"))
    trainer = recording_trainer(Trainer)(model=model, args=args, train_dataset=dataset, data_collator=unwrap_row,
                                         processing_class=tokenizer)
    run_trainer(trainer, result_path, "hf_trainer", checksum)


if __name__ == "__main__":
    main(sys.argv[1:])
