"""The training sections of ``metrics.json`` (:mod:`tuneforge.evaluation.metrics_file` holds the file's
model, writer and reader): the run's set-up, its segments and throughput, its memory, and what
``trainer.precision`` and ``trainer.compile`` became.  Each section's docstring says what every key
holds; :class:`~tuneforge.evaluation.metrics_file.RunMetrics` lists them."""

from __future__ import annotations

from typing import Any, Dict, List, Optional, TypedDict


def open_section(cls: type) -> type:
    """Mark a section class *open*: the file may hold keys it does not list (the schema allows them)."""
    cls.__open_section__ = True
    return cls


@open_section
class Setup(TypedDict, total=False):
    """What was tuned where, the report's title and setup line (:mod:`tuneforge.training.setup_summary`).

    model: the model source's name and what it loaded.
    data: the dataset's name, files and example counts.
    adapter: the adapter's name and its leading settings.
    machine: the device, GPU, CPU and threads it ran on.
    steps: the optimizer steps trained.
    training_s: the training time in seconds.
    run_dir: ``tuneforge eval`` only: the run whose model was evaluated.
    """

    model: Dict[str, Any]
    data: Dict[str, Any]
    adapter: Optional[Dict[str, Any]]
    machine: Dict[str, Any]
    steps: int
    training_s: Optional[float]
    run_dir: str


@open_section
class Segment(TypedDict, total=False):
    """One start or resume of the run: the steps it trained, its throughput and how it ended.

    from_step: the global step it started at.
    to_step: the global step it reached (null when it stopped before the trainer was built).
    wall_time_s: its wall time in seconds.
    status: ``completed``, ``interrupted`` or ``failed``.
    fit_time_s: its training time in seconds.
    tokens: the tokens it trained on (all processes).
    tokens_per_s: its training tokens per second, after the warm-up steps.
    precision: the Lightning precision it trained in (a resumed run keeps its first segment's).
    """

    from_step: int
    to_step: Optional[int]
    wall_time_s: float
    status: str
    fit_time_s: float
    tokens: int
    tokens_per_s: Optional[float]
    precision: str


@open_section
class Throughput(TypedDict, total=False):
    """The training throughput summed over the run's segments.

    fit_time_s: the training time in seconds, all segments.
    tokens: the training tokens, all segments.
    tokens_per_s: training tokens per second, after the warm-up steps.
    segments: how many segments (starts and resumes) trained.
    last_segment: the last segment's own record.
    """

    fit_time_s: float
    tokens: int
    tokens_per_s: Optional[float]
    segments: int
    last_segment: Segment


@open_section
class MemoryMark(TypedDict, total=False):
    """The process's memory after one step of the run (:mod:`tuneforge.memory_marks`).

    phase: the run's phase (``loading the model``, ``evaluating the base model``, ``training`` ...).
    after: the step just done (``exact_match on the base column``, ``end of training`` ...).
    time_s: seconds since the run started.
    rss_bytes: resident memory now (null where the system does not tell).
    peak_rss_bytes: the peak resident memory so far.
    gpu_allocated_bytes: torch's allocated bytes on the current GPU now (runs on a GPU).
    gpu_peak_bytes: torch's peak allocated bytes on the current GPU so far (runs on a GPU).
    """

    phase: str
    after: str
    time_s: float
    rss_bytes: Optional[int]
    peak_rss_bytes: Optional[int]
    gpu_allocated_bytes: int
    gpu_peak_bytes: int


@open_section
class PrecisionCalibration(TypedDict, total=False):
    """The timing behind ``precision=auto`` on a CPU with bfloat16 units (:mod:`tuneforge.training.precision`).

    tokens: rows of the timed batch.
    fp32_s: seconds for one pass over the model's linear layers in float32.
    bf16_s: the same under autocast bfloat16 (casts included).
    speedup: ``fp32_s / bf16_s``.
    shapes: ``[in_features, out_features, count]`` of the timed layers.
    """

    tokens: int
    fp32_s: float
    bf16_s: float
    speedup: float
    shapes: List[List[int]]


@open_section
class Precision(TypedDict, total=False):
    """The precision the run trained in, and why (``trainer.precision=auto`` is decided per machine).

    requested: ``trainer.precision`` as set (``auto``, ``32-true``, ``bf16-mixed`` ...).
    chosen: the Lightning precision the trainer used.
    reason: why, in one sentence.
    calibration: the float32/bfloat16 timing, when one decided (null otherwise).
    """

    requested: str
    chosen: str
    reason: str
    calibration: Optional[PrecisionCalibration]


@open_section
class Compile(TypedDict, total=False):
    """``trainer.compile``: whether the model's decoder layers ran through ``torch.compile`` in the loss.

    requested: ``trainer.compile`` as set.
    enabled: whether the layers were compiled.
    reason: why, in one sentence.
    blocks: how many decoder layers were compiled (their attention, MLP and norms).
    block_classes: their class names (e.g. ``LlamaDecoderLayer``).
    """

    requested: bool
    enabled: bool
    reason: str
    blocks: int
    block_classes: List[str]


@open_section
class Memory(TypedDict, total=False):
    """The run's peak memory and where it was reached (this process: the main rank; this start of the run).

    source: where the figures come from (``VmRSS/VmHWM (/proc/self/status)``, ``ru_maxrss (getrusage)``).
    peak_rss_bytes: the process's peak resident memory up to the saved model.
    peak_reached: ``<phase>: <step>``, the first mark whose peak so far is within 4 MiB of the peak (or that
        the peak was set before this run started, by an earlier run in the same process).
    peak_before_run_bytes: the process's peak resident memory when this run started.
    gpu_peak_bytes: torch's peak allocated bytes on the GPU (runs on a GPU).
    gpu_peak_reached: ``<phase>: <step>`` of the GPU peak.
    marks: the memory after each phase and each evaluator's pass, in order.
    """

    source: str
    peak_rss_bytes: int
    peak_reached: str
    peak_before_run_bytes: int
    gpu_peak_bytes: int
    gpu_peak_reached: str
    marks: List[MemoryMark]
