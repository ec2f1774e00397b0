"""``trainer.precision=auto``: the precision a run trains in, chosen for the machine it runs on.

Lightning's precisions are fixed names (``32-true``, ``bf16-mixed`` ...).  ``auto`` (the default)
becomes one of them when training starts, by :func:`choose_precision`:

* **a CUDA GPU**: ``bf16-mixed`` where the GPU supports bfloat16 (``torch.cuda.is_bf16_supported``),
  ``32-true`` otherwise;
* **a CPU without bfloat16 matrix units** (neither AMX-BF16 nor AVX512-BF16, e.g. AVX2-only machines,
  where bfloat16 matrix products measured 5x slower than float32): ``32-true``;
* **a CPU with them**: a short calibration (:func:`calibrate`, well under a second) times the model's
  own linear layers on a batch of the run's size, float32 against autocast bfloat16 (the casts
  included, as ``bf16-mixed`` pays them); ``bf16-mixed`` when it is at least :data:`MIN_SPEEDUP` times
  faster, ``32-true`` otherwise.  Models with fewer than :data:`MIN_CALIBRATED_PARAMETERS` parameters in
  their linear layers (the tests' tiny models) stay at ``32-true`` without calibrating: their steps are
  overheads that bfloat16 does not shrink;
* **several processes** (DDP, several nodes): on the CPU's capability and the model's size alone, so
  every rank makes the same choice (a timing could differ between ranks);
* **other accelerators** (``mps``): ``32-true``.

A resumed run keeps the precision its first segment trained in (recorded in ``metrics.json``'s
``segments``), so a resume is exact on the same machine.  The choice and its reason go to the log and
to ``metrics.json`` ``precision`` (:meth:`PrecisionChoice.record`).  ``bf16-mixed`` keeps the weights
and the optimizer in float32 and runs matrix products in bfloat16 under ``torch.autocast``; the
differences from float32 on a fixed batch are measured in docs/performance.md ("bf16 on the CPU").
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
import weakref
from dataclasses import dataclass, field
from typing import Callable, Optional

log = logging.getLogger("tuneforge")

#: the value of ``trainer.precision`` this module resolves
AUTO = "auto"
#: autocast bfloat16 must be at least this much faster than float32 on the model's linear layers
MIN_SPEEDUP = 1.2
#: models with fewer parameters in their linear layers are not calibrated (``32-true``)
MIN_CALIBRATED_PARAMETERS = 2_000_000
#: rows of the calibration batch at most (the run's batch x length, capped: the timing stays short)
CALIBRATION_TOKENS = 1024
#: seconds each dtype is timed on each shape, at least
CALIBRATION_SECONDS = 0.05
#: ``/proc/cpuinfo`` flags of bfloat16 matrix units (AMX tiles with bf16, AVX-512 BF16 dot products)
BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")


@dataclass
class PrecisionChoice:
    """What ``trainer.precision`` became: ``precision`` (a Lightning name), ``requested`` (the setting),
    ``reason`` (one sentence for the log and ``metrics.json``) and, when a calibration ran, its timings."""

    precision: str
    requested: str
    reason: str
    calibration: Optional[dict] = field(default=None)

    def record(self) -> dict:
        """The ``metrics.json`` ``precision`` section."""
        return {"requested": self.requested, "chosen": self.precision, "reason": self.reason,
                "calibration": self.calibration}


def cpu_bf16_units() -> list:
    """The CPU's bfloat16 matrix units, as ``/proc/cpuinfo`` names them (``amx_bf16``, ``avx512_bf16``);
    empty when it has none.  Asks torch first (``torch.cpu._is_amx_tile_supported`` and
    ``_is_avx512_bf16_supported``, private but present since torch 2.3), then the CPU flags."""
    import torch

    found = []
    probes = (("amx_bf16", "_is_amx_tile_supported"), ("avx512_bf16", "_is_avx512_bf16_supported"))
    for flag, probe in probes:
        function = getattr(torch.cpu, probe, None)
        try:
            if function is not None and function():
                found.append(flag)
        except (RuntimeError, AttributeError):
            pass
    if found:
        return found
    return [flag for flag in BF16_CPU_FLAGS if flag in _cpu_flags()]


def _cpu_flags() -> set:
    """The ``flags`` of ``/proc/cpuinfo`` (empty off Linux)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def linear_shapes(model) -> dict:
    """``{(in_features, out_features): count}`` of the model's body: every float ``torch.nn.Linear`` (a
    peft-wrapped one's base layer, not the adapter's factors), without the output layer
    (``get_output_embeddings``), which training runs on the trained positions only."""
    import torch

    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    shapes: dict = {}
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear) or module is head:
            continue
        if any(part.startswith("lora_") for part in name.split(".")):
            continue  # an adapter's factor (rank r on one side), small next to its base layer
        weight = module.weight
        if weight.dim() != 2 or not weight.is_floating_point():
            continue  # a quantized weight (4-/8-bit): no float matrix product to time
        key = (int(weight.shape[1]), int(weight.shape[0]))
        shapes[key] = shapes.get(key, 0) + 1
    return shapes


