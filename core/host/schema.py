"""The configuration schema and its registration in Hydra's ConfigStore.

The root config (``conf/config.yaml``) is typed by :class:`TuneforgeConfig`.
Every registered component's config dataclass is stored under its group
(``adapter/lora``, ``data/jsonl``, ``evaluators/perplexity`` ...) with an extra
``name`` field, so third-party components are selectable and type-checked
exactly like built-ins, and a saved config says which component ran.

Each root dataclass checks its own values in ``__post_init__`` (see
:mod:`tuneforge.validation`); the host builds an instance of each from the
composed config before anything heavy runs (:mod:`tuneforge.host.components`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any, Optional

from omegaconf import MISSING

from tuneforge.data.packing import MEGABATCH_BATCHES
from tuneforge.evaluation.comparison import FLAG_GAP
from tuneforge.evaluation.uncertainty import CONFIDENCE, RESAMPLES
from tuneforge.evaluation.verdict import FORGETTING_LIMIT, MARGIN
from tuneforge.specs import SELECTED_BY_SETTING, SPEC_KINDS
from tuneforge.validation import (at_least, between, check, each, greater_than, is_placeholder,
                                  one_of)

#: Lightning's precision names (``lightning.fabric.plugins.precision.precision._PRECISION_INPUT``)
PRECISIONS = ("32-true", "16-mixed", "bf16-mixed", "16-true", "bf16-true", "64-true", "transformer-engine",
              "transformer-engine-float16", "64", "32", "16", "bf16")


#: ``optim.scheduler``: tuneforge's own schedules, then those built by ``transformers.get_scheduler``
SCHEDULERS = ("constant", "linear", "cosine", "cosine_with_restarts", "polynomial", "inverse_sqrt",
              "warmup_stable_decay")


@dataclass
class TrainerConfig:
    """Arguments for ``lightning.Trainer`` (see its docs for each).

    max_steps: optimizer steps to train (-1: no limit, then set max_epochs).
    max_epochs: passes over the training data (null: until max_steps).
    accumulate_grad_batches: micro-batches per optimizer step; the loss is averaged
        per token over the whole window.
    precision: ``auto`` (bf16-mixed on GPUs with bfloat16 and on CPUs with AMX-BF16/AVX512-BF16 where a
        short calibration shows it faster, 32-true otherwise; ``metrics.json`` ``precision`` says which
        and why), or one of Lightning's names: ``32-true``, ``bf16-mixed``, ``16-mixed`` ...
    accelerator: ``auto``, ``cpu``, ``gpu``/``cuda``, ``mps``.
    devices: devices per node (``auto``, a count, or a list of indices).
    num_nodes: machines; launch one process per device (SLURM ``srun``, ``torchrun``).
    val_check_interval: validate every N training batches (a whole number > 1); a value in
        (0, 1] is that fraction of an epoch, so ``1`` means once per epoch (null: at the end
        of each epoch, see check_val_every_n_epoch).
    check_val_every_n_epoch: validate after every N-th epoch (null: only by val_check_interval).
    limit_val_batches: validation batches per check (a count, or a fraction of the split; null: all).
    gradient_clip_val: clip gradients to this size (null: no clipping).
    gradient_clip_algorithm: ``norm`` or ``value``.
    log_every_n_steps: write metrics.csv rows every N steps.
    enable_progress_bar: show Lightning's progress bar.
    deterministic: ask torch for deterministic algorithms (slower).
    on_nonfinite_loss: what a nan/inf training loss does: ``stop`` the run at that step
        (the last checkpoint stays the good one) or ``skip`` the batch (counted).
    collective_timeout_s: seconds a process of a multi-process run waits for the others, at the
        start (the ranks meet and agree that every one can go on) and in every collective of the
        process group; a rank that does not arrive in time is named in a one-line error instead of
        a hang (torch's default is 1800).
    compile: run the model's decoder layers through ``torch.compile`` in the training loss (one
        compiled graph shared by all layers; validation and other calls without gradients stay
        eager).  The first steps include compiling (10-45 s for SmolLM2 on 2 CPU cores, less once
        torch's cache holds it); after that a packed bf16 step on the CPU ran about 1.2x faster, so
        it pays in runs of a few hundred steps and more, best with fixed shapes
        (``loader.packing=true``).  Needs torch >= 2.5 and, on the CPU, a C++ compiler (``g++``);
        refused with ``adapter=prefix``.  ``metrics.json`` ``compile`` records it.
    cpu_attention: how ``sdpa`` attention runs in the training loss on the CPU: ``auto`` computes
        bfloat16 rows of at most 256 tokens as two batched matrix products (torch's SDPA kernel is slow
        backward there: a packed bf16 SmolLM2 step ran about 1.1x faster, one of 128-token rows 1.2x;
        the scores are rounded to bfloat16 before the softmax, as in transformers' ``eager`` attention)
        and everything else with torch's kernel; ``kernel`` uses torch's kernel for every call.
    """

    max_steps: int = 100
    max_epochs: Optional[int] = None
    accumulate_grad_batches: int = 1
    precision: str = "auto"
    accelerator: str = "auto"
    devices: Any = "auto"
    num_nodes: int = 1
    val_check_interval: Optional[float] = None
    check_val_every_n_epoch: Optional[int] = 1
    limit_val_batches: Optional[float] = None
    gradient_clip_val: Optional[float] = 1.0
    gradient_clip_algorithm: str = "norm"
    log_every_n_steps: int = 1
    enable_progress_bar: bool = True
    deterministic: bool = False
    on_nonfinite_loss: str = "stop"
    collective_timeout_s: float = 1800.0
    compile: bool = False
    cpu_attention: str = "auto"

    def __post_init__(self) -> None:
        check(self, max_steps=self._max_steps_problem, max_epochs=_at_least_or_minus_one(1),
              accumulate_grad_batches=at_least(1), precision=one_of("auto", *PRECISIONS), devices=_devices,
              num_nodes=at_least(1), val_check_interval=greater_than(0), check_val_every_n_epoch=at_least(1),
              limit_val_batches=at_least(0), gradient_clip_val=at_least(0),
              gradient_clip_algorithm=one_of("norm", "value"), log_every_n_steps=at_least(1),
              on_nonfinite_loss=one_of("stop", "skip"), collective_timeout_s=greater_than(0),
              cpu_attention=one_of("auto", "kernel"))

    def _max_steps_problem(self, steps) -> Optional[str]:
        """``max_steps``: >= 1, or -1 (no step limit) when ``max_epochs`` bounds the run."""
        epochs = self.max_epochs
        if isinstance(steps, bool) or not isinstance(steps, int):
            return f"must be an integer, got {steps!r}"
        if steps == -1:
            bounded = isinstance(epochs, int) and epochs >= 1 or is_placeholder(epochs)
            return None if bounded else "is -1 (no step limit), so max_epochs must be set to >= 1"
        return None if steps >= 1 else f"must be >= 1 (or -1 with max_epochs set), got {steps}"


@dataclass
class StrategyConfig:
    """A Lightning strategy: how the run uses several devices.

    name: a Lightning strategy name: ``auto``, ``ddp``, ``ddp_spawn``, ``fsdp``,
        ``deepspeed_stage_2`` ...
    kwargs: keyword arguments for its class (e.g. ``{find_unused_parameters: false}``).

    ``fsdp`` is FSDP2 (``tuneforge.training.fsdp``; kwargs ``reshard_after_forward``,
    ``process_group_backend``).  What tuneforge refuses before the model loads (FSDP's
    precisions, DeepSpeed's limits): ``tuneforge.training.trainer.check_strategy`` and
    docs/distributed.md.
    """

    name: str = "auto"
    kwargs: dict = field(default_factory=dict)


@dataclass
class OptimConfig:
    """The optimizer's learning rate and decay, and the learning-rate schedule, over trainable parameters
    only.  Which optimizer uses them is the ``optimizer`` group (``optimizer=adamw`` by default; its own
    keys go in ``optimizer.<key>``; docs/optimizers.md).

    lr: peak learning rate.
    weight_decay: weight decay of matrices (biases and norms get none).
    betas: ``[beta1, beta2]`` of the optimizers that have them (the Adam family, Lion; docs/optimizers.md).
    eps: epsilon of the optimizers that have one (the Adam family).
    scheduler: the learning rate after the warmup: ``constant``, ``linear`` or ``cosine`` decay to
        ``lr * min_lr_ratio``; or, through ``transformers.get_scheduler``: ``cosine_with_restarts``
        (``num_cycles`` cosine decays to 0, each restarting at ``lr``), ``polynomial`` (to
        ``lr * min_lr_ratio`` with exponent ``power``), ``inverse_sqrt``
        (``lr / sqrt((n + timescale) / timescale)`` at the n-th step after the warmup, no end) or
        ``warmup_stable_decay`` (``lr`` until the last ``decay_ratio`` of the steps, then a cosine decay
        to ``lr * min_lr_ratio``).
    warmup_steps: linear warmup steps (0: use warmup_ratio).
    warmup_ratio: warmup as a share of all steps.
    min_lr_ratio: the learning rate decays to ``lr * min_lr_ratio`` (``linear``, ``cosine``, ``polynomial``,
        ``warmup_stable_decay``).
    num_cycles: ``cosine_with_restarts``: the number of cosine decays (hard restarts) after the warmup.
    power: ``polynomial``: the exponent of the decay (1: linear).
    timescale: ``inverse_sqrt``: steps over which the rate falls by sqrt (null: the warmup steps, or
        10000 without a warmup).
    decay_ratio: ``warmup_stable_decay``: the share of all steps spent decaying at the end.
    """

    lr: float = 2e-4
    weight_decay: float = 0.0
    betas: list = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    scheduler: str = "cosine"
    warmup_steps: int = 0
    warmup_ratio: float = 0.0
    min_lr_ratio: float = 0.0
    num_cycles: int = 1
    power: float = 1.0
    timescale: Optional[int] = None
    decay_ratio: float = 0.1

    def __post_init__(self) -> None:
        check(self, lr=greater_than(0), weight_decay=at_least(0), betas=_betas, eps=greater_than(0),
              scheduler=one_of(*SCHEDULERS), warmup_steps=at_least(0), warmup_ratio=between(0, 1),
              min_lr_ratio=between(0, 1), num_cycles=at_least(1), power=greater_than(0), timescale=at_least(1),
              decay_ratio=between(0, 1))


@dataclass
class LoaderConfig:
    """Batching of the tokenized data (see docs/performance.md).

    batch_size: training rows per micro-batch (per device): examples, or packed rows with ``packing``.
    eval_batch_size: examples per validation batch.
    num_workers: DataLoader worker processes (0: in the main process).
    shuffle: shuffle the training examples (or packed rows) each epoch (seeded by ``seed``).
    pad_to_multiple_of: pad batch lengths up to a multiple of this (null: longest in batch).
    packing: concatenate several training examples into each row of at most ``pack_length`` tokens;
        every example keeps its own positions and attends only to itself (exact), so no padding is
        computed inside a row.  Losses and adapters that support it only (not ``loss=dpo``, not the
        ``prefix``/``prompt`` adapters: refused before the model loads).
    pack_length: tokens per packed row (null: ``data.max_length``).
    group_by_length: batches of examples (or packed rows) of similar length, sorted within mega-batches
        of ``group_batches`` batches and shuffled between batches, so less padding is computed.
        Validation batches are never packed.
    group_batches: with ``group_by_length``: batches per mega-batch, a fresh random draw of examples each
        epoch that is sorted by length and cut into batches.  Larger groups leave less padding; smaller
        ones keep more variety in which examples share a batch from epoch to epoch (50, as in HF
        Trainer; with a few hundred examples or fewer, 4-8 keeps each epoch's batches different).
    """

    batch_size: int = 8
    eval_batch_size: int = 8
    num_workers: int = 0
    shuffle: bool = True
    pad_to_multiple_of: Optional[int] = None
    packing: bool = False
    pack_length: Optional[int] = None
    group_by_length: bool = False
    group_batches: int = MEGABATCH_BATCHES

    def __post_init__(self) -> None:
        check(self, batch_size=at_least(1), eval_batch_size=at_least(1), num_workers=at_least(0),
              pad_to_multiple_of=at_least(1), pack_length=at_least(1), group_batches=at_least(1))


@dataclass
class PluginsConfig:
    """Plugin selection.  ``disable`` and ``autoload`` act before plugins are
    imported, so they are read from the command line and the environment
    (``TUNEFORGE_DISABLE_PLUGINS``, ``TUNEFORGE_PLUGINS_AUTOLOAD``).

    disable: entry-point names never imported (``plugins.disable=[a,b]``).
    enable: with autoload off, third-party entry points to load anyway.
    autoload: load every installed third-party plugin (false: only tuneforge's own and ``enable``).
    """

    disable: list = field(default_factory=list)
    enable: list = field(default_factory=list)
    autoload: bool = True


@dataclass
class QualityConfig:
    """The data quality check made before any training (see docs/evaluation.md).

    Serious problems stop the run unless allowed here.

    allow_leakage: go on although held-out examples also appear in the training data.
    allow_empty_targets: go on although every target is empty or whitespace.
    min_train_examples: stop with fewer training examples than this.
    max_labels: data whose repeated targets are at most this many and cover two thirds of the
        training examples counts as classification-like and gets a label balance.
    identical_pair_share: warn when more than this share of the preference pairs have
        the same chosen and rejected response (they teach nothing); when all of them
        do, the run stops.
    """

    allow_leakage: bool = False
    allow_empty_targets: bool = False
    min_train_examples: int = 4
    max_labels: int = 10
    identical_pair_share: float = 0.1

    def __post_init__(self) -> None:
        check(self, min_train_examples=at_least(0), max_labels=at_least(0),
              identical_pair_share=between(0, 1))


@dataclass
class CheckpointConfig:
    """Resumable checkpoints in ``<run_dir>/checkpoints/step-N`` (safetensors + JSON).

    every_n_steps: optimizer steps between checkpoints (0: only at the end and on SIGTERM/SIGINT).
    keep_last: how many to keep (0: all).
    """

    every_n_steps: int = 0
    keep_last: int = 2

    def __post_init__(self) -> None:
        check(self, every_n_steps=at_least(0), keep_last=at_least(0))


@dataclass
class MemorisationConfig:
    """The held-out evaluators again on a sample of training examples, after training, so the report
    shows train vs held-out side by side (see docs/evaluation.md).

    sample: how many training examples (drawn with the run's seed; 0: off).
    flag_gap: a metric whose tuned score on the training sample beats its
        held-out score by at least this much (in the metric's own units:
        0.1 = 10 points of a 0-1 score; for a loss, held-out minus train) is
        flagged when its 95% interval is above zero too (metrics without
        per-example scores have no interval and are not flagged).
    """

    sample: int = 30
    flag_gap: float = FLAG_GAP

    def __post_init__(self) -> None:
        check(self, sample=at_least(0), flag_gap=at_least(0))


@dataclass
class UncertaintyConfig:
    """Confidence intervals for every held-out metric and change (:mod:`tuneforge.evaluation.uncertainty`):
    Wilson / Newcombe / McNemar for 0/1 scores, BCa bootstrap (seeded with the run's ``seed``) / paired t
    for continuous ones.  The verdict's tests never resample.

    resamples: bootstrap resamples of continuous column intervals and the memorisation gap
        (0: no intervals).
    confidence: the interval's coverage (0.95: a 95% interval).
    """

    resamples: int = RESAMPLES
    confidence: float = CONFIDENCE

    def __post_init__(self) -> None:
        check(self, resamples=at_least(0), confidence=_open_unit_interval)


@dataclass
class EvidenceConfig:
    """How the run decides between tuning and prompting (the verdict; see docs/evaluation.md).

    margin: the equivalence margin of the verdict, in the headline metric's own units (0.05 = 5
        points of a 0-1 score): prompting "suffices" only when the whole interval of tuned minus
        the best prompting column lies inside +-margin.
    forgetting_limit: the largest drop on a forgetting metric (``section="forgetting"``, same
        units) that still counts as "no forgetting"; a drop whose interval lies beyond it turns
        "tune" into "tune, at a cost".
    seeds: train and evaluate this many times with seeds ``seed``, ``seed+1``, ... (each a run of its
        own in ``<run_dir>/seed-<seed>``; a rerun reuses completed seeds) and fold them into mean,
        spread and a cross-seed verdict (``<run_dir>/seeds.json``).
    slice_by: a record field (e.g. ``lang``) whose values slice every held-out metric and the
        verdict (null: no slices).
    price_per_hour: the price of one hour of the machine that trains and serves (optional; the
        cost block then shows money next to seconds).
    price_per_million_tokens: the price of a million prompt+completion tokens at serving time
        (optional).
    metric: the held-out metric the verdict is about, named as in ``metrics.json`` (``exact_match``,
        ``perplexity/loss``); null (the default): a metric its evaluator marks primary, else one with
        per-example scores, else one where higher is better.  Its evaluator must be selected.
    """

    margin: float = MARGIN
    forgetting_limit: float = FORGETTING_LIMIT
    seeds: int = 1
    slice_by: Optional[str] = None
    price_per_hour: Optional[float] = None
    price_per_million_tokens: Optional[float] = None
    metric: Optional[str] = None

    def __post_init__(self) -> None:
        check(self, margin=at_least(0), forgetting_limit=at_least(0), seeds=at_least(1))


def _open_unit_interval(value) -> Optional[str]:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < 1:
        return None
    return f"must be between 0 and 1 (exclusive), got {value!r}"


@dataclass
class TuneforgeConfig:
    """Root schema.  ``run_dir`` defaults to Hydra's output directory.

    resume: ``auto`` (continue the newest valid checkpoint of the run directory), ``never``
        (start over) or the path of a checkpoint directory.
    seed: seed of everything random in the run (data order, dropout, initialisation).
    run_dir: the run directory (null: ``hydra.run.dir``, default ``runs/<date>_<time>``).
    threads: torch CPU threads (null: torch's default).
    allow_changed_data: resume (and ``tuneforge eval``) although a data file's content changed
        since the checkpoint was written (by default that is refused, naming the file).
    init_from: the directory of an earlier run whose trained adapter (``model/``) this run starts from
        instead of a fresh one (e.g. a short SFT run before ``loss=grpo``); its model and adapter
        settings must be this run's (null: start from the adapter's own initialisation).
    """

    model: Any = MISSING
    data: Any = MISSING
    adapter: Any = MISSING
    loss: Any = MISSING
    optimizer: Any = MISSING
    evaluators: dict = field(default_factory=dict)
    callbacks: dict = field(default_factory=dict)
    loggers: dict = field(default_factory=dict)
    baselines: dict = field(default_factory=dict)
    rewards: dict = field(default_factory=dict)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loader: LoaderConfig = field(default_factory=LoaderConfig)
    plugins: PluginsConfig = field(default_factory=PluginsConfig)
    quality: QualityConfig = field(default_factory=QualityConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    memorisation: MemorisationConfig = field(default_factory=MemorisationConfig)
    uncertainty: UncertaintyConfig = field(default_factory=UncertaintyConfig)
    evidence: EvidenceConfig = field(default_factory=EvidenceConfig)
    resume: str = "auto"
    seed: int = 42
    run_dir: Optional[str] = None
    threads: Optional[int] = None
    allow_changed_data: bool = False
    init_from: Optional[str] = None

    def __post_init__(self) -> None:
        """Checks the root values; each section (``trainer`` ...) checks itself."""
        check(self, seed=between(0, 2 ** 32 - 1), threads=at_least(1), resume=_resume, init_from=_init_from)


#: the component groups of the root config; the host checks them against the registries
COMPONENT_GROUPS = ("model", "data", "adapter", "loss", "optimizer", "evaluators", "callbacks", "loggers", "baselines",
                    "rewards")
#: the root keys typed by their own dataclass (``trainer``, ``optim`` ...)
ROOT_SECTIONS = tuple(f.name for f in dataclasses.fields(TuneforgeConfig)
                      if dataclasses.is_dataclass(typing.get_type_hints(TuneforgeConfig)[f.name]))
#: the other root keys (``resume``, ``seed`` ...), checked by ``TuneforgeConfig.__post_init__``
ROOT_VALUES = tuple(f.name for f in dataclasses.fields(TuneforgeConfig)
                    if f.name not in ROOT_SECTIONS and f.name not in COMPONENT_GROUPS)


def _at_least_or_minus_one(minimum: int):
    at_minimum = at_least(minimum)

    def rule(value):
        if value == -1 or at_minimum(value) is None:
            return None
        if isinstance(value, int) and not isinstance(value, bool):
            return f"must be >= {minimum} or -1 (no limit), got {value}"
        return at_minimum(value)
    return rule


def _devices(value) -> Optional[str]:
    """Lightning's ``devices``: ``auto``, a count >= 1, -1 (all), a list of indices or a string of them."""
    if isinstance(value, str):
        parts = [p.strip() for p in value.split(",") if p.strip()]
        if value == "auto" or value.strip() == "-1" or (parts and all(p.isdigit() for p in parts)):
            return None
        return f"must be auto, a number of devices, -1 (all) or device indices like '0,1', got {value!r}"
    if isinstance(value, int) and not isinstance(value, bool):
        return None if value >= 1 or value == -1 else f"must be >= 1 (or -1: all, or auto), got {value}"
    return each(at_least(0))(value)


def _betas(value) -> Optional[str]:
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        return f"must be two numbers [beta1, beta2], got {value!r}"
    return each(between(0, 1, include_high=False))(value)


def _init_from(value) -> Optional[str]:
    from pathlib import Path

    if value is None or (Path(str(value)).expanduser() / "model").is_dir():
        return None
    if not Path(str(value)).expanduser().is_dir():
        return f"no such run directory: {value}; give the directory of an earlier tuneforge train run"
    return (f"{value} holds no trained adapter (no model/ folder): give the directory of a finished tuneforge "
            "train run")


def _resume(value) -> Optional[str]:
    from pathlib import Path

    if value in ("auto", "never", "none", "false", ""):
        return None
    if not Path(str(value)).expanduser().exists():
        return (f"no such checkpoint directory: {value}; valid: auto, never, or a checkpoint directory "
                "(<run_dir>/checkpoints/step-N)")
    return None


def named_config_class(spec) -> type:
    """The spec's config dataclass plus ``name: str = <spec.name>`` (first field)."""
    base = spec.config
    hints = typing.get_type_hints(base)
    fields = [("name", str, field(default=spec.name))]
    for f in dataclasses.fields(base):
        fields.append((f.name, hints[f.name], field(default=f.default, default_factory=f.default_factory)))
    cls = dataclasses.make_dataclass(base.__name__, fields)
    cls.__doc__ = base.__doc__
    cls.__module__ = base.__module__
    return cls


def package_path(spec: str) -> str:
    """``<package>/<relative path>`` -> the absolute path of that file shipped in the package.

    The ``pkg`` resolver: ``data.path=${pkg:tuneforge.plugins/data/preference.jsonl}``.
    """
    import importlib.resources

    package, _, relative = str(spec).partition("/")
    if not package or not relative:
        raise ValueError(f"pkg: expected <package>/<path inside it>, got '{spec}'")
    try:
        root = importlib.resources.files(package)
    except (ModuleNotFoundError, TypeError) as exc:
        raise ValueError(f"pkg: no package '{package}' ({exc})") from None
    path = root.joinpath(*relative.split("/"))
    if not path.is_file():
        folder = path.parent
        shipped = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
        raise ValueError(f"pkg: package '{package}' ships no file '{relative}'"
                         + (f"; in {relative.rpartition('/')[0] or '.'}: {', '.join(shipped)}" if shipped else ""))
    return str(path)


def register_resolvers() -> None:
    """Register the host's OmegaConf resolvers (``pkg``); called before every composition."""
    from omegaconf import OmegaConf

    OmegaConf.register_new_resolver("pkg", package_path, replace=True)


#: root groups whose choices include a schema node (``trainer=default``); YAML presets in
#: ``conf/<group>/`` add more (``trainer=smoke``)
SCHEMA_CHOICES = {"trainer": ("default", TrainerConfig), "strategy": ("auto", StrategyConfig)}


@contextlib.contextmanager
def _default_types_checked():
    """A config class whose field default does not fit the field's type (``warm_steps: int = 0.5``): a
    ``TypeError`` naming the field and what to write, instead of OmegaConf's message cut after its first
    line (which names no field)."""
    from omegaconf.errors import ValidationError

    from tuneforge.errors import first_line

    try:
        yield
    except ValidationError as exc:
        field_name = exc.full_key or exc.key
        if not field_name:
            raise
        raise TypeError(f"field '{field_name}': its default does not fit its type ({first_line(exc.msg)}); give it "
                        "a default of its type, or None with Optional[...]") from exc


def register_configs(plugins, broken: Optional[dict] = None) -> None:
    """Store the root schema and every component config in Hydra's ConfigStore.

    A plugin's config class that Hydra cannot take (an unsupported field
    type, an annotation that does not resolve) is a one-line
    :class:`~tuneforge.PluginError` naming the plugin; with ``broken`` (a
    dict, as :attr:`Plugins.broken`) it is recorded there instead and the
    other configs are stored.
    """
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    cs.store(name="tuneforge_schema", node=TuneforgeConfig)
    for group, (name, node) in SCHEMA_CHOICES.items():
        cs.store(group=group, name=name, node=node)
    _each_component_config(plugins, broken, lambda group, spec, package, provider: cs.store(
        group=group, name=spec.name, node=named_config_class(spec), package=package, provider=provider))


def check_configs(plugins) -> None:
    """Refuse what :func:`register_configs` refuses, without importing Hydra (``tuneforge config show``)."""
    from omegaconf import OmegaConf

    _each_component_config(plugins, None, lambda group, spec, package, provider: OmegaConf.structured(
        named_config_class(spec)))


def _each_component_config(plugins, broken: Optional[dict], act) -> None:
    """``act(group, spec, package, provider)`` for every component config, as plugin code of its plugin."""
    from tuneforge.errors import PluginError
    from tuneforge.host.guard import plugin_code

    for spec_class, (group, _hook, multiple) in SPEC_KINDS.items():
        if spec_class in SELECTED_BY_SETTING:  # chosen by a component's setting, not a config group
            continue
        for spec in plugins[group]:
            origin = plugins[group].origin(spec.name)
            if broken is not None and origin.name in broken:
                continue
            try:
                with plugin_code(origin, f"{spec.kind} '{spec.name}', config class "
                                         f"{getattr(spec.config, '__name__', spec.config)!s}"):
                    with _default_types_checked():
                        act(group, spec, f"{group}.{spec.name}" if multiple else None, origin.distribution)
            except PluginError as exc:
                if broken is None:
                    raise
                broken[origin.name] = str(exc)
