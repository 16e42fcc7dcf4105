"""Stage 06: serve a model over HTTP (FastAPI + uvicorn) in OpenAI's schema, or hand it to the chat REPL.

Endpoints (every one but /health needs `Authorization: Bearer <key>` when --api_key or LUMI_API_KEY is set):
  POST /v1/chat/completions  messages rendered with --template; `stream: true` sends server-sent events
  POST /v1/completions       raw text continuation
  POST /generate             the simple form {"prompt", "max_new_tokens", "temperature", "template"}
  GET  /v1/models            the served model (its directory name unless --served_model_name)
  GET  /health               503 while the model loads, 200 after (open without a key; shows running/waiting)

Status codes, each error in OpenAI's {"error": {"message", "type", "param", "code"}} shape:
  422 the body does not match the schema (missing or mistyped field, invalid JSON) — FastAPI's own check;
  400 a well-typed value out of range (temperature, top_p, top_k, max_tokens, repetition_penalty, seed, stop, n) or
      prompt + max_tokens beyond the context: as vLLM and OpenAI answer those;
  401 missing or wrong key; 404 unknown route or model name; 413 body over 1 MiB; 429 queue full; 503 loading.

Scheduling: generation runs on worker threads, never on the event loop. At most --max_concurrent generations run
(1 on CPU: two would only share the same cores) and at most --max_queue more wait in line; a request beyond that is
refused at once with 429 and Retry-After, so overload never turns into timeouts or 5xx. A slot is released by the
worker thread itself when it finishes, so it is never reused while a generation still runs. A client that goes away
(mid-stream, or while waiting for a whole answer) sets its generation's cancel flag, which stops it within one token.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hmac
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from utils.core.environment import cuda_bf16_native
from utils.core.errors import ConfigError, DataError
from utils.lm.generation import GenerationParams, GenerationResult, InvalidParam, TextGenerator, TextStream, fresh_seed
from utils.lm.loading import LoadedModel, load_model
from utils.lm.templates import get_template

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"  # loopback unless --host says otherwise
DEFAULT_PORT = 8000
API_KEY_ENV = "LUMI_API_KEY"
MAX_BODY_BYTES = 1024 * 1024  # 1 MiB, nginx's default client_max_body_size
MAX_STOP_SEQUENCES = 4  # OpenAI's limit
RETRY_AFTER_S = 1
DISCONNECT_POLL_S = 0.1  # how often a non-streaming request checks that its client is still there
OPEN_PATHS = ("/health",)
RAW_TEMPLATE = "none"  # /generate's "template": "none" continues the prompt as plain text
OWNER = "lumi"
# Request field -> the GenerationParams field it sets, for error messages that name what the client sent.
API_PARAM_NAMES = {"max_new_tokens": "max_tokens"}


@dataclass
class ServeConfig:
    """Stage 06 settings; each is a --flag. The sampling fields are the defaults a request may override."""

    model_path: str = "checkpoints/pretrain/tiny/final"
    mode: Literal["interactive", "api"] = "interactive"
    template: str = "chatml"
    system_prompt: str | None = None  # interactive mode: a system message that opens every conversation
    temperature: float = 0.7
    top_k: int = 50
    top_p: float = 0.9
    repetition_penalty: float = 1.1
    max_new_tokens: int = 150
    seed: int | None = None  # None: a fresh seed for every answer
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    api_key: str | None = None  # default: $LUMI_API_KEY; unset = no key needed
    cors_origins: list[str] = field(default_factory=list)
    max_concurrent: int = 1
    max_queue: int = 16
    served_model_name: str | None = None  # default: the model directory's name
    device: str = "auto"
    cpu_threads: int = 0  # torch's intra-op threads; 0 = torch's default (one per core)

    def __post_init__(self) -> None:
        get_template(self.template)
        self.default_params(seed=0 if self.seed is None else self.seed)  # InvalidParam (exit 2) names a bad value
        if self.max_concurrent < 1 or self.max_queue < 0:
            raise ConfigError(f"max_concurrent must be at least 1 and max_queue at least 0, got "
                              f"{self.max_concurrent} and {self.max_queue}")
        if not 1 <= self.port <= 65535:
            raise ConfigError(f"port must be in 1..65535, got {self.port}")
        if self.cpu_threads < 0:
            raise ConfigError(f"cpu_threads must be 0 (torch's default) or positive, got {self.cpu_threads}")

    def default_params(self, seed: int | None = None) -> GenerationParams:
        return GenerationParams(max_new_tokens=self.max_new_tokens, temperature=self.temperature, top_k=self.top_k,
                                top_p=self.top_p, repetition_penalty=self.repetition_penalty,
                                seed=fresh_seed() if seed is None else seed)

    @property
    def model_id(self) -> str:
        return self.served_model_name or Path(os.path.abspath(self.model_path)).name  # "." named, links kept

    def resolved_api_key(self) -> str | None:
        return self.api_key or os.environ.get(API_KEY_ENV) or None


def choose_device(requested: str) -> str:
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return requested


def load_for_serving(config: ServeConfig) -> LoadedModel:
    import torch

    if config.cpu_threads:
        torch.set_num_threads(config.cpu_threads)
    device = choose_device(config.device)
    dtype = torch.bfloat16 if device.startswith("cuda") and cuda_bf16_native() else torch.float32
    return load_model(Path(config.model_path), dtype=dtype, device=device)


# --- Errors in OpenAI's shape ------------------------------------------------------------------------------------

class APIError(Exception):
    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code
        self.headers = headers or {}

    def response(self) -> JSONResponse:
        body = {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}
        return JSONResponse(body, status_code=self.status, headers=self.headers)


def _invalid(exc: InvalidParam) -> APIError:
    name = API_PARAM_NAMES.get(exc.param, exc.param)
    return APIError(400, f"{name} {exc.problem}", param=name, code="invalid_value")


def _validation_error(exc: RequestValidationError) -> APIError:
    problems, param = [], None
    for error in exc.errors():
        # JSON syntax errors locate by character offset, which is no field name
        location = [] if error.get("type") == "json_invalid" else [str(p) for p in error.get("loc", ()) if p != "body"]
        param = param or ".".join(location) or None
        problems.append(f"{'.'.join(location) or 'body'}: {error.get('msg')}")
    return APIError(422, "invalid request: " + "; ".join(problems), param=param)


def _install_error_handlers(app: FastAPI) -> None:
    async def api_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, APIError)
        return exc.response()

    async def schema_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return _validation_error(exc).response()

    async def http_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        return APIError(exc.status_code, str(exc.detail), code=None).response()

    async def server_error(_: Request, exc: Exception) -> JSONResponse:  # Starlette then re-raises it to be logged
        return APIError(500, "internal server error; see the server log", "server_error").response()

    app.add_exception_handler(APIError, api_error)
    app.add_exception_handler(RequestValidationError, schema_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, server_error)


class GuardMiddleware:
    """API key on every path but /health, then the body limit (Content-Length, and the bytes actually sent),
    before FastAPI parses anything. Pure ASGI so that streaming responses pass through untouched."""

    def __init__(self, app: ASGIApp, api_key: str | None, max_body_bytes: int = MAX_BODY_BYTES) -> None:
        self.app, self.api_key, self.max_body_bytes = app, api_key, max_body_bytes

    def _authorized(self, scope: Scope) -> bool:
        if self.api_key is None or scope["path"] in OPEN_PATHS:
            return True
        headers = dict(scope.get("headers", ()))
        scheme, _, token = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), self.api_key.encode())

    def _too_large(self) -> APIError:
        return APIError(413, f"request body is larger than {self.max_body_bytes:,} bytes; send a shorter prompt",
                        code="request_too_large")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if not self._authorized(scope):
            error = APIError(401, "missing or invalid API key: send the header 'Authorization: Bearer <key>'",
                             code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
            await error.response()(scope, receive, send)
            return
        declared = dict(scope.get("headers", ())).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_body_bytes:
            await self._too_large().response()(scope, receive, send)
            return
        body, more = bytearray(), True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if len(body) > self.max_body_bytes:  # a chunked body has no Content-Length to check up front
                await self._too_large().response()(scope, receive, send)
                return
            more = message.get("more_body", False)
        await self.app(scope, _replay(bytes(body), receive), send)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive that gives the body already read, then the client's own messages (its disconnect)."""
    pending = [{"type": "http.request", "body": body, "more_body": False}]

    async def replay() -> Message:
        return pending.pop() if pending else await receive()

    return replay


