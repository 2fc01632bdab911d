"""OpenAI-compatible HTTP server over Engines: `create_app(pool)` → FastAPI.

Routes: `/health`, `/v1/models`, `/v1/chat/completions` (JSON or SSE streaming). More
routers (files, fine-tuning jobs) plug in through `create_app(..., routers=[...])` and get
the same API-key check and error format.

Why it is shaped this way:
- Generation runs in a thread pool of `max_concurrency` workers, so the event loop only
  moves bytes and stays responsive (health checks answer while models work).
- An asyncio semaphore of the same size admits requests; the rest wait in its queue, in
  order, and none is dropped. `/health` reports running and waiting counts.
- A stream is pumped from its worker thread into an asyncio queue; when the client goes
  away the worker stops at the next token and frees its slot.
- Every error is OpenAI's error object (`{"error": {"message", "type", "param", "code"}}`),
  which the official clients turn into their typed exceptions.
- Vision models take OpenAI `image_url` content parts. Which references a request may use
  is the server's `MediaPolicy` (infer/media.py): `data:` URLs always; local paths and
  `file://` only inside `--media-root`; http(s) only with `--allow-remote-media`. Each
  refusal is a 400 naming the flag. The prompt (media decoded) is prepared off the event
  loop before the answer starts, so a bad image is a 400, never a broken stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from mmtune import __version__
from mmtune.errors import UserError
from mmtune.infer.media import MediaPolicy
from mmtune.serve.pool import ModelPool
from mmtune.serve.schemas import ChatCompletionRequest, error_body

MAX_BODY_MB = 20  # a phone photo as a base64 data: URL fits (OpenAI takes images up to 20 MB)
MAX_BODY_BYTES = MAX_BODY_MB * 1024 * 1024
MAX_N = 8
_END = object()


class ApiError(Exception):
    """An error answered as OpenAI's error object with this HTTP status."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type_: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code

    def response(self) -> JSONResponse:
        return JSONResponse(
            error_body(self.message, self.type, self.param, self.code), status_code=self.status
        )


class Limiter:
    """At most `size` generations at once; the rest wait, first come first served."""

    def __init__(self, size: int):
        if size < 1:
            raise UserError("--max-concurrency must be at least 1")
        self.size = size
        self.executor = ThreadPoolExecutor(max_workers=size, thread_name_prefix="mmtune-gen")
        self._sem = asyncio.Semaphore(size)
        self.running = self.waiting = 0

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        self.waiting += 1
        try:
            await self._sem.acquire()
        finally:
            self.waiting -= 1
        self.running += 1
        try:
            yield
        finally:
            self.running -= 1
            self._sem.release()

    async def run(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)


def create_app(
    pool: ModelPool,
    *,
    api_key: str | None = None,
    max_concurrency: int = 4,
    max_body_bytes: int = MAX_BODY_BYTES,
    routers: Iterable[APIRouter] = (),
    unlimited_paths: tuple[str, ...] = (),
    lifespan: Any = None,
    media: MediaPolicy | None = None,
) -> FastAPI:
    """The server app for the models in `pool`; `routers` are added behind the same key check.

    `unlimited_paths`: path prefixes exempt from the body limit (file uploads, which their
    router limits itself); `lifespan`: FastAPI's start-up/shut-down context (a job service);
    `media`: which image/video references requests may use (default: data: URLs only)."""
    app = FastAPI(title="mmtune", version=__version__, lifespan=lifespan)
    app.state.media = media or MediaPolicy.server()
    app.state.unlimited_paths = unlimited_paths
    app.state.pool = pool
    app.state.api_key = api_key or None
    app.state.limiter = Limiter(max_concurrency)
    app.state.max_body_bytes = max_body_bytes
    _install_errors(app)
    app.middleware("http")(_limit_body)
    app.include_router(health_router())
    guarded = [Depends(require_api_key)]
    app.include_router(models_router(), dependencies=guarded)
    app.include_router(chat_router(), dependencies=guarded)
    for router in routers:
        app.include_router(router, dependencies=guarded)
    return app


