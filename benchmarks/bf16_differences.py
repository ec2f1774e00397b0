"""How far ``bf16-mixed`` training is from float32 on fixed batches (docs/performance.md, "bf16 on the CPU").

The model (SmolLM2-135M-Instruct from its GGUF by default, ``--model tiny`` for a random one) gets LoRA
r=16 on all linear layers, the same initialisation twice.  On each of ``--batches`` fixed batches of
``--batch-size`` x ``--length`` tokens (the response: the last ``--trained-share`` of each row), the
loss and the LoRA gradients are computed as tuneforge's default loss does (the output layer on the
trained positions only): in float32, and under CPU autocast bfloat16 (what Lightning's ``bf16-mixed``
does; weights and gradients stay float32).  Printed per batch, then as the median:

* the relative difference of the loss;
* the cosine similarity of the whole gradient vectors, and the relative error of the gradient
  (``|g_bf16 - g_fp32| / |g_fp32|``);
* after ``--steps`` AdamW steps from the same start on the same batches, the last loss of each.

bfloat16 is computed twice: with the training step's attention of short rows as matrix products
(``trainer.cpu_attention=auto``, the default; ``products``) and with torch's SDPA kernel (``kernel``).

    .venv/bin/python benchmarks/bf16_differences.py                 # SmolLM2 (bash .ci/fetch-smollm2)
    .venv/bin/python benchmarks/bf16_differences.py --model tiny    # a random tiny model, seconds
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def load(model: str):
    """The base model (float32) with LoRA r=16, alpha 32, no dropout, on all linear layers; seed 0."""
    import torch
    from peft import LoraConfig, TaskType, get_peft_model

    from tuneforge.plugins.models import HFModelConfig, TinyModelConfig, load_hf, load_tiny

    torch.manual_seed(0)
    if model == "tiny":
        base, _ = load_tiny(TinyModelConfig(hidden_size=256, intermediate_size=688, num_hidden_layers=4))
    else:
        cache = Path(os.environ.get("TUNEFORGE_CACHE", Path.home() / ".cache" / "tuneforge"))
        path = model if model != "smollm2" else str(cache / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf")
        base, _ = load_hf(HFModelConfig(path=path))
    lora = LoraConfig(task_type=TaskType.CAUSAL_LM, r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear")
    return get_peft_model(base, lora).train()


def batches(count: int, size: int, length: int, trained_share: float, vocab: int) -> list:
    """Seeded token rows; the first ``1 - trained_share`` of every row is prompt (label -100)."""
    import torch

    generator = torch.Generator().manual_seed(1)
    out = []
    for _ in range(count):
        ids = torch.randint(100, min(vocab, 30000), (size, length), generator=generator)
        labels = ids.clone()
        labels[:, : int(length * (1 - trained_share))] = -100
        out.append({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels})
    return out


def loss_and_gradient(model, batch, bf16: bool, products: bool = True):
    """tuneforge's default loss on ``batch`` (fp32 or under autocast bf16, with attention as matrix
    products where they apply or with torch's kernel) and the flat LoRA gradient."""
    import torch

    from tuneforge.losses import trained_logits
    from tuneforge.training.matmul_attention import matmul_attention

    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16), matmul_attention(model, enabled=products):
        logits, targets = trained_logits(model, batch)
        loss = torch.nn.functional.cross_entropy(logits.float(), targets)
    loss.backward()
    gradient = torch.cat([p.grad.reshape(-1) for p in model.parameters() if p.grad is not None])
    return float(loss), gradient


def train(model, fixed: list, steps: int, bf16: bool, products: bool = True) -> list:
    """Losses of ``steps`` AdamW steps (lr 5e-4) over ``fixed`` in order, from the model's current weights."""
    import torch

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-4, weight_decay=0.0)
    losses = []
    for step in range(steps):
        loss, _ = loss_and_gradient(model, fixed[step % len(fixed)], bf16, products)
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
        optimizer.step()
        losses.append(loss)
    return losses


#: the two ways bfloat16 attention is computed: (name, as matrix products where they apply)
ATTENTIONS = (("products", True), ("kernel", False))


def main(argv=None) -> int:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2", help="smollm2, tiny, or a model folder / .gguf file")
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--length", type=int, default=256)
    parser.add_argument("--trained-share", type=float, default=0.45)
    parser.add_argument("--steps", type=int, default=8, help="AdamW steps for the trajectory (0: none)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = load(args.model)
    start = {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
    fixed = batches(args.batches, args.batch_size, args.length, args.trained_share, model.config.vocab_size)
    rows = []
    for index, batch in enumerate(fixed):
        loss32, grad32 = loss_and_gradient(model, batch, bf16=False)
        for attention, products in ATTENTIONS:
            loss16, grad16 = loss_and_gradient(model, batch, bf16=True, products=products)
            row = {"batch": index, "attention": attention, "loss_fp32": loss32, "loss_bf16": loss16,
                   "loss_rel_diff": abs(loss16 - loss32) / abs(loss32),
                   "grad_cosine": float(torch.nn.functional.cosine_similarity(grad16, grad32, dim=0)),
                   "grad_rel_error": float((grad16 - grad32).norm() / grad32.norm())}
            rows.append(row)
            print(f"batch {index}, bf16 {attention}: loss fp32 {loss32:.5f} bf16 {loss16:.5f} (rel. diff "
                  f"{row['loss_rel_diff']:.2e}); gradient cosine {row['grad_cosine']:.5f}, rel. error "
                  f"{row['grad_rel_error']:.3f}", flush=True)
    summary = {}
    for attention, _ in ATTENTIONS:
        mine = [r for r in rows if r["attention"] == attention]
        summary[attention] = {key: statistics.median(r[key] for r in mine)
                              for key in ("loss_rel_diff", "grad_cosine", "grad_rel_error")}
        print(f"median, bf16 {attention}: loss rel. diff {summary[attention]['loss_rel_diff']:.2e}, gradient cosine "
              f"{summary[attention]['grad_cosine']:.5f}, gradient rel. error {summary[attention]['grad_rel_error']:.3f}")
    trajectories = {}
    if args.steps:
        for name, bf16, products in (("fp32", False, True), *((f"bf16 {a}", True, p) for a, p in ATTENTIONS)):
            with torch.no_grad():
                for param_name, p in model.named_parameters():
                    if param_name in start:
                        p.copy_(start[param_name])
            trajectories[name] = train(model, fixed, args.steps, bf16, products)
        print("losses over", args.steps, "steps:")
        for name, losses in trajectories.items():
            print(f"  {name}: " + " ".join(f"{x:.4f}" for x in losses))
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "batches": rows, "median": summary,
                                               "trajectories": trajectories}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