# --- Request schemas ---------------------------------------------------------------------------------------------

class ChatMessage(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str


class StreamOptions(BaseModel):
    include_usage: bool = False


class SamplingFields(BaseModel):
    """What both OpenAI routes accept; unknown fields are ignored, as OpenAI-compatible servers do."""

    model_config = ConfigDict(extra="ignore")
    model: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None  # vLLM's extension
    repetition_penalty: float | None = None  # vLLM's extension
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int = 1
    stream: bool = False
    stream_options: StreamOptions | None = None


class CompletionRequest(SamplingFields):
    prompt: str


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = None  # OpenAI's newer name for max_tokens


class GenerateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")  # our own simple form: a typo is an error
    prompt: str
    max_new_tokens: int | None = None
    temperature: float | None = None
    template: str | None = None  # default: the server's --template; "none": plain continuation


# --- Scheduling --------------------------------------------------------------------------------------------------

class Slots:
    """At most `max_active` generations at once and `max_queue` waiting; beyond that `acquire` refuses (429).
    Used from the event loop only, so the counters need no lock."""

    def __init__(self, max_active: int, max_queue: int) -> None:
        self.max_active, self.max_queue = max_active, max_queue
        self._semaphore = asyncio.Semaphore(max_active)
        self.running = 0
        self.waiting = 0

    async def acquire(self) -> None:
        if self.running + self.waiting >= self.max_active + self.max_queue:
            raise APIError(429, f"server busy: {self.running} generating and {self.waiting} waiting (limits "
                                f"--max_concurrent {self.max_active}, --max_queue {self.max_queue}); retry in a moment",
                           "rate_limit_error", code="queue_full", headers={"Retry-After": str(RETRY_AFTER_S)})
        self.waiting += 1
        try:
            await self._semaphore.acquire()
        finally:
            self.waiting -= 1
        self.running += 1

    def release(self) -> None:
        self.running -= 1
        self._semaphore.release()


class Job:
    """One generation on its own worker thread; text deltas reach the event loop through an asyncio queue, and the
    thread releases the slot itself when it ends (however the request ended)."""

    _DELTA, _DONE, _FAILED = "delta", "done", "failed"

    def __init__(self, stream: TextStream, cancel: threading.Event, on_end: Callable[[Job], None]) -> None:
        self.stream, self.cancel, self._on_end = stream, cancel, on_end
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        threading.Thread(target=self._run, name="lumi-generate", daemon=True).start()

    def _put(self, item: tuple[str, Any]) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: the server is shutting down
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)

    def _run(self) -> None:
        try:
            for delta in self.stream:
                self._put((self._DELTA, delta))
            self._put((self._DONE, self.stream.result))
        except Exception as exc:  # reported to the client; the server keeps serving
            log.exception("generation failed")
            self._put((self._FAILED, exc))
        finally:
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._on_end, self)

    async def deltas(self) -> AsyncIterator[str]:
        while True:
            kind, value = await self._queue.get()
            if kind == self._DELTA:
                yield value
            elif kind == self._FAILED:
                raise APIError(500, f"generation failed: {value}", "server_error")
            else:
                return

    @property
    def result(self) -> GenerationResult:
        assert self.stream.result is not None, "read result only after deltas() is exhausted"
        return self.stream.result