# ----------------------------------------------------------------------------- cross-cutting


def _install_errors(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return exc.response()

    @app.exception_handler(UserError)
    async def _user_error(request: Request, exc: UserError):
        return ApiError(400, str(exc)).response()

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        return ApiError(400, _validation_message(exc.errors())).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        return ApiError(exc.status_code, str(exc.detail)).response()


def _validation_message(errors: list[dict]) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in e.get('loc', ()) if p != 'body')}: {e.get('msg')}" for e in errors
    )


async def _limit_body(request: Request, call_next):
    """413 before reading a body whose Content-Length is over the limit."""
    if request.url.path.startswith(request.app.state.unlimited_paths or ("\0",)):
        return await call_next(request)
    limit = request.app.state.max_body_bytes
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > limit:
        return _too_large(limit).response()
    return await call_next(request)


def _too_large(limit: int) -> ApiError:
    return ApiError(
        413,
        f"request body is larger than {_size(limit)}: send a shorter conversation or smaller images (or start "
        f"the server with a larger --max-request-mb)",
        code="request_too_large",
    )


def _size(n: int) -> str:
    return f"{n / 2**20:g} MiB" if n >= 2**20 else f"{n} bytes"


async def read_json_body(request: Request) -> Any:
    """The JSON body, read up to the size limit (chunked bodies have no Content-Length)."""
    limit = request.app.state.max_body_bytes
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
    try:
        return json.loads(b"".join(chunks) or b"null")
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ApiError(400, f"the request body is not valid JSON: {e}") from None


def require_api_key(request: Request) -> None:
    """401 unless the request carries `Authorization: Bearer KEY` (when the server has a key)."""
    key = request.app.state.api_key
    if key is None:
        return
    auth = request.headers.get("authorization", "")
    given = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
    if not given or not hmac.compare_digest(given.encode(), key.encode()):
        raise ApiError(
            401,
            "missing or incorrect API key: send `Authorization: Bearer KEY` with the key "
            "given to `mmtune serve --api-key`",
            type_="authentication_error",
            code="invalid_api_key",
        )


# ----------------------------------------------------------------------------- routes


def health_router() -> APIRouter:
    router = APIRouter()

    @router.get("/health")
    async def health(request: Request):
        limiter: Limiter = request.app.state.limiter
        return {
            "status": "ok",
            "models": request.app.state.pool.names,
            "running": limiter.running,
            "waiting": limiter.waiting,
            "max_concurrency": limiter.size,
        }

    return router


def models_router() -> APIRouter:
    router = APIRouter(prefix="/v1")
    created = int(time.time())

    def card(name: str) -> dict:
        return {"id": name, "object": "model", "created": created, "owned_by": "mmtune"}

    @router.get("/models")
    async def list_models(request: Request):
        return {"object": "list", "data": [card(n) for n in request.app.state.pool.names]}

    @router.get("/models/{name:path}")
    async def get_model(name: str, request: Request):
        await _engine(request, name)
        return card(name)

    return router


