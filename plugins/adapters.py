"""Adapters: ``lora``, ``prefix``, ``prompt``, ``ia3`` (through peft), ``full`` and ``freeze``.

PEFT adapters are saved in PEFT's own format (``adapter_config.json`` +
``adapter_model.safetensors``) and reload with
``peft.PeftModel.from_pretrained(base_model, directory)`` (their spec's
``load``); ``lora`` and ``ia3`` merge into the base weights with peft's
``merge_and_unload`` (their ``merge``), ``prefix`` and ``prompt`` refuse to
merge.  ``full`` and ``freeze`` save the whole model as safetensors weights
that ``transformers.AutoModelForCausalLM.from_pretrained(directory)`` loads
(the host's default load; nothing to merge).

The PEFT adapters also train over a base quantized by bitsandbytes
(``model.quantization``, QLoRA; their specs say ``trains_quantized_base``):
``lora`` and ``ia3`` through peft's bitsandbytes layers, ``prefix`` and
``prompt`` with virtual tokens that never touch the base weights.  ``full``
and ``freeze`` train base weights, which a quantized base cannot.

Each config checks its own values when built (``__post_init__``: ranks,
dropout, names from a fixed set), so the host refuses bad values before the
model loads.  An adapter that does not fit the model (target modules that
match nothing, more layers than the model has ...) raises
``tuneforge.errors.ModelError`` naming the config key and what would be valid.
"""

from __future__ import annotations

import contextlib
import fnmatch
import re
import warnings
from dataclasses import dataclass, field
from typing import Any, Optional

import tuneforge
from tuneforge.errors import ModelError
from tuneforge.plugins.adapter_counts import count_freeze, count_full, count_lora
from tuneforge.validation import at_least, between, check, each, greater_than, non_empty, one_of


def _module_names(value) -> Optional[str]:
    """``target_modules``-like values: a regular expression / ``all-linear``, or a non-empty list of names."""
    if isinstance(value, str):
        return non_empty(value)
    if not isinstance(value, (list, tuple)) or not value:
        return f"must be a module name pattern or a non-empty list of module names, got {value!r}"
    return each(_name)(value)


def _name(value) -> Optional[str]:
    return None if isinstance(value, str) and value.strip() else f"must be a module name, got {value!r}"


def _lora_init(value) -> Optional[str]:
    if isinstance(value, (bool, str)):
        return None
    return f"must be true, false or a peft initialisation name (gaussian, pissa, olora ...), got {value!r}"


@dataclass
class LoraAdapterConfig:
    """Low-rank adapters (``peft.LoraConfig``; field meanings as there).

    r: rank of the update matrices.
    lora_alpha: scaling numerator (scale is alpha/r, or alpha/sqrt(r) with
        ``use_rslora``).
    lora_dropout: dropout on the adapter input.
    target_modules: ``all-linear`` (every linear layer but the output layer),
        a list of module names (``[q_proj, v_proj]``; a name matches a module
        whose dotted path ends with it), or one regular expression matched
        against full module paths.
    bias: which biases train: ``none``, ``all`` or ``lora_only``.
    use_dora: weight-decomposed LoRA (DoRA): a trained magnitude vector per
        output on top of the low-rank direction update.
    use_rslora: rank-stabilised scaling alpha/sqrt(r).
    modules_to_save: extra modules trained in full and saved with the adapter
        (e.g. ``[lm_head]``).
    init_lora_weights: ``true`` (B=0, the adapter starts as a no-op),
        ``gaussian``, ``pissa``, ``olora`` ... as in peft.
    layers_to_transform: only adapt these transformer layer indices (None: all).
    gradient_checkpointing: recompute each layer's activations in the backward pass instead of
        keeping them (less activation memory for about a third more compute; QLoRA on large models
        usually needs it; ``tuneforge plan`` shows the difference).
    """

    r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    target_modules: Any = "all-linear"
    bias: str = "none"
    use_dora: bool = False
    use_rslora: bool = False
    modules_to_save: Optional[list] = None
    init_lora_weights: Any = True
    layers_to_transform: Optional[list] = None
    gradient_checkpointing: bool = False

    def __post_init__(self) -> None:
        # dropout 1 would zero the adapter's input: it could never learn
        check(self, r=at_least(1), lora_alpha=greater_than(0), lora_dropout=between(0, 1, include_high=False),
              target_modules=_module_names, bias=one_of("none", "all", "lora_only"),
              modules_to_save=_module_names, init_lora_weights=_lora_init, layers_to_transform=each(at_least(0)))