@dataclass
class ServerState:
    config: ServeConfig
    slots: Slots
    generator: TextGenerator | None = None
    load_error: str | None = None
    jobs: set[Job] = field(default_factory=set)
    stats: dict[str, int] = field(default_factory=lambda: dict.fromkeys(("completed", "cancelled", "failed",
                                                                         "rejected"), 0))
    created: int = field(default_factory=lambda: int(time.time()))

    def ready(self) -> TextGenerator:
        if self.generator is None:
            detail = f"failed to load: {self.load_error}" if self.load_error else "is still loading; retry shortly"
            raise APIError(503, f"the model {detail}", "service_unavailable", code="model_not_ready",
                           headers={"Retry-After": str(RETRY_AFTER_S)})
        return self.generator

    def end_job(self, job: Job) -> None:
        self.jobs.discard(job)
        self.slots.release()
        outcome = job.stream.result.finish_reason if job.stream.result else "failed"
        self.stats[outcome if outcome in ("cancelled", "failed") else "completed"] += 1


# --- Request handling --------------------------------------------------------------------------------------------

@dataclass
class Prepared:
    prompt_ids: list[int]
    params: GenerationParams


def _stop_list(stop: str | list[str] | None) -> list[str]:
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    if len(stops) > MAX_STOP_SEQUENCES:
        raise APIError(400, f"stop has {len(stops)} sequences; at most {MAX_STOP_SEQUENCES} are allowed",
                       param="stop", code="invalid_value")
    return stops


