"""Text generation with a fine-tuned model: ``tuneforge generate`` and ``tuneforge chat``.

A run directory (see :func:`tuneforge.run.train`) is turned back into a model
the way the run built it:

1. ``config.yaml`` names the model source; the base model is loaded through
   the plugin registry (:func:`tuneforge.run.load_model_from_config`), so a
   run on a third-party model source needs that plugin installed;
2. ``model/`` holds either a PEFT adapter (``adapter_config.json``), loaded
   onto the base with ``peft.PeftModel.from_pretrained``, or full weights,
   loaded with ``AutoModelForCausalLM.from_pretrained``;
3. the tokenizer saved in ``model/`` is used, and prompts are rendered with the
   same chat template as training (``data.chat_template`` when the run set
   one, else the tokenizer's) by :func:`tuneforge.data.render_prompt`.

Command arguments are ``key=value`` pairs parsed by :func:`parse_key_values`
(shared with ``tuneforge export``).  Importing this module is cheap: torch,
transformers and peft are imported inside the functions that need them.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, TextIO

from tuneforge.errors import TuneforgeError, did_you_mean

#: statuses in ``status.json`` that mean the saved model may be missing or stale
UNFINISHED_STATUSES = ("running", "failed")


class ArgumentError(TuneforgeError):
    """A command argument is malformed, unknown, missing or of the wrong type."""


class RunDirectoryError(TuneforgeError):
    """The directory is not a usable tuneforge run directory."""


# --------------------------------------------------------------------------- arguments


def parse_bool(text: str) -> bool:
    """``true/false``, ``yes/no``, ``on/off``, ``1/0`` (any case) -> bool."""
    value = text.strip().lower()
    if value in ("true", "yes", "on", "1"):
        return True
    if value in ("false", "no", "off", "0"):
        return False
    raise ValueError(f"expected true or false, got '{text}'")


@dataclass(frozen=True)
class Option:
    """One ``key=value`` argument of a command: how to convert it, its default and help."""

    help: str
    convert: Callable[[str], Any] = str
    default: Any = None
    required: bool = False


def parse_key_values(args: Sequence[str], options: dict[str, Option], command: str) -> dict:
    """Turn ``["key=value", ...]`` into ``{key: converted value}`` with every option present.

    The value is everything after the first ``=`` (so ``prompt="a=b"`` works).
    Unknown keys, arguments without ``=``, repeated keys, values that do not
    convert and missing required keys raise :class:`ArgumentError` with a
    one-line message naming the key and the valid keys.
    """
    valid = ", ".join(options)
    values: dict[str, Any] = {}
    for arg in args:
        key, sep, raw = arg.partition("=")
        key = key.strip()
        if not sep:
            raise ArgumentError(f"tuneforge {command}: argument '{arg}' is not key=value; valid keys: {valid}")
        if key not in options:
            raise ArgumentError(f"tuneforge {command}: unknown key '{key}'{did_you_mean(key, options)}; "
                                f"valid keys: {valid}")
        if key in values:
            raise ArgumentError(f"tuneforge {command}: key '{key}' is given twice")
        try:
            values[key] = options[key].convert(raw)
        except ValueError as exc:
            raise ArgumentError(f"tuneforge {command}: {key}={raw!r} is invalid: {exc}") from None
    missing = [key for key, option in options.items() if option.required and key not in values]
    if missing:
        raise ArgumentError(f"tuneforge {command}: missing required {', '.join(k + '=...' for k in missing)}")
    return {key: values.get(key, option.default) for key, option in options.items()}


def format_options(options: dict[str, Option], command: str, summary: str) -> str:
    """Help text for ``tuneforge <command> --help``."""
    lines = [f"usage: tuneforge {command} key=value ...", "", summary, "", "keys:"]
    for key, option in options.items():
        default = "required" if option.required else f"default: {option.default}"
        lines.append(f"  {key:<16} {option.help} ({default})")
    return "\n".join(lines) + "\n"


def wants_help(args: Sequence[str]) -> bool:
    return any(arg in ("-h", "--help") for arg in args)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError("must be at least 1")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if value < 0:
        raise ValueError("must be >= 0")
    return value


def _probability(text: str) -> float:
    value = float(text)
    if not 0 < value <= 1:
        raise ValueError("must be in (0, 1]")
    return value


#: options shared by ``generate`` and ``chat``
COMMON_OPTIONS = {
    "run_dir": Option("run directory written by `tuneforge train`", required=True),
    "max_new_tokens": Option("most tokens generated per reply", _positive_int, 256),
    "temperature": Option("sampling temperature; 0 = greedy decoding", _non_negative_float, 0.0),
    "top_p": Option("nucleus sampling probability mass (with temperature > 0)", _probability, 1.0),
    "system": Option("system message put before the conversation", str, None),
    "seed": Option("random seed for sampling", int, None),
    "device": Option("auto (cuda when available), cpu, cuda, cuda:N ...", str, "auto"),
    "force": Option("use a run whose status is running or failed", parse_bool, False),
}
GENERATE_OPTIONS = {
    "run_dir": COMMON_OPTIONS["run_dir"],
    "prompt": Option("the user message to answer", required=True),
    **{k: v for k, v in COMMON_OPTIONS.items() if k != "run_dir"},
}
CHAT_OPTIONS = dict(COMMON_OPTIONS)


# --------------------------------------------------------------------------- run directory


def read_run_config(run_dir, force: bool = False):
    """The resolved config of a finished run, after checking the directory is a run directory.

    Raises :class:`RunDirectoryError` when ``run_dir`` lacks ``config.yaml`` or
    ``model/``, or when ``status.json`` says ``running`` or ``failed`` and
    ``force`` is false.
    """
    from omegaconf import OmegaConf

    run_dir = Path(run_dir).expanduser()
    if not run_dir.is_dir():
        raise RunDirectoryError(f"run_dir={run_dir} does not exist (give a directory written by tuneforge train)")
    missing = [name for name, ok in (("config.yaml", (run_dir / "config.yaml").is_file()),
                                     ("model/", (run_dir / "model").is_dir())) if not ok]
    if missing:
        raise RunDirectoryError(f"run_dir={run_dir} is not a tuneforge run directory: no {' and no '.join(missing)} "
                                "(give a directory written by tuneforge train)")
    status = run_status(run_dir)
    if status in UNFINISHED_STATUSES and not force:
        raise RunDirectoryError(f"run_dir={run_dir}: the run's status is '{status}', so its model may be missing "
                                "or stale; pass force=true to use it anyway")
    try:
        cfg = OmegaConf.load(run_dir / "config.yaml")
    except Exception as exc:  # yaml errors come in several classes
        raise RunDirectoryError(f"{run_dir / 'config.yaml'}: cannot read: {exc}".splitlines()[0]) from exc
    if "model" not in cfg or "name" not in cfg.model:
        raise RunDirectoryError(f"{run_dir / 'config.yaml'}: has no model.name, so the base model is unknown")
    return cfg


def run_status(run_dir) -> Optional[str]:
    """The ``status`` in ``<run_dir>/status.json``, or None when the file is absent or unreadable."""
    try:
        return json.loads((Path(run_dir) / "status.json").read_text()).get("status")
    except (OSError, ValueError, AttributeError):
        return None


def is_peft_adapter(model_dir) -> bool:
    """True when ``model_dir`` holds a PEFT adapter rather than full weights."""
    return (Path(model_dir) / "adapter_config.json").is_file()


def run_chat_template(cfg) -> Optional[str]:
    """The chat template the run's dataset used instead of the tokenizer's (None: the tokenizer's)."""
    data = cfg.get("data") or {}
    return data.get("chat_template") or None


def resolved_chat_template(tokenizer, chat_template: Optional[str]) -> Optional[str]:
    """The Jinja text of the template prompts are rendered with (``data.chat_template`` may be a name or a path)."""
    try:
        from tuneforge.data import resolve_chat_template
    except ImportError:  # a tuneforge.data where data.chat_template is always the Jinja text itself
        return chat_template or getattr(tokenizer, "chat_template", None)
    return resolve_chat_template(tokenizer, chat_template)


def plugins_for_run(cfg):
    """The plugin manager with the run's plugin switches (plus the environment's)."""
    from tuneforge.plugin_manager import PluginSelection, create_plugin_manager

    switches = cfg.get("plugins") or {}
    return create_plugin_manager(PluginSelection.from_env(
        disable=list(switches.get("disable") or ()), enable=list(switches.get("enable") or ()),
        autoload=switches.get("autoload")))


def load_run_tokenizer(run_dir, cfg):
    """The tokenizer saved in ``<run_dir>/model``, with a pad token set."""
    from transformers import AutoTokenizer

    model_dir = Path(run_dir).expanduser() / "model"
    trust = bool((cfg.get("model") or {}).get("trust_remote_code", False))
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir), trust_remote_code=trust)
    except (OSError, ValueError) as exc:
        raise RunDirectoryError(f"{model_dir}: cannot load the saved tokenizer: {str(exc).splitlines()[0]}") from exc
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_run_model(run_dir, cfg, plugins=None):
    """The tuned model of a run, in eval mode on the CPU: base + PEFT adapter, or the full weights."""
    from tuneforge.run import load_model_from_config, load_tuned_model

    model_dir = Path(run_dir).expanduser() / "model"
    if not is_peft_adapter(model_dir) and not (model_dir / "config.json").is_file():
        raise RunDirectoryError(f"{model_dir}: holds neither a PEFT adapter (adapter_config.json) nor full "
                                "weights (config.json)")
    base = None
    if is_peft_adapter(model_dir):
        base, _ = load_model_from_config(plugins or plugins_for_run(cfg), cfg.model)
    model = load_tuned_model(base, model_dir, trust_remote_code=bool(cfg.model.get("trust_remote_code", False)))
    model.eval()
    return model


