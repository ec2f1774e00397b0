"""``tuneforge chat``: a conversation with a run's tuned model on stdin/stdout."""

from __future__ import annotations

import sys
from typing import Optional, TextIO

from tuneforge.commands.generate import (COMMON_OPTIONS, _generation_kwargs, generate_reply, resolve_system,
                                         set_threads, start_messages)
from tuneforge.commands.key_values import format_options, parse_key_values, wants_help
from tuneforge.commands.run_loading import LoadedRun, load_run


CHAT_OPTIONS = dict(COMMON_OPTIONS)


# --------------------------------------------------------------------------- run directory



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


def chat_command(args: list) -> None:
    """``tuneforge chat run_dir=<dir>``: a conversation on stdin/stdout; ``/exit`` or EOF ends it.  Without
    ``system=`` the run's training system prompt is used, when it recorded one (:func:`resolve_system`)."""
    if wants_help(args):
        print(format_options(CHAT_OPTIONS, "chat", "Chat with a run's tuned model: one user turn per line "
                                                    "on stdin, '/reset' clears the history, '/exit' or "
                                                    "end of input quits."), end="")
        return
    values = parse_key_values(args, CHAT_OPTIONS, "chat")
    set_threads(values["threads"])
    loaded = load_run(values["run_dir"], force=values["force"], device=values["device"])
    system = resolve_system(loaded, values["system"])
    from tuneforge.data import has_chat_template

    if not has_chat_template(loaded.tokenizer):
        print("tuneforge chat: the tokenizer has no chat template and the run set no data.chat_template, so "
              "prompts use the instruction fallback and earlier assistant replies are not shown to the model",
              file=sys.stderr)
    interactive = sys.stdin.isatty()
    if interactive:
        print("chatting with the tuned model; '/reset' clears the history, '/exit' or Ctrl-D quits")
    try:
        chat_loop(loaded, sys.stdin, sys.stdout, system=system, show_prompt=interactive,
                  **_generation_kwargs(values))
    except KeyboardInterrupt:
        print()