def _params(config: ServeConfig, request: SamplingFields, max_tokens: int | None, stop: list[str]) -> GenerationParams:
    """The request's sampling settings over the server's defaults, each range-checked (400 naming the field)."""
    if request.model is not None and request.model != config.model_id:
        raise APIError(404, f"model '{request.model}' is not served here; GET /v1/models lists '{config.model_id}'",
                       param="model", code="model_not_found")
    if request.n != 1:
        raise APIError(400, f"n must be 1 (one answer per request), got {request.n}", param="n", code="invalid_value")
    defaults = config.default_params()
    values = {"max_new_tokens": max_tokens, "temperature": request.temperature, "top_p": request.top_p,
              "top_k": request.top_k, "repetition_penalty": request.repetition_penalty,
              "seed": request.seed if request.seed is not None else config.seed}
    try:
        return dataclasses.replace(defaults, stop=tuple(stop), **{k: v for k, v in values.items() if v is not None})
    except InvalidParam as exc:
        raise _invalid(exc) from exc


async def _prepare(state: ServerState, text: str, params: GenerationParams, explicit_max: bool,
                   prompt_param: str) -> Prepared:
    """Tokenize off the event loop, then check prompt + max_tokens against the context window."""
    generator = state.ready()
    prompt_ids = await asyncio.to_thread(generator.encode, text)
    context, prompt = generator.context_length, len(prompt_ids)
    room = context - prompt
    if (explicit_max and params.max_new_tokens > room) or room < 1:
        asked = params.max_new_tokens
        raise APIError(400, f"This model's maximum context length is {context} tokens, but {prompt + asked} were "
                            f"requested ({prompt} in the {prompt_param} and {asked} in max_tokens). Shorten the "
                            f"{prompt_param} or lower max_tokens.", param=prompt_param, code="context_length_exceeded")
    if params.max_new_tokens > room:  # the server's default, not the client's ask: shrink it to fit
        params = dataclasses.replace(params, max_new_tokens=room)
    return Prepared(prompt_ids, params)


async def _start(state: ServerState, prepared: Prepared) -> Job:
    try:
        await state.slots.acquire()
    except APIError:
        state.stats["rejected"] += 1
        raise
    cancel = threading.Event()
    job = Job(state.ready().stream(prepared.prompt_ids, prepared.params, cancel), cancel, state.end_job)
    state.jobs.add(job)
    return job


async def _cancel_on_disconnect(request: Request, cancel: threading.Event) -> None:
    while not await request.is_disconnected():
        await asyncio.sleep(DISCONNECT_POLL_S)
    cancel.set()


async def _collect(job: Job, request: Request) -> GenerationResult:
    """Wait for a whole answer, cancelling it if the client leaves meanwhile."""
    watcher = asyncio.create_task(_cancel_on_disconnect(request, job.cancel))
    try:
        async for _ in job.deltas():
            pass
    finally:
        watcher.cancel()
    return job.result


def _usage(result: GenerationResult) -> dict[str, int]:
    return {"prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens,
            "total_tokens": result.prompt_tokens + result.completion_tokens}


