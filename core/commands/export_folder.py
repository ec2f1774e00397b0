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
    model.to(target).eval()
    return LoadedRun(model=model, tokenizer=tokenizer, config=OmegaConf.create({}), device=target,
                     system_prompt=system_prompt_in(folder))
