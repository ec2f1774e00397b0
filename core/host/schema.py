"""The configuration schema and its registration in Hydra's ConfigStore.

The root config (``conf/config.yaml``) is typed by :class:`TuneforgeConfig`.
Every registered component's config dataclass is stored under its group
(``adapter/lora``, ``data/jsonl``, ``evaluators/perplexity`` ...) with an extra
``name`` field, so third-party components are selectable and type-checked
exactly like built-ins, and a saved config says which component ran.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any, Optional

from omegaconf import MISSING

from tuneforge.specs import SPEC_KINDS


@dataclass
class TrainerConfig:
    """Arguments for ``lightning.Trainer`` (see its docs for each)."""

    max_steps: int = 100
    max_epochs: Optional[int] = None
    accumulate_grad_batches: int = 1
    precision: str = "32-true"
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
    #: what a non-finite (nan/inf) training loss does: ``stop`` the run at that
    #: step (the last checkpoint stays the good one) or ``skip`` the batch (counted)
    on_nonfinite_loss: str = "stop"


@dataclass
class StrategyConfig:
    """A Lightning strategy: ``name`` is a Lightning strategy name (``auto``,
    ``ddp``, ``ddp_spawn``, ``fsdp``, ``deepspeed_stage_2`` ...); ``kwargs`` go to
    its class (e.g. ``find_unused_parameters``)."""

    name: str = "auto"
    kwargs: dict = field(default_factory=dict)


@dataclass
class OptimConfig:
    """AdamW with a warmup + decay schedule, built over trainable parameters only."""

    lr: float = 2e-4
    weight_decay: float = 0.0
    betas: list = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    scheduler: str = "cosine"  # constant | linear | cosine
    warmup_steps: int = 0
    warmup_ratio: float = 0.0
    min_lr_ratio: float = 0.0


@dataclass
class LoaderConfig:
    """Batching of the tokenized data."""

    batch_size: int = 8
    eval_batch_size: int = 8
    num_workers: int = 0
    shuffle: bool = True
    pad_to_multiple_of: Optional[int] = None


@dataclass
class PluginsConfig:
    """Plugin selection.  ``disable`` and ``autoload`` act before plugins are
    imported, so they are read from the command line and the environment
    (``TUNEFORGE_DISABLE_PLUGINS``, ``TUNEFORGE_PLUGINS_AUTOLOAD``)."""

    disable: list = field(default_factory=list)
    enable: list = field(default_factory=list)
    autoload: bool = True


@dataclass
class QualityConfig:
    """The data quality check made before any training (see docs/evaluation.md).

    Serious problems stop the run unless allowed here: ``allow_leakage``
    (held-out examples that also appear in the training data),
    ``allow_empty_targets`` (every target empty or whitespace), and fewer than
    ``min_train_examples`` training examples.  Data with at most ``max_labels``
    distinct targets counts as classification-like and gets a label balance.
    """

    allow_leakage: bool = False
    allow_empty_targets: bool = False
    min_train_examples: int = 4
    max_labels: int = 10


@dataclass
class CheckpointConfig:
    """Resumable checkpoints in ``<run_dir>/checkpoints/step-N`` (safetensors + JSON).

    ``every_n_steps``: optimizer steps between checkpoints (0: only at the end
    and on SIGTERM/SIGINT).  ``keep_last``: how many to keep (0: all).
    """

    every_n_steps: int = 0
    keep_last: int = 2


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
    flag_gap: float = 0.1


@dataclass
class UncertaintyConfig:
    """Bootstrap confidence intervals over examples for every held-out metric and change
    (:mod:`tuneforge.evaluation.uncertainty`); seeded with the run's ``seed``.

    resamples: bootstrap resamples (0: no intervals).
    confidence: the interval's coverage (0.95: a 95% interval).
    """

    resamples: int = 1000
    confidence: float = 0.95


@dataclass
class TuneforgeConfig:
    """Root schema.  ``run_dir`` defaults to Hydra's output directory."""

    model: Any = MISSING
    data: Any = MISSING
    adapter: Any = MISSING
    loss: Any = MISSING
    evaluators: dict = field(default_factory=dict)
    callbacks: dict = field(default_factory=dict)
    baselines: dict = field(default_factory=dict)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loader: LoaderConfig = field(default_factory=LoaderConfig)
    plugins: PluginsConfig = field(default_factory=PluginsConfig)
    quality: QualityConfig = field(default_factory=QualityConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    memorisation: MemorisationConfig = field(default_factory=MemorisationConfig)
    uncertainty: UncertaintyConfig = field(default_factory=UncertaintyConfig)
    #: ``auto``: continue the newest valid checkpoint of the run directory;
    #: ``never``: start over; or the path of a checkpoint directory
    resume: str = "auto"
    seed: int = 42
    run_dir: Optional[str] = None
    threads: Optional[int] = None


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


def register_configs(plugins) -> None:
    """Store the root schema and every component config in Hydra's ConfigStore."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    cs.store(name="tuneforge_schema", node=TuneforgeConfig)
    cs.store(group="trainer", name="default", node=TrainerConfig)
    cs.store(group="strategy", name="auto", node=StrategyConfig)
    for spec_class, (group, _hook, multiple) in SPEC_KINDS.items():
        for spec in plugins[group]:
            package = f"{group}.{spec.name}" if multiple else None
            cs.store(group=group, name=spec.name, node=named_config_class(spec), package=package,
                     provider=plugins[group].origin(spec.name).distribution)