@dataclass
class Reply:
    """Builds the response bodies of one OpenAI request: chat ("chat.completion") or text ("text_completion")."""

    chat: bool
    model: str
    id: str = field(init=False)
    created: int = field(default_factory=lambda: int(time.time()))

    def __post_init__(self) -> None:
        self.id = f"{'chatcmpl' if self.chat else 'cmpl'}-{uuid.uuid4().hex}"

    def _envelope(self, obj: str, choice: dict[str, Any]) -> dict[str, Any]:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model,
                "choices": [{"index": 0, **choice, "logprobs": None}]}

    def full(self, result: GenerationResult) -> dict[str, Any]:
        content = {"message": {"role": "assistant", "content": result.text}} if self.chat else {"text": result.text}
        body = self._envelope("chat.completion" if self.chat else "text_completion",
                              {**content, "finish_reason": result.finish_reason})
        return {**body, "usage": _usage(result)}

    def chunk(self, text: str | None, finish_reason: str | None = None, role: bool = False) -> dict[str, Any]:
        if not self.chat:
            return self._envelope("text_completion", {"text": text or "", "finish_reason": finish_reason})
        delta = {"role": "assistant", "content": ""} if role else ({} if text is None else {"content": text})
        return self._envelope("chat.completion.chunk", {"delta": delta, "finish_reason": finish_reason})

    def usage_chunk(self, result: GenerationResult) -> dict[str, Any]:
        obj = "chat.completion.chunk" if self.chat else "text_completion"
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model, "choices": [],
                "usage": _usage(result)}


def _sse(data: dict[str, Any] | str) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)}\n\n"


async def _event_stream(job: Job, reply: Reply, include_usage: bool) -> AsyncIterator[str]:
    """Role first (chat), content deltas, an empty delta with finish_reason, optional usage, then [DONE]. When the
    client disconnects Starlette cancels this generator, and `finally` stops the generation."""
    try:
        if reply.chat:
            yield _sse(reply.chunk(None, role=True))
        try:
            async for delta in job.deltas():
                yield _sse(reply.chunk(delta))
        except APIError as exc:
            yield _sse({"error": {"message": exc.message, "type": exc.type, "param": None, "code": exc.code}})
        else:
            yield _sse(reply.chunk(None, job.result.finish_reason))
            if include_usage:
                yield _sse(reply.usage_chunk(job.result))
        yield _sse("[DONE]")
    finally:
        job.cancel.set()  # a no-op once the generation has ended


async def _respond(state: ServerState, request: Request, body: SamplingFields, reply: Reply,
                   prepared: Prepared) -> Any:
    job = await _start(state, prepared)
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return StreamingResponse(_event_stream(job, reply, include_usage), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    return reply.full(await _collect(job, request))


def _add_routes(app: FastAPI, state: ServerState) -> None:
    config = state.config

    @app.get("/health")
    async def health() -> JSONResponse:
        status = "ok" if state.generator else ("error" if state.load_error else "loading")
        body = {"status": status, "model": config.model_id, "running": state.slots.running,
                "waiting": state.slots.waiting}
        if state.load_error:
            body["error"] = state.load_error
        return JSONResponse(body, status_code=200 if state.generator else 503)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        generator = state.ready()
        return {"object": "list", "data": [{"id": config.model_id, "object": "model", "created": state.created,
                                            "owned_by": OWNER, "max_model_len": generator.context_length}]}

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request) -> Any:
        params = _params(config, body, body.max_tokens, _stop_list(body.stop))
        prepared = await _prepare(state, body.prompt, params, body.max_tokens is not None, "prompt")
        return await _respond(state, request, body, Reply(chat=False, model=config.model_id), prepared)

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Any:
        template = get_template(config.template)
        max_tokens = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
        params = _params(config, body, max_tokens, [*template.stop, *_stop_list(body.stop)])
        text = template.render([m.model_dump() for m in body.messages], add_generation_prompt=True)
        prepared = await _prepare(state, text, params, max_tokens is not None, "messages")
        return await _respond(state, request, body, Reply(chat=True, model=config.model_id), prepared)

    @app.post("/generate")
    async def generate(body: GenerateRequest, request: Request) -> dict[str, Any]:
        name = body.template or config.template
        try:
            template = None if name == RAW_TEMPLATE else get_template(name)
        except ConfigError as exc:
            raise APIError(400, f"{exc}, or '{RAW_TEMPLATE}' for plain text", param="template",
                           code="invalid_value") from exc
        fields = SamplingFields(max_tokens=body.max_new_tokens, temperature=body.temperature)
        params = _params(config, fields, body.max_new_tokens, list(template.stop) if template else [])
        text = template.render([{"role": "user", "content": body.prompt}], True) if template else body.prompt
        prepared = await _prepare(state, text, params, body.max_new_tokens is not None, "prompt")
        result = await _collect(await _start(state, prepared), request)
        return {"text": result.text, "finish_reason": result.finish_reason, "model": config.model_id,
                "usage": _usage(result)}


