"""The CPU's limit for LoRA training of the benchmark's model, in real tokens per second.

    python benchmarks/cpu_limit.py <workdir> <result.json>     (started by benchmarks/run.py)

Measures the matrix-product throughput (GFLOP/s) of this machine, with the benchmark's thread
count, on the model's own Linear shapes, in float32 and in bfloat16 (``torch.nn.functional.linear``
on tensors of that dtype; a CPU without bfloat16 matrix units is just slow there), and turns it
into the most real tokens per second that LoRA training of this model can reach:

* every Linear layer of the model body (each distinct ``(in_features, out_features)``, from the
  architecture built on the ``meta`` device: no weights are read) costs per real token
  ``2 x in x out`` FLOPs forward and ``2 x in x out`` for the gradient of its input in the
  backward pass (frozen weights need no weight gradient; LoRA's own products are small and
  left out, as are attention's score products and the element-wise work): the forward shape
  ``[tokens, in] x [in, out]`` and the backward one ``[tokens, out] x [out, in]`` are timed;
* the LM head (``hidden x vocab``) costs the same, forward and backward, but only on the trained
  positions (a loss on trained positions only): ``trained / real`` of it per real token.

So the limit is ``1 / (sum over layers of their timed seconds per token + trained/real x the head's)``,
an upper bound: the FLOPs left out and everything that is not a matrix product make real training
slower.  Products run at ``tokens`` rows (the benchmark's real tokens per batch, at most
:data:`MAX_TOKENS`; the head at its trained positions per batch, at most :data:`MAX_HEAD_TOKENS`,
and at most :data:`MAX_HEAD_COLUMNS` vocabulary columns): enough rows for full throughput, and
short (each shape for about :data:`MIN_SECONDS` after one warm-up call; a few seconds in all).
"""

from __future__ import annotations

import sys
import time

from common import limit_child

MAX_TOKENS = 1024
MAX_HEAD_TOKENS = 512
MAX_HEAD_COLUMNS = 8192
MIN_SECONDS = 0.1
MAX_CALLS = 50


def model_config(spec: dict):
    """The model's architecture (a transformers config), without its weights."""
    from tuneforge.plugins.models import HFModelConfig, TinyModelConfig, hf_model_config, tiny_model_config

    source, fields = spec["model_source"], dict(spec["model_config"])
    if source == "tiny":
        return tiny_model_config(TinyModelConfig(**fields))
    if source == "hf":
        return hf_model_config(HFModelConfig(**fields))
    raise SystemExit(f"benchmark: model source '{source}' is not supported; valid: tiny, hf")


def linear_shapes(config) -> tuple:
    """``({(in, out): count}, (hidden, vocab))``: the body's Linear layers and the LM head's shape (the
    architecture built on the ``meta`` device; the body's shapes as ``precision=auto`` times them)."""
    import torch
    from transformers import AutoModelForCausalLM

    from tuneforge.training.precision import linear_shapes as body_shapes

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    head = model.get_output_embeddings()
    return body_shapes(model), (head.in_features, head.out_features)


def throughput(rows: int, inner: int, columns: int, dtype) -> float:
    """GFLOP/s of ``[rows, inner] x [inner, columns]`` (``F.linear``) in ``dtype``: the fastest call of those
    made in ``MIN_SECONDS`` (at most ``MAX_CALLS``), since a limit is what the machine can do, and another
    process's burst on a shared CPU would only slow some calls."""
    import torch
    import torch.nn.functional as F

    from tuneforge.training.precision import fastest_call_seconds

    x = torch.randn(rows, inner).to(dtype)
    weight = torch.randn(columns, inner).to(dtype)
    best = fastest_call_seconds(lambda: F.linear(x, weight), MIN_SECONDS, MAX_CALLS)
    return 2.0 * rows * inner * columns / best / 1e9


def measure(spec: dict, plan: dict) -> dict:
    """The limit (see the module docstring) as a JSON-ready dict."""
    import torch

    from tuneforge.training.precision import cpu_bf16_units

    started = time.perf_counter()
    body, (hidden, vocab) = linear_shapes(model_config(spec))
    steps = max(len(plan["tokens"]), 1)
    tokens = max(16, min(MAX_TOKENS, round(sum(plan["tokens"]) / steps)))
    head_tokens = max(16, min(MAX_HEAD_TOKENS, round(sum(plan["trained_tokens"]) / steps)))
    head_columns = min(vocab, MAX_HEAD_COLUMNS)
    result = {"threads": torch.get_num_threads(), "tokens": tokens, "head_tokens": head_tokens,
              "head_columns": head_columns, "bf16_units": cpu_bf16_units(),
              "body_linear_params": sum(i * o * n for (i, o), n in body.items()),
              "head_params": hidden * vocab, "shapes": [], "head": {"in": hidden, "out": vocab}}
    per_token = {"fp32": 0.0, "bf16": 0.0}
    for (inner, columns), count in sorted(body.items()):
        row = {"in": inner, "out": columns, "count": count}
        for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            forward, backward = throughput(tokens, inner, columns, dtype), throughput(tokens, columns, inner, dtype)
            row[f"{name}_gflops"] = [round(forward, 2), round(backward, 2)]
            per_token[name] += count * 2.0 * inner * columns * (1 / forward + 1 / backward) / 1e9
        result["shapes"].append(row)
    head_per_trained = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        forward = throughput(head_tokens, hidden, head_columns, dtype)
        backward = throughput(head_tokens, head_columns, hidden, dtype)
        result["head"][f"{name}_gflops"] = [round(forward, 2), round(backward, 2)]
        head_per_trained[name] = 2.0 * hidden * vocab * (1 / forward + 1 / backward) / 1e9
    body_flops = 4.0 * result["body_linear_params"]
    for name in ("fp32", "bf16"):
        result[name] = {"body_s_per_token": per_token[name], "head_s_per_trained": head_per_trained[name],
                        "body_gflops": body_flops / per_token[name] / 1e9 if per_token[name] else 0.0,
                        "head_gflops": 4.0 * hidden * vocab / head_per_trained[name] / 1e9}
    result["seconds"] = time.perf_counter() - started
    return result


def limit_tokens_per_s(limit: dict, precision: str, trained_of_real: float) -> float:
    """Real tokens/s at the limit, for data whose trained positions are ``trained_of_real`` of its real tokens."""
    part = limit[precision]
    return 1.0 / (part["body_s_per_token"] + trained_of_real * part["head_s_per_trained"])


def flops_per_token(limit: dict, trained_of_real: float) -> float:
    """Matrix-product FLOPs per real token that the limit counts."""
    return 4.0 * (limit["body_linear_params"] + trained_of_real * limit["head_params"])


def main(argv) -> None:
    limit_child(argv, measure)


if __name__ == "__main__":
    main(sys.argv[1:])
