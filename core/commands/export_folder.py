"""A model folder written by ``tuneforge export`` (format=hf), read back by ``generate``, ``chat`` and ``serve``.

The export is a plain Hugging Face model folder: ``config.json``, safetensors weights, the tokenizer with
the run's chat template, and ``system_prompt.json`` when the run recorded one (``model/system_prompt.json``:
the system prompt every training example started with; :func:`copy_system_prompt`).  Given as ``run_dir=``,
such a folder (one with ``config.json`` and neither ``config.yaml`` nor ``model/``) is loaded whole with
``AutoModelForCausalLM`` (:func:`load_export_folder`), and its ``system_prompt.json`` is the default system
prompt as a run's is.  It has no run config, status or adapter: nothing to refuse, nothing to merge.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from tuneforge.commands.run_loading import LoadedRun, RunDirectoryError, resolve_device, system_prompt_in
from tuneforge.errors import first_line


def is_export_folder(path) -> bool:
    """Whether ``path`` is a model folder such as ``tuneforge export`` writes (``config.json``), not a run
    directory (``config.yaml``, ``model/``)."""
    path = Path(path).expanduser()
    return (path / "config.json").is_file() and not (path / "config.yaml").exists() and not (path / "model").exists()


def copy_system_prompt(run_dir, folder) -> None:
    """Copy the run's ``model/system_prompt.json`` (when it wrote one) into the export ``folder``."""
    from tuneforge.training.model_io import SYSTEM_PROMPT_RECORD

    record = Path(run_dir).expanduser() / "model" / SYSTEM_PROMPT_RECORD
    if record.is_file():
        shutil.copyfile(record, Path(folder) / SYSTEM_PROMPT_RECORD)


#: opens the chat template an export writes when the run recorded a training system prompt (the template
#: then puts that prompt first in a conversation that has no system message); closed by DEFAULT_SYSTEM_END
DEFAULT_SYSTEM_MARK = "{#- tuneforge export: the training system prompt when a conversation has none -#}"
DEFAULT_SYSTEM_END = "{#- tuneforge export: end -#}"


def with_default_system(template: str, system_prompt: str) -> str:
    """``template`` (a Jinja chat template) preceded by a part that puts ``system_prompt`` first in a
    conversation without a system message, so that transformers, vLLM, SGLang and llama.cpp (a GGUF file's
    metadata) prompt the exported model as training did; a system message in the conversation wins.
    A template already wrapped is wrapped anew (the recorded prompt replaces the earlier one)."""
    import json

    literal = json.dumps(system_prompt, ensure_ascii=False)  # a Jinja string literal: quotes, \n escaped
    head = ("{%- if not messages or messages[0]['role'] != 'system' -%}"
            "{%- set messages = [{'role': 'system', 'content': " + literal + "}] + messages -%}"
            "{%- endif -%}")
    return f"{DEFAULT_SYSTEM_MARK}{head}{DEFAULT_SYSTEM_END}{without_default_system(template)}"


def without_default_system(template):
    """``template`` without the part :func:`with_default_system` put before it (as training used it); any
    other value as it is.  tuneforge's own commands add the system prompt themselves (``system=""``: none)."""
    if isinstance(template, str) and template.startswith(DEFAULT_SYSTEM_MARK) and DEFAULT_SYSTEM_END in template:
        return template.split(DEFAULT_SYSTEM_END, 1)[1]
    return template


def put_system_prompt_in_template(tokenizer, run_dir) -> bool:
    """Make ``tokenizer``'s chat template (when it is one string) default to the run's training system
    prompt (``model/system_prompt.json``); returns whether it did (no recorded prompt, no template: no)."""
    system_prompt = system_prompt_in(Path(run_dir).expanduser() / "model")
    template = getattr(tokenizer, "chat_template", None)
    if system_prompt is None or not isinstance(template, str):
        return False
    tokenizer.chat_template = with_default_system(template, system_prompt)
    return True


def load_export_folder(folder, device: str = "auto") -> LoadedRun:
    """The model and tokenizer of an export ``folder`` (safetensors weights only), on ``device``, with the
    system prompt of its ``system_prompt.json`` (None without one)."""
    import transformers
    from omegaconf import OmegaConf

    from tuneforge.commands.export import auto_class_of
    from tuneforge.model_heads import CAUSAL_LM, MODEL_HEADS

    folder = Path(folder).expanduser()
    auto_class = auto_class_of(folder)
    if auto_class != MODEL_HEADS[CAUSAL_LM]:
        raise RunDirectoryError(f"run_dir={folder} holds a model for {auto_class} (its config.json's "
                                "architectures), not a causal LM that generates text; give a run or an export of "
                                "a run that trained a causal LM")
    target = resolve_device(device)
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder))
        model = transformers.AutoModelForCausalLM.from_pretrained(str(folder), use_safetensors=True)
    except (OSError, ValueError) as exc:
        raise RunDirectoryError(f"run_dir={folder}: cannot load the exported model: "
                                f"{first_line(exc)}") from exc
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.chat_template = without_default_system(tokenizer.chat_template)  # system_prompt below instead
    model.to(target).eval()
    return LoadedRun(model=model, tokenizer=tokenizer, config=OmegaConf.create({}), device=target,
                     system_prompt=system_prompt_in(folder))
