"""Typed registration objects that plugins return from the ``tuneforge_*`` registration hooks.

Each spec is a small frozen dataclass: a ``name`` (what users type on the command
line, e.g. ``adapter=lora``), a ``config`` dataclass (its fields become the
config keys, e.g. ``adapter.r=8``, type-checked by Hydra) and the function(s)
that do the work.  Nothing here imports torch: entry-point modules that build
specs stay cheap to import.

Every config dataclass must give every field a default, and must not declare a
field called ``name``: the host adds ``name`` itself so that a saved config says
which component produced it.  The work functions receive an instance of exactly
this class (attribute access, plain ``list``/``dict`` values), built by the host
from the resolved config before any model loads; a config class may check its
values in ``__post_init__`` (see :mod:`tuneforge.validation`).
"""

from __future__ import annotations

import dataclasses
import fnmatch
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Iterable, Optional

from tuneforge.calling import accepts_keyword, call_accepting  # noqa: F401  (public through this module)
from tuneforge.model_heads import CAUSAL_LM, MODEL_HEADS, checked_heads  # noqa: F401  (public through this module)
from tuneforge.metric_info import GENERAL_ABILITY, HELD_OUT, MetricInfo  # noqa: F401  (public through this module)
from tuneforge.spec_signatures import (  # noqa: F401  (public through this module)
    ApplyAdapter, BuildLoss, BuildOptimizer, LoadData, LoadModel, LossFunction)


def _check_config_class(kind: str, name: str, config: type) -> None:
    if not (isinstance(config, type) and dataclasses.is_dataclass(config)):
        raise TypeError(f"{kind} '{name}': config must be a dataclass class, got {config!r}")
    for field in dataclasses.fields(config):
        if field.name == "name":
            raise TypeError(f"{kind} '{name}': config field 'name' is reserved by tuneforge")
        if field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise TypeError(
                f"{kind} '{name}': config field '{field.name}' needs a default "
                "(use None or omegaconf.MISSING ('???') for required values)"
            )


@dataclass(frozen=True)
class _Spec:
    """Common part of every spec: a unique name and its config dataclass.

    name: what users select on the command line (``<group>=<name>``): letters, digits, ``_``, ``-``.
    config: the config dataclass; its fields become ``<group>.<field>`` keys, type-checked by Hydra,
        documented by ``field: doc`` lines in its docstring, validated in ``__post_init__``.
    description: one line for ``tuneforge plugins`` and ``tuneforge config groups``.
    """

    kind: ClassVar[str] = "component"
    required: ClassVar[tuple[str, ...]] = ()
    optional: ClassVar[tuple[str, ...]] = ()  # callables that may be None
    name: str
    config: type
    description: str = ""

    def __post_init__(self) -> None:
        if not self.name or not self.name.replace("_", "").replace("-", "").isalnum():
            raise ValueError(f"{self.kind} name {self.name!r} must be letters, digits, '_' or '-'")
        _check_config_class(self.kind, self.name, self.config)
        for attr in self.required:
            if not callable(getattr(self, attr)):
                raise TypeError(f"{self.kind} '{self.name}': '{attr}' must be a callable")
        for attr in self.optional:
            if getattr(self, attr) is not None and not callable(getattr(self, attr)):
                raise TypeError(f"{self.kind} '{self.name}': '{attr}' must be a callable or None")
        for attr in ("heads", "model_heads"):  # ModelSourceSpec, EvaluatorSpec
            if hasattr(self, attr):
                object.__setattr__(self, attr, checked_heads(self.kind, self.name, attr, getattr(self, attr)))


