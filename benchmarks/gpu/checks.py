"""The GPU check's in-process comparisons: packing against padding, the chunked losses against full logits.

Each returns a step result (``summary``, ``details``) or raises :class:`outcome.Failed` with the numbers.
"""

from __future__ import annotations

import contextlib
from functools import partial

from outcome import FLASH_ATTN_MISSING, Failed, needs_cuda_and, relative_difference
from plain_loop import full_logits_loss  # the reference: every position's logits, float32 cross entropy

#: relative tolerance of a packed against an unpacked loss sum, per precision
PACKING_TOLERANCE = {"fp32": 1e-4, "bf16": 1e-2}
#: (loss, gradient) relative tolerances of the chunked losses against full logits, per precision
LOSS_TOLERANCE = {"fp32": (1e-5, 1e-4), "bf16": (1e-2, 5e-2)}
#: examples packed/padded, and the packed row length, per mode
PACKING_SIZES = {"gpu": dict(examples=48, pack_length=4096), "cpu": dict(examples=12, pack_length=512)}
#: the loss check's model and batch, per mode: a 128k vocabulary in both
LOSS_SIZES = {"gpu": dict(hidden_size=1024, intermediate_size=2816, num_hidden_layers=2, num_attention_heads=16,
                          num_key_value_heads=4, batch=4, length=1024),
              "cpu": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=4,
                          num_key_value_heads=2, batch=2, length=48)}
VOCABULARY = 128256


