"""``tuneforge export``: a run's tuned model as a standalone Hugging Face model folder, or as one
GGUF file (``format=gguf``) for llama.cpp, Ollama and LM Studio.

The run's adapter (its spec, found through ``adapter.name`` in the run's
config) loads the saved model and merges it into a plain ``transformers``
model (:attr:`tuneforge.specs.AdapterSpec.merge`; the built-in LoRA and IA3
adapters fold their weights into the base with peft's ``merge_and_unload``,
full fine-tunes are exported as loaded).  An adapter that cannot be merged
(prefix or prompt tuning) stops the export before ``out`` is touched.  The
folder holds safetensors weights, ``config.json``, the generation config and
the tokenizer with the chat template training used, so
``AutoModelForCausalLM.from_pretrained(out)`` (a reward model: ``AutoModelForSequenceClassification``) loads
it without tuneforge; and the run's ``model/system_prompt.json`` when it recorded one (the system prompt
every training example started with), which ``generate``, ``chat`` and ``serve`` given ``run_dir=<out>``
use as they use a run's (:mod:`tuneforge.commands.export_folder`).
With ``format=gguf`` the merged model is written by
:mod:`tuneforge.commands.gguf_export` (``gguf.dtype=f16|f32|q8_0``) to the
file ``out`` (e.g. ``tuned.gguf``), with the tokenizer and chat template in
its metadata.

A base model loaded from a ``.gguf`` file was dequantized by transformers when
the run loaded it; the export holds those dequantized weights (in the run's
``model.dtype``), not a quantized model.  A base the run trained quantized
(QLoRA, ``model.quantization``: the model source's ``base_quantization``) is
dequantized with transformers' ``PreTrainedModel.dequantize`` before the
adapter merges into it, so the export holds plain full-precision layers (no
bitsandbytes module) that compute what the quantized base and adapter did.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from tuneforge.errors import ModelError, TuneforgeError
from tuneforge.commands.key_values import Option, format_options, parse_bool, parse_key_values, wants_help
from tuneforge.commands.run_loading import (
    load_run_model,
    load_run_tokenizer,
    plugins_for_run,
    read_run_config,
    run_adapter_spec,
)

EXPORT_OPTIONS = {
    "run_dir": Option("run directory written by `tuneforge train`", required=True),
    "out": Option("folder to write the Hugging Face model to (format=gguf: the .gguf file)", required=True),
    "format": Option("hf (a Hugging Face model folder) or gguf (one file for llama.cpp/Ollama)", str, "hf"),
    "gguf.dtype": Option("weights in the GGUF file: f16, f32 or q8_0 (norms stay f32)", str, "f16"),
    "overwrite": Option("replace an earlier export (a folder with config.json) at out", parse_bool, False),
    "force": Option("export a run whose status is running, failed or interrupted", parse_bool, False),
    "system_prompt": Option("put the run's training system prompt (model/system_prompt.json) in the exported chat "
                            "template, for conversations without a system message (false: the template as is)",
                            parse_bool, True),
}


class ExportError(TuneforgeError):
    """The run's model cannot be exported as asked."""


def prepare_out_dir(out, run_dir, overwrite: bool) -> Path:
    """Check ``out`` may be written (absent, empty, or ``overwrite`` of an earlier export) and is not inside
    the run's model folder; returns it resolved.  Nothing is created or deleted here: :func:`export_run`
    writes the export into a temporary folder next to ``out`` and renames it into place when complete."""
    out = Path(out).expanduser().resolve()
    model_dir = (Path(run_dir).expanduser() / "model").resolve()
    if out == model_dir or model_dir in out.parents or out in model_dir.parents:
        raise ExportError(f"out={out} overlaps the run's model folder {model_dir}; choose another folder")
    blocking = _file_in_the_way(out)
    if blocking is not None and blocking != out:
        raise ExportError(f"out={out}: {blocking} is a file, not a folder; give out= a path under a folder")
    if out.exists() and not out.is_dir():
        raise ExportError(f"out={out} exists and is not a folder; give a new or empty folder")
    try:
        holds_files = out.is_dir() and any(out.iterdir())
    except OSError as exc:
        raise ExportError(export_write_problem(exc, out)) from None
    if holds_files:
        if not overwrite:
            raise ExportError(f"out={out} is not empty; pass overwrite=true to replace an earlier export")
        if not (out / "config.json").is_file():
            raise ExportError(f"out={out} is not empty and holds no model (config.json), so overwrite=true "
                              "will not delete it; choose an empty or new folder")
    return out


