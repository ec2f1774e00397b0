"""System (a): a plain PyTorch + PEFT training loop over the saved batches.

    python benchmarks/plain_loop.py <workdir> <result.json> [trained_loss]     (started by benchmarks/run.py)

What a careful user writes by hand: iterate the batch list, forward, next-token cross
entropy (mean over trained tokens), backward, clip the gradient norm, ``torch.optim.AdamW``
step at a constant learning rate; on the spec's device, under bfloat16 autocast when its precision
is ``bf16-mixed`` (what ``torch.autocast`` users write).  No framework, no logging, no checkpoints: the floor the
others are measured against.

With ``trained_loss`` (the benchmark's ``plain_trained_loss`` system) the loss is computed the
way tuneforge's ``cross_entropy`` computes it: the model body runs on the whole batch, then the
hidden states at the positions whose (shifted) label is not -100 are gathered and only those go
through the LM head and the cross entropy.  The loss is mathematically the same (the mean over
the same trained positions), so it passes the same loss check; the difference in speed is what
that one trick is worth.
"""

from __future__ import annotations

import sys

from common import (batch_digest, bf16_mixed, child_args, device, load_batches, load_model, load_spec,
                    setup_process, step_clock, trainable_checksum, write_result)

IGNORE_INDEX = -100


def full_logits_loss(model, batch, reduction: str = "mean"):
    """Logits on every position (``model(...).logits``), then float32 cross entropy with ``ignore_index``
    (``reduction``: the mean over trained tokens, or their ``sum``)."""
    import torch.nn.functional as F

    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    shifted_logits, shifted_labels = logits[:, :-1], batch["labels"][:, 1:]
    return F.cross_entropy(shifted_logits.reshape(-1, shifted_logits.size(-1)).float(),
                           shifted_labels.reshape(-1), ignore_index=IGNORE_INDEX, reduction=reduction)


def trained_positions_loss(model, batch):
    """The body on the whole batch; the LM head and cross entropy on the trained positions only."""
    import torch.nn.functional as F

    base = model.get_base_model()  # PEFT's LoRA layers sit inside it: calling its parts trains them
    body = base.get_decoder() if hasattr(base, "get_decoder") else base.model
    hidden = body(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    labels = batch["labels"][:, 1:]
    trained = labels != IGNORE_INDEX
    logits = base.get_output_embeddings()(hidden[:, :-1][trained])
    return F.cross_entropy(logits.float(), labels[trained])


def main(argv) -> None:
    workdir, result_path, mode = child_args(argv, optional="trained_loss")
    if mode not in (None, "trained_loss"):
        raise SystemExit(f"benchmarks/plain_loop.py: the third argument may only be trained_loss, got {mode!r}")
    trained_only = mode is not None
    spec = load_spec(workdir)
    setup_process(spec)
    import contextlib

    import torch

    model, _ = load_model(spec)
    target = torch.device(device(spec))
    batches = [{key: value.to(target) for key, value in batch.items()}
               for batch in load_batches(workdir)[: spec["steps"]]]
    checksum = trainable_checksum(model)
    model.to(target)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=spec["lr"], betas=tuple(spec["betas"]), eps=spec["eps"],
                                  weight_decay=spec["weight_decay"])
    compute_loss = trained_positions_loss if trained_only else full_logits_loss
    losses, step_end, digests = [], [], []
    for batch in batches:
        digests.append(batch_digest(batch))
        autocast = (torch.autocast(target.type, dtype=torch.bfloat16) if bf16_mixed(spec)
                    else contextlib.nullcontext())
        with autocast:
            loss = compute_loss(model, batch)
        loss.backward()
        if spec["max_grad_norm"]:
            torch.nn.utils.clip_grad_norm_(params, spec["max_grad_norm"])
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.detach())
        step_end.append(step_clock())
    write_result(result_path, "plain_trained_loss" if trained_only else "plain", losses=[float(x) for x in losses],
                 step_end=step_end, digests=digests, init_checksum=checksum)


if __name__ == "__main__":
    main(sys.argv[1:])
