"""The plan of one composed run: its :class:`~tuneforge.planning.memory.MemoryEstimate` against its device,
whether it fits, and when it does not, the cheapest changes that make it fit, each found by estimating
the run again with the change's overrides (:data:`CANDIDATES`)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable, Optional

from tuneforge.planning.device import Device, plan_device
from tuneforge.losses import LogitsWork
from tuneforge.planning.memory import PRECISION_BYTES, MemoryEstimate, Workload, estimate
from tuneforge.planning.model_facts import ModelFacts, model_facts
from tuneforge.planning.sizes import format_bytes, format_count
from tuneforge.training.precision import planned_precision

log = logging.getLogger("tuneforge")

#: changes tried when a run does not fit, cheapest first (what they cost in speed or in what is
#: trained): each is a list of overrides; one whose choice is not installed, that does not apply to the
#: run, or that the config refuses is skipped.  ``{half_batch}`` / ``{double_accumulation}``: a smaller
#: ``loader.batch_size`` (halving down to 1) with the accumulation that keeps the batch per optimizer step.
CANDIDATES = (
    ("adapter.gradient_checkpointing=true",),
    ("optimizer=adamw_8bit",),
    ("optimizer=paged_adamw_8bit",),
    ("trainer.precision=bf16-mixed",),
    ("loader.batch_size={half_batch}", "trainer.accumulate_grad_batches={double_accumulation}"),
    ("adapter=qlora",),
)
#: changes to what is trained on, tried only when nothing above (alone or together) fits
LAST_RESORT = (("data.max_length={half_length}",),)


@dataclass(frozen=True)
class Plan:
    """A run's estimate on its device; ``suggestions``: ``(overrides, estimate)`` of changes that fit."""

    facts: ModelFacts
    work: Workload
    estimate: MemoryEstimate
    device: Device
    suggestions: list = field(default_factory=list)

    @property
    def needed(self) -> int:
        """Memory the run needs on its device: the per-device total, times the processes sharing a CPU machine."""
        return self.estimate.total * (self.device.count if self.device.kind == "cpu" else 1)

    @property
    def fits(self) -> bool:
        return self.needed <= self.device.memory


def workload(run, device: Device) -> Workload:
    """The :class:`Workload` of a validated run (:class:`~tuneforge.host.components.RunConfig`) on ``device``."""
    settings = run.settings
    facts = model_facts(run)
    length = settings.loader.pack_length if settings.loader.packing and settings.loader.pack_length else None
    length = length or getattr(run.data.config, "max_length", None) or 1024
    optimizer = getattr(run, "optimizer", None)
    quantize = run.model.spec.base_quantization
    quantization = quantize(run.model.config) if quantize is not None else None
    precision = planned_precision(str(settings.trainer.precision), device.kind, quantized=bool(quantization))
    logits_bytes, logits_note = loss_logits(run, LogitsWork(
        int(settings.loader.batch_size) * int(length), facts.vocab_size, facts.hidden_size,
        PRECISION_BYTES.get(precision, (None, 4))[1], device.kind,
        # over a quantized base the output layer is float32 (peft's prepare_model_for_kbit_training)
        4 if quantization else facts.weight_bytes))
    return Workload(
        batch_size=int(settings.loader.batch_size), sequence_length=int(length), precision=precision,
        quantization=quantization,
        double_quant=getattr(run.model.config, "double_quant", False) is True,
        checkpointing=facts.checkpointing, optimizer=optimizer.name if optimizer is not None else "adamw",
        state_bytes=optimizer_state_bytes(optimizer.spec if optimizer is not None else None),
        strategy=str(settings.strategy.name), world_size=device.count * int(settings.trainer.num_nodes),
        device_kind=device.kind, logits_bytes=logits_bytes, logits_note=logits_note,
        precision_note=(" (trainer.precision=auto: where a calibration at the start of training finds it faster "
                        "than 32-true, which it then uses)" if str(settings.trainer.precision) == "auto"
                        and device.kind == "cpu" and precision != "32-true" else ""))


