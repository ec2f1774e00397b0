"""What every benchmarked system shares: the spec, the saved batches, the model, the result file.

The orchestrator (``run.py``) writes into its work directory:

* ``spec.json``  - model, optimizer, LoRA and timing settings (one dict, below: :func:`load_spec`);
* ``batches.safetensors`` - the padded batches, in training order (``input_ids.<step>``,
  ``attention_mask.<step>``, ``labels.<step>``), built once with tuneforge's data pipeline;
* ``plan.json`` - per step: the example indices, the real (non-pad) token count and a digest
  of the batch;
* ``ordered.jsonl`` - the records of those batches, flattened in training order (what the
  tuneforge run reads with ``loader.shuffle=false``).

Each system runs in its own process (``python benchmarks/<system>.py <workdir> <result.json>``)
and writes a result with :func:`write_result`: per-step losses, the ``time.perf_counter()`` at
the end of every optimizer step (:func:`step_clock`: after the GPU's queued work is done), the digest of
every batch it trained on, a checksum of the initial trainable weights, its peak RSS and, on a GPU, its
peak GPU memory.

``spec["device"]`` (``cpu`` or ``cuda``) and ``spec["precision"]`` (``32-true`` or ``bf16-mixed``) say
where and how every system trains (:func:`device`, :func:`bf16_mixed`); specs written before they
existed mean ``cpu`` and ``32-true``.  The orchestrator turns these into tokens/s after
checking that every system trained on the same batches and got the same losses.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import random
import resource
import sys
import time
from pathlib import Path

#: keys of one saved batch (the order matters for the digest)
BATCH_KEYS = ("input_ids", "attention_mask", "labels")


def device(spec: dict) -> str:
    """``cpu`` or ``cuda``: where every system of this spec trains."""
    return spec.get("device", "cpu")


def bf16_mixed(spec: dict) -> bool:
    """Whether every system trains under bfloat16 autocast (``precision: bf16-mixed``) rather than in float32."""
    return spec.get("precision", "32-true") == "bf16-mixed"


def step_clock() -> float:
    """``time.perf_counter()`` once the work queued so far has run: on a GPU the clock waits for it
    (``torch.cuda.synchronize``), else a step's end would be when its kernels were queued."""
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()
    return time.perf_counter()


def peak_gpu_mib() -> dict:
    """Peak GPU memory of this process (torch's allocator): ``{"allocated": MiB, "reserved": MiB}``, or ``{}``
    when the process never used CUDA."""
    import torch

    if not (torch.cuda.is_available() and torch.cuda.is_initialized()):
        return {}
    return {"allocated": torch.cuda.max_memory_allocated() / 2 ** 20,
            "reserved": torch.cuda.max_memory_reserved() / 2 ** 20}


def load_spec(workdir) -> dict:
    """``spec.json`` of a work directory (see ``run.py``: ``write_spec``)."""
    return json.loads((Path(workdir) / "spec.json").read_text())


def setup_process(spec: dict) -> None:
    """Threads and seeds exactly as a tuneforge run sets them (``threads=``, ``seed_everything``).

    Called first in every child so that loading the model and initialising the LoRA weights
    consume the same random numbers in every system (the checksum in the result proves it).
    """
    import numpy as np
    import torch

    torch.set_num_threads(int(spec["threads"]))
    random.seed(spec["seed"])
    np.random.seed(spec["seed"])
    torch.manual_seed(spec["seed"])


def load_batches(workdir) -> list:
    """The saved batches, a list of ``{input_ids, attention_mask, labels}`` int64 tensors."""
    from safetensors.torch import load_file

    tensors = load_file(str(Path(workdir) / "batches.safetensors"))
    steps = len({key.rsplit(".", 1)[1] for key in tensors})
    return [{key: tensors[f"{key}.{step}"] for key in BATCH_KEYS} for step in range(steps)]


def batch_digest(batch) -> str:
    """A short hash of a batch's ``input_ids``, ``attention_mask`` and ``labels`` (names, shapes, values)."""
    import torch

    digest = hashlib.blake2b(digest_size=8)
    for key in BATCH_KEYS:
        if key not in batch:
            continue
        digest.update(key.encode())
        tensor = batch[key].detach().to("cpu", torch.int64).contiguous()
        digest.update(repr(tuple(tensor.shape)).encode())
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()


def real_tokens(batch) -> int:
    """Non-padding tokens of a batch: the sum of its attention mask (all of ``input_ids`` without one)."""
    mask = batch.get("attention_mask") if hasattr(batch, "get") else None
    if mask is not None:
        return int(mask.sum())
    return int(batch["input_ids"].numel())