@dataclass
class LoadedRun:
    """A run's tuned model, tokenizer and the chat template its training used."""

    model: Any
    tokenizer: Any
    config: Any
    chat_template: Optional[str]
    device: Any


def resolve_device(name: str):
    """``auto`` -> ``cuda`` when available, else ``cpu``; anything else as given to torch."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(name)
    except RuntimeError as exc:
        raise ArgumentError(f"device='{name}' is not a torch device: {exc}") from None


def load_run(run_dir, force: bool = False, device: str = "auto") -> LoadedRun:
    """Load everything needed to generate with a run (see the module docstring)."""
    cfg = read_run_config(run_dir, force=force)
    target = resolve_device(device)
    tokenizer = load_run_tokenizer(run_dir, cfg)
    model = load_run_model(run_dir, cfg).to(target)
    return LoadedRun(model=model, tokenizer=tokenizer, config=cfg, chat_template=run_chat_template(cfg),
                     device=target)


# --------------------------------------------------------------------------- generation


def build_prompt(loaded: LoadedRun, messages: list[dict]) -> str:
    """The conversation rendered exactly as training rendered prompts, ending with the generation prompt."""
    from tuneforge.data import render_prompt

    return render_prompt(loaded.tokenizer, messages, loaded.chat_template)


def _stop_token_ids(model, tokenizer) -> list[int]:
    """The tokenizer's EOS (training closes every target with it) plus the model's own EOS ids."""
    ids = [tokenizer.eos_token_id]
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids += configured if isinstance(configured, list) else [configured]
    return list(dict.fromkeys(i for i in ids if i is not None))


def make_streamer(tokenizer, out: TextIO):
    """A ``transformers.TextStreamer`` that writes the reply (not the prompt) to ``out`` word by word."""
    from transformers import TextStreamer

    class _Streamer(TextStreamer):
        def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
            if text:
                out.write(text)
                out.flush()

    return _Streamer(tokenizer, skip_prompt=True, skip_special_tokens=True)


def generate_reply(loaded: LoadedRun, messages: list[dict], *, max_new_tokens: int = 256,
                   temperature: float = 0.0, top_p: float = 1.0, seed: Optional[int] = None,
                   out: Optional[TextIO] = None) -> str:
    """Answer the conversation ``messages``; streams to ``out`` when given and returns the reply text.

    ``temperature=0`` decodes greedily; otherwise tokens are sampled with
    ``temperature`` and ``top_p`` (reproducibly when ``seed`` is set).
    """
    import copy

    import torch

    tokenizer, model = loaded.tokenizer, loaded.model
    prompt = build_prompt(loaded, messages)
    encoded = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    inputs = {key: encoded[key].to(loaded.device) for key in ("input_ids", "attention_mask")}
    config = copy.deepcopy(model.generation_config)
    config.max_new_tokens = max_new_tokens
    config.do_sample = temperature > 0
    config.temperature = temperature if temperature > 0 else 1.0
    config.top_p = top_p if temperature > 0 else 1.0
    config.eos_token_id = _stop_token_ids(model, tokenizer)
    config.pad_token_id = tokenizer.pad_token_id
    if seed is not None:
        torch.manual_seed(seed)
    streamer = make_streamer(tokenizer, out) if out is not None else None
    with torch.no_grad():
        output = model.generate(**inputs, generation_config=config, streamer=streamer)
    new_tokens = output[0, inputs["input_ids"].shape[1]:]
    return tokenizer.decode(new_tokens, skip_special_tokens=True)


def start_messages(system: Optional[str]) -> list[dict]:
    return [{"role": "system", "content": system}] if system else []


def chat_loop(loaded: LoadedRun, lines: TextIO, out: TextIO, *, system: Optional[str] = None,
              show_prompt: bool = False, **generation) -> list[dict]:
    """Read user turns from ``lines`` until ``/exit`` or end of input; stream each reply to ``out``.

    The whole conversation so far is sent with every turn; ``/reset`` clears
    it (the system message stays).  Returns the final conversation.
    """
    messages = start_messages(system)
    while True:
        if show_prompt:
            out.write("you> ")
            out.flush()
        line = lines.readline()
        if not line:
            break
        text = line.rstrip("\r\n")
        if text.strip() in ("/exit", "/quit"):
            break
        if text.strip() == "/reset":
            messages = start_messages(system)
            continue
        if not text.strip():
            continue
        messages.append({"role": "user", "content": text})
        reply = generate_reply(loaded, messages, out=out, **generation)
        out.write("\n")
        out.flush()
        messages.append({"role": "assistant", "content": reply})
    return messages


def _generation_kwargs(values: dict) -> dict:
    return {key: values[key] for key in ("max_new_tokens", "temperature", "top_p", "seed")}


# --------------------------------------------------------------------------- commands


def generate_command(args: list) -> None:
    """``tuneforge generate run_dir=<dir> prompt="..." [max_new_tokens= temperature= top_p= system= ...]``."""
    if wants_help(args):
        print(format_options(GENERATE_OPTIONS, "generate", "Answer one prompt with a run's tuned model, "
                                                            "streaming the reply to stdout."), end="")
        return
    values = parse_key_values(args, GENERATE_OPTIONS, "generate")
    loaded = load_run(values["run_dir"], force=values["force"], device=values["device"])
    messages = start_messages(values["system"]) + [{"role": "user", "content": values["prompt"]}]
    generate_reply(loaded, messages, out=sys.stdout, **_generation_kwargs(values))
    sys.stdout.write("\n")
    sys.stdout.flush()


def chat_command(args: list) -> None:
    """``tuneforge chat run_dir=<dir>``: a conversation on stdin/stdout; ``/exit`` or EOF ends it."""
    if wants_help(args):
        print(format_options(CHAT_OPTIONS, "chat", "Chat with a run's tuned model: one user turn per line "
                                                    "on stdin, '/reset' clears the history, '/exit' or "
                                                    "end of input quits."), end="")
        return
    values = parse_key_values(args, CHAT_OPTIONS, "chat")
    loaded = load_run(values["run_dir"], force=values["force"], device=values["device"])
    from tuneforge.data import has_chat_template

    if not has_chat_template(loaded.tokenizer, loaded.chat_template):
        print("tuneforge chat: the tokenizer has no chat template and the run set no data.chat_template, so "
              "prompts use the instruction fallback and earlier assistant replies are not shown to the model",
              file=sys.stderr)
    interactive = sys.stdin.isatty()
    if interactive:
        print("chatting with the tuned model; '/reset' clears the history, '/exit' or Ctrl-D quits")
    try:
        chat_loop(loaded, sys.stdin, sys.stdout, system=values["system"], show_prompt=interactive,
                  **_generation_kwargs(values))
    except KeyboardInterrupt:
        print()