def loss_logits(run, work: LogitsWork) -> tuple:
    """``(bytes, note)`` of the selected loss's output layer and logits (``LossSpec.logits_bytes``), or
    ``(None, note)`` when the loss declares none or its estimate fails: the plan then counts every position's
    full logits, the most any loss needs."""
    loss = getattr(run, "loss", None)
    measure = getattr(loss.spec, "logits_bytes", None) if loss is not None else None
    if measure is None:
        return None, ""
    try:
        value = float(measure(loss.config, work))
    except Exception as exc:  # a plugin's estimate: never the reason a plan fails; the safe side instead
        log.warning("loss '%s': logits_bytes failed (%s: %s); the plan counts full logits",
                    loss.spec.name, type(exc).__name__, exc)
        return None, ""
    if not value >= 0:  # also NaN
        log.warning("loss '%s': logits_bytes gave %r; the plan counts full logits", loss.spec.name, value)
        return None, ""
    return value, f"output layer and logits as loss={loss.spec.name} computes them ({format_bytes(value)})"


def optimizer_state_bytes(spec) -> float:
    """Bytes of optimizer state per trainable parameter: the selected optimizer's
    :attr:`~tuneforge.specs.OptimizerSpec.state_bytes_per_parameter`, AdamW's 8 when the run selects none."""
    return 8.0 if spec is None else float(spec.state_bytes_per_parameter)


def plan_run(run, memory: Optional[int] = None, replan: Optional[Callable] = None) -> Plan:
    """The :class:`Plan` of ``run``; ``memory``: the device's bytes (``--memory``), else this machine's;
    ``replan(extra_overrides) -> run or None``: the run composed again with more overrides (None: the
    overrides do not apply), used to look for changes that fit when the run does not."""
    device = plan_device(run.settings.trainer, memory)
    work = workload(run, device)
    plan = Plan(model_facts(run), work, estimate(model_facts(run), work), device)
    if plan.fits or replan is None:
        return plan
    return Plan(plan.facts, work, plan.estimate, device, suggestions(plan, run, replan))


def suggestions(plan: Plan, run, replan: Callable, limit: int = 3) -> list:
    """Up to ``limit`` ``(overrides, plan)`` that fit, cheapest first: single changes of :data:`CANDIDATES`;
    when none fits alone, the changes that helped combined in that order until the run fits; then the
    :data:`LAST_RESORT` changes, alone and on top of that combination."""
    found, helped = _single_changes(plan, run, replan, CANDIDATES, limit)
    if found:
        return found
    combined: list = []
    for overrides in helped:  # the changes that helped, together
        keys = {o.split("=", 1)[0] for o in overrides}
        combined = [o for o in combined if o.split("=", 1)[0] not in keys] + list(overrides)
        changed = _plan_with(run, combined, plan.device, replan)
        if changed is not None and changed.fits:
            return [(combined, changed)]
    found, _ = _single_changes(plan, run, replan, LAST_RESORT, limit)
    if found or not combined:
        return found
    base = _plan_with(run, combined, plan.device, replan)
    if base is None:
        return []
    found, _ = _single_changes(base, run, lambda extra: replan([*combined, *extra]), LAST_RESORT, limit)
    return [([*combined, *overrides], changed) for overrides, changed in found]


def _single_changes(plan: Plan, run, replan: Callable, candidates: tuple, limit: int) -> tuple:
    """``(fitting, helping)``: the candidates' override lists that make ``plan`` fit (with their plans; the
    first fitting value of a halving candidate), and those that lower its total without fitting (the
    last value tried of a halving candidate)."""
    found, helped = [], []
    for candidate in candidates:
        last_helping = None
        for overrides in _expand(candidate, plan, run):
            changed = _plan_with(run, overrides, plan.device, replan)
            if changed is None or changed.estimate.total >= plan.estimate.total:
                continue
            if changed.fits:
                found.append((overrides, changed))
                last_helping = None
                break
            last_helping = overrides
        if last_helping is not None:
            helped.append(last_helping)
        if len(found) >= limit:
            break
    return found, helped


