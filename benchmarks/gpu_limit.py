"""The GPU's limit for LoRA training of the benchmark's model: its bfloat16 peak, for MFU.

    python benchmarks/gpu_limit.py <workdir> <result.json>     (started by benchmarks/run.py --device cuda)

MFU (model FLOPs utilisation) is real tokens/s x the model's FLOPs per real token / the device's peak
FLOP/s.  The peak is the published dense bfloat16 tensor-core figure of the GPU (:data:`PUBLISHED_BF16_PEAKS`,
matched on the name torch reports; ``None`` for a GPU not in the table) and, beside it, a measured one: the
fastest of a few ``n x n x n`` bfloat16 matrix products (n = 8192 on a GPU), which is what the chip really
sustains (often 80-90% of the published figure).

FLOPs per real token count the useful work of LoRA training, the same for every system:

* the body's Linear layers: ``2 x in x out`` forward plus ``2 x in x out`` for the input's gradient (frozen
  weights need no weight gradient; LoRA's own products are small and left out);
* the LM head, the same, on the trained positions only (``trained / real`` of it per real token);
* attention's score and value products: ``6 x layers x query width x n`` for a token of an ``n``-token
  example (``2 x n x width`` forward for QK^T and PV under the causal mask, twice that backward), i.e.
  ``6 x layers x width x sum(n^2) / sum(n)`` per real token over the benchmark's examples.

``six_n``: the common full-fine-tuning convention, ``6 x`` all Linear parameters per token with no
attention term, for comparison with published MFU figures (it counts weight gradients LoRA never computes,
so it reads higher).
"""

from __future__ import annotations

import sys
import time

from common import device, limit_child

#: dense bfloat16 tensor-core peak FLOP/s from the vendors' datasheets (no sparsity), by a part of the name
#: torch reports; the first match wins, so more specific names come first
PUBLISHED_BF16_PEAKS = (
    ("H100 PCIe", 756e12), ("H100 NVL", 835e12), ("H100", 989.4e12), ("H200", 989.4e12), ("H800", 989.4e12),
    ("GH200", 989.4e12), ("B200", 2250e12), ("A100", 312e12), ("A800", 312e12), ("L40S", 362.05e12),
    ("L4", 121e12), ("A10", 125e12), ("RTX 4090", 165.2e12), ("RTX 6000 Ada", 364.2e12),
)
MATMUL_SIZE = {"cuda": 8192, "cpu": 256}
WARMUP_CALLS, TIMED_CALLS = 3, 10


def published_peak(name: str):
    """``(label, FLOP/s)`` of the first :data:`PUBLISHED_BF16_PEAKS` entry whose key is in ``name``, else ``None``."""
    for key, peak in PUBLISHED_BF16_PEAKS:
        if key.lower() in name.lower():
            return key, peak
    return None


def measured_peak(target: str) -> float:
    """FLOP/s of the fastest of :data:`TIMED_CALLS` bfloat16 ``n x n x n`` products on ``target`` (``cuda``/``cpu``)."""
    import torch

    n = MATMUL_SIZE[target]
    a = torch.randn(n, n, device=target, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=target, dtype=torch.bfloat16)
    best = float("inf")
    for call in range(WARMUP_CALLS + TIMED_CALLS):
        if target == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        torch.mm(a, b)
        if target == "cuda":
            torch.cuda.synchronize()
        if call >= WARMUP_CALLS:
            best = min(best, time.perf_counter() - started)
    return 2.0 * n ** 3 / best


def attention_width(config) -> tuple:
    """``(layers, query width)`` of a transformers config (heads x head dim)."""
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return config.num_hidden_layers, heads * head_dim


def flops_per_token(limit: dict, trained_of_real: float) -> float:
    """Useful FLOPs per real token (see the module docstring)."""
    return (4.0 * (limit["body_linear_params"] + trained_of_real * limit["head_params"])
            + 6.0 * limit["layers"] * limit["attention_width"] * limit["mean_context"])


def mfu(limit: dict, tokens_per_s: float, trained_of_real: float) -> dict:
    """``{"published": ..., "measured": ..., "six_n": ...}``: shares of the peaks (``None`` where unknown)."""
    useful = tokens_per_s * flops_per_token(limit, trained_of_real)
    six_n = tokens_per_s * 6.0 * (limit["body_linear_params"] + limit["head_params"])
    published = limit.get("published_peak")
    return {"published": useful / published if published else None, "measured": useful / limit["measured_peak"],
            "six_n": six_n / published if published else None}


def measure(spec: dict, plan: dict) -> dict:
    import torch

    from cpu_limit import linear_shapes, model_config

    started = time.perf_counter()
    target = device(spec)
    name = torch.cuda.get_device_name(0) if target == "cuda" else "CPU"
    config = model_config(spec)
    body, (hidden, vocab) = linear_shapes(config)
    layers, width = attention_width(config)
    lengths = sum(plan["tokens"])
    published = published_peak(name) if target == "cuda" else None
    return {"kind": "gpu" if target == "cuda" else "cpu", "device_name": name,
            "published_peak": published[1] if published else None,
            "published_source": f"{published[0]} datasheet, dense bf16" if published else None,
            "measured_peak": measured_peak(target), "matmul_size": MATMUL_SIZE[target],
            "body_linear_params": sum(i * o * n for (i, o), n in body.items()), "head_params": hidden * vocab,
            "layers": layers, "attention_width": width,
            "mean_context": sum(plan["squared_lengths"]) / max(lengths, 1),
            "seconds": time.perf_counter() - started}


def main(argv) -> None:
    limit_child(argv, measure)


if __name__ == "__main__":
    main(sys.argv[1:])