def autocast(device: str, precision: str):
    import torch

    return torch.autocast(device, dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()


def to_device(batch: dict, device: str) -> dict:
    return {key: value.to(device) for key, value in batch.items()}


# ---------------------------------------------------------------------------
# packing
# ---------------------------------------------------------------------------


def tokenized_examples(context, folder, count: int) -> tuple:
    """``count`` generated alpaca records (``benchmarks/data.py``) tokenized by tuneforge's ``jsonl`` dataset
    with the folder's tokenizer; returns ``(examples, pad_token_id)``."""
    from data import generate_records, tokenize, write_jsonl

    path = context.work / f"packing-records-{count}.jsonl"
    write_jsonl(path, generate_records(count, seed=1, max_field_tokens=0 if context.tokenizer else 12))
    overrides = ["model=hf", f"model.path={folder}", "data=jsonl", "data.format=alpaca", "data.shuffle=false",
                 "data.val_size=0", "data.cache=false", "data.max_length=1024", "data.truncation=truncate"]
    examples, pad_token_id, _ = tokenize(path, overrides)
    return list(examples), pad_token_id


def loss_sum(loss, model, batch) -> tuple:
    """``(sum of the per-token losses, trained tokens)`` of tuneforge's ``cross_entropy`` on ``batch``."""
    output = loss(model, batch)
    return float(output.loss.detach().float()) * output.num_tokens, int(output.num_tokens)


def compare_packing(context, implementation: str, precisions: tuple) -> dict:
    """Loss sums of the same examples padded (one batch) and packed (rows of ``pack_length``), per precision."""
    import torch

    from tuneforge.data import pad_batch
    from tuneforge.data.packing import pack_batch, pack_examples
    from tuneforge.plugins.losses import CrossEntropyConfig, build_cross_entropy
    from tuneforge.plugins.models import HFModelConfig, load_hf

    sizes = PACKING_SIZES[context.mode]
    folder = context.folders["smollm2"]
    examples, pad_token_id = tokenized_examples(context, folder, sizes["examples"])
    rows = pack_examples([len(e["input_ids"]) for e in examples], sizes["pack_length"])
    padded = to_device(pad_batch(examples, pad_token_id), context.device)
    packed = to_device(pack_batch([[examples[i] for i in row] for row in rows], pad_token_id), context.device)
    loss = build_cross_entropy(CrossEntropyConfig())
    details = {"examples": len(examples), "packed_rows": len(rows), "padded_shape": list(padded["input_ids"].shape),
               "packed_shape": list(packed["input_ids"].shape), "attn_implementation": implementation}
    problems = []
    # float32 weights, under bf16 autocast for bf16 (as bf16-mixed trains); FlashAttention needs 16-bit inputs,
    # which autocast gives it
    model, _ = load_hf(HFModelConfig(path=str(folder), dtype="float32", attn_implementation=implementation))
    model.to(context.device).eval()
    for precision in precisions:
        with torch.no_grad(), autocast(context.device, precision):
            unpacked_sum, unpacked_count = loss_sum(loss, model, padded)
            packed_sum, packed_count = loss_sum(loss, model, packed)
        difference = relative_difference(unpacked_sum, packed_sum)
        details[precision] = {"unpacked_loss": unpacked_sum / unpacked_count, "packed_loss": packed_sum / packed_count,
                              "trained_tokens": [unpacked_count, packed_count], "relative_difference": difference,
                              "tolerance": PACKING_TOLERANCE[precision]}
        if unpacked_count != packed_count or difference > PACKING_TOLERANCE[precision]:
            problems.append(f"{precision}: packed {packed_sum / packed_count:.6f} vs unpacked "
                            f"{unpacked_sum / unpacked_count:.6f} ({packed_count} vs {unpacked_count} trained tokens; "
                            f"relative difference {difference:.2e} > {PACKING_TOLERANCE[precision]:g})")
    summary = "; ".join(f"{p}: packed {details[p]['packed_loss']:.5f} = unpacked {details[p]['unpacked_loss']:.5f} "
                        f"(rel. diff {details[p]['relative_difference']:.1e})" for p in precisions)
    if problems:
        raise Failed("; ".join(problems), details=details)
    return {"summary": f"{len(examples)} examples in {len(rows)} rows, {implementation}: {summary}", "details": details}


def packing_sdpa(context) -> dict:
    return compare_packing(context, "sdpa", ("fp32", "bf16"))


def packing_flash_attention(context) -> dict:
    needs_cuda_and(context, "FlashAttention-2", "flash_attn", FLASH_ATTN_MISSING)
    return compare_packing(context, "flash_attention_2", ("bf16",))


# ---------------------------------------------------------------------------
# the chunked losses at a 128k vocabulary
# ---------------------------------------------------------------------------


def loss_model(context):
    """A small untied Llama with a 128k vocabulary on the device, float32, every parameter trainable."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    sizes = {k: v for k, v in LOSS_SIZES[context.mode].items() if k not in ("batch", "length")}
    torch.manual_seed(0)
    config = LlamaConfig(**sizes, vocab_size=VOCABULARY, tie_word_embeddings=False, initializer_range=0.02,
                         max_position_embeddings=4096)
    with torch.device(context.device):
        return LlamaForCausalLM(config)


def loss_batch(context) -> dict:
    """Random tokens; the first 30% of every row untrained (a prompt), the rest trained."""
    import torch

    sizes = LOSS_SIZES[context.mode]
    generator = torch.Generator().manual_seed(1)
    input_ids = torch.randint(0, VOCABULARY, (sizes["batch"], sizes["length"]), generator=generator)
    labels = input_ids.clone()
    labels[:, : int(0.3 * sizes["length"])] = -100
    return to_device({"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": labels},
                     context.device)


def loss_and_gradient(context, model, batch, compute, precision: str) -> dict:
    """Summed loss, the flattened gradient of every parameter and the peak memory (CUDA) of one backward."""
    import torch

    model.zero_grad(set_to_none=True)
    if context.device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    with autocast(context.device, precision):
        total = compute(model, batch)
    total.backward()
    gradient = torch.cat([p.grad.detach().float().flatten() for p in model.parameters() if p.grad is not None])
    result = {"loss": float(total.detach()), "gradient": gradient}
    if context.device == "cuda":
        result["peak_mib"] = (torch.cuda.max_memory_allocated() - before) / 2 ** 20
    return result


def chunked_loss(context) -> dict:
    import torch

    from tuneforge.plugins.losses import (ChunkedCrossEntropyConfig, CrossEntropyConfig, build_chunked_cross_entropy,
                                          build_cross_entropy)

    def summed(build, config):
        loss = build(config)

        def compute(model, batch):
            output = loss(model, batch)
            return output.loss * output.num_tokens

        return compute

    model, batch = loss_model(context), loss_batch(context)
    candidates = {"cross_entropy": summed(build_cross_entropy, CrossEntropyConfig()),
                  "chunked_cross_entropy": summed(build_chunked_cross_entropy, ChunkedCrossEntropyConfig())}
    details, problems = {"vocabulary": VOCABULARY, "tokens": int(batch["input_ids"].numel()),
                         "trained": int((batch["labels"][:, 1:] != -100).sum())}, []
    for precision in ("fp32", "bf16"):
        reference = loss_and_gradient(context, model, batch, partial(full_logits_loss, reduction="sum"), precision)
        norm = float(reference["gradient"].norm())
        row = {"full_logits": {"loss": reference["loss"], "peak_mib": reference.get("peak_mib")}}
        loss_tolerance, gradient_tolerance = LOSS_TOLERANCE[precision]
        for name, compute in candidates.items():
            got = loss_and_gradient(context, model, batch, compute, precision)
            loss_error = relative_difference(reference["loss"], got["loss"])
            gradient_error = float((got["gradient"] - reference["gradient"]).norm()) / max(norm, 1e-12)
            row[name] = {"loss": got["loss"], "loss_relative_difference": loss_error,
                         "gradient_relative_error": gradient_error, "peak_mib": got.get("peak_mib")}
            if loss_error > loss_tolerance or gradient_error > gradient_tolerance or not torch.isfinite(
                    got["gradient"]).all():
                problems.append(f"{precision} {name}: loss off by {loss_error:.2e} (tolerance {loss_tolerance:g}), "
                                f"gradient by {gradient_error:.2e} (tolerance {gradient_tolerance:g})")
        details[precision] = row
    if problems:
        raise Failed("; ".join(problems), details=details)
    parts = []
    for precision in ("fp32", "bf16"):
        row = details[precision]
        worst = max(row[n]["gradient_relative_error"] for n in candidates)
        memory = ""
        if row["full_logits"].get("peak_mib"):
            memory = (f", peak {row['full_logits']['peak_mib']:.0f} MiB full logits vs "
                      + "/".join(f"{row[n]['peak_mib']:.0f}" for n in candidates) + " MiB")
        parts.append(f"{precision}: gradients within {worst:.1e}{memory}")
    return {"summary": f"{details['trained']} trained of {details['tokens']} tokens, vocab {VOCABULARY}; "
                       + "; ".join(parts), "details": details}
