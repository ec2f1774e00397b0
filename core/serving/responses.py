"""The OpenAI response bodies: completions, their streamed chunks, usage and the model list."""

from __future__ import annotations

import json
import time
import uuid
from typing import Optional


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


class Shape:
    """The body shapes of one endpoint: ``chat`` (``chat.completion``, message/delta) or not
    (``text_completion``, text), for one response ``id`` and ``model``."""

    def __init__(self, chat: bool, model: str):
        self.chat, self.model = chat, model
        self.id = new_id("chatcmpl" if chat else "cmpl")
        self.created = int(time.time())

    def _body(self, kind: str, choices: list, usage_: Optional[dict]) -> dict:
        body = {"id": self.id, "object": kind, "created": self.created, "model": self.model, "choices": choices}
        if usage_ is not None:
            body["usage"] = usage_
        return body

    def completion(self, texts: list, reasons: list, usage_: dict) -> dict:
        if self.chat:
            choices = [{"index": i, "message": {"role": "assistant", "content": text}, "finish_reason": reason,
                        "logprobs": None} for i, (text, reason) in enumerate(zip(texts, reasons))]
            return self._body("chat.completion", choices, usage_)
        choices = [{"index": i, "text": text, "finish_reason": reason, "logprobs": None}
                   for i, (text, reason) in enumerate(zip(texts, reasons))]
        return self._body("text_completion", choices, usage_)

    def chunk(self, index: Optional[int], text: Optional[str] = None, reason: Optional[str] = None,
              role: bool = False, usage_: Optional[dict] = None) -> str:
        """One server-sent event; ``index=None``: a chunk without choices (the usage chunk)."""
        if index is None:
            choices = []
        elif self.chat:
            delta = {"role": "assistant", "content": ""} if role else ({"content": text} if text else {})
            choices = [{"index": index, "delta": delta, "finish_reason": reason, "logprobs": None}]
        else:
            choices = [{"index": index, "text": text or "", "finish_reason": reason, "logprobs": None}]
        kind = "chat.completion.chunk" if self.chat else "text_completion"
        return sse(self._body(kind, choices, usage_))


def sse(data) -> str:
    """One server-sent event carrying ``data`` (JSON, or the literal ``[DONE]``)."""
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n"


def model_list(names) -> dict:
    created = int(time.time())
    return {"object": "list",
            "data": [{"id": name, "object": "model", "created": created, "owned_by": "tuneforge"} for name in names]}
