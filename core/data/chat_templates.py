"""Chat templates and rendering conversations with them.

Conversations are rendered with the tokenizer's chat template; ``data.chat_template``
supplies one for a tokenizer that has none (and replaces the tokenizer's own
when set; :func:`resolve_chat_template`).  A template that handles tools (its
source names ``tools`` or ``tool_calls``) gets them as they are (``tools=`` of
``apply_chat_template``); for any other template tool calls are written as
text first (:func:`tool_messages_as_text`).  :func:`assistant_spans` finds the
characters of the assistant turns in a rendered conversation, which
:mod:`tuneforge.data.tokenization` turns into masked labels; without any
template single-turn records use :data:`ALPACA_PROMPT`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Collection, Optional, Sequence

from tuneforge.errors import DataError

#: prompt used for single-turn records (alpaca, string preference pairs) when no chat template exists
ALPACA_PROMPT = "### Instruction:\n{instruction}\n\n### Response:\n"

#: ``data.chat_template=chatml`` selects this template
CHATML_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
NAMED_TEMPLATES = {"chatml": CHATML_TEMPLATE}


def resolve_chat_template(tokenizer, chat_template: Optional[str] = None) -> Optional[str]:
    """The template conversations are rendered with: ``chat_template`` when given, else the tokenizer's.

    ``chat_template`` (``data.chat_template``) is a Jinja template, the name of
    a built-in one (``chatml``) or a path to a ``.jinja`` file; it serves as the
    template of a tokenizer that has none, and replaces the tokenizer's own
    when set explicitly.  ``None`` means no template is available.
    """
    if chat_template:
        if chat_template in NAMED_TEMPLATES:
            return NAMED_TEMPLATES[chat_template]
        if chat_template.endswith((".jinja", ".j2")):
            path = Path(chat_template).expanduser()
            if not path.is_file():
                raise DataError(f"data.chat_template: template file not found: {path}")
            return path.read_text(encoding="utf-8")
        return chat_template
    own = getattr(tokenizer, "chat_template", None)
    if isinstance(own, dict):
        own = own.get("default") or next(iter(own.values()), None)
    return own or None


def has_chat_template(tokenizer, chat_template: Optional[str] = None) -> bool:
    """Whether conversations can be rendered (``chat_template`` is given or the tokenizer has one)."""
    return bool(getattr(tokenizer, "chat_template", None) or chat_template)


#: fallback rendering of tools (a template that does not handle them): the text before the tool schemas,
#: which follow one JSON object a line, then :data:`TOOLS_END`
TOOLS_PREAMBLE = ("You can call these tools. To call one, reply with "
                  '<tool_call>{"name": <tool name>, "arguments": <arguments object>}</tool_call>.\n<tools>\n')
TOOLS_END = "\n</tools>"


def template_supports_tools(template: str) -> bool:
    """Whether a chat template handles tools itself: its Jinja source names ``tools`` or ``tool_calls``."""
    return bool(re.search(r"\btool_calls\b|\btools\b", template))


def _has_tool_parts(messages: Sequence[dict], tools: Optional[list]) -> bool:
    return bool(tools) or any(m.get("tool_calls") or m["role"] == "tool" for m in messages)


def _json_text(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def message_text(message: dict) -> str:
    """A message's text; an assistant tool-call turn's is its content, a newline when that is not empty,
    then ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` per call, one a line (the fallback
    rendering, also used as the reference text of such a turn by quality checks and evaluators)."""
    calls = message.get("tool_calls")
    if not calls:
        return message["content"]
    text = "\n".join("<tool_call>" + _json_text({"name": call["function"]["name"],
                                                 "arguments": call["function"]["arguments"]}) + "</tool_call>"
                     for call in calls)
    return (message["content"] + "\n" if message["content"] else "") + text


def tool_messages_as_text(messages: Sequence[dict], tools: Optional[list] = None) -> list[dict]:
    """A tool-calling conversation as plain ``{role, content}`` messages, for templates without tool support.

    * ``tools``: the system message gets :data:`TOOLS_PREAMBLE`, each tool
      schema as one line of JSON, and :data:`TOOLS_END`, after its own content
      and a blank line (a system message holding just that is added when there
      is none);
    * an assistant message with ``tool_calls``: its content, a newline when the
      content is not empty, then ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``
      per call, one a line;
    * tool results: each run of consecutive ``tool`` messages becomes one
      ``user`` message of ``<tool_response>{content}</tool_response>`` lines.

    JSON is written with ``json.dumps(..., ensure_ascii=False)``.
    """
    out: list[dict] = []
    for message in messages:
        if message["role"] == "tool":
            text = f"<tool_response>{message['content']}</tool_response>"
            if out and out[-1].get("_tool_results"):
                out[-1]["content"] += "\n" + text
            else:
                out.append({"role": "user", "content": text, "_tool_results": True})
        elif message.get("tool_calls"):
            out.append({"role": "assistant", "content": message_text(message)})
        else:
            out.append({"role": message["role"], "content": message["content"]})
    for message in out:
        message.pop("_tool_results", None)
    if tools:
        listing = TOOLS_PREAMBLE + "\n".join(_json_text(tool) for tool in tools) + TOOLS_END
        if out and out[0]["role"] == "system":
            out[0]["content"] = (out[0]["content"] + "\n\n" if out[0]["content"] else "") + listing
        else:
            out.insert(0, {"role": "system", "content": listing})
    return out


def _render(tokenizer, messages: list[dict], template: str, generation_prompt: bool,
            tools: Optional[list] = None) -> str:
    """Render with ``template``; tool calls go to a template that handles them, else through
    :func:`tool_messages_as_text`."""
    from jinja2.exceptions import TemplateError

    if _has_tool_parts(messages, tools) and not template_supports_tools(template):
        messages, tools = tool_messages_as_text(messages, tools), None
    try:
        return tokenizer.apply_chat_template(messages, tools=tools or None, tokenize=False,
                                             add_generation_prompt=generation_prompt, chat_template=template)
    except TemplateError as exc:
        raise DataError(f"the chat template rejected the conversation ({exc})") from None


def render_prompt(tokenizer, messages: list[dict], chat_template: Optional[str] = None,
                  tools: Optional[list] = None) -> str:
    """The text a model sees before it answers: the messages plus the generation prompt.

    Uses the same template as training (:func:`resolve_chat_template`: the
    given ``chat_template``, else the tokenizer's) and the same tool rendering
    (``tools``: the example's tool schemas); without any template, the Alpaca
    prompt of the system and user contents.
    """
    template = resolve_chat_template(tokenizer, chat_template)
    if template:
        return _render(tokenizer, messages, template, True, tools)
    user = "\n\n".join(m["content"] for m in messages if m["role"] != "assistant")
    return ALPACA_PROMPT.format(instruction=user)


def _opening_header(tokenizer, upto: str, template: str, tools: Optional[list]) -> str:
    """The text up to and including the generation prompt (``<|im_start|>assistant\n``) before an assistant
    turn that opens the conversation (``upto``: its render), so that header is not trained.

    Used when the template cannot render the empty prefix (transformers 5 refuses an empty conversation):
    the generation prompt is what rendering a probe user turn with it adds; ``""`` when it cannot be told.
    """
    probe = [{"role": "user", "content": "\x00probe"}]
    try:
        with_prompt = _render(tokenizer, probe, template, True, tools)
        without = _render(tokenizer, probe, template, False, tools)
    except Exception:  # a template that cannot render the probe: train from the start, as before
        return ""
    header = with_prompt[len(without):] if with_prompt.startswith(without) else ""
    at = upto.find(header) if header.strip() else -1
    return upto[: at + len(header)] if at >= 0 else ""


def assistant_spans(tokenizer, messages: list[dict], template: str, train_from: int = 0,
                    tools: Optional[list] = None, skip: Collection[int] = ()) -> tuple[str, list]:
    """Render a conversation and find the character spans of its assistant turns.

    Returns ``(text, [(start, end), ...])`` for the assistant messages at index
    ``train_from`` or later (tool-call turns included), except those whose
    index is in ``skip`` (turns marked not to train).  A turn's span runs
    from the end of the generation prompt before it to the end of the render
    that includes it, so the end-of-turn marker is trained too.  ``tools`` are
    rendered with every prefix (so they stay in the masked prompt).
    """
    text = _render(tokenizer, messages, template, False, tools)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant" or i < train_from or i in skip:
            continue
        upto = _render(tokenizer, messages[: i + 1], template, False, tools)
        candidates = []
        try:
            candidates.append(_render(tokenizer, messages[:i], template, True, tools))
        except Exception:  # some templates cannot render an empty or assistant-ending prefix
            pass
        if i:
            candidates.append(_render(tokenizer, messages[:i], template, False, tools))
        else:
            candidates.append(_opening_header(tokenizer, upto, template, tools))
        before = next((c for c in candidates if upto.startswith(c)), "" if not i else None)
        if before is None or not text.startswith(upto):
            raise DataError("the chat template does not render conversations prefix by prefix, so assistant "
                            "turns cannot be located; set a template that does (data.chat_template) on a "
                            "tokenizer without one")
        spans.append((len(before), len(upto)))
    return text, spans

