"""``tuneforge export``: a run's tuned model as a standalone Hugging Face model folder.

LoRA, IA3 and the other PEFT adapters that can be folded into the weights are
merged into the base model (``merge_and_unload``); full fine-tunes are copied
as saved.  The folder holds safetensors weights, ``config.json``, the
generation config and the tokenizer with the chat template training used, so
``AutoModelForCausalLM.from_pretrained(out)`` loads it without tuneforge.

A base model loaded from a ``.gguf`` file was dequantized by transformers when
the run loaded it; the export holds those dequantized weights (in the run's
``model.dtype``), not a quantized model.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from tuneforge.errors import TuneforgeError
from tuneforge.commands.key_values import Option, format_options, parse_bool, parse_key_values, wants_help
from tuneforge.commands.run_loading import (
    is_peft_adapter,
    load_run_model,
    load_run_tokenizer,
    read_run_config,
    resolved_chat_template,
    run_chat_template,
)

#: files of a PEFT adapter folder that must not end up in an export
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin")

EXPORT_OPTIONS = {
    "run_dir": Option("run directory written by `tuneforge train`", required=True),
    "out": Option("folder to write the Hugging Face model to", required=True),
    "overwrite": Option("replace an earlier export (a folder with config.json) at out", parse_bool, False),
    "force": Option("export a run whose status is running or failed", parse_bool, False),
}


class ExportError(TuneforgeError):
    """The run's model cannot be exported as asked."""


def prepare_out_dir(out, run_dir, overwrite: bool) -> Path:
    """Check ``out`` may be written (empty, or ``overwrite``) and is not inside the run's model folder."""
    out = Path(out).expanduser().resolve()
    model_dir = (Path(run_dir).expanduser() / "model").resolve()
    if out == model_dir or model_dir in out.parents or out in model_dir.parents:
        raise ExportError(f"out={out} overlaps the run's model folder {model_dir}; choose another folder")
    if out.exists() and not out.is_dir():
        raise ExportError(f"out={out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise ExportError(f"out={out} is not empty; pass overwrite=true to replace an earlier export")
        if not (out / "config.json").is_file():
            raise ExportError(f"out={out} is not empty and holds no model (config.json), so overwrite=true "
                              "will not delete it; choose an empty or new folder")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    return out


def merge_adapter(model):
    """Fold a PEFT adapter into its base model's weights and return the plain ``transformers`` model.

    Prompt-learning adapters (prefix tuning, prompt tuning, p-tuning) add
    virtual tokens instead of weight deltas, so there is nothing to merge:
    they raise :class:`ExportError`.
    """
    for name, config in model.peft_config.items():
        if config.is_prompt_learning:
            kind = getattr(config.peft_type, "value", config.peft_type)
            raise ExportError(f"adapter '{name}' is {kind} (virtual tokens, not weight deltas) and cannot be "
                              "merged into the base weights; use the run directory with tuneforge "
                              "generate/chat, or load it with peft.PeftModel.from_pretrained")
    try:
        return model.merge_and_unload()
    except (AttributeError, NotImplementedError, ValueError) as exc:
        raise ExportError(f"the adapter cannot be merged into the base weights: {exc}") from exc


def save_tokenizer(tokenizer, out: Path, chat_template) -> None:
    """Save the tokenizer with the chat template training used.

    ``chat_template`` is the run's ``data.chat_template`` (Jinja text, a
    built-in template's name or a ``.jinja`` path); when set, its text
    replaces the tokenizer's own template.
    """
    if chat_template:
        tokenizer.chat_template = resolved_chat_template(tokenizer, chat_template)
    tokenizer.save_pretrained(str(out))


def export_run(run_dir, out, *, overwrite: bool = False, force: bool = False) -> Path:
    """Write the run's tuned model to ``out`` as a standalone Hugging Face model folder; returns ``out``."""
    cfg = read_run_config(run_dir, force=force)
    model_dir = Path(run_dir).expanduser() / "model"
    tokenizer = load_run_tokenizer(run_dir, cfg)
    peft = is_peft_adapter(model_dir)
    model = load_run_model(run_dir, cfg) if peft else None
    if peft:
        model = merge_adapter(model)  # before touching out: an unmergeable adapter leaves it alone
    out = prepare_out_dir(out, run_dir, overwrite)
    if peft:
        model.save_pretrained(str(out), safe_serialization=True)
    else:
        if not (model_dir / "config.json").is_file():
            raise ExportError(f"{model_dir}: holds neither a PEFT adapter nor full weights (config.json)")
        shutil.copytree(model_dir, out, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns(*ADAPTER_FILES))
    save_tokenizer(tokenizer, out, run_chat_template(cfg))
    return out


def export_command(args: list) -> None:
    """``tuneforge export run_dir=<dir> out=<dir> [overwrite=true] [force=true]``."""
    if wants_help(args):
        print(format_options(EXPORT_OPTIONS, "export", "Merge a run's LoRA/IA3 adapter into the base weights "
                                                        "(or copy full weights) and save a standalone "
                                                        "Hugging Face model folder."), end="")
        return
    values = parse_key_values(args, EXPORT_OPTIONS, "export")
    out = export_run(values["run_dir"], values["out"], overwrite=values["overwrite"], force=values["force"])
    print(f"exported to {out} (load with transformers.AutoModelForCausalLM.from_pretrained)")