@dataclass(frozen=True)
class ModelSourceSpec(_Spec):
    """Where a model and its tokenizer come from (config group ``model``).

    ``load(config) -> (model, tokenizer)`` returns a ``transformers``
    causal-LM ``PreTrainedModel`` in train mode and a ``PreTrainedTokenizerBase``
    whose ``pad_token`` is set.

    ``base_quantization(config) -> str or None`` (optional) says, from the config alone, how
    ``load`` will quantize the base weights: ``"nf4"``, ``"fp4"`` or ``"int8"`` (bitsandbytes,
    trained through an adapter only), or None for full-precision weights.  The host asks it
    before the model loads, to refuse adapters and strategies that cannot train such a base.

    ``model_config(config) -> transformers.PretrainedConfig`` (optional) reads the model's
    architecture only, never its weights (``tuneforge plan`` sizes a run from it).
    ``config_fields(config) -> dict or None`` (optional) gives the same architecture as plain
    ``config.json`` fields (with ``model_type``, and ``dtype`` as ``load`` gives the weights) without
    importing torch or transformers' models, or None when it cannot (e.g. a hub id); ``tuneforge
    plan`` then sizes the common decoder families in well under a second
    (:mod:`tuneforge.planning.decoder_shapes`) and falls back to ``model_config`` otherwise.
    ``load_tokenizer(config) -> tokenizer`` (optional) loads the tokenizer alone, exactly as ``load``
    gives it (``pad_token`` set), without reading the weights; ``tuneforge data show`` uses it (without
    it, ``load`` runs and the model is left unused).
    ``heads``: the heads ``load`` can build (:mod:`tuneforge.model_heads`: ``load(config, head=...)``).
    """

    kind: ClassVar[str] = "model source"
    required: ClassVar[tuple[str, ...]] = ("load",)
    optional: ClassVar[tuple[str, ...]] = ("base_quantization", "model_config", "config_fields", "load_tokenizer")
    load: Optional[LoadModel] = None
    base_quantization: Optional[Callable[[Any], Optional[str]]] = None
    model_config: Optional[Callable[[Any], Any]] = None
    config_fields: Optional[Callable[[Any], Optional[dict]]] = None
    heads: tuple = (CAUSAL_LM,)
    load_tokenizer: Optional[Callable[[Any], Any]] = None


@dataclass(frozen=True)
class DatasetSpec(_Spec):
    """A dataset (config group ``data``).

    ``load(config, tokenizer) -> tuneforge.data.DataSplits`` returns tokenized
    examples: each a dict of equal-length int lists (``input_ids``, ``labels``
    with -100 on tokens that carry no loss, optionally more keys such as
    ``chosen_input_ids``).  Bad records raise ``tuneforge.errors.DataError``
    naming file and line; none is dropped silently.

    ``example_kinds(config) -> set of str or None`` (optional) says, cheaply and
    before any model loads, which kinds of examples ``load`` will produce with
    this config: the record formats of :mod:`tuneforge.data` (``alpaca``,
    ``chat``, ``completion``, ``preference``, ``kto``) or names of the plugin's own.
    ``None`` (or no callable) means "unknown".  The host calls it only when the
    selected loss declares ``requires``, and refuses the run when a kind is not
    one the loss accepts.  It may raise ``tuneforge.errors.DataError`` (e.g. an
    unreadable first record), which is reported like a bad config value.

    ``no_validation(config) -> str or None`` (optional) says, from the config
    alone, whether ``load`` will hold out validation examples: None when it
    will (or cannot tell before loading), else one line saying why not, naming
    the keys (``"data.val_size is 0"``).  Other plugins ask it instead of
    reading this dataset's keys (the ``early_stopping`` callback refuses a run
    that never validates with it).
    """

    kind: ClassVar[str] = "dataset"
    required: ClassVar[tuple[str, ...]] = ("load",)
    load: Optional[LoadData] = None
    example_kinds: Optional[Callable[[Any], Optional[Iterable[str]]]] = None
    no_validation: Optional[Callable[[Any], Optional[str]]] = None

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("example_kinds", "no_validation"):
            if getattr(self, name) is not None and not callable(getattr(self, name)):
                raise TypeError(f"dataset '{self.name}': '{name}' must be a callable or None")