def _expand(candidate: tuple, plan: Plan, run) -> list:
    """The override lists of one candidate for this run: a smaller batch is tried halving until it fits or
    reaches 1; nothing for a change the run already has."""
    work = plan.work
    settings = run.settings
    present = {o.split("=", 1)[0]: o.split("=", 1)[1] for o in candidate if "{" not in o}
    if present.get("adapter.gradient_checkpointing") == "true" and work.checkpointing and "adapter" not in present:
        return []
    if "trainer.precision" in present and (work.device_kind != "gpu" or work.precision not in ("32-true", "32")):
        return []  # 16-bit activations: for 32-bit GPU runs (on the CPU, precision=auto picks bf16 where it pays)
    if present.get("adapter") == "qlora" and work.quantization:
        return []
    if "optimizer" in present and present["optimizer"] == work.optimizer:
        return []
    if any("{half_batch}" in o for o in candidate):
        accumulation = int(settings.trainer.accumulate_grad_batches)
        batches, batch = [], work.batch_size // 2
        while batch >= 1:
            factor = -(-work.batch_size // batch)
            batches.append([f"loader.batch_size={batch}",
                            f"trainer.accumulate_grad_batches={accumulation * factor}"])
            batch //= 2
        return batches
    if any("{half_length}" in o for o in candidate):
        lengths, length = [], work.sequence_length // 2
        while length >= 64:
            lengths.append([f"data.max_length={length}"])
            length //= 2
        return lengths
    return [list(candidate)]


def _plan_with(run, overrides: list, device: Device, replan: Callable) -> Optional[Plan]:
    try:
        changed = replan(list(overrides))
    except Exception as exc:  # the change does not apply to this run (not installed, refused)
        log.debug("plan: %s does not apply: %s", " ".join(overrides), str(exc).splitlines()[0] if str(exc) else exc)
        return None
    if changed is None:
        return None
    try:
        work = workload(changed, device)
        return Plan(model_facts(changed), work, estimate(model_facts(changed), work), device)
    except Exception as exc:
        log.debug("plan: %s cannot be estimated: %s", " ".join(overrides), exc)
        return None


# --------------------------------------------------------------------------- printing


def format_plan(plan: Plan) -> str:
    """The plan as the table ``tuneforge plan`` prints."""
    facts, work, parts = plan.facts, plan.work, plan.estimate
    share = facts.trainable_parameters / max(facts.total_parameters, 1)
    lines = [f"model: {facts.architecture}, {format_count(facts.total_parameters)} parameters; "
             f"{format_count(facts.trainable_parameters)} trainable ({share:.2%})"
             + ("" if facts.exact else f" [{facts.note}]"),
             f"run: batch {work.batch_size} x {work.sequence_length} tokens per device, precision {work.precision}"
             f"{work.precision_note}, "
             f"quantization {work.quantization or 'none'}, gradient checkpointing "
             f"{'on' if work.checkpointing else 'off'}, optimizer {work.optimizer}, strategy {work.strategy} on "
             f"{work.world_size} {work.device_kind.upper()} device{'s' if work.world_size > 1 else ''}",
             "",
             "  memory per device"]
    for name, size in parts.parts.items():
        lines.append(f"  {name:<20} {format_bytes(size):>11}   {parts.details.get(name, '')}")
    lines.append(f"  {'total':<20} {format_bytes(parts.total):>11}")
    device = plan.device
    processes = f" ({device.count} processes share it: {format_bytes(plan.needed)})" \
        if device.kind == "cpu" and device.count > 1 else ""
    lines.append(f"  {'device':<20} {format_bytes(device.memory):>11}   {device.label}{processes}")
    lines.append("")
    if plan.fits:
        lines.append(f"fits: {plan.needed / device.memory:.0%} of the device's memory")
    else:
        lines.append(f"does not fit: needs {format_bytes(plan.needed)}, {format_bytes(plan.needed - device.memory)} "
                     f"more than the device's {format_bytes(device.memory)}")
        if plan.suggestions:
            lines.append("changes that make it fit, cheapest first (add them to the same overrides):")
            for overrides, changed in plan.suggestions:
                lines.append(f"  {' '.join(overrides):<60} -> total {format_bytes(changed.needed)}")
        else:
            lines.append("no change tried makes it fit (docs/memory.md lists them); use a device with more memory, "
                         "or shard over more devices (strategy=fsdp trainer.devices=N)")
    return "\n".join(lines)



# --------------------------------------------------------------------------- the warning of `tuneforge train`


def warn_if_it_will_not_fit(run) -> None:
    """Log one warning when the run's estimate exceeds its device's memory (``tuneforge train`` calls this
    before the model loads).  It never stops the run: an estimate that cannot be made is only logged at
    debug level."""
    try:
        plan = plan_run(run)
    except Exception as exc:  # no estimate (a source without model_config, an unknown architecture ...)
        log.debug("memory estimate skipped: %s", str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        return
    if not plan.fits:
        log.warning("memory: this run needs about %s per device but the device has %s (%s), so it will likely "
                    "run out of memory; `tuneforge plan` with the same overrides lists changes that make it fit",
                    format_bytes(plan.needed), format_bytes(plan.device.memory), plan.device.label)