def calibrate(shapes: dict, tokens: int, threads: Optional[int] = None) -> dict:
    """Seconds per pass over the layers in ``shapes`` (``{(in, out): count}``) for ``tokens`` rows:
    ``F.linear`` on float32 weights and inputs, plain and under CPU autocast bfloat16 (which casts
    both, as ``bf16-mixed`` training does).  ``{"tokens", "fp32_s", "bf16_s", "speedup", "shapes"}``."""
    import torch
    import torch.nn.functional as F

    generator = torch.Generator().manual_seed(0)
    totals = {"fp32_s": 0.0, "bf16_s": 0.0}
    for (fan_in, fan_out), count in shapes.items():
        weight = torch.randn(fan_out, fan_in, generator=generator) * fan_in ** -0.5
        inputs = torch.randn(tokens, fan_in, generator=generator)
        totals["fp32_s"] += count * fastest_call_seconds(lambda: F.linear(inputs, weight))

        def in_bf16():
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return F.linear(inputs, weight)

        totals["bf16_s"] += count * fastest_call_seconds(in_bf16)
    speedup = totals["fp32_s"] / totals["bf16_s"] if totals["bf16_s"] > 0 else 0.0
    return {"tokens": tokens, **totals, "speedup": round(speedup, 3),
            "shapes": [[fan_in, fan_out, count] for (fan_in, fan_out), count in sorted(shapes.items())]}


def fastest_call_seconds(call: Callable, min_seconds: float = CALIBRATION_SECONDS,
                         max_calls: Optional[int] = None) -> float:
    """Seconds of the fastest of repeated calls, after one warm-up call, made for ``min_seconds`` (at most
    ``max_calls``): what the machine can do, since another process's burst slows only some calls."""
    call()
    best, spent, calls = float("inf"), 0.0, 0
    while spent < min_seconds and (max_calls is None or calls < max_calls):
        start = time.perf_counter()
        call()
        took = time.perf_counter() - start
        best, spent, calls = min(best, took), spent + took, calls + 1
    return best


def quantized_linears(model) -> int:
    """How many of the model's ``torch.nn.Linear`` layers hold a quantized (non-float) weight."""
    import torch

    return sum(1 for module in model.modules() if isinstance(module, torch.nn.Linear)
               and not module.weight.is_floating_point())