def _file_in_the_way(path: Path):
    """``path`` itself or the first of its parent folders that exists and is not a folder (None: none, or
    a folder that cannot be looked into, which the write then reports)."""
    try:
        for candidate in [*reversed(path.parents), path]:
            if not candidate.exists():
                return None
            if not candidate.is_dir():
                return candidate
    except OSError:
        return None
    return None


def _nearest_existing(path: Path) -> Path:
    """``path`` or its nearest parent folder that exists: the folder a write under ``path`` creates in."""
    for candidate in [path, *path.parents]:
        try:
            if candidate.exists():
                return candidate
        except OSError:
            continue
    return path


def export_write_problem(exc: BaseException, out: Path) -> str:
    """One line for an ``OSError`` (or safetensors' error wrapping one) met while writing the export to
    ``out``: a full disk, a read-only or forbidden folder, a file in the way."""
    import errno

    from tuneforge.errors import is_disk_full, os_error_number

    number = os_error_number(exc)
    # numpy's tofile (the GGUF writer's) says a full disk as "<n> requested and <m> written", without errno
    short_write = number is None and re.search(r"\d+ requested and \d+ written", str(exc)) is not None
    if is_disk_full(exc) or short_write:
        return (f"no space left on the device while writing {out}; nothing was left at out= (the export is "
                "written under a temporary name and renamed only when complete): free space, or choose out= on "
                "another disk")
    reason = getattr(exc, "strerror", None) or (os.strerror(number) if number else str(exc).strip())
    if number in (errno.EROFS, errno.EACCES, errno.EPERM):
        return (f"cannot write the export to out={out}: {_nearest_existing(out.parent)} is not writable "
                f"({reason}); choose a folder you can write to")
    if number == errno.ENOTDIR:
        return f"cannot write the export to out={out}: a part of the path is a file, not a folder ({reason})"
    where = getattr(exc, "filename", None)
    return f"cannot write the export to out={out}: {f'{where}: ' if where else ''}{reason}"


EXPORT_FORMATS = ("hf", "gguf")


def merged_run_model(run_dir, force: bool = False):
    """``(merged plain transformers model, tokenizer)`` of a run, through its adapter's ``merge``."""
    from tuneforge.training.model_io import merge_model

    cfg = read_run_config(run_dir, force=force)
    tokenizer = load_run_tokenizer(run_dir, cfg)
    plugins = plugins_for_run(cfg)
    spec = run_adapter_spec(run_dir, cfg, plugins)
    try:
        model = merge_model(spec, load_run_model(run_dir, cfg, plugins, dequantize=True))
    except ModelError as exc:
        raise ExportError(str(exc)) from exc
    return model, tokenizer


def export_gguf(run_dir, out, *, dtype: str = "f16", overwrite: bool = False, force: bool = False,
                system_prompt: bool = True) -> Path:
    """Write the run's merged model to the GGUF file ``out``; returns its path.  ``system_prompt``: the chat
    template in its metadata defaults to the run's training system prompt (:func:`put_system_prompt_in_template`)."""
    from tuneforge.commands.export_folder import put_system_prompt_in_template
    from tuneforge.commands.gguf_export import GGUF_DTYPES, write_gguf

    if dtype not in GGUF_DTYPES:
        raise ExportError(f"gguf.dtype is '{dtype}'; valid: {', '.join(GGUF_DTYPES)}")
    out = Path(out).expanduser().resolve()
    if out.is_dir():
        raise ExportError(f"out={out} is a folder; with format=gguf give the file to write, e.g. out=tuned.gguf")
    if out.exists() and not overwrite:
        raise ExportError(f"out={out} exists; pass overwrite=true to replace it")
    blocking = _file_in_the_way(out.parent)
    if blocking is not None:
        raise ExportError(f"out={out}: {blocking} is a file, not a folder; give out= a path under a folder")
    model, tokenizer = merged_run_model(run_dir, force=force)
    if system_prompt:
        put_system_prompt_in_template(tokenizer, run_dir)
    try:
        return write_gguf(model, tokenizer, out, dtype=dtype, name=f"tuneforge {Path(run_dir).name}")
    except OSError as exc:  # write_gguf writes a temporary file renamed when complete: nothing is left at out
        raise ExportError(export_write_problem(exc, out)) from exc


