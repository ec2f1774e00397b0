"""The FastAPI application: ``GET /v1/models``, ``POST /v1/chat/completions``, ``POST /v1/completions``
and ``GET /health``.

Each completion request is read (at most ``max_body_bytes``), parsed (:mod:`.schemas`), rendered
with the chat template of the run it names (the template ``tuneforge generate`` uses; a chat
request without a system message gets the run's training system prompt first, as in ``generate``), checked
against the model's context, and queued on the worker (:mod:`.batching`) as one job per prompt.
The reply comes back whole, or as server-sent events with ``stream=true``; every reply carries
its token usage.  With an API key set, every endpoint but ``/health`` wants
``Authorization: Bearer <key>``.  Every refusal has OpenAI's error shape and a 4xx status; an
unexpected failure is a 500 with a one-line message (the traceback goes to the server's log only).
No endpoint reads or writes a file.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hmac
import logging
from dataclasses import dataclass
from typing import Optional

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from tuneforge.commands.generate import with_system
from tuneforge.serving.batching import BatchingWorker, QueueFull, ShuttingDown
from tuneforge.serving.decoding import Job
from tuneforge.serving.responses import Shape, model_list, sse, usage
from tuneforge.serving.schemas import APIError, ChatRequest, CompletionRequest, parse_json, parse_request

log = logging.getLogger("tuneforge.serve")


@dataclass
class ServeSettings:
    """What the app needs besides the model: ``api_key`` (None: no key wanted), ``max_body_bytes``
    (the largest request body), ``default_max_tokens`` (a reply's length when the request gives no
    ``max_tokens``, cut to what the context leaves)."""

    api_key: Optional[str] = None
    max_body_bytes: int = 1_000_000
    default_max_tokens: int = 256


# --------------------------------------------------------------------------- request checks


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it passes ``limit`` bytes."""
    declared = request.headers.get("content-length", "")
    too_large = APIError(413, f"the request body is larger than the server's limit of {limit} bytes")
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


def token_budget(request, prompt_lengths: list, context: int, default_max_tokens: int, prompt_field: str) -> int:
    """The reply length for ``request``: its ``max_tokens``, or the default cut to what the context leaves;
    400 when the prompt or prompt plus ``max_tokens`` does not fit the model's context."""
    asked, longest = request.token_limit, max(prompt_lengths)
    limit_field = "max_completion_tokens" if getattr(request, "max_completion_tokens", None) else "max_tokens"
    if asked is not None and asked >= context:
        raise APIError(400, f"{limit_field}={asked} does not fit the model's context of {context} tokens (the "
                       "prompt needs some too)", limit_field)
    if longest >= context:
        raise APIError(400, f"the prompt has {longest} tokens, which fills the model's context of {context} tokens; "
                       "shorten it", prompt_field, code="context_length_exceeded")
    if asked is None:
        return min(default_max_tokens, context - longest)
    if longest + asked > context:
        raise APIError(400, f"the prompt ({longest} tokens) plus {limit_field}={asked} is above the model's context "
                       f"of {context} tokens; give {limit_field} <= {context - longest}", limit_field,
                       code="context_length_exceeded")
    return asked


# --------------------------------------------------------------------------- submitting and answering


class Submission:
    """The jobs of one request (one per prompt, ``n`` choices each) and the queue their events arrive on;
    choice ``c`` of prompt ``p`` is choice ``p * n + c`` of the response."""

    def __init__(self, worker: BatchingWorker, request, prompts: list, max_new_tokens: int):
        loop, self.events = asyncio.get_running_loop(), asyncio.Queue()
        self.choices = len(prompts) * request.n
        self.prompt_tokens = sum(len(p) for p in prompts)
        self.jobs: list = []

        def emitter(offset):
            def emit(event):
                with contextlib.suppress(RuntimeError):  # the loop closed: nobody is listening
                    loop.call_soon_threadsafe(self.events.put_nowait,
                                              dataclasses.replace(event, choice=event.choice + offset))
            return emit

        try:
            for index, prompt in enumerate(prompts):
                self.jobs.append(worker.submit(Job(
                    model=request.model, prompt_ids=prompt, max_new_tokens=max_new_tokens,
                    temperature=request.temperature, top_p=request.top_p, n=request.n, seed=request.seed,
                    stop=list(request.stop or []), emit=emitter(index * request.n))))
        except QueueFull:
            self.cancel()
            raise APIError(429, f"the server's queue is full ({worker.max_queue} requests waiting); retry later",
                           type="rate_limit_error", code="queue_full") from None
        except ShuttingDown:
            self.cancel()
            raise APIError(503, "the server is shutting down", type="server_error") from None

    def cancel(self) -> None:
        for job in self.jobs:
            job.cancelled = True

    async def _next_event(self, request: Optional[Request]):
        """The next event; while waiting, a client that closed its connection cancels the jobs."""
        while True:
            try:
                return await asyncio.wait_for(self.events.get(), timeout=1.0)
            except asyncio.TimeoutError:
                if request is not None and await request.is_disconnected():
                    self.cancel()
                    raise APIError(400, "the client closed the connection") from None

    async def collect(self, request: Optional[Request] = None) -> dict:
        texts, reasons, completion = [""] * self.choices, [None] * self.choices, 0
        try:
            while any(reason is None for reason in reasons):
                event = await self._next_event(request)
                if event.error:
                    raise APIError(500, event.error, type="server_error")
                texts[event.choice] += event.text
                if event.finish_reason:
                    reasons[event.choice] = event.finish_reason
                    completion += event.completion_tokens
        finally:
            self.cancel()
        return {"texts": texts, "reasons": reasons, "usage": usage(self.prompt_tokens, completion)}

    async def stream(self, shape: Shape, usage_chunk: bool):
        finished, completion = 0, 0
        try:
            if shape.chat:
                for index in range(self.choices):
                    yield shape.chunk(index, role=True)
            while finished < self.choices:
                event = await self.events.get()
                if event.error:
                    yield sse(APIError(500, event.error, type="server_error").body())
                    return
                if event.text:
                    yield shape.chunk(event.choice, text=event.text)
                if event.finish_reason:
                    finished, completion = finished + 1, completion + event.completion_tokens
                    last = usage(self.prompt_tokens, completion) if finished == self.choices else None
                    yield shape.chunk(event.choice, reason=event.finish_reason,
                                      usage_=None if usage_chunk else last)
            if usage_chunk:
                yield shape.chunk(None, usage_=usage(self.prompt_tokens, completion))
            yield sse("[DONE]")
        finally:  # also when the client went away mid-stream: its sequences end at the next step
            self.cancel()