def choose_precision(requested: str, *, accelerator: str, model=None, tokens: int = CALIBRATION_TOKENS,
                     processes: int = 1, earlier: Optional[str] = None,
                     bf16_units: Optional[Callable[[], list]] = None,
                     timings: Optional[Callable[[dict, int], dict]] = None) -> PrecisionChoice:
    """What ``trainer.precision`` (``requested``) means for this run (see the module docstring).

    ``accelerator``: ``cpu``, ``cuda`` or ``mps`` (the device the run trains on); ``model``: the model
    to train (its linear layers are calibrated); ``tokens``: rows per training step (batch x length);
    ``processes``: processes training together; ``earlier``: the precision an earlier segment of this
    run chose (a resumed run keeps it).  ``bf16_units`` and ``timings`` replace
    :func:`cpu_bf16_units` and :func:`calibrate` (tests)."""
    if requested != AUTO:
        return PrecisionChoice(requested, requested, "set by trainer.precision")
    if earlier:
        return PrecisionChoice(earlier, AUTO, f"kept from the run's first segment ({earlier}): a resumed run "
                                              "trains in the precision it started with")
    if accelerator == "cuda":
        import torch

        if torch.cuda.is_bf16_supported():
            return PrecisionChoice("bf16-mixed", AUTO, "the GPU supports bfloat16")
        return PrecisionChoice("32-true", AUTO, "the GPU does not support bfloat16")
    if accelerator != "cpu":
        return PrecisionChoice("32-true", AUTO, f"float32 on {accelerator}")
    units = (bf16_units or cpu_bf16_units)()
    if not units:
        return PrecisionChoice("32-true", AUTO, "the CPU has no bfloat16 matrix units (AMX-BF16 or AVX512-BF16), "
                                                "where bfloat16 is slower than float32")
    named = " and ".join(units)
    shapes = linear_shapes(model) if model is not None else {}
    parameters = sum(fan_in * fan_out * count for (fan_in, fan_out), count in shapes.items())
    quantized = quantized_linears(model) if model is not None and parameters < MIN_CALIBRATED_PARAMETERS else 0
    if quantized:
        return PrecisionChoice("32-true", AUTO, f"the model's linear layers are quantized ({quantized} "
                                                "4-/8-bit layers): bitsandbytes computes them in "
                                                "model.compute_dtype, and no float matrix product is left to "
                                                "speed up")
    if parameters < MIN_CALIBRATED_PARAMETERS:
        return PrecisionChoice("32-true", AUTO, f"the model's linear layers hold {parameters:,} parameters "
                                                f"(< {MIN_CALIBRATED_PARAMETERS:,}): too small for bfloat16 to pay")
    if processes > 1:  # (the size above is the same on every rank; a timing might not be)
        return PrecisionChoice("bf16-mixed", AUTO, f"the CPU has {named} ({processes} processes: chosen on the "
                                                   "CPU's capability alone, the same on every rank)")
    measured = (timings or calibrate)(shapes, max(1, min(int(tokens), CALIBRATION_TOKENS)))
    speedup = float(measured["speedup"])
    if speedup >= MIN_SPEEDUP:
        return PrecisionChoice("bf16-mixed", AUTO, f"the CPU has {named} and autocast bfloat16 ran the model's "
                                                   f"linear layers {speedup:.2f}x as fast as float32", measured)
    return PrecisionChoice("32-true", AUTO, f"the CPU has {named}, but autocast bfloat16 ran the model's linear "
                                            f"layers only {speedup:.2f}x as fast as float32 "
                                            f"(< {MIN_SPEEDUP}x)", measured)


def planned_precision(requested: str, device_kind: str, quantized: bool = False) -> str:
    """The precision a memory plan assumes for ``requested`` on a ``device_kind`` (``cpu``/``gpu``) device,
    without loading the model: ``auto`` is ``bf16-mixed`` on GPUs and on CPUs with bfloat16 matrix units
    (which the calibration may still turn down), ``32-true`` otherwise, and on a CPU over a ``quantized``
    (4-/8-bit) base, as :func:`choose_precision` decides there."""
    if requested != AUTO:
        return requested
    if device_kind == "gpu" or (device_kind == "cpu" and not quantized and cpu_bf16_units()):
        return "bf16-mixed"
    return "32-true"


def run_precision(state) -> PrecisionChoice:
    """What ``trainer.precision`` means for this segment of a run (``state``: its
    :class:`~tuneforge.training.run_state.RunState`, with the model loaded): :func:`choose_precision` for
    the run's device, processes and batch, logged, recorded in ``metrics.json`` ``precision`` and in the
    running segment of ``status.json`` (so a segment killed later still tells a resume its precision); a
    resumed run keeps the precision of its first segment."""
    from tuneforge.training.run_dir import write_running_status
    from tuneforge.training.run_results import pack_length

    settings, context, earlier_segments = state.settings, state.context, state.earlier_segments
    earlier = next((s["precision"] for s in earlier_segments if s.get("precision")), None)
    if earlier_segments and earlier is None:
        earlier = "32-true"  # segments written before precision=auto existed trained at the default then
    length = pack_length(state.run) or 512
    choice = choose_precision(str(settings.trainer.precision), accelerator=context.device.split(":")[0],
                              model=state.model, tokens=int(settings.loader.batch_size) * length,
                              processes=context.world_size, earlier=earlier)
    if choice.requested != choice.precision or choice.calibration:
        log.info("trainer.precision=%s: %s, because %s", choice.requested, choice.precision, choice.reason)
    state.metrics["precision"] = choice.record()
    if context.is_main:
        write_running_status(state.run_dir, state.resume_from, earlier_segments, state.resumed_step,
                             precision=choice.precision)
    return choice


