"""Stage 06, API mode: serve a model over HTTP (FastAPI + uvicorn) in OpenAI's schema.

    python scripts/06_serve.py --model_path <dir> --mode api [--host 127.0.0.1] [--port 8000] [--api_key KEY]

Endpoints (every one but / and /health needs `Authorization: Bearer <key>` when --api_key or LUMI_API_KEY is set):
  GET  /                     the chat page (utils/serve/web/chat.html): streams from /v1/chat/completions
  POST /v1/chat/completions  messages rendered with --template; `stream: true` sends server-sent events
  POST /v1/completions       raw text continuation
  POST /generate             the simple form {"prompt", "max_new_tokens", "temperature", "template"}
  GET  /v1/models            the served model (its directory name unless --served_model_name)
  GET  /health               503 while the model loads, 200 after (open without a key; running/waiting, auth)

Status codes, each error in OpenAI's {"error": {"message", "type", "param", "code"}} shape (utils/serve/errors.py):
  422 the body does not match the schema (missing or mistyped field, invalid JSON) — FastAPI's own check;
  400 a well-typed value out of range (temperature, top_p, top_k, max_tokens, repetition_penalty, seed, stop, n) or
      prompt + max_tokens beyond the context: as vLLM and OpenAI answer those;
  401 missing or wrong key; 404 unknown route or model name; 413 body over 1 MiB; 429 queue full; 503 loading.

Generations run on worker threads, at most --max_concurrent at once and --max_queue waiting (utils/serve/scheduler.py).
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import json
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from utils.core.errors import ConfigError, DataError
from utils.lm.generation import GenerationParams, GenerationResult, InvalidParam, TextGenerator
from utils.lm.loading import LoadedModel
from utils.lm.templates import get_template
from utils.serve.config import API_KEY_ENV, DEFAULT_HOST, ServeConfig, load_for_serving
from utils.serve.errors import APIError, install_error_handlers, invalid_param_error
from utils.serve.scheduler import Job, ServerState, Slots
from utils.serve.schema import (
    ChatCompletionRequest,
    CompletionRequest,
    ErrorResponse,
    GenerateRequest,
    SamplingFields,
)

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1024 * 1024  # 1 MiB, nginx's default client_max_body_size
MAX_STOP_SEQUENCES = 4  # OpenAI's limit
DISCONNECT_POLL_S = 0.1  # how often a non-streaming request checks that its client is still there
OPEN_PATHS = ("/health", "/")  # the chat page holds no data: it asks for the key when /health says one is needed
CHAT_PAGE = Path(__file__).with_name("web") / "chat.html"
# The statuses each route can answer, declared in the OpenAPI document (what clients and schemathesis read).
ERROR_DESCRIPTIONS = {400: "a value out of range, or prompt + max_tokens beyond the context",
                      401: "missing or wrong API key", 404: "unknown model name", 413: "body over the size limit",
                      422: "body does not match the schema", 429: "queue full", 503: "the model is still loading"}
STREAM_RESPONSE = {200: {"description": "the answer, or with stream: true server-sent events",
                         "content": {"text/event-stream": {"schema": {"type": "string"}}}}}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {status: {"model": ErrorResponse, "description": ERROR_DESCRIPTIONS[status]} for status in statuses}


GENERATION_ERRORS = error_responses(400, 401, 404, 413, 422, 429, 503)
RAW_TEMPLATE = "none"  # /generate's "template": "none" continues the prompt as plain text
OWNER = "lumi"


# --- API key and body limit --------------------------------------------------------------------------------------

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
        raise invalid_param_error(exc) from exc


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
    page = CHAT_PAGE.read_text(encoding="utf-8")

    @app.get("/", include_in_schema=False)
    async def chat_page() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get("/health", responses={503: {"description": "the same body while the model loads or after it failed"}})
    async def health() -> JSONResponse:
        status = "ok" if state.generator else ("error" if state.load_error else "loading")
        body = {"status": status, "model": config.model_id, "running": state.slots.running,
                "waiting": state.slots.waiting, "auth": config.resolved_api_key() is not None}
        if state.load_error:
            body["error"] = state.load_error
        return JSONResponse(body, status_code=200 if state.generator else 503)

    @app.get("/v1/models", responses=error_responses(401, 503))
    async def models() -> dict[str, Any]:
        generator = state.ready()
        return {"object": "list", "data": [{"id": config.model_id, "object": "model", "created": state.created,
                                            "owned_by": OWNER, "max_model_len": generator.context_length}]}

    @app.post("/v1/completions", responses={**STREAM_RESPONSE, **GENERATION_ERRORS})
    async def completions(body: CompletionRequest, request: Request) -> Any:
        params = _params(config, body, body.max_tokens, _stop_list(body.stop))
        prepared = await _prepare(state, body.prompt, params, body.max_tokens is not None, "prompt")
        return await _respond(state, request, body, Reply(chat=False, model=config.model_id), prepared)

    @app.post("/v1/chat/completions", responses={**STREAM_RESPONSE, **GENERATION_ERRORS})
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Any:
        template = get_template(config.template)
        max_tokens = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
        params = _params(config, body, max_tokens, [*template.stop, *_stop_list(body.stop)])
        text = template.render([m.model_dump() for m in body.messages], add_generation_prompt=True)
        prepared = await _prepare(state, text, params, max_tokens is not None, "messages")
        return await _respond(state, request, body, Reply(chat=True, model=config.model_id), prepared)

    @app.post("/generate", responses=GENERATION_ERRORS)
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
    install_error_handlers(app)
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
    log.info("chat in the browser: %s/", base)
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