def load_model(spec: dict):
    """The base model and tokenizer through the same model source a tuneforge run uses, then LoRA.

    The model comes from tuneforge's ``tiny`` or ``hf`` source functions (so the weights,
    e.g. SmolLM2 dequantised from its GGUF file, are bit-identical to the tuneforge run's);
    the adapter is plain ``peft.get_peft_model`` with the spec's ``LoraConfig`` fields.
    """
    from peft import LoraConfig, TaskType, get_peft_model

    from tuneforge.plugins.models import HFModelConfig, TinyModelConfig, load_hf, load_tiny

    source, fields = spec["model_source"], dict(spec["model_config"])
    if source == "tiny":
        model, tokenizer = load_tiny(TinyModelConfig(**fields))
    elif source == "hf":
        model, tokenizer = load_hf(HFModelConfig(**fields))
    else:
        raise SystemExit(f"benchmark: model source '{source}' is not supported; valid: tiny, hf")
    lora = spec["lora"]
    model = get_peft_model(model, LoraConfig(task_type=TaskType.CAUSAL_LM, r=lora["r"],
                                             lora_alpha=lora["lora_alpha"], lora_dropout=lora["lora_dropout"],
                                             target_modules=lora["target_modules"], bias="none"))
    model.train()
    return model, tokenizer


def trainable_checksum(model) -> list:
    """``[count, sum, sum of squares]`` of the trainable weights (float64): equal LoRA initialisation."""
    import torch

    count, total, squares = 0, 0.0, 0.0
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad:
                values = parameter.detach().to("cpu", torch.float64)
                count += values.numel()
                total += float(values.sum())
                squares += float((values * values).sum())
    return [count, total, squares]


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far, in MiB (``getrusage``; KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


#: the libraries whose versions matter for the benchmark's numbers
VERSION_PACKAGES = ("torch", "transformers", "peft", "accelerate", "lightning", "trl", "tuneforge")


def versions(packages=VERSION_PACKAGES) -> dict:
    """Python's version and those of the installed ``packages`` (distribution names; missing ones left out)."""
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": platform.python_version()}
    for name in packages:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            pass
    return found


def write_result(path, system: str, *, losses, step_end, digests, init_checksum, tokens=None, extra=None) -> None:
    """The result file a child hands back to the orchestrator.

    ``losses``: the training loss of every optimizer step (per-token mean of the batch);
    ``step_end``: ``time.perf_counter()`` right after each optimizer step; ``digests``:
    :func:`batch_digest` of each step's batch; ``tokens``: real tokens of each step (only
    needed when the batches are not the saved ones, i.e. the tuneforge variants).
    """
    result = {"system": system, "steps": len(step_end), "losses": [float(x) for x in losses],
              "step_end": list(step_end), "digests": list(digests), "init_checksum": init_checksum,
              "tokens": tokens, "peak_rss_mib": peak_rss_mib(), "peak_gpu_mib": peak_gpu_mib(), "versions": versions(),
              "pid": os.getpid(),
              "finished_at": time.time(),
              # wall-clock time of the first optimizer step's end (run.py: launch -> first step)
              "first_step_at": time.time() - (time.perf_counter() - step_end[0]) if step_end else None,
              **(extra or {})}
    Path(path).write_text(json.dumps(result, indent=1))


def child_args(argv, optional: str = "") -> tuple:
    """``(workdir, result.json)`` from a child's command line ``<workdir> <result.json>``; with ``optional``
    (its name in the usage line) the line may end with one more argument: ``(workdir, result.json, it or
    None)``."""
    if not (len(argv) == 2 or optional and len(argv) == 3):
        extra = f" [{optional}]" if optional else ""
        raise SystemExit(f"usage: python benchmarks/<system>.py <workdir> <result.json>{extra} "
                         "(started by benchmarks/run.py)")
    paths = (Path(argv[0]), Path(argv[1]))
    return (*paths, argv[2] if len(argv) == 3 else None) if optional else paths


def limit_child(argv, measure) -> None:
    """The main of a limit child (``cpu_limit.py``, ``gpu_limit.py``): ``measure(spec, plan)`` of the work
    directory, written as the result file."""
    workdir, result_path = child_args(argv)
    spec = load_spec(workdir)
    setup_process(spec)
    plan = json.loads((Path(workdir) / "plan.json").read_text())
    Path(result_path).write_text(json.dumps(measure(spec, plan), indent=1))


def plan_mib(overrides: list) -> tuple:
    """``(MiB per device, None)``: ``tuneforge plan``'s estimate of the run with these ``tuneforge train``
    overrides, or ``(None, the first line of why)`` when it cannot be made (the estimate is a column next to
    a measurement, never a reason to stop)."""
    from tuneforge.host.components import run_components
    from tuneforge.host.compose import compose, load_plugins
    from tuneforge.planning.plan import plan_run

    try:
        plugins = load_plugins(overrides)  # first: it registers the configs that compose reads
        return plan_run(run_components(compose(overrides), plugins)).estimate.total / 2 ** 20, None
    except Exception as exc:
        return None, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