@dataclass
class PrefixAdapterConfig:
    """Prefix tuning (``peft.PrefixTuningConfig``): trained key/value vectors prepended in every layer.

    num_virtual_tokens: length of the trained prefix.
    prefix_projection: reparameterise the prefix through a two-layer MLP
        (more parameters, often more stable).
    encoder_hidden_size: hidden size of that MLP (None: the model's hidden size).
    """

    num_virtual_tokens: int = 16
    prefix_projection: bool = False
    encoder_hidden_size: Optional[int] = None

    def __post_init__(self) -> None:
        check(self, num_virtual_tokens=at_least(1), encoder_hidden_size=at_least(1))


@dataclass
class PromptAdapterConfig:
    """Prompt tuning (``peft.PromptTuningConfig``): trained embeddings prepended to the input.

    num_virtual_tokens: number of trained soft-prompt embeddings.
    init: ``random`` or ``text`` (start from the embeddings of ``init_text``).
    init_text: the text for ``init=text``, e.g. "Answer the question:".
    tokenizer: tokenizer id/folder used to tokenize ``init_text`` (None: the
        model's own ``name_or_path``).
    """

    num_virtual_tokens: int = 16
    init: str = "random"
    init_text: Optional[str] = None
    tokenizer: Optional[str] = None

    def __post_init__(self) -> None:
        check(self, num_virtual_tokens=at_least(1), init=one_of("random", "text"))


@dataclass
class IA3AdapterConfig:
    """(IA)^3 (``peft.IA3Config``): learned vectors that rescale activations.

    target_modules: module names to rescale (None: peft's default for the
        architecture, e.g. ``k_proj, v_proj, down_proj`` for Llama), or
        ``all-linear``.
    feedforward_modules: the subset of ``target_modules`` that are
        feed-forward layers (their input is rescaled instead of their output;
        None: peft's default).
    modules_to_save: extra modules trained in full and saved with the adapter.
    """

    target_modules: Any = None
    feedforward_modules: Any = None
    modules_to_save: Optional[list] = None

    def __post_init__(self) -> None:
        check(self, target_modules=_module_names, feedforward_modules=_module_names, modules_to_save=_module_names)


@dataclass
class FullAdapterConfig:
    """Full fine-tuning: every parameter trains; saved as safetensors weights.

    gradient_checkpointing: trade compute for activation memory.
    """

    gradient_checkpointing: bool = False


@dataclass
class FreezeAdapterConfig:
    """Freeze the model except the top ``trainable_layers`` transformer blocks and ``trainable_modules``.

    trainable_layers: number of transformer blocks, counted from the output
        end, that train (0: none).
    trainable_modules: module paths or patterns that also train, e.g.
        ``[lm_head, model.norm]``; a pattern matches a module whose dotted
        path equals it or ends with ``.<pattern>``, and may use ``*`` globs
        (``model.layers.*.mlp``).
    gradient_checkpointing: trade compute for activation memory.

    The whole model is saved (safetensors, loadable with
    ``AutoModelForCausalLM.from_pretrained``), not only the trained tensors:
    the result is self-contained and needs no base model to rebuild.
    """

    trainable_layers: int = 2
    trainable_modules: list = field(default_factory=list)
    gradient_checkpointing: bool = False

    def __post_init__(self) -> None:
        check(self, trainable_layers=at_least(0), trainable_modules=each(_name))


