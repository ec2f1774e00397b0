"""``tuneforge generate``: answer one prompt with a run's tuned model, streaming to stdout; the
shared reply generation that ``chat`` uses too."""

from __future__ import annotations

import sys
from typing import Optional, TextIO

from tuneforge.commands.key_values import (Option, _non_negative_float, _non_negative_int, _positive_int,
                                           _probability, format_options, parse_bool, parse_key_values, wants_help)
from tuneforge.commands.run_loading import LoadedRun, load_run


#: options shared by ``generate`` and ``chat``
COMMON_OPTIONS = {
    "run_dir": Option("run directory written by `tuneforge train`, or a model folder written by "
                      "`tuneforge export`", required=True),
    "max_new_tokens": Option("most tokens generated per reply", _positive_int, 256),
    "temperature": Option("sampling temperature; 0 = greedy decoding", _non_negative_float, 0.0),
    "top_p": Option("nucleus sampling probability mass (with temperature > 0)", _probability, 1.0),
    "system": Option("system message put before the conversation (default: the one every training example "
                     "started with, when they all shared one; system=\"\" for none)", str, None),
    "seed": Option("random seed for sampling", int, None),
    "device": Option("auto (cuda when available), cpu, cuda, cuda:N ...", str, "auto"),
    "threads": Option("torch CPU threads (0: torch's default)", _non_negative_int, 0),
    "force": Option("use a run whose status is running, failed or interrupted", parse_bool, False),
}
GENERATE_OPTIONS = {
    "run_dir": COMMON_OPTIONS["run_dir"],
    "prompt": Option("the user message to answer", required=True),
    **{k: v for k, v in COMMON_OPTIONS.items() if k != "run_dir"},
}
def build_prompt(loaded: LoadedRun, messages: list[dict]) -> str:
    """The conversation rendered exactly as training rendered prompts, ending with the generation prompt
    (the saved tokenizer carries the run's chat template)."""
    from tuneforge.data import render_prompt

    return render_prompt(loaded.tokenizer, messages)


def _stop_token_ids(model, tokenizer) -> list[int]:
    """The tokenizer's EOS (training closes every target with it) plus the model's own EOS ids."""
    ids = [tokenizer.eos_token_id]
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids += configured if isinstance(configured, list) else [configured]
    return list(dict.fromkeys(i for i in ids if i is not None))


def reply_generation_config(model, tokenizer, *, max_new_tokens: int, temperature: float, top_p: float):
    """The model's generation config set up for a reply (``generate``, ``chat`` and ``serve`` share it):
    greedy at ``temperature=0``, else sampling with ``temperature`` and ``top_p``; stops at the
    tokenizer's and the model's EOS ids and pads with the tokenizer's pad token."""
    import copy

    config = copy.deepcopy(model.generation_config)
    config.max_new_tokens = max_new_tokens
    config.do_sample = temperature > 0
    config.temperature = temperature if temperature > 0 else 1.0
    config.top_p = top_p if temperature > 0 else 1.0
    config.eos_token_id = _stop_token_ids(model, tokenizer)
    config.pad_token_id = tokenizer.pad_token_id
    return config


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
    import torch

    tokenizer, model = loaded.tokenizer, loaded.model
    prompt = build_prompt(loaded, messages)
    encoded = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    inputs = {key: encoded[key].to(loaded.device) for key in ("input_ids", "attention_mask")}
    config = reply_generation_config(model, tokenizer, max_new_tokens=max_new_tokens, temperature=temperature,
                                     top_p=top_p)
    if seed is not None:
        torch.manual_seed(seed)
    streamer = make_streamer(tokenizer, out) if out is not None else None
    with torch.no_grad():
        output = model.generate(**inputs, generation_config=config, streamer=streamer)
    new_tokens = output[0, inputs["input_ids"].shape[1]:]
    return tokenizer.decode(new_tokens, skip_special_tokens=True)


def start_messages(system: Optional[str]) -> list[dict]:
    return [{"role": "system", "content": system}] if system else []


def describe_system_prompt(text: str, hint: str = 'system="" for none', width: int = 60) -> str:
    """One line naming the training system prompt used by default: its start (whitespace collapsed), its
    length, then ``hint``."""
    shown = " ".join(text.split())
    shown = shown if len(shown) <= width else shown[:width - 3].rstrip() + "..."
    return f'system prompt: the one every training example had ("{shown}", {len(text)} chars); {hint}'


def resolve_system(loaded: LoadedRun, given: Optional[str], out: Optional[TextIO] = None) -> Optional[str]:
    """The system prompt of ``generate`` and ``chat``: ``given`` when the user gave ``system=`` (``""``: none);
    else the one every training example started with (:attr:`LoadedRun.system_prompt`), announced in one line
    on ``out`` (default stderr, so stdout keeps the reply alone); else none."""
    if given is not None:
        return given or None
    if loaded.system_prompt:
        print(describe_system_prompt(loaded.system_prompt), file=out or sys.stderr, flush=True)
    return loaded.system_prompt


def with_system(messages: list[dict], system: Optional[str]) -> list[dict]:
    """``messages`` with the default ``system`` (the training system prompt; None or empty: none) as a first
    system message, unless they hold a system message of their own (``serve``).  Own system messages that
    are all empty ask for none: with a default they are dropped, as ``system=""`` asks ``generate``."""
    own = [m for m in messages if m.get("role") == "system"]
    if not system or any(m.get("content") for m in own):
        return messages
    if own:
        return [m for m in messages if m.get("role") != "system"]
    return start_messages(system) + messages


def set_threads(threads: int) -> None:
    """``torch.set_num_threads(threads)``; 0 leaves torch's default (which follows ``OMP_NUM_THREADS``)."""
    if threads:
        import torch

        torch.set_num_threads(threads)


def _generation_kwargs(values: dict) -> dict:
    return {key: values[key] for key in ("max_new_tokens", "temperature", "top_p", "seed")}


# --------------------------------------------------------------------------- commands


def generate_command(args: list) -> None:
    """``tuneforge generate run_dir=<dir> prompt="..." [max_new_tokens= temperature= top_p= system= threads= ...]``;
    without ``system=`` the run's training system prompt is used, when it recorded one (:func:`resolve_system`)."""
    if wants_help(args):
        print(format_options(GENERATE_OPTIONS, "generate", "Answer one prompt with a run's tuned model, "
                                                            "streaming the reply to stdout."), end="")
        return
    values = parse_key_values(args, GENERATE_OPTIONS, "generate")
    set_threads(values["threads"])
    loaded = load_run(values["run_dir"], force=values["force"], device=values["device"])
    system = resolve_system(loaded, values["system"])
    messages = start_messages(system) + [{"role": "user", "content": values["prompt"]}]
    generate_reply(loaded, messages, out=sys.stdout, **_generation_kwargs(values))
    sys.stdout.write("\n")
    sys.stdout.flush()