def chat_router() -> APIRouter:
    router = APIRouter(prefix="/v1")

    @router.post("/chat/completions")
    async def chat_completions(request: Request):
        req = _parse_chat(await read_json_body(request))
        engine = await _engine(request, req.model)
        options = _choice_options(engine, req)
        # rendered, tokenized, media decoded (off the event loop): bad messages are a 400 before any work
        prompt = await asyncio.get_running_loop().run_in_executor(
            None, lambda: engine.prepare(req.messages, model=req.model, tools=req.tools, media=request.app.state.media)
        )
        limiter: Limiter = request.app.state.limiter
        meta = {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "created": int(time.time()), "model": req.model}
        if req.stream:
            events = _stream_events(engine, prompt, options, limiter, meta, req.include_usage)
            return StreamingResponse(
                events,
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        async with limiter.slot():
            completions = await limiter.run(_complete_all, engine, prompt, options)
        return _completion_body(meta, completions)

    return router


def _parse_chat(body: Any) -> ChatCompletionRequest:
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    try:
        req = ChatCompletionRequest.model_validate(body)
    except ValidationError as e:
        raise ApiError(400, _validation_message(e.errors())) from None
    if not 1 <= req.n <= MAX_N:
        raise ApiError(400, f"n must be between 1 and {MAX_N}", param="n")
    return req


async def _engine(request: Request, name: str):
    pool = request.app.state.pool
    engine = pool.engine_for(name)
    if engine is None and pool.pending(name) is not None:  # e.g. a job just finished: load it now
        engine = await asyncio.get_running_loop().run_in_executor(None, pool.load, name)
    if engine is None:
        served = ", ".join(request.app.state.pool.names)
        raise ApiError(
            404,
            f"the model {name!r} does not exist on this server; served models: {served}",
            param="model",
            code="model_not_found",
        )
    return engine


def _choice_options(engine, req: ChatCompletionRequest) -> list[dict[str, Any]]:
    """Validated generation options per choice; with a seed, choice i samples with seed + i."""
    base = req.gen_options()
    engine.options(**base)  # raises UserError → 400
    if req.seed is None:
        return [base] * req.n
    return [{**base, "seed": req.seed + i} for i in range(req.n)]


def _complete_all(engine, prompt, options: list[dict[str, Any]]):
    return [engine.complete(prompt, **o) for o in options]


def _completion_body(meta: dict, completions: list) -> dict:
    prompt = completions[0].prompt_tokens
    generated = sum(c.completion_tokens for c in completions)
    return {
        **meta,
        "object": "chat.completion",
        "choices": [
            {
                "index": i,
                "message": {"role": "assistant", "content": c.text},
                "logprobs": None,
                "finish_reason": c.finish_reason,
            }
            for i, c in enumerate(completions)
        ],
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": generated,
            "total_tokens": prompt + generated,
        },
    }


# ----------------------------------------------------------------------------- streaming


def _sse(data: Any) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


def _chunk(meta: dict, index: int, delta: dict, finish: str | None = None) -> str:
    choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
    return _sse({**meta, "object": "chat.completion.chunk", "choices": [choice]})


async def _stream_events(
    engine, prompt, options: list[dict], limiter: Limiter, meta: dict, include_usage: bool
) -> AsyncIterator[str]:
    """OpenAI's chunk stream: role, content deltas, finish reason (per choice), usage, [DONE]."""
    prompt_tokens = generated = 0
    try:
        async with limiter.slot():
            for i, opts in enumerate(options):
                generation = engine.stream(prompt, **opts)
                yield _chunk(meta, i, {"role": "assistant", "content": ""})
                async for piece in _pump(generation, limiter):
                    yield _chunk(meta, i, {"content": piece})
                done = generation.completion
                prompt_tokens, generated = done.prompt_tokens, generated + done.completion_tokens
                yield _chunk(meta, i, {}, done.finish_reason)
    except Exception as e:  # headers are sent: report in-band, as OpenAI does
        yield _sse(error_body(f"generation failed: {e}", "server_error"))
        return
    if include_usage:
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": generated,
            "total_tokens": prompt_tokens + generated,
        }
        yield _sse({**meta, "object": "chat.completion.chunk", "choices": [], "usage": usage})
    yield "data: [DONE]\n\n"


async def _pump(generation, limiter: Limiter) -> AsyncIterator[str]:
    """Text pieces of `generation`, produced in a worker thread, delivered in the event loop."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()
    cancelled = threading.Event()

    def work() -> None:
        try:
            for piece in generation:
                loop.call_soon_threadsafe(queue.put_nowait, piece)
                if cancelled.is_set():
                    break
            loop.call_soon_threadsafe(queue.put_nowait, _END)
        except BaseException as e:  # handed to the event loop, raised there
            loop.call_soon_threadsafe(queue.put_nowait, e)
        finally:
            generation.close()

    future = loop.run_in_executor(limiter.executor, work)
    try:
        while (item := await queue.get()) is not _END:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        cancelled.set()
        with contextlib.suppress(Exception):
            await asyncio.shield(future)