@dataclass(frozen=True)
class AdapterSpec(_Spec):
    """How the model is made trainable, saved, loaded back and merged (config group ``adapter``).

    ``apply(model, config) -> model`` freezes/wraps the model (e.g. returns a ``peft.PeftModel``), leaving
    the parameters to train with ``requires_grad=True`` (a model with none is refused in one line).

    ``save(model, directory)`` writes the trained weights into the run's
    ``model/`` folder; when omitted the host calls
    ``model.save_pretrained(directory, safe_serialization=True)``.

    ``load(base_model, directory) -> model`` rebuilds the trained model from
    what ``save`` wrote, for ``tuneforge generate``, ``chat``, ``eval`` and
    ``export``.  ``base_model`` is the run's base model, freshly loaded from
    its model source, when ``needs_base`` is true (the default); with
    ``needs_base=False`` (self-contained weights) the host skips loading the
    base and passes ``None``.

    ``needs_base``: whether ``load`` needs the base model (default true).  When ``load`` is omitted it is not
    consulted: a folder holding peft's ``adapter_config.json`` (what the default ``save`` writes for a peft
    model) is put onto the run's freshly loaded base with ``peft.PeftModel.from_pretrained(base, directory)``,
    any other is read as full weights with ``transformers.AutoModelForCausalLM.from_pretrained(directory)``.

    ``merge(model) -> model`` turns the loaded model into a plain ``transformers`` model that
    ``save_pretrained`` writes as a standalone Hugging Face folder (``tuneforge export``), e.g. by folding
    adapter weights into the base weights (peft: ``model.merge_and_unload()``; a peft model returned
    unmerged is refused in one line).  An adapter that cannot be merged (prefix or prompt tuning: virtual
    tokens, not weight deltas) raises ``tuneforge.errors.ModelError`` with a one-line reason.  When omitted,
    a peft model is merged with its ``merge_and_unload()`` and any other is exported as it is.

    ``supports_packing``: False for adapters whose model cannot take packed
        batches (``loader.packing``: a 4D attention mask and per-example
        ``position_ids``), e.g. ones that prepend virtual tokens.

    ``trains_quantized_base``: True for adapters that train only weights of their own
        on top of a frozen base, so the base may be loaded quantized (``model.quantization``,
        QLoRA); the host refuses a quantized base with any other adapter before the model loads.

    ``count_parameters(shapes, config) -> AdapterCount or None`` (optional): what the adapter would
        add and train on a model of known shapes (``tuneforge.DecoderShapes`` in,
        ``tuneforge.AdapterCount`` out), without torch, for ``tuneforge plan``; None for settings
        it does not count.  Without it (or on None) the plan applies ``apply`` to the
        model built on torch's meta device, which is exact but imports torch and the model first.
    """

    kind: ClassVar[str] = "adapter"
    required: ClassVar[tuple[str, ...]] = ("apply",)
    optional: ClassVar[tuple[str, ...]] = ("save", "load", "merge", "count_parameters")
    apply: Optional[ApplyAdapter] = None
    save: Optional[Callable[[Any, str], None]] = None
    load: Optional[Callable[[Any, str], Any]] = None
    merge: Optional[Callable[[Any], Any]] = None
    count_parameters: Optional[Callable[[Any, Any], Any]] = None
    needs_base: bool = True
    supports_packing: bool = True
    trains_quantized_base: bool = False


