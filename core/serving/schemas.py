"""The request bodies of ``/v1/chat/completions`` and ``/v1/completions`` and the OpenAI error shape.

A request is parsed in two steps: the JSON text (:func:`parse_json`), then the fields
(:func:`parse_request`, pydantic).  Anything wrong becomes an :class:`APIError`, which the
app answers as ``{"error": {"message", "type", "param", "code"}}`` with its 4xx status, never
a traceback.  Fields that OpenAI defines but tuneforge does not implement are accepted only at
their no-op value (e.g. ``presence_penalty=0``); any other unknown field is refused, so
nothing a client asks for is silently ignored.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator


class APIError(Exception):
    """A request the server refuses: HTTP ``status``, a one-line ``message``, the request field
    (``param``) it concerns, and OpenAI's error ``type`` and ``code``."""

    def __init__(self, status: int, message: str, param: Optional[str] = None,
                 type: str = "invalid_request_error", code: Optional[str] = None):
        super().__init__(message)
        self.status, self.message, self.param, self.type, self.code = status, message, param, type, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def _refuse_when_set(value):
    if value:
        raise ValueError("is not supported by tuneforge serve (leave it out)")
    return value


#: an OpenAI field tuneforge does not implement: accepted only when absent, null, false or empty
Unsupported = AfterValidator(_refuse_when_set)


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str
    max_tokens: Optional[int] = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    n: int = Field(1, ge=1, le=16)
    stop: Union[str, list[str], None] = None
    seed: Optional[int] = None
    stream: bool = False
    stream_options: Optional[dict] = None
    user: Optional[str] = None
    # OpenAI fields accepted only at their no-op values (validated below)
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logprobs: Annotated[Optional[Any], Unsupported] = None
    logit_bias: Annotated[Optional[dict], Unsupported] = None

    @field_validator("presence_penalty", "frequency_penalty")
    @classmethod
    def _no_penalty(cls, value):
        if value != 0:
            raise ValueError("is not supported by tuneforge serve (give 0 or leave it out)")
        return value

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, value):
        stops = [value] if isinstance(value, str) else list(value or [])
        if len(stops) > 4 or any(not s for s in stops):
            raise ValueError("takes up to 4 non-empty strings")
        return stops

    @property
    def include_usage_chunk(self) -> bool:
        """``stream_options.include_usage``: usage in a last chunk of its own (with no choices)."""
        return bool((self.stream_options or {}).get("include_usage"))


class TextPart(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "user", "assistant"]
    content: Union[str, list[TextPart]]
    name: Optional[str] = None

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(part.text for part in self.content)


class ChatRequest(_Request):
    """``POST /v1/chat/completions``."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: Optional[int] = Field(None, ge=1)

    def conversation(self) -> list[dict]:
        return [{"role": m.role, "content": m.text()} for m in self.messages]

    @property
    def token_limit(self) -> Optional[int]:
        return self.max_completion_tokens or self.max_tokens


class CompletionRequest(_Request):
    """``POST /v1/completions`` (text prompts; a list of prompts gives ``n`` choices for each)."""

    prompt: Union[str, list[str]]
    echo: Annotated[bool, Unsupported] = False
    best_of: Optional[int] = None
    suffix: Annotated[Optional[str], Unsupported] = None

    @field_validator("best_of")
    @classmethod
    def _best_of_one(cls, value):
        if value not in (None, 1):
            raise ValueError("is not supported by tuneforge serve (give 1 or leave it out)")
        return value

    @field_validator("prompt")
    @classmethod
    def _prompts(cls, value):
        prompts = [value] if isinstance(value, str) else value
        if not prompts or any(not p for p in prompts):
            raise ValueError("must be a non-empty string or a list of non-empty strings")
        return prompts

    @property
    def token_limit(self) -> Optional[int]:
        return self.max_tokens


def parse_json(body: bytes) -> Any:
    """The JSON of a request body; malformed JSON is a 400."""
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise APIError(400, f"the request body is not valid JSON: {exc}") from None


def _location(loc) -> str:
    """pydantic's error location as a dotted field path: ``messages[0].role``."""
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part not in ("str", "list[TextPart]", "list[str]"):  # union members pydantic names
            path += f".{part}" if path else str(part)
    return path


def parse_request(schema: type, payload: Any):
    """``payload`` (decoded JSON) as ``schema``; the first problem is a 400 naming the field."""
    if not isinstance(payload, dict):
        raise APIError(400, f"the request body must be a JSON object, got {type(payload).__name__}")
    try:
        return schema.model_validate(payload)
    except ValidationError as exc:
        error = exc.errors()[0]
        param = _location(error["loc"])
        if error["type"] == "extra_forbidden":
            valid = ", ".join(name for name in schema.model_fields)
            raise APIError(400, f"unknown or unsupported field '{param}'; valid fields: {valid}", param) from None
        if error["type"] == "missing":
            raise APIError(400, f"missing required field '{param}'", param) from None
        message = error["msg"].removeprefix("Value error, ")
        raise APIError(400, f"{param}: {message}", param) from None