# ---------------------------------------------------------------------------
# checking that an adapter fits the model
# ---------------------------------------------------------------------------


def _adaptable(module) -> bool:
    import torch

    return isinstance(module, (torch.nn.Linear, torch.nn.Embedding, torch.nn.Conv1d, torch.nn.Conv2d)) or \
        type(module).__name__ == "Conv1D"


def _module_kinds(model):
    """Names (last path part) of the linear / embedding layers peft can adapt."""
    return sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules() if name and _adaptable(module)})


def _matches(name: str, pattern: str) -> bool:
    return name == pattern or name.endswith("." + pattern)


def _check_targets(model, key: str, targets, allow_all_linear: bool = True) -> None:
    """Raise ``ModelError`` when a target entry matches no module of the model.

    ``target_modules``-like keys (``allow_all_linear``) must match layers peft
    can adapt (linear, embedding, convolution); ``modules_to_save`` any module.
    """
    if targets is None or (allow_all_linear and targets == "all-linear"):
        return
    names = [name for name, module in model.named_modules()
             if name and (_adaptable(module) or not allow_all_linear)]
    valid = _module_kinds(model)
    hint = ("'all-linear' or names among " if allow_all_linear else "names among ") + "[" + ", ".join(valid) + "]"
    if isinstance(targets, str):
        if not any(re.fullmatch(targets, name) for name in names):
            raise ModelError(f"adapter.{key}='{targets}' (a regular expression on module paths) matches no "
                             f"module of the model; valid: {hint}")
        return
    if not isinstance(targets, (list, tuple)) or not targets:
        raise ModelError(f"adapter.{key}={targets!r} must be a non-empty list of module names; valid: {hint}")
    missing = [t for t in targets if not any(_matches(name, str(t)) for name in names)]
    if missing:
        raise ModelError(f"adapter.{key}: {missing} match no module of the model; valid: {hint}")