@dataclass(frozen=True)
class LossSpec(_Spec):
    """A training objective (config group ``loss``).

    ``build(config, context) -> loss_fn`` where ``context`` is a
    ``tuneforge.losses.LossContext`` and ``loss_fn(model, batch) ->
    tuneforge.losses.LossOutput``.  The loss runs the forward pass itself, so
    objectives that need extra passes (a reference model, a teacher) fit the
    same interface.

    ``requires``: the example kinds the loss can train on, e.g.
    ``("preference",)`` for a loss that needs chosen/rejected pairs,
    ``("kto",)`` for one that reads unpaired desirable/undesirable marks
    (empty: any kind but ``kto``, whose marks only a loss requiring them
    reads).  When the dataset tells its kinds (``DatasetSpec.example_kinds``),
    data with another kind is refused before the model loads; otherwise
    right after the data loads, when its ``stats["formats"]`` names the
    kinds (as the built-in datasets' do).

    ``supports_packing``: True when the loss handles packed batches
        (``loader.packing``), i.e. it builds its forward arguments with
        ``tuneforge.losses.model_inputs(model, batch)``; ``loader.packing=true``
        with any other loss is refused before the model loads.
    ``model_head``: the head the loss trains (:mod:`tuneforge.model_heads`; default ``causal_lm``).
    ``save_trained(model, tokenizer, run_dir, config)`` (optional): writes outputs besides ``model/``
        from a merged copy of the trained model, on the main process (:mod:`tuneforge.model_heads`).

    ``logits_bytes(config, work) -> bytes`` (optional): the memory the loss's output layer and logits
        hold at a step's peak, for ``tuneforge plan``; ``work`` is a ``tuneforge.losses.LogitsWork``
        (positions, vocabulary and hidden size, activation bytes, device kind).  Without it the plan
        counts every position's full logits with autograd's copies
        (``tuneforge.losses.full_logits_bytes``), the most any loss needs; a loss that builds fewer
        (``tuneforge.losses.chunked_logits_bytes``) says so here.
    ``needs_rewards``: True for an objective that scores text with the run's rewards
        (``rewards=[...]``): a run with none is refused before the model loads; the loss gets
        them as ``LossContext.rewards`` and each training batch carries ``records`` (the
        examples' source records, a list of dicts, for the rewards' reference fields).
    """

    kind: ClassVar[str] = "loss"
    required: ClassVar[tuple[str, ...]] = ("build",)
    optional: ClassVar[tuple[str, ...]] = ("save_trained", "logits_bytes")
    build: Optional[BuildLoss] = None
    requires: tuple[str, ...] = ()
    supports_packing: bool = False
    model_head: str = CAUSAL_LM
    save_trained: Optional[Callable[..., None]] = None
    needs_rewards: bool = False
    logits_bytes: Optional[Callable[[Any, Any], float]] = None

    def __post_init__(self) -> None:
        super().__post_init__()
        checked_heads(self.kind, self.name, "model_head", (self.model_head,))
        if isinstance(self.requires, str) or not all(isinstance(k, str) and k for k in self.requires):
            raise TypeError(f"loss '{self.name}': 'requires' must be a tuple of example kinds, "
                            f"e.g. ('preference',), got {self.requires!r}")
        object.__setattr__(self, "requires", tuple(self.requires))


@dataclass(frozen=True)
class OptimizerSpec(_Spec):
    """An optimizer (config group ``optimizer``).

    ``build(parameter_groups, settings, config) -> torch.optim.Optimizer``:
    ``parameter_groups`` are the trainable parameters as torch parameter groups
    (``{"params": [...], "weight_decay": ...}``: matrices get ``optim.weight_decay``,
    biases and norms none); ``settings`` is the run's ``optim`` section
    (:class:`tuneforge.host.schema.OptimConfig`: ``lr``, ``weight_decay``, ``betas``,
    ``eps``, the schedule); ``config`` is this optimizer's own config.  The host
    wraps it in the ``optim.scheduler`` schedule and saves and restores its
    ``state_dict`` with every checkpoint, so that state must round-trip exactly.

    ``state_bytes_per_parameter``: bytes of optimizer state kept per trainable
        parameter (AdamW in fp32: 8; 8-bit Adam: 2; SGD with momentum: 4), for
        ``tuneforge plan``'s memory estimate.
    """

    kind: ClassVar[str] = "optimizer"
    required: ClassVar[tuple[str, ...]] = ("build",)
    build: Optional[BuildOptimizer] = None
    state_bytes_per_parameter: float = 8.0

    def __post_init__(self) -> None:
        super().__post_init__()
        value = self.state_bytes_per_parameter
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise TypeError(f"optimizer '{self.name}': 'state_bytes_per_parameter' must be a number >= 0, "
                            f"got {value!r}")