def input_casts_under_autocast(model, autocast: Optional[bool] = None) -> "contextlib.AbstractContextManager":
    """A context for one forward pass of ``model``: while autocast is on, peft's adapter layers stop
    casting their input to the adapter weights' dtype.  ``autocast``: whether the forward pass runs
    under autocast (default: whether it is on now; a backward pass that recomputes a checkpointed
    forward passes the forward's, since autocast is off around the backward but on in the recompute).

    A LoRA layer casts its input to its weights' dtype (float32) before its ``lora_A``; under autocast
    that input is often bfloat16 already (the attention output, the MLP product), and autocast casts
    the float32 copy straight back to bfloat16 for the product.  bfloat16 -> float32 -> bfloat16 is
    exact, so skipping both casts changes no number; on SmolLM2 on an AMX CPU it made a packed
    ``bf16-mixed`` step about 6% faster.  Without autocast nothing changes (there the cast is what
    makes a bfloat16 base and float32 adapter weights fit together).
    """
    layers = _casting_layers(model)
    if not layers or not (autocast_is_on() if autocast is None else autocast):
        return contextlib.nullcontext()

    @contextlib.contextmanager
    def casts_off():
        before = [layer.cast_input_dtype_enabled for layer in layers]
        for layer in layers:
            layer.cast_input_dtype_enabled = False
        try:
            yield
        finally:
            for layer, value in zip(layers, before):
                layer.cast_input_dtype_enabled = value

    return casts_off()


def _casting_layers(model) -> list:
    """The modules of ``model`` with peft's ``cast_input_dtype_enabled`` switch (peft >= 0.15), found once."""
    return modules_where(model, _has_cast_switch)


def _has_cast_switch(module) -> bool:
    return hasattr(module, "cast_input_dtype_enabled")


def modules_where(model, test) -> list:
    """The modules of ``model`` for which ``test(module)`` holds, found once per (model, test): a run's
    adapter layers do not change while it trains, and the loss call asks for them at every step."""
    per_test = _MODULES_WHERE.setdefault(model, {})
    if test not in per_test:
        per_test[test] = [module for module in model.modules() if test(module)]
    return per_test[test]


@contextlib.contextmanager
def swapped_forwards(modules, make_forward):
    """A context in which each of ``modules`` runs ``make_forward(module)`` (given while its own forward is
    still in place) as its forward; on leaving, each has its own forward again (an instance attribute it
    had before is put back)."""
    earlier = [module.__dict__.get("forward") for module in modules]
    for module in modules:
        module.forward = make_forward(module)
    try:
        yield
    finally:
        for module, forward in zip(modules, earlier):
            if forward is None:
                del module.forward
            else:
                module.forward = forward


def on_cpu(module) -> bool:
    """Whether ``module``'s first parameter is on the CPU (``False`` without parameters)."""
    parameter = next(module.parameters(), None)
    return parameter is not None and parameter.device.type == "cpu"


@functools.lru_cache(maxsize=None)
def torch_at_least(major: int, minor: int) -> bool:
    """Whether the installed torch is ``major.minor`` or later (parsed once per version asked)."""
    import torch

    version = tuple(int(part) for part in torch.__version__.split("+")[0].split(".")[:2])
    return version >= (major, minor)


def autocast_is_on() -> bool:
    """Whether autocast is on for the CPU or CUDA here."""
    from tuneforge.linear_cross_entropy import autocast_dtype

    return any(autocast_dtype(device) is not None for device in ("cpu", "cuda"))


#: model -> {test: its modules that pass it} (:func:`modules_where`)
_MODULES_WHERE: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