def render_chat(tokenizer, messages: list) -> str:
    """The conversation as ``tuneforge generate`` renders it; a 400 when the run's chat template refuses it
    (e.g. a template that wants user and assistant turns to alternate)."""
    from jinja2 import TemplateError

    from tuneforge.data import render_prompt

    try:
        return render_prompt(tokenizer, messages)
    except (TemplateError, ValueError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise APIError(400, f"messages: the run's chat template refuses them: {first}", "messages") from None


async def answer(app_state, request: Request, schema: type):
    """Parse, check, queue and answer one completion request (chat or text)."""
    settings, registry, worker = app_state.settings, app_state.registry, app_state.worker
    parsed = parse_request(schema, parse_json(await read_body(request, settings.max_body_bytes)))
    served = registry.get(parsed.model)
    if served is None:
        raise APIError(404, f"model '{parsed.model}' is not served here; served: {', '.join(registry.models)}",
                       "model", code="model_not_found")
    chat = schema is ChatRequest
    if parsed.n > worker.max_batch_size:
        raise APIError(400, f"n={parsed.n} is above the server's max_batch_size of {worker.max_batch_size}", "n")
    texts = [render_chat(served.tokenizer, with_system(parsed.conversation(), served.system_prompt))] if chat \
        else parsed.prompt
    prompts = [served.tokenizer(text, add_special_tokens=False)["input_ids"] for text in texts]
    budget = token_budget(parsed, [len(p) for p in prompts], registry.context_length, settings.default_max_tokens,
                          "messages" if chat else "prompt")
    submission = Submission(worker, parsed, prompts, budget)
    shape = Shape(chat, parsed.model)
    if parsed.stream:
        return StreamingResponse(submission.stream(shape, parsed.include_usage_chunk), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})
    result = await submission.collect(request)
    return shape.completion(result["texts"], result["reasons"], result["usage"])


# --------------------------------------------------------------------------- the app


def _error_response(error: APIError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(request, exc: APIError):
        return _error_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, exc: StarletteHTTPException):
        code = "not_found" if exc.status_code == 404 else None
        message = f"no such endpoint: {request.method} {request.url.path}" if exc.status_code in (404, 405) \
            else str(exc.detail)
        return _error_response(APIError(exc.status_code, message, code=code))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request, exc: RequestValidationError):
        return _error_response(APIError(400, f"invalid request: {exc.errors()[0].get('msg', '')}"))

    @app.exception_handler(Exception)
    async def _unexpected(request, exc: Exception):
        log.exception("unexpected error answering %s %s", request.method, request.url.path)
        return _error_response(APIError(500, f"internal error: {type(exc).__name__}; see the server's log",
                                        type="server_error"))


def create_app(registry, worker: BatchingWorker, settings: ServeSettings) -> FastAPI:
    """The application answering for ``registry``'s models through ``worker``; the worker is started
    with the app and stopped (after the jobs it holds) when the app shuts down."""

    @contextlib.asynccontextmanager
    async def lifespan(app):
        worker.start()
        try:
            yield
        finally:
            await asyncio.get_running_loop().run_in_executor(None, worker.stop)

    app = FastAPI(title="tuneforge serve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.registry, app.state.worker, app.state.settings = registry, worker, settings
    install_error_handlers(app)

    async def check_key(request: Request) -> None:
        if settings.api_key is None:
            return
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), settings.api_key.encode()):
            raise APIError(401, "missing or wrong API key: send 'Authorization: Bearer <key>'",
                           code="invalid_api_key")

    @app.get("/health")
    async def health():
        return {"status": "ok", "queued": worker.queued(), **worker.stats}

    @app.get("/v1/models", dependencies=[Depends(check_key)])
    async def models():
        return model_list(registry.models)

    @app.post("/v1/chat/completions", dependencies=[Depends(check_key)])
    async def chat_completions(request: Request):
        return await answer(app.state, request, ChatRequest)

    @app.post("/v1/completions", dependencies=[Depends(check_key)])
    async def completions(request: Request):
        return await answer(app.state, request, CompletionRequest)

    return app