@dataclass
class RewardConfig:
    """The keys every reward has (a reward's config class subclasses it).

    weight: this reward's weight in the run's total reward, the weighted sum of the selected
        rewards (``rewards.<name>.weight=0.5``; negative: a penalty counted as a reward).
    """

    weight: float = 1.0


@dataclass(frozen=True)
class RewardSpec(_Spec):
    """A reward: scores a generated completion with a number (config group ``rewards``; several
    run, summed with their ``weight``s), for online objectives (``loss=grpo``) and the ``reward``
    evaluator.

    ``build(config, context) -> score`` runs once per run, when the run's components are built
    (``context``: :class:`tuneforge.rewards.RewardContext`: the tokenizer, the device, the run
    directory); it may load what the reward needs (a reward model) and raise
    ``tuneforge.ConfigError`` with one line.  ``score(prompts, completions, records)`` gets three
    lists of equal length: the prompt each completion answers (the rendered prompt text), the
    completion (generated text, special tokens removed) and the source record of the example (a
    dict: the reference fields, e.g. ``reference`` or alpaca ``output``), and returns one finite
    number per completion (higher is better).  Anything else (a string, None, NaN, a list of
    another length) stops the run in one line naming the reward and what it returned.

    ``config`` must subclass ``tuneforge.RewardConfig`` (its ``weight`` key; it has no ``__post_init__``
    of its own, so a subclass's ``__post_init__`` need not call one).  The run's rewards are used by
    ``loss=grpo`` and by the ``reward`` evaluator (``rewards=[...] evaluators=[reward]``, with any loss).
    """

    kind: ClassVar[str] = "reward"
    required: ClassVar[tuple[str, ...]] = ("build",)
    build: Optional[Callable[[Any, Any], Callable[[list, list, list], Iterable[float]]]] = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if not issubclass(self.config, RewardConfig):
            raise TypeError(f"reward '{self.name}': config must subclass tuneforge.RewardConfig (its 'weight' key), "
                            f"got {self.config.__name__}")


