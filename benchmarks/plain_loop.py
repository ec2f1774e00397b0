"""System (a): a plain PyTorch + PEFT training loop over the saved batches.

    python benchmarks/plain_loop.py <workdir> <result.json>     (started by benchmarks/run.py)

What a careful user writes by hand: iterate the batch list, forward, next-token cross
entropy (mean over trained tokens), backward, clip the gradient norm, ``torch.optim.AdamW``
step at a constant learning rate.  No framework, no logging, no checkpoints: the floor the
others are measured against.
"""

from __future__ import annotations

import sys
import time

from common import (batch_digest, child_args, load_batches, load_model, load_spec, setup_process,
                    trainable_checksum, write_result)


def main(argv) -> None:
    workdir, result_path = child_args(argv)
    spec = load_spec(workdir)
    setup_process(spec)
    import torch
    import torch.nn.functional as F

    model, _ = load_model(spec)
    batches = load_batches(workdir)[: spec["steps"]]
    checksum = trainable_checksum(model)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=spec["lr"], betas=tuple(spec["betas"]), eps=spec["eps"],
                                  weight_decay=spec["weight_decay"])
    losses, step_end, digests = [], [], []
    for batch in batches:
        digests.append(batch_digest(batch))
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        shifted_logits, shifted_labels = logits[:, :-1], batch["labels"][:, 1:]
        loss = F.cross_entropy(shifted_logits.reshape(-1, shifted_logits.size(-1)).float(),
                               shifted_labels.reshape(-1), ignore_index=-100)
        loss.backward()
        if spec["max_grad_norm"]:
            torch.nn.utils.clip_grad_norm_(params, spec["max_grad_norm"])
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.detach())
        step_end.append(time.perf_counter())
    write_result(result_path, "plain", losses=[float(x) for x in losses], step_end=step_end, digests=digests,
                 init_checksum=checksum)


if __name__ == "__main__":
    main(sys.argv[1:])