def create_app(config: ServeConfig, load: Callable[[], LoadedModel] | None = None,
               on_load_error: Callable[[], None] | None = None) -> FastAPI:
    """The API app. The model loads on a thread at startup (`load`, default: config.model_path), so /health can
    answer 503 meanwhile; `on_load_error` is called if that fails (the CLI stops the server)."""
    load = load or (lambda: load_for_serving(config))

    def load_model_now(state: ServerState) -> None:
        try:
            loaded = load()
            state.generator = TextGenerator(loaded.model, loaded.tokenizer)
            log.info("model %s ready (%d tokens of context)", config.model_id, state.generator.context_length)
        except Exception as exc:
            state.load_error = str(exc)
            log.error("could not load %s: %s", config.model_path, exc)
            if on_load_error is not None:
                on_load_error()

    state = ServerState(config, Slots(config.max_concurrent, config.max_queue))

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        loading = asyncio.create_task(asyncio.to_thread(load_model_now, state))
        yield
        for job in list(state.jobs):
            job.cancel.set()
        await loading

    app = FastAPI(title="Lumi", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.lumi = state
    _add_routes(app, state)
    _install_error_handlers(app)
    app.add_middleware(GuardMiddleware, api_key=config.resolved_api_key())
    if config.cors_origins:  # outermost, so that preflight requests are answered before the key check
        app.add_middleware(CORSMiddleware, allow_origins=config.cors_origins, allow_credentials=False,
                           allow_methods=["GET", "POST"], allow_headers=["Authorization", "Content-Type"])
    return app


def run_api(config: ServeConfig) -> None:
    """Serve until Ctrl-C. Raises DataError when the model cannot be loaded."""
    import uvicorn

    if not Path(config.model_path).is_dir():
        raise DataError(f"model directory not found: {config.model_path}; pass --model_path <final/, merged/ or "
                        f"adapter dir>")
    server: uvicorn.Server | None = None

    def stop() -> None:
        if server is not None:
            server.should_exit = True

    app = create_app(config, on_load_error=stop)
    server = uvicorn.Server(uvicorn.Config(app, host=config.host, port=config.port, log_config=None,
                                           timeout_graceful_shutdown=2))
    base = f"http://{config.host}:{config.port}"
    auth = " -H 'Authorization: Bearer $LUMI_API_KEY'" if config.resolved_api_key() else ""
    log.info("serving %s at %s (OpenAI base_url %s/v1); health: %s/health", config.model_id, base, base, base)
    log.info("try: curl %s/v1/chat/completions -H 'Content-Type: application/json'%s -d "
             "'{\"messages\": [{\"role\": \"user\", \"content\": \"Tell me a story.\"}], \"max_tokens\": 50}'",
             base, auth)
    if config.host not in (DEFAULT_HOST, "localhost", "::1") and not config.resolved_api_key():
        log.warning("listening on %s without an API key: anyone who can reach it can use it (set --api_key or %s)",
                    config.host, API_KEY_ENV)
    try:
        server.run()
    except KeyboardInterrupt:  # uvicorn re-raises the Ctrl-C it has already handled by shutting down
        log.info("stopped")
    if app.state.lumi.load_error:
        raise DataError(f"stopped: {config.model_path} did not load (the reason is logged above)")
