"""Saving a run's trained model (atomically) and loading it back for the commands that read runs."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from tuneforge.host.guard import is_own, origin_of, plugin_error, spec_call
from tuneforge.specs import CAUSAL_LM, MODEL_HEADS


#: the file in ``model/`` recording the model, adapter and data config that saved it
#: (:func:`model_config_identity`), so ``eval``/``export`` can tell a model/ of another run
MODEL_CONFIG_RECORD = "run_config.json"

#: the file in ``model/`` holding the system prompt every training example started with, written only when
#: they all started with the same one (:func:`shared_system_prompt`); ``generate``, ``chat`` and ``serve``
#: use it when the user gives none
SYSTEM_PROMPT_RECORD = "system_prompt.json"


def model_config_identity(cfg) -> dict:
    """The ``model``, ``adapter`` and ``data`` sections of ``cfg`` as flat ``{dotted key: value}``
    (secrets redacted): what makes a saved model this run's."""
    from omegaconf import OmegaConf

    from tuneforge.secrets import redact

    def flatten(value, prefix):
        if isinstance(value, dict):
            return {k: v for key, item in value.items() for k, v in flatten(item, f"{prefix}.{key}").items()}
        return {prefix: value}

    identity: dict = {}
    for section in ("model", "adapter", "data"):
        if section in cfg:
            identity.update(flatten(redact(OmegaConf.to_container(cfg[section], resolve=True), key=section), section))
    return identity


def shared_system_prompt(examples) -> Optional[str]:
    """The system message every example of ``examples`` (tokenized examples with their ``messages``)
    starts with, when they all start with the same non-empty one; None when there are no examples, or
    one starts with another system message, with none, or has no ``messages`` (a text example)."""
    shared = None
    for example in examples:
        messages = example.get("messages") if isinstance(example, dict) else None
        first = messages[0] if isinstance(messages, list) and messages else None
        content = first.get("content") if isinstance(first, dict) and first.get("role") == "system" else None
        if not isinstance(content, str) or not content or (shared is not None and content != shared):
            return None
        shared = content
    return shared