@dataclass(frozen=True)
class EvaluatorSpec(_Spec):
    """Scores a model on held-out data (config group ``evaluators``; several run).

    ``evaluate(model, tokenizer, examples, config) -> dict[str, float]`` gets
    the validation split (tokenized examples, each also carrying its source
    ``record``) and returns named metrics.  It must not change the model.
    When ``evaluate`` accepts a keyword argument ``evaluation`` (or
    ``**kwargs``), the host also passes the
    :class:`tuneforge.evaluation.EvaluationPass` of this model state: the
    chat template the data was rendered with and the generations shared by
    all evaluators of the pass (give it to the helpers in
    :mod:`tuneforge.evaluation`).  A four-argument ``evaluate`` is called
    without it.

    ``metrics``: :class:`MetricInfo` for the metrics ``evaluate`` returns
    (a metric without an entry counts as higher-is-better, section
    ``"held-out"``).  An entry whose name holds a shell-style wildcard
    (``*``, ``?``, ``[...]``; :mod:`fnmatch`) describes every metric it
    matches, for metrics named only at run time (e.g. ``"*/acc"`` for
    ``<task>/acc``); an exact name wins over a pattern, and among patterns
    the first that matches.

    An ``evaluate`` with a ``context`` parameter also gets
    ``context=``:class:`tuneforge.RunContext` of the training process (None
    under ``tuneforge eval``).

    Under DDP ``evaluate`` is called on every process with all examples.
    What it computes through the pass-aware helpers
    (:func:`tuneforge.evaluation.generate_predictions`,
    :func:`tuneforge.evaluation.map_batches`, the built-in evaluators'
    scoring) is shared out by batches across the ranks and gathered on every
    rank, so every rank returns the single-process numbers; work done outside
    them (an evaluator that does not use them) runs unsharded on every rank.
    Never call those helpers on only some ranks: they are collectives.
    ``model_heads``: the heads whose models ``evaluate`` can score (:mod:`tuneforge.model_heads`).
    """

    kind: ClassVar[str] = "evaluator"
    required: ClassVar[tuple[str, ...]] = ("evaluate",)
    evaluate: Optional[Callable[..., dict]] = None
    metrics: tuple = ()
    model_heads: tuple = (CAUSAL_LM,)

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "metrics", tuple(self.metrics))
        if not all(isinstance(info, MetricInfo) for info in self.metrics):
            raise TypeError(f"evaluator '{self.name}': 'metrics' must be a tuple of tuneforge.MetricInfo")

    def metric_info(self, metric: str) -> MetricInfo:
        """The declared :class:`MetricInfo` of ``metric`` (its own entry, else the first pattern that
        matches it, renamed to ``metric``), or the defaults."""
        exact = next((info for info in self.metrics if info.name == metric), None)
        if exact is not None:
            return exact
        pattern = next((info for info in self.metrics if _is_pattern(info.name)
                        and fnmatch.fnmatchcase(metric, info.name)), None)
        return dataclasses.replace(pattern, name=metric) if pattern is not None else MetricInfo(metric)


def _is_pattern(name: str) -> bool:
    return any(char in name for char in "*?[")


@dataclass(frozen=True)
class CallbackSpec(_Spec):
    """Something that acts during or at the end of a training run (config group ``callbacks``;
    several run).  Give ``build``, ``on_run_end`` or both.

    ``build(config) -> lightning.pytorch.Callback``: a Lightning callback
    added to the trainer; or ``build(config, context)`` when it takes a
    second parameter: ``context`` is the process's :class:`tuneforge.RunContext`
    (under DDP every process builds its callbacks; write files only where
    ``context.is_main``).

    ``on_run_end(config, metrics, status, run_dir, context)``: called once per process
    when the run ends (after the tuned evaluation and the run directory's
    outputs, or after a failure), with keyword arguments: ``config`` is this
    callback's own config (an instance of its config class, from
    ``callbacks.<name>``), ``metrics`` the run's
    metrics (as in ``metrics.json``; partial for a failed run), ``status``
    ``"completed"``, ``"failed"`` or ``"interrupted"``, ``run_dir`` a
    ``pathlib.Path``, ``context`` the process's :class:`tuneforge.RunContext`.  A function may accept any subset of these (the host
    passes only the keywords its signature takes, or all with
    ``**kwargs``), so keywords added in later versions do not break it.
    """

    kind: ClassVar[str] = "callback"
    optional: ClassVar[tuple[str, ...]] = ("build", "on_run_end")
    build: Optional[Callable[..., Any]] = None
    on_run_end: Optional[Callable[..., None]] = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.build is None and self.on_run_end is None:
            raise TypeError(f"callback '{self.name}': give 'build' (a Lightning callback), 'on_run_end' or both")