@contextlib.contextmanager
def _without_peft_deprecation_noise():
    """PEFT (<= 0.21) reads transformers 5's deprecated ``is_gradient_checkpointing`` on every model it
    wraps: a FutureWarning in every run that no user can act on.  Only that warning is hidden."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        yield


def _task_type(model):
    """peft's task type for the model's head: ``SEQ_CLS`` for a sequence classifier (a reward model: peft
    then trains its ``score``/``classifier`` head in full, as ``modules_to_save``, and ``all-linear`` leaves
    it out), ``CAUSAL_LM`` otherwise."""
    from peft import TaskType

    return TaskType.SEQ_CLS if type(model).__name__.endswith("ForSequenceClassification") else TaskType.CAUSAL_LM


def _get_peft_model(model, peft_config, what: str):
    from peft import get_peft_model

    try:
        with _without_peft_deprecation_noise():
            return get_peft_model(model, peft_config)
    except (ValueError, TypeError, KeyError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelError(f"adapter={what} does not fit the model ({type(model).__name__}): {first}") from exc


# ---------------------------------------------------------------------------
# apply functions
# ---------------------------------------------------------------------------


def apply_lora(model, config: LoraAdapterConfig):
    from peft import LoraConfig

    targets, to_save = config.target_modules, config.modules_to_save
    _check_targets(model, "target_modules", targets)
    _check_targets(model, "modules_to_save", to_save, allow_all_linear=False)
    lora_config = LoraConfig(
        task_type=_task_type(model), r=config.r, lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout, target_modules=targets, bias=config.bias,
        use_dora=config.use_dora, use_rslora=config.use_rslora,
        modules_to_save=to_save, init_lora_weights=config.init_lora_weights,
        layers_to_transform=config.layers_to_transform)
    if config.gradient_checkpointing:
        _enable_checkpointing(model)
    return _get_peft_model(model, lora_config, "lora")


def apply_prefix(model, config: PrefixAdapterConfig):
    from peft import PrefixTuningConfig

    kwargs = {}
    if config.encoder_hidden_size:
        kwargs["encoder_hidden_size"] = config.encoder_hidden_size
    peft_config = PrefixTuningConfig(task_type=_task_type(model), num_virtual_tokens=config.num_virtual_tokens,
                                     prefix_projection=config.prefix_projection, **kwargs)
    return _get_peft_model(model, peft_config, "prefix")


def apply_prompt(model, config: PromptAdapterConfig):
    from peft import PromptTuningConfig, PromptTuningInit

    kwargs = {}
    if config.init == "text":
        if not config.init_text:
            raise ModelError("adapter.init=text needs adapter.init_text (the words the soft prompt starts from)")
        tokenizer = config.tokenizer or getattr(model.config, "_name_or_path", None)
        if not tokenizer:
            raise ModelError("adapter.init=text needs a tokenizer to load: set adapter.tokenizer to a "
                             "tokenizer id or folder (the model has no name_or_path)")
        kwargs = {"prompt_tuning_init": PromptTuningInit.TEXT, "prompt_tuning_init_text": config.init_text,
                  "tokenizer_name_or_path": tokenizer}
    peft_config = PromptTuningConfig(task_type=_task_type(model), num_virtual_tokens=config.num_virtual_tokens,
                                     **kwargs)
    try:
        return _get_peft_model(model, peft_config, "prompt")
    except OSError as exc:
        raise ModelError(f"adapter.tokenizer='{kwargs.get('tokenizer_name_or_path')}' cannot be loaded to "
                         f"tokenize adapter.init_text: {str(exc).splitlines()[0]}") from exc


def apply_ia3(model, config: IA3AdapterConfig):
    from peft import IA3Config

    targets, feedforward, to_save = config.target_modules, config.feedforward_modules, config.modules_to_save
    _check_targets(model, "target_modules", targets)
    _check_targets(model, "feedforward_modules", feedforward, allow_all_linear=False)
    _check_targets(model, "modules_to_save", to_save, allow_all_linear=False)
    peft_config = IA3Config(task_type=_task_type(model), target_modules=targets,
                            feedforward_modules=feedforward, modules_to_save=to_save)
    return _get_peft_model(model, peft_config, "ia3")


def _enable_checkpointing(model) -> None:
    # non-reentrant checkpointing also works when the embeddings are frozen (freeze adapter)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def apply_full(model, config: FullAdapterConfig):
    for parameter in model.parameters():
        parameter.requires_grad_(True)
    if config.gradient_checkpointing:
        _enable_checkpointing(model)
    return model


def transformer_layers(model) -> list:
    """``[(path, module)]`` of the model's transformer blocks, input end first.

    Found through the model's ``_no_split_modules`` block classes (set by every
    transformers architecture), else the longest ``nn.ModuleList``.
    """
    import torch

    block_classes = set(getattr(model, "_no_split_modules", None) or [])
    layers = [(name, module) for name, module in model.named_modules()
              if name and type(module).__name__ in block_classes]
    if layers:
        return layers
    lists = [(name, module) for name, module in model.named_modules() if isinstance(module, torch.nn.ModuleList)]
    if not lists:
        return []
    name, longest = max(lists, key=lambda item: len(item[1]))
    return [(f"{name}.{i}", block) for i, block in enumerate(longest)]


def _freeze_hint(model) -> str:
    names = [name for name, _ in model.named_modules() if name and name.count(".") <= 1]
    return ", ".join(names)


def apply_freeze(model, config: FreezeAdapterConfig):
    layers = transformer_layers(model)
    count = int(config.trainable_layers)
    patterns = [str(p) for p in (config.trainable_modules or [])]
    if count < 0 or count > len(layers):
        raise ModelError(f"adapter.trainable_layers is {count}; valid: 0 to {len(layers)} "
                         f"(the model has {len(layers)} transformer layers)")
    if count == 0 and not patterns:
        raise ModelError("adapter=freeze would train nothing: set adapter.trainable_layers (1 to "
                         f"{len(layers)}) or adapter.trainable_modules (e.g. [lm_head])")
    modules = dict(model.named_modules())
    chosen = [module for _, module in layers[len(layers) - count:]] if count else []
    for pattern in patterns:
        matched = [module for name, module in modules.items() if name and (
            fnmatch.fnmatchcase(name, pattern) or fnmatch.fnmatchcase(name, "*." + pattern))]
        if not matched:
            raise ModelError(f"adapter.trainable_modules: '{pattern}' matches no module of the model; valid: "
                             f"module paths such as {_freeze_hint(model)} (globs like 'model.layers.*.mlp' work)")
        chosen.extend(matched)
    model.requires_grad_(False)
    for module in chosen:
        module.requires_grad_(True)
    if not any(p.requires_grad for p in model.parameters()):
        raise ModelError(f"adapter.trainable_modules={patterns} select modules without parameters; "
                         f"valid: modules with weights such as {_freeze_hint(model)}")
    if config.gradient_checkpointing:
        _enable_checkpointing(model)
    return model


# ---------------------------------------------------------------------------
# loading a saved PEFT adapter back, and merging it
# ---------------------------------------------------------------------------


def load_peft(base_model, directory: str):
    """The PEFT adapter saved in ``directory``, put back onto ``base_model``."""
    from peft import PeftModel

    with _without_peft_deprecation_noise():
        return PeftModel.from_pretrained(base_model, directory)


def merge_peft(model):
    """Fold a PEFT adapter into its base model's weights and return the plain ``transformers`` model.

    Prompt-learning adapters (prefix tuning, prompt tuning, p-tuning) add
    virtual tokens instead of weight deltas, so there is nothing to merge:
    they raise :class:`ModelError`.
    """
    for name, config in model.peft_config.items():
        if config.is_prompt_learning:
            kind = getattr(config.peft_type, "value", config.peft_type)
            raise ModelError(f"adapter '{name}' is {kind} (virtual tokens, not weight deltas) and cannot be "
                             "merged into the base weights; use the run directory with tuneforge "
                             "generate/chat, or load it with peft.PeftModel.from_pretrained")
    try:
        return model.merge_and_unload()
    except (AttributeError, NotImplementedError, ValueError) as exc:
        raise ModelError(f"the adapter cannot be merged into the base weights: {exc}") from exc


@tuneforge.hookimpl
def tuneforge_adapters():
    # every peft adapter here trains weights of its own over a frozen base, so the base may be
    # quantized (model.quantization; peft's bitsandbytes layers for lora/ia3, virtual tokens for
    # prefix/prompt); full and freeze train the base weights themselves
    peft = {"load": load_peft, "merge": merge_peft, "trains_quantized_base": True}
    return [
        tuneforge.AdapterSpec("lora", LoraAdapterConfig, "LoRA / DoRA / rsLoRA through peft", apply=apply_lora,
                              count_parameters=count_lora, **peft),
        tuneforge.AdapterSpec("prefix", PrefixAdapterConfig, "prefix tuning through peft", apply=apply_prefix,
                              supports_packing=False, **peft),
        tuneforge.AdapterSpec("prompt", PromptAdapterConfig, "prompt tuning through peft", apply=apply_prompt,
                              supports_packing=False, **peft),
        tuneforge.AdapterSpec("ia3", IA3AdapterConfig, "(IA)^3 activation scaling through peft", apply=apply_ia3,
                              **peft),
        tuneforge.AdapterSpec("full", FullAdapterConfig, "train every weight", apply=apply_full,
                              count_parameters=count_full),
        tuneforge.AdapterSpec("freeze", FreezeAdapterConfig, "train only the top-N layers / named modules",
                              apply=apply_freeze, count_parameters=count_freeze),
    ]