def save_model(adapter_spec, model, tokenizer, directory: Path, chat_template: Optional[str] = None,
               config=None, system_prompt: Optional[str] = None) -> None:
    """Save weights and tokenizer under a temporary name, then rename: never a half-written model/.

    ``chat_template`` (the Jinja text the training data was rendered with,
    :attr:`tuneforge.data.DataSplits.chat_template`) is saved as the
    tokenizer's chat template, so whatever loads ``model/`` renders prompts
    as training did; None keeps the tokenizer's own.  ``config`` (the run's)
    is recorded in ``model/run_config.json`` (:data:`MODEL_CONFIG_RECORD`);
    ``system_prompt`` (the one every training example started with,
    :func:`shared_system_prompt`) in ``model/system_prompt.json``
    (:data:`SYSTEM_PROMPT_RECORD`), nothing when None.
    """
    import json
    import shutil

    tmp = directory.with_name(directory.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        if adapter_spec.save is not None:
            spec_call(adapter_spec, "save", adapter_spec.save, model, str(tmp))
        else:
            model.save_pretrained(str(tmp), safe_serialization=True)
        _save_tokenizer(tokenizer, tmp, chat_template)
        if config is not None:
            (tmp / MODEL_CONFIG_RECORD).write_text(json.dumps(model_config_identity(config), indent=2,
                                                              sort_keys=True, default=str) + "\n")
        if system_prompt:
            (tmp / SYSTEM_PROMPT_RECORD).write_text(json.dumps({"system_prompt": system_prompt}, indent=2,
                                                               ensure_ascii=False) + "\n", encoding="utf-8")
    except Exception as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        from tuneforge.errors import TuneforgeError, is_disk_full

        if is_disk_full(exc) or (exc.__cause__ is not None and is_disk_full(exc.__cause__)):

            raise TuneforgeError(f"disk full while saving the trained model to {directory}") from exc
        raise
    shutil.rmtree(directory, ignore_errors=True)
    tmp.rename(directory)


def _save_tokenizer(tokenizer, directory: Path, chat_template: Optional[str]) -> None:
    """``tokenizer.save_pretrained`` with ``chat_template`` as its template (the tokenizer is left as it was)."""
    if not chat_template:
        tokenizer.save_pretrained(str(directory))
        return
    own = getattr(tokenizer, "chat_template", None)
    tokenizer.chat_template = chat_template
    try:
        tokenizer.save_pretrained(str(directory))
    finally:
        tokenizer.chat_template = own


def dtype_keyword() -> str:
    """The ``from_pretrained`` keyword for the weights' dtype in the installed transformers.

    ``dtype`` from 4.56 on (transformers 5 logs a deprecation for ``torch_dtype``);
    ``torch_dtype`` before, where ``dtype`` is not understood.
    """
    from importlib.metadata import version

    major, minor = (int(part) for part in version("transformers").split(".")[:2])
    return "dtype" if (major, minor) >= (4, 56) else "torch_dtype"


def load_saved_model(adapter_spec, base_model, model_dir: Path, trust_remote_code: bool = False,
                     head: str = CAUSAL_LM):
    """The trained model of a run, from what :func:`save_model` wrote into ``model_dir``.

    ``adapter_spec.load(base_model, model_dir)`` when the run's adapter gives
    one (with ``base_model=None`` for a spec with ``needs_base=False``);
    otherwise, when the default save wrote a peft adapter (``adapter_config.json``),
    that adapter put back onto ``base_model`` with ``peft.PeftModel.from_pretrained``
    (:mod:`tuneforge.training.adapter_defaults`); otherwise the full weights that
    the default save writes, read with the ``transformers`` auto class of the
    run's model ``head`` (:data:`tuneforge.specs.MODEL_HEADS`:
    ``AutoModelForCausalLM`` for a causal LM; ``base_model`` is then not needed;
    when given, its dtype is kept).
    """
    import transformers

    from tuneforge.errors import ModelError, TuneforgeError
    from tuneforge.training.adapter_defaults import holds_peft_adapter, load_peft_adapter

    try:
        if adapter_spec.load is None and holds_peft_adapter(model_dir):
            return load_peft_adapter(adapter_spec, base_model, model_dir)
        if adapter_spec.load is not None:
            from tuneforge.host.guard import checked_result
            from tuneforge.host.plugin_returns import model as a_model

            loaded = adapter_spec.load(base_model if adapter_spec.needs_base else None, str(model_dir))
            return checked_result(origin_of(adapter_spec), f"adapter '{adapter_spec.name}', load", loaded,
                                  a_model("the trained model"))
        auto_class = getattr(transformers, MODEL_HEADS[head])
        dtype = base_model.dtype if base_model is not None else "auto"
        return auto_class.from_pretrained(str(model_dir), **{dtype_keyword(): dtype},
                                          trust_remote_code=trust_remote_code)
    except TuneforgeError:
        raise
    except (OSError, ValueError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"{model_dir}: adapter '{adapter_spec.name}' cannot load the trained model saved "
                         f"there ({first}); is the run finished?") from exc
    except Exception as exc:  # another error in the adapter's own load: a plugin fault (one line)
        origin = origin_of(adapter_spec)
        if adapter_spec.load is None or origin is None or is_own(origin):
            raise
        raise plugin_error(origin, f"adapter '{adapter_spec.name}', load", exc) from exc


def needs_base_model(adapter_spec, model_dir=None) -> bool:
    """Whether :func:`load_saved_model` needs the run's base model for this adapter: its ``load`` with
    ``needs_base``, or (no ``load``) a peft adapter saved in ``model_dir`` by the default save."""
    from tuneforge.training.adapter_defaults import holds_peft_adapter

    if adapter_spec.load is None:
        return holds_peft_adapter(model_dir)
    return adapter_spec.needs_base


def merge_model(adapter_spec, model):
    """``adapter_spec.merge(model)`` (a plain ``transformers`` model: a peft model coming back unmerged is
    a one-line ``PluginError``); when the adapter gives no ``merge``, a peft model merged with peft's
    ``merge_and_unload`` and any other model as it is; raises a ``ModelError`` when it cannot be merged."""
    from tuneforge.training.adapter_defaults import default_merge, merged_model

    if adapter_spec.merge is None:
        return default_merge(adapter_spec, model)
    return spec_call(adapter_spec, "merge", adapter_spec.merge, model, returns=merged_model())


def dequantized_base(plugins, model_config, base):
    """``base`` as full-precision weights when its model source (``model_config``'s ``name``) says it
    loads the base quantized (:attr:`~tuneforge.specs.ModelSourceSpec.base_quantization`): transformers'
    ``PreTrainedModel.dequantize`` turns each quantized layer into a plain ``nn.Linear`` holding the
    weights it computed with; otherwise ``base`` itself."""
    from tuneforge.errors import ModelError
    from tuneforge.host.components import Component, base_quantization, typed_config

    spec = plugins["model"].get(model_config["name"])
    quantization = base_quantization(Component(spec, typed_config(spec, model_config, "model")))
    if quantization is None:
        return base
    try:
        return base.dequantize()
    except (AttributeError, ValueError, NotImplementedError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"the {quantization} base of model={spec.name} cannot be dequantized by transformers "
                         f"({first}), so the adapter cannot be merged into full-precision weights") from exc


def load_model_from_config(plugins, model_config, key: str = "model", head: str = CAUSAL_LM):
    """``(model, tokenizer)`` from a model-source config mapping that has a ``name``.

    The source's ``load`` gets an instance of its config class, validated like
    a run's (``key`` names the mapping in error messages), and the model
    ``head`` (see :func:`load_source_model`).
    """
    from tuneforge.host.components import typed_config

    spec = plugins["model"].get(model_config["name"])
    return load_source_model(spec, typed_config(spec, model_config, key), head)


def load_source_model(spec, config, head: str = CAUSAL_LM):
    """``(model, tokenizer)`` from the model source ``spec``: ``load(config)`` for a causal LM,
    ``load(config, head=head)`` for a model with another head (:attr:`tuneforge.specs.LossSpec.model_head`;
    a source whose ``heads`` lack it is a one-line ``ModelError``)."""
    from tuneforge.errors import ModelError
    from tuneforge.host.plugin_returns import model_and_tokenizer

    if head == CAUSAL_LM:
        return spec_call(spec, "load", spec.load, config, returns=model_and_tokenizer())
    if head not in spec.heads:
        raise ModelError(f"model={spec.name} cannot load a {head} model (it loads: {', '.join(spec.heads)})")
    return spec_call(spec, "load", spec.load, config, head=head, returns=model_and_tokenizer())


def apply_adapter(run, model):
    """``model`` with the run's adapter applied (the adapter's ``apply``, its result checked)."""
    from tuneforge.host.plugin_returns import adapted_model

    return spec_call(run.adapter.spec, "apply", run.adapter.spec.apply, model, run.adapter.config,
                     returns=adapted_model())


def load_run_data(run, tokenizer):
    """The run's :class:`~tuneforge.data.DataSplits` from its dataset's ``load`` (the result checked), with the
    record keys the run's other components read (:func:`tuneforge.data.record_keys.run_record_keys`) not
    reported as unused; ``run``: the run's components (``RunConfig``)."""
    from tuneforge.data.record_keys import record_keys_read_elsewhere, run_record_keys
    from tuneforge.host.plugin_returns import data_splits

    with record_keys_read_elsewhere(run_record_keys(run)):
        return spec_call(run.data.spec, "load", run.data.spec.load, run.data.config, tokenizer,
                         returns=data_splits())


def trained_head(plugins, cfg) -> str:
    """The model head a run's loss trains (``LossSpec.model_head`` of ``cfg.loss.name``); a causal LM when
    the config names no loss or the loss is not installed (its head is then unknown)."""
    name = (cfg.get("loss") or {}).get("name") if hasattr(cfg, "get") else None
    if not name or name not in plugins["loss"].names():
        return CAUSAL_LM
    return plugins["loss"].get(name).model_head


def save_trained_outputs(run, plugins, model, tokenizer, run_dir: Path, chat_template: Optional[str] = None) -> None:
    """The run's loss's ``save_trained`` (when it has one; ``run``: the
    :class:`~tuneforge.host.components.RunConfig`) with the trained model merged (:func:`merged_copy`) and
    the tokenizer carrying ``chat_template``."""
    loss_spec = run.loss.spec
    if loss_spec.save_trained is None:
        return
    merged = merged_copy(run, plugins, model, Path(run_dir) / "model")
    own = getattr(tokenizer, "chat_template", None)
    if chat_template:
        tokenizer.chat_template = chat_template
    try:
        spec_call(loss_spec, "save_trained", loss_spec.save_trained, merged, tokenizer, Path(run_dir), run.loss.config)
    finally:
        tokenizer.chat_template = own


def merged_copy(run, plugins, model, model_dir: Path):
    """The trained model as a plain ``transformers`` model, ``model`` itself left as it is: the adapter's
    ``merge`` on a deep copy; over a quantized base (the source's ``base_quantization``) the base is
    loaded again, dequantized, and the saved ``model_dir`` merged into it, as ``tuneforge export`` does,
    so the result holds plain full-precision layers."""
    import copy

    from tuneforge.host.components import base_quantization

    adapter_spec = run.adapter.spec
    if base_quantization(run.model) is None:
        return merge_model(adapter_spec, copy.deepcopy(model))
    head = run.loss.spec.model_head
    base = dequantized_base(plugins, run.config.model, load_source_model(run.model.spec, run.model.config, head)[0])
    return merge_model(adapter_spec, load_saved_model(adapter_spec, base, model_dir, head=head))
