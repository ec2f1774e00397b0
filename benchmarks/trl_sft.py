"""System (c): TRL's ``SFTTrainer`` over the saved batches (only when ``trl`` is installed).

    python benchmarks/trl_sft.py <workdir> <result.json>     (started by benchmarks/run.py)

Same set-up as ``hf_trainer.py`` (one pre-padded batch per dataset row, read in order, the
same optimizer, schedule, clipping and precision), with TRL's own dataset preparation skipped
(``dataset_kwargs={"skip_prepare_dataset": True}``: the rows are already tokenized and masked)
and SFTConfig's different defaults undone where they would change the comparison
(``gradient_checkpointing``, ``bf16``, ``learning_rate``).  TRL computes the loss itself
(fused LM head, plus its entropy and token-accuracy metrics every step): that is part of what
is measured.
"""

from __future__ import annotations

import sys

from common import child_args, load_batches, load_model, load_spec, setup_process, trainable_checksum
from hf_trainer import batch_dataset, common_arguments, recording_trainer, run_trainer, unwrap_row


def main(argv) -> None:
    workdir, result_path = child_args(argv)
    spec = load_spec(workdir)
    setup_process(spec)
    from trl import SFTConfig, SFTTrainer

    model, tokenizer = load_model(spec)
    checksum = trainable_checksum(model)
    dataset = batch_dataset(load_batches(workdir)[: spec["steps"]])
    args = SFTConfig(**common_arguments(spec, workdir / "trl_output"), max_length=None, packing=False,
                     padding_free=False, dataset_kwargs={"skip_prepare_dataset": True})
    trainer = recording_trainer(SFTTrainer)(model=model, args=args, train_dataset=dataset,
                                            data_collator=unwrap_row, processing_class=tokenizer)
    run_trainer(trainer, result_path, "trl_sft", checksum)


if __name__ == "__main__":
    main(sys.argv[1:])