@dataclass(frozen=True)
class BaselineSpec(_Spec):
    """A baseline: the base model, prompted better, as a column next to base and tuned (config group
    ``baselines``; several run, by default ``few_shot``, ``retrieval`` and ``majority``).

    ``rewrite(model, tokenizer, train, held_out, config) -> examples`` gets the base model (before
    training), its tokenizer, the training and held-out examples and the baseline's config (an
    instance of its config class), and returns the held-out examples, in the same order, with their
    ``messages`` rewritten: extra turns (demonstrations, a system prompt) before each example's own
    turns, which stay as they were at the end (so the reference is unchanged).  It may also accept
    the keywords ``seed`` (the run's), ``chat_template`` (the data's), ``context`` (the
    :class:`tuneforge.RunContext`), ``info`` (an empty dict the baseline may fill with
    JSON-serialisable facts about its run, e.g. how many queries retrieval could only tie-break, saved
    under ``baseline_info[<key>]`` in ``metrics.json``) and ``build_retriever``
    (``build_retriever(setting) -> retriever``: the registered :class:`RetrieverSpec` that
    ``setting`` selects, a name or a mapping with ``name``, built from its config).  It must not
    change the model or use a held-out example as a demonstration; the host checks both, re-tokenizes
    the rewritten examples (loss on the example's own answer only) and scores them with the selected
    held-out evaluators in one evaluation pass, as the column ``<name>``.

    ``answer(train, held_out, config) -> list of str or None`` instead of ``rewrite`` (exactly one of
    the two): a column without a model (``majority``): one answer per held-out example, in order, or
    None where it does not apply (no column; why in ``info["skipped"]``); keywords ``seed``,
    ``context``, ``info`` as for ``rewrite``.  Only the evaluators that score generated answers
    (through :func:`tuneforge.evaluation.generate_predictions`) score it.

    ``describe(config) -> str``: the column's label in the report and the
    verdict (e.g. ``"retrieval, k=4"``); the name when omitted.
    """

    kind: ClassVar[str] = "baseline"
    optional: ClassVar[tuple[str, ...]] = ("rewrite", "answer", "describe")
    rewrite: Optional[Callable[..., list]] = None
    describe: Optional[Callable[[Any], str]] = None
    answer: Optional[Callable[..., Optional[list]]] = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if (self.rewrite is None) == (self.answer is None):
            raise TypeError(f"baseline '{self.name}': give exactly one of 'rewrite' (the base model prompted "
                            f"differently) and 'answer' (no model), got {'neither' if self.rewrite is None else 'both'}")


@dataclass(frozen=True)
class RetrieverSpec(_Spec):
    """A retriever: ranks passages for a query (a lexical index, dense embeddings, the user's own
    vector store).  Not a root config group: a component's ``retriever`` setting selects one by
    name (the ``rag`` baseline's ``baselines.rag.retriever=<name>``), or by a mapping with ``name``
    and the retriever's own keys (``baselines.rag.retriever={name: dense, model: ./minilm}``).

    ``build(config) -> retriever`` returns a fresh retriever, an object with the methods ``index`` and ``search``.

    A retriever's methods:

    * ``index(passages)``: ``passages`` is a list of texts (corpus chunks, training questions);
      a second call replaces the index;
    * ``search(query, k) -> [(index, score), ...]``: at most ``k`` positions into ``passages``,
      best first, with their scores (higher is more similar).  Passages with equal scores keep
      their order; a lexical retriever gives 0 to a passage sharing no term with the query, so
      a query whose every score is 0 was only a tie-break (the baselines count and report
      such queries).

    ``build`` may raise ``tuneforge.ConfigError`` with one line, e.g. naming a package to
    install.  It runs when the component that uses it does (the ``rag`` baseline: after the base
    evaluation); its name and keys are checked with the rest of the config.
    """

    kind: ClassVar[str] = "retriever"
    required: ClassVar[tuple[str, ...]] = ("build",)
    build: Optional[Callable[[Any], Any]] = None