def export_run(run_dir, out, *, overwrite: bool = False, force: bool = False, system_prompt: bool = True) -> Path:
    """Write the run's tuned model to ``out`` as a standalone Hugging Face model folder; returns ``out``.
    ``system_prompt``: its chat template defaults to the run's training system prompt
    (:func:`tuneforge.commands.export_folder.put_system_prompt_in_template`).

    The folder is written into a temporary sibling (``.<name>.tmp-<pid>``) and renamed to ``out`` when
    complete (an earlier export replaced only then, with ``overwrite``): a failed export (a full disk, a
    read-only folder) is one :class:`ExportError` line and leaves ``out`` as it was, never half-written."""
    from tuneforge.atomic import atomic_dir
    from tuneforge.commands.export_folder import copy_system_prompt, put_system_prompt_in_template
    from tuneforge.errors import os_error_number

    model, tokenizer = merged_run_model(run_dir, force=force)  # before touching out: an unmergeable adapter
    if not callable(getattr(model, "save_pretrained", None)):  # leaves it alone
        raise ExportError(f"the run's adapter merged the model into a {type(model).__name__}, which has no "
                          "save_pretrained; its merge must return a transformers model")
    out = prepare_out_dir(out, run_dir, overwrite)
    if system_prompt:
        put_system_prompt_in_template(tokenizer, run_dir)
    try:
        with atomic_dir(out, replace=overwrite) as folder:
            model.save_pretrained(str(folder), safe_serialization=True)
            tokenizer.save_pretrained(str(folder))  # the saved tokenizer carries the run's chat template
            copy_system_prompt(run_dir, folder)
    except Exception as exc:  # OSError, or safetensors' own error type wrapping one
        if not isinstance(exc, OSError) and os_error_number(exc) is None:
            raise
        raise ExportError(export_write_problem(exc, out)) from exc
    return out


def export_command(args: list) -> None:
    """``tuneforge export run_dir=<dir> out=<dir> [overwrite=true] [force=true]``."""
    if wants_help(args):
        print(format_options(EXPORT_OPTIONS, "export", "Merge a run's LoRA/IA3 adapter into the base weights "
                                                        "(full weights as they are) and save a standalone "
                                                        "Hugging Face model folder."), end="")
        return
    values = parse_key_values(args, EXPORT_OPTIONS, "export")
    if values["format"] not in EXPORT_FORMATS:
        raise ExportError(f"format is '{values['format']}'; valid: {', '.join(EXPORT_FORMATS)}")
    if values["format"] == "gguf":
        out = export_gguf(values["run_dir"], values["out"], dtype=values["gguf.dtype"],
                          overwrite=values["overwrite"], force=values["force"], system_prompt=values["system_prompt"])
        print(f"exported to {out} (llama.cpp: llama-cli -m {out}; transformers: gguf_file=)")
        return
    out = export_run(values["run_dir"], values["out"], overwrite=values["overwrite"], force=values["force"],
                     system_prompt=values["system_prompt"])
    print(f"exported to {out} (load with transformers.{auto_class_of(out)}.from_pretrained)")


def auto_class_of(folder: Path) -> str:
    """The ``transformers`` auto class that loads the model saved in ``folder``: the one of
    :data:`tuneforge.model_heads.MODEL_HEADS` whose head its architecture ends with (a reward model:
    ``AutoModelForSequenceClassification``), else ``AutoModelForCausalLM``."""
    import json

    from tuneforge.model_heads import CAUSAL_LM, MODEL_HEADS

    try:
        architectures = json.loads((Path(folder) / "config.json").read_text()).get("architectures") or []
    except (OSError, ValueError):
        architectures = []
    for auto_class in MODEL_HEADS.values():
        suffix = auto_class[len("AutoModel"):]
        if any(str(name).endswith(suffix) for name in architectures):
            return auto_class
    return MODEL_HEADS[CAUSAL_LM]