@dataclass(frozen=True)
class LoggerSpec(_Spec):
    """A metrics logger / experiment tracker (config group ``loggers``; several run).

    build: ``build(config, context) -> lightning.pytorch.loggers.Logger``, where
        ``context`` is a :class:`LoggerContext`; a ``build`` that takes one
        parameter is called as ``build(config)``.  Called in every process
        before the model loads, so a missing tracker library stops the run
        early: raise ``tuneforge.ConfigError`` with the install command.
        Lightning's loggers write only from global rank zero.
    run_id: ``run_id(logger) -> str | None``, the tracker's id of this run,
        recorded in ``metrics.json`` (``trackers``) and ``trackers.json`` and
        handed back as ``context.resume_run_id`` when the run resumes; default
        ``logger.version``.
    finish: ``finish(logger, status)`` closes the tracker run once the
        tuneforge run ends (main process only), ``status`` being Lightning's
        ``"success"``, ``"failed"`` or ``"finished"`` (interrupted, resumable);
        default ``logger.finalize(status)``.

    The host sends the resolved config, secrets redacted, as hyperparameters
    (``logger.log_hyperparams``) when a tracker run starts, and the base and
    tuned evaluator results (``base/<metric>``, ``tuned/<metric>``) at the last
    step.  The run's own ``metrics.csv`` is always written (see
    docs/trackers.md).
    """

    kind: ClassVar[str] = "logger"
    required: ClassVar[tuple[str, ...]] = ("build",)
    build: Optional[Callable[..., Any]] = None
    run_id: Optional[Callable[[Any], Optional[str]]] = None
    finish: Optional[Callable[[Any, str], None]] = None


@dataclass(frozen=True)
class LoggerContext:
    """What a logger's ``build`` gets besides its config.

    run_dir: the run directory (``pathlib.Path``); keep the logger's local
        files under it unless its config says otherwise.
    run_name: a name for the tracker run: the run directory's name (with its
        parent's for a numbered multirun job, e.g. ``2026-01-01_12-00-00-3``).
    resume_run_id: when this run resumes from a checkpoint, the tracker run id
        this logger recorded before (``trackers.json``), so the same tracker run
        is continued; ``None`` for a new run.
    is_main: whether this process writes the run directory (global rank zero).
    """

    run_dir: Any
    run_name: str
    resume_run_id: Optional[str] = None
    is_main: bool = True


#: spec class -> (config group, registration hook name, whether several run at once)
SPEC_KINDS: dict[type, tuple[str, str, bool]] = {
    ModelSourceSpec: ("model", "tuneforge_model_sources", False),
    DatasetSpec: ("data", "tuneforge_datasets", False),
    AdapterSpec: ("adapter", "tuneforge_adapters", False),
    LossSpec: ("loss", "tuneforge_losses", False),
    OptimizerSpec: ("optimizer", "tuneforge_optimizers", False),
    EvaluatorSpec: ("evaluators", "tuneforge_evaluators", True),
    CallbackSpec: ("callbacks", "tuneforge_callbacks", True),
    LoggerSpec: ("loggers", "tuneforge_loggers", True),
    BaselineSpec: ("baselines", "tuneforge_baselines", True),
    RetrieverSpec: ("retriever", "tuneforge_retrievers", False),
    RewardSpec: ("rewards", "tuneforge_rewards", True),
}

#: spec kinds that are not a root config group: a component's own setting selects one by name
#: (kind -> how, for the docs); the host checks such a setting where the component's config
#: dataclass marks it with :func:`selects`
SELECTED_BY_SETTING: dict[type, str] = {
    RetrieverSpec: "a component's `retriever` setting, e.g. `baselines.rag.retriever=<name>` or "
                   "`baselines.rag.retriever={name: <name>, <key>: <value>}`",
}


def selects(group: str, default: Any) -> Any:
    """A config dataclass field that selects a component of ``group`` (a kind of
    :data:`SELECTED_BY_SETTING`, e.g. ``"retriever"``) by name, or by a mapping with ``name`` and
    that component's keys: ``retriever: Any = selects("retriever", "bm25")``.

    The host checks the value with the rest of the config, before any model loads: the name is
    registered and the keys are that component's (an instance of its config class is built).
    """
    return dataclasses.field(default=default, metadata={"tuneforge_selects": group})
