"""OpenAI-compatible HTTP server over Engines: `create_app(pool)` → FastAPI.

Routes: `/health`, `/v1/models`, `/v1/chat/completions` and the legacy `/v1/completions`
(JSON or SSE streaming; log-probabilities on both, the prompt's with `echo`). More
routers (files, fine-tuning jobs) plug in through `create_app(..., routers=[...])` and get
the same API-key check and error format.

Why it is shaped this way:
- Generation runs in a thread pool of `max_concurrency` workers, so the event loop only
  moves bytes and stays responsive (health checks answer while models work).
- An asyncio semaphore of the same size admits requests; the rest wait in its queue, in
  order, and none is dropped. `/health` reports running and waiting counts.
- A stream is pumped from its worker thread into an asyncio queue; when the client goes
  away the worker stops at the next token and frees its slot.
- Work per request is bounded before any is done, each refusal a 400 naming the field and the
  limit: the prompt must fit the model's context, `prompt + max_tokens` too (no `max_tokens`:
  what the context leaves, up to `max_tokens_cap`), and `max_tokens` at most `max_tokens_cap`.
- A generation stops within one decode step when its client goes away (streaming or not), and
  a request whose client left while it waited for a slot is never run. On shutdown every
  generation still running is stopped (uvicorn first waits `--drain-seconds` for them).
- Every error is OpenAI's error object (`{"error": {"message", "type", "param", "code"}}`),
  which the official clients turn into their typed exceptions; a client's mistake is a 4xx
  (bad JSON, nesting over MAX_JSON_DEPTH, lone surrogates, integers out of range), and an
  internal failure a 500 object without internals.
- With an API key, only `/health` answers without it, and only `{"status": "ok"}`; `/docs`,
  `/redoc` and `/openapi.json` need the key like every other route.
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
import math
import sys
import time
import traceback
import uuid
from collections.abc import AsyncIterator, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from mmtune import __version__
from mmtune.errors import UserError
from mmtune.infer.engine import PromptTooLong
from mmtune.infer.media import MediaPolicy
from mmtune.infer.tool_calls import ContentStream, tool_policy
from mmtune.serve.pool import ModelPool
from mmtune.serve.schemas import ChatCompletionRequest, CompletionRequest, error_body

MAX_BODY_MB = 20  # a phone photo as a base64 data: URL fits (OpenAI takes images up to 20 MB)
MAX_BODY_BYTES = MAX_BODY_MB * 1024 * 1024
MAX_N = 8
MAX_JSON_DEPTH = 64  # OpenAI's shapes nest a few levels; deeper is a mistake or an attack
SEED_RANGE = (-(2**63), 2**63 - 1)  # OpenAI's seed is an int64
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


class ClientGone(Exception):
    """The client closed its connection: nothing more is sent, no more work is done for it."""


class Limiter:
    """At most `size` generations at once; the rest wait, first come first served.

    Every generation under way is known here, so a stopping server cancels them all (`stop`)."""

    def __init__(self, size: int):
        if size < 1:
            raise UserError("--max-concurrency must be at least 1")
        self.size = size
        self.executor = ThreadPoolExecutor(max_workers=size, thread_name_prefix="mmtune-gen")
        self._sem = asyncio.Semaphore(size)
        self.running = self.waiting = 0
        self.active: set[Any] = set()  # Generations being produced
        self.stopping = False

    @contextlib.asynccontextmanager
    async def slot(self, gone: asyncio.Future | None = None) -> AsyncIterator[None]:
        """A generation slot; with `gone` (done when the client leaves), ClientGone instead of waiting on."""
        self.waiting += 1
        try:
            await _acquire(self._sem, gone)
        finally:
            self.waiting -= 1
        self.running += 1
        try:
            yield
        finally:
            self.running -= 1
            self._sem.release()

    def track(self, generation) -> Any:
        if self.stopping:
            generation.cancel()
        self.active.add(generation)
        return generation

    def stop(self) -> None:
        """Cancel every generation (the server is shutting down): each ends after its current step."""
        self.stopping = True
        for generation in list(self.active):
            generation.cancel()

    async def run(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)


async def _acquire(sem: asyncio.Semaphore, gone: asyncio.Future | None) -> None:
    """`sem.acquire()`, or ClientGone as soon as `gone` is done (then no permit is held)."""
    if gone is None:
        await sem.acquire()
        return
    task = asyncio.ensure_future(sem.acquire())
    try:
        await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
        if task.done() and not gone.done():
            return
    except BaseException:  # cancelled (the server stops): fall through to giving up, then re-raise
        await _drop(task, sem)
        raise
    await _drop(task, sem)
    raise ClientGone


async def _drop(task: asyncio.Future, sem: asyncio.Semaphore) -> None:
    """Give up a pending acquire; a permit it got after all goes back."""
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    if not task.cancelled():
        sem.release()


def watch_disconnect(request: Request) -> asyncio.Task:
    """A task that ends when the client closes its connection (call after the body is read)."""

    async def wait() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    return asyncio.ensure_future(wait())


def create_app(
    pool: ModelPool,
    *,
    api_key: str | None = None,
    max_concurrency: int = 4,
    max_body_bytes: int = MAX_BODY_BYTES,
    max_tokens_cap: int | None = None,
    routers: Iterable[APIRouter] = (),
    unlimited_paths: tuple[str, ...] = (),
    lifespan: Any = None,
    media: MediaPolicy | None = None,
) -> FastAPI:
    """The server app for the models in `pool`; `routers` are added behind the same key check.

    `max_tokens_cap`: the most tokens one request may generate (None: what the model's context
    leaves); `unlimited_paths`: path prefixes exempt from the body limit (file uploads, which their
    router limits itself); `lifespan`: FastAPI's start-up/shut-down context (a job service);
    `media`: which image/video references requests may use (default: data: URLs only)."""
    if max_tokens_cap is not None and max_tokens_cap < 1:
        raise UserError(f"--max-tokens-cap must be at least 1 (got {max_tokens_cap})")

    @contextlib.asynccontextmanager
    async def life(app: FastAPI):
        try:
            if lifespan is None:
                yield
            else:
                async with lifespan(app):
                    yield
        finally:
            app.state.limiter.stop()  # what the drain left running stops now, and the threads with it

    app = FastAPI(title="mmtune", version=__version__, lifespan=life, docs_url=None, redoc_url=None,
                  openapi_url=None)
    app.state.media = media or MediaPolicy.server()
    app.state.unlimited_paths = unlimited_paths
    app.state.pool = pool
    app.state.api_key = api_key or None
    app.state.limiter = Limiter(max_concurrency)
    app.state.max_body_bytes = max_body_bytes
    app.state.max_tokens_cap = max_tokens_cap
    _install_errors(app)
    app.add_middleware(BodyLimit)
    app.include_router(health_router())
    guarded = [Depends(require_api_key)]
    app.include_router(docs_router(app), dependencies=guarded)
    app.include_router(models_router(), dependencies=guarded)
    app.include_router(chat_router(), dependencies=guarded)
    app.include_router(completions_router(), dependencies=guarded)
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

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception):  # a bug of ours: logged, answered without internals
        return internal_error().response()


def internal_error() -> ApiError:
    return ApiError(500, "the server failed to answer this request (its log has the details); try again, and "
                    "report it if it keeps happening", type_="server_error", code="internal_error")


def _validation_message(errors: list[dict]) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in e.get('loc', ()) if p != 'body')}: {e.get('msg')}" for e in errors
    )


class BodyLimit:
    """413 before reading a body whose Content-Length is over the limit (a plain ASGI middleware, so
    a request's `receive` still reports the client leaving)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            state = scope["app"].state
            exempt = scope["path"].startswith(state.unlimited_paths or ("\0",))
            length = dict(scope["headers"]).get(b"content-length", b"")
            if not exempt and length.isdigit() and int(length) > state.max_body_bytes:
                await _too_large(state.max_body_bytes).response()(scope, receive, send)
                return
        await self.app(scope, receive, send)


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
    """The JSON body, read up to the size limit (chunked bodies have no Content-Length), and checked:
    valid UTF-8 and JSON, at most MAX_JSON_DEPTH deep, no lone surrogates (`"\\ud800"`) in any string."""
    limit = request.app.state.max_body_bytes
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
    return parse_json(b"".join(chunks))


def parse_json(raw: bytes) -> Any:
    """`raw` as JSON that the rest of the server can take, or a 400 naming what is wrong."""
    try:
        value = json.loads(raw or b"null")
    except RecursionError:
        raise _too_deep() from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ApiError(400, f"the request body is not valid JSON: {e}", code="invalid_json") from None
    problem = json_problem(value)
    if problem:
        raise ApiError(400, problem, code="invalid_json")
    return value


def _too_deep() -> ApiError:
    return ApiError(400, f"the request body is nested more than {MAX_JSON_DEPTH} levels deep: send OpenAI's "
                    "request shape", code="invalid_json")


def json_problem(value: Any) -> str | None:
    """What makes parsed JSON unusable (too deep, a lone surrogate, a number out of range), or None.
    Iterative, so a deep value cannot overflow the stack here."""
    stack: list[tuple[Any, str, int]] = [(value, "", 0)]
    while stack:
        item, where, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            return _too_deep().message
        if isinstance(item, dict):
            for k, v in item.items():
                if _has_surrogate(k):
                    return f"a key at {where or 'the top level'} holds a lone UTF-16 surrogate: send valid Unicode"
                stack.append((v, f"{where}.{k}" if where else k, depth + 1))
        elif isinstance(item, list):
            stack.extend((v, f"{where}[{i}]", depth + 1) for i, v in enumerate(item))
        elif isinstance(item, str) and _has_surrogate(item):
            return (f"{where or 'the body'} holds a lone UTF-16 surrogate (such as \\ud800, half of an escaped "
                    "character pair): send valid Unicode")
        elif isinstance(item, float) and not math.isfinite(item):
            return f"{where or 'the body'} is {item}, which is not a JSON number: send a finite number"
    return None


def _has_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def authorized(request: Request) -> bool:
    """Whether the request carries the server's key (always, when the server has none)."""
    key = request.app.state.api_key
    if key is None:
        return True
    auth = request.headers.get("authorization", "")
    given = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
    return bool(given) and hmac.compare_digest(given.encode(), key.encode())


def require_api_key(request: Request) -> None:
    """401 unless the request carries `Authorization: Bearer KEY` (when the server has a key)."""
    if not authorized(request):
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
        """Liveness for anyone; the models and the load only for a caller with the key."""
        if not authorized(request):
            return {"status": "ok"}
        limiter: Limiter = request.app.state.limiter
        return {
            "status": "ok",
            "models": request.app.state.pool.names,
            "running": limiter.running,
            "waiting": limiter.waiting,
            "max_concurrency": limiter.size,
        }

    return router


def docs_router(app: FastAPI) -> APIRouter:
    """The OpenAPI schema and its two viewers, behind the key like the API they describe."""
    router = APIRouter(include_in_schema=False)

    @router.get("/openapi.json")
    async def openapi():
        return JSONResponse(app.openapi())

    @router.get("/docs")
    async def docs():
        return get_swagger_ui_html(openapi_url="/openapi.json", title=f"{app.title} - docs")

    @router.get("/redoc")
    async def redoc():
        return get_redoc_html(openapi_url="/openapi.json", title=f"{app.title} - ReDoc")

    return router


def models_router() -> APIRouter:
    router = APIRouter(prefix="/v1")
    created = int(time.time())

    def card(name: str, kind: str) -> dict:
        # OpenAI's card has no field saying what a model does; a client (the studio) needs it to offer chat
        # or picture generation: mmtune's own `mmtune.kind`, "text" (/v1/chat/completions: text and
        # vision-language models) or "image-generation" (/v1/images/generations). OpenAI's fields are unchanged.
        return {"id": name, "object": "model", "created": created, "owned_by": "mmtune", "mmtune": {"kind": kind}}

    def pictures(request: Request) -> list[str]:  # image-generation models (serve/images.py)
        pool = getattr(request.app.state, "image_pool", None)
        return pool.names if pool is not None else []

    @router.get("/models")
    async def list_models(request: Request):
        return {"object": "list", "data": [*(card(n, "text") for n in request.app.state.pool.names),
                                           *(card(n, "image-generation") for n in pictures(request))]}

    @router.get("/models/{name:path}")
    async def get_model(name: str, request: Request):
        if name in pictures(request):
            return card(name, "image-generation")
        await _engine(request, name)
        return card(name, "text")

    return router


def chat_router() -> APIRouter:
    router = APIRouter(prefix="/v1")

    @router.post("/chat/completions")
    async def chat_completions(request: Request):
        req = _parse_chat(await read_json_body(request))
        engine = await _engine(request, req.model)
        cap = request.app.state.max_tokens_cap
        options = _choice_options(engine, req, cap)
        # rendered, tokenized, media decoded (off the event loop): bad messages are a 400 before any work
        prompt = await asyncio.get_running_loop().run_in_executor(
            None, lambda: _prepare(engine, req, request.app.state.media)
        )
        options = _fit(options, req, len(prompt.ids), engine.context_length, cap)
        if req.tool_choice is not None or req.parallel_tool_calls is not None:
            options = [{**o, "tool_choice": req.tool_choice, "parallel_tool_calls": req.parallel_tool_calls}
                       for o in options]
        limiter: Limiter = request.app.state.limiter
        meta = {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "created": int(time.time()), "model": req.model}
        if req.stream:  # Starlette cancels the stream when the client leaves; _pump then stops the generation
            return _event_stream(_stream_events(engine, prompt, options, limiter, meta, req.include_usage))
        return await _in_slot(request, limiter,
                              lambda gone: _complete_all(limiter, engine, prompt, options, gone),
                              lambda completions: _completion_body(meta, completions, engine.tokenizer(req.model)))

    return router


def _event_stream(events) -> StreamingResponse:
    """Server-sent events, unbuffered (chat and text completions stream alike)."""
    return StreamingResponse(events, media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def _in_slot(request: Request, limiter: Limiter, work, body):
    """`body(await work(gone))` inside a concurrency slot, `gone` set when the client leaves; a 499 when it
    left first (nobody reads it; it is for the access log)."""
    gone = watch_disconnect(request)
    try:
        async with limiter.slot(gone):
            done = await work(gone)
    except ClientGone:
        return JSONResponse(error_body("the client closed the connection", code="client_closed"), status_code=499)
    finally:
        gone.cancel()
    return body(done)


def _parse_chat(body: Any) -> ChatCompletionRequest:
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    try:
        req = ChatCompletionRequest.model_validate(body)
    except ValidationError as e:
        raise ApiError(400, _validation_message(e.errors())) from None
    if not 1 <= req.n <= MAX_N:
        raise ApiError(400, f"n must be between 1 and {MAX_N}", param="n")
    if req.top_logprobs is not None and not req.logprobs:
        raise ApiError(400, "top_logprobs needs logprobs: true", param="top_logprobs")
    for i, tool in enumerate(req.tools or []):
        function = tool.get("function")
        if tool.get("type", "function") != "function" or not isinstance(function, dict) \
                or not isinstance(function.get("name"), str) or not function["name"]:
            raise ApiError(400, f"tools[{i}] must be {{\"type\": \"function\", \"function\": {{\"name\": ..., "
                           "\"parameters\": {...}}}", param=f"tools[{i}]")
    try:
        tool_policy(req.tools, req.tool_choice, req.parallel_tool_calls)
    except UserError as e:
        raise ApiError(400, str(e), param="tool_choice") from None
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
            f"the model {name[:200]!r} does not exist on this server; served models: {served}",
            param="model",
            code="model_not_found",
        )
    return engine


def _prepare(engine, req: ChatCompletionRequest, media: MediaPolicy):
    try:
        return engine.prepare(req.messages, model=req.model, tools=req.tools, media=media)
    except PromptTooLong as e:
        raise ApiError(400, str(e), param="messages", code="context_length_exceeded") from None


def _max_tokens_field(req: ChatCompletionRequest) -> str:
    return "max_completion_tokens" if req.max_completion_tokens is not None else "max_tokens"


def _choice_options(engine, req: ChatCompletionRequest, cap: int | None) -> list[dict[str, Any]]:
    """Validated generation options per choice (before the prompt is even rendered, so an absurd
    max_tokens costs nothing); with a seed, choice i samples with seed + i."""
    base = req.gen_options()
    requested, field, context = base["max_new_tokens"], _max_tokens_field(req), engine.context_length
    if requested is not None and requested >= 1:
        if cap is not None and requested > cap:
            raise ApiError(400, f"{field} is {requested}, over this server's limit of {cap} tokens per request "
                           f"(--max-tokens-cap): ask for at most {cap}", param=field, code="max_tokens_exceeded")
        if requested >= context:
            raise ApiError(400, f"{field} is {requested} and this model's context is {context} tokens, the messages "
                           f"and the answer together: ask for at most {context - 1} (fewer with a longer prompt)",
                           param=field, code="context_length_exceeded")
    if req.seed is not None:
        lo, hi = SEED_RANGE
        if not (lo <= req.seed and req.seed + req.n - 1 <= hi):
            raise ApiError(400, f"seed must be a 64-bit integer, from {lo} to {hi - req.n + 1} with n={req.n} "
                           f"(got {str(req.seed)[:40]})", param="seed", code="integer_out_of_range")
    engine.options(**{**base, "max_new_tokens": requested or 1})  # raises UserError -> 400
    if req.seed is None:
        return [base] * req.n
    return [{**base, "seed": req.seed + i} for i in range(req.n)]


def _fit(options: list[dict[str, Any]], req: ChatCompletionRequest, prompt_tokens: int, context: int,
         cap: int | None) -> list[dict[str, Any]]:
    """max_new_tokens that fits the context beside the prompt: the request's (400 if it does not fit),
    else what the context leaves (at most `cap`)."""
    left = context - prompt_tokens  # >= 1: prepare refuses prompts that fill the context
    requested = options[0]["max_new_tokens"]
    if requested is None:
        return [{**o, "max_new_tokens": min(left, cap or left)} for o in options]
    if requested > left:
        field = _max_tokens_field(req)
        raise ApiError(400, f"this model's context is {context} tokens and the messages take {prompt_tokens} of them, "
                       f"so {field} can be at most {left} (got {requested}): ask for fewer tokens or send a shorter "
                       "conversation", param=field, code="context_length_exceeded")
    return options


async def _complete_all(limiter: Limiter, engine, prompt, options: list[dict[str, Any]], gone: asyncio.Future):
    """Every choice's Completion, generated in a worker thread; ClientGone (and the generation stopped
    within one decode step) when the client leaves first."""
    return await _complete_jobs(limiter, engine, [(prompt, o, False) for o in options], gone)


async def _complete_jobs(limiter: Limiter, engine, jobs: list[tuple[Any, dict[str, Any], bool]],
                         gone: asyncio.Future):
    """The Completion of each (prompt, options, score the prompt) job, one after the other in a worker
    thread; a job with max_new_tokens 0 only scores its prompt. ClientGone (and the generation stopped
    within one decode step) when the client leaves first."""
    generations = [None if o["max_new_tokens"] == 0 else
                   limiter.track(engine.stream(p, score_prompt=scored, **o)) for p, o, scored in jobs]
    stopped = False

    def work():
        out = []
        for generation, (prompt, opts, scored) in zip(generations, jobs):
            if generation is None:
                if stopped:
                    return None
                out.append(_scored_only(engine, prompt, opts, scored))
                continue
            for _ in generation:
                pass
            if generation.cancelled:
                return None
            out.append(generation.completion)
        return out

    future = asyncio.get_running_loop().run_in_executor(limiter.executor, work)
    try:
        await asyncio.wait({future, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not future.done():  # the client left, or the server stops: stop, and wait out the step under way
            stopped = True
            for generation in generations:
                if generation is not None:
                    generation.cancel()
            with contextlib.suppress(Exception):
                await asyncio.shield(future)
        limiter.active.difference_update(g for g in generations if g is not None)
    result = future.result()
    if result is None:
        raise ClientGone
    return result


def _scored_only(engine, prompt, opts: dict[str, Any], scored: bool):
    """The Completion of max_tokens 0: nothing generated; the prompt's log-probabilities if asked for."""
    from mmtune.infer.decode import Completion

    top = opts.get("logprobs")
    prompt_lps = tuple(engine.score(prompt, top or 0)) if scored else None
    return Completion("", len(prompt.ids), 0, "length", (), () if top is not None else None, prompt_lps)


def _completion_body(meta: dict, completions: list, tokenizer=None) -> dict:
    prompt = completions[0].prompt_tokens
    generated = sum(c.completion_tokens for c in completions)
    return {
        **meta,
        "object": "chat.completion",
        "choices": [
            {
                "index": i,
                "message": _message(c),
                "logprobs": _chat_logprobs(tokenizer, c.logprobs) if c.logprobs is not None else None,
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


def _message(c) -> dict:
    """The assistant message of a Completion: content, and OpenAI's tool_calls when it made any."""
    if not c.tool_calls:
        return {"role": "assistant", "content": c.text}
    return {"role": "assistant", "content": c.text or None, "tool_calls": [
        {"id": t.id, "type": "function", "function": {"name": t.name, "arguments": t.arguments}}
        for t in c.tool_calls]}


# ----------------------------------------------------------------------------- streaming


def _sse(data: Any) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


def _chunk(meta: dict, index: int, delta: dict, finish: str | None = None, logprobs: dict | None = None) -> str:
    choice = {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
    return _sse({**meta, "object": "chat.completion.chunk", "choices": [choice]})


async def _stream_events(
    engine, prompt, options: list[dict], limiter: Limiter, meta: dict, include_usage: bool
) -> AsyncIterator[str]:
    """OpenAI's chunk stream: role, content deltas (with their tokens' log-probabilities when asked
    for), finish reason (per choice), usage, [DONE]."""
    prompt_tokens = generated = 0
    tokenizer = engine.tokenizer(meta["model"])
    try:
        async with limiter.slot():
            for i, opts in enumerate(options):
                generation = limiter.track(engine.stream(prompt, **opts))
                tracker, sent, content = generation.trackers[0], 0, ContentStream(generation.tools)
                yield _chunk(meta, i, {"role": "assistant", "content": ""})
                async for piece, upto in _pump(generation, limiter):
                    shown = content.feed(piece)  # a tool call being written is held back, parsed at the end
                    if not shown:
                        continue
                    logprobs = None
                    if tracker.logprobs is not None:
                        logprobs, sent = _chat_logprobs(tokenizer, tracker.logprobs[sent:upto]), upto
                    yield _chunk(meta, i, {"content": shown}, logprobs=logprobs)
                if generation.cancelled:  # the server stops
                    return
                done = generation.completion
                prompt_tokens, generated = done.prompt_tokens, generated + done.completion_tokens
                rest = _chat_logprobs(tokenizer, done.logprobs[sent:]) if done.logprobs is not None else None
                if content.rest(done.text):
                    yield _chunk(meta, i, {"content": content.rest(done.text)}, logprobs=rest)
                    rest = None
                for k, call in enumerate(done.tool_calls):  # OpenAI's tool-call deltas, one whole call each
                    yield _chunk(meta, i, {"tool_calls": [{"index": k, "id": call.id, "type": "function", "function": {
                        "name": call.name, "arguments": call.arguments}}]})
                yield _chunk(meta, i, {}, done.finish_reason, logprobs=rest)
    except Exception:  # headers are sent: report in-band, as OpenAI does
        traceback.print_exc(file=sys.stderr)
        yield _sse(internal_error().response().body.decode())
        return
    if include_usage:
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": generated,
            "total_tokens": prompt_tokens + generated,
        }
        yield _sse({**meta, "object": "chat.completion.chunk", "choices": [], "usage": usage})
    yield "data: [DONE]\n\n"


async def _pump(generation, limiter: Limiter) -> AsyncIterator[tuple[str, int]]:
    """Text pieces of `generation`, produced in a worker thread, delivered in the event loop, each with
    how many tokens were generated when it was released. When the consumer stops (the client left:
    Starlette cancels the stream), the generation is cancelled and stops after the decode step under way."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()
    tracker = generation.trackers[0]

    def work() -> None:
        try:
            for piece in generation:
                loop.call_soon_threadsafe(queue.put_nowait, (piece, len(tracker.tokens)))
            loop.call_soon_threadsafe(queue.put_nowait, _END)
        except BaseException as e:  # handed to the event loop, raised there
            loop.call_soon_threadsafe(queue.put_nowait, e)
        finally:
            generation.close()

    future = loop.run_in_executor(limiter.executor, work)
    finished = False
    try:
        while (item := await queue.get()) is not _END:
            if isinstance(item, BaseException):
                raise item
            yield item
        finished = True
    finally:
        if not finished:
            generation.cancel()
        limiter.active.discard(generation)
        with contextlib.suppress(Exception):  # (under a cancelled stream this await is cut short at once)
            await asyncio.shield(future)


# ----------------------------------------------------------------------------- log-probabilities


def _token_text(tokenizer, token: int) -> str:
    return tokenizer.decode([token], skip_special_tokens=False)


def _chat_logprobs(tokenizer, entries) -> dict:
    """Chat completions' `logprobs`: per token its text, log-probability, UTF-8 bytes and alternatives."""

    def item(token: int, logprob: float) -> dict:
        text = _token_text(tokenizer, token)
        return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}

    return {
        "content": [{**item(e.token, e.logprob), "top_logprobs": [item(t, lp) for t, lp in e.top]} for e in entries],
        "refusal": None,
    }


def _text_logprobs(tokenizer, entries, offset: int = 0) -> dict:
    """Legacy completions' `logprobs`: parallel lists of token texts, log-probabilities, alternatives
    ({text: log-probability}; None where there are none: a prompt's first token) and character offsets
    (from `offset`) into the choice's text."""
    tokens, logprobs, tops, offsets = [], [], [], []
    for token, entry in entries:
        text = _token_text(tokenizer, token)
        tokens.append(text)
        offsets.append(offset)
        offset += len(text)
        if entry is None:
            logprobs.append(None)
            tops.append(None)
        else:
            logprobs.append(entry.logprob)
            top: dict[str, float] = {}
            for t, lp in entry.top:  # likeliest first; two ids with one text keep the likelier
                top.setdefault(_token_text(tokenizer, t), lp)
            tops.append(top)
    return {"tokens": tokens, "token_logprobs": logprobs, "top_logprobs": tops, "text_offset": offsets}


# ----------------------------------------------------------------------------- /v1/completions


def completions_router() -> APIRouter:
    router = APIRouter(prefix="/v1")

    @router.post("/completions")
    async def completions(request: Request):
        req = _parse_completion(await read_json_body(request))
        engine = await _engine(request, req.model)
        cap = request.app.state.max_tokens_cap
        if req.max_tokens == 0:
            engine.options(**{**req.gen_options(), "max_new_tokens": 1})  # the other options still must be valid
            options = [{**req.gen_options(), "max_new_tokens": 0}] * req.n
        else:
            options = _choice_options(engine, req, cap)
        texts_and_prompts = await asyncio.get_running_loop().run_in_executor(
            None, lambda: _text_prompts(engine, req)
        )
        jobs, echoes = [], []
        for text, prompt in texts_and_prompts:
            fitted = options if req.max_tokens == 0 else _fit(options, req, len(prompt.ids), engine.context_length, cap)
            for opts in fitted:
                jobs.append((prompt, opts, req.echo and req.logprobs is not None))
                echoes.append(text)
        limiter: Limiter = request.app.state.limiter
        meta = {"id": f"cmpl-{uuid.uuid4().hex[:24]}", "created": int(time.time()), "model": req.model}
        tokenizer = engine.tokenizer(req.model)
        if req.stream:
            return _event_stream(_text_stream_events(engine, jobs, echoes, req, limiter, meta, tokenizer))

        def body(done):
            choices = [_text_choice(i, c, prompt, echo, req, tokenizer)
                       for i, (c, (prompt, _, _), echo) in enumerate(zip(done, jobs, echoes))]
            return {**meta, "object": "text_completion", "choices": choices, "usage": _text_usage(done, jobs, req.n)}

        return await _in_slot(request, limiter, lambda gone: _complete_jobs(limiter, engine, jobs, gone), body)

    return router


def _parse_completion(body: Any) -> CompletionRequest:
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    try:
        req = CompletionRequest.model_validate(body)
    except ValidationError as e:
        raise ApiError(400, _validation_message(e.errors())) from None
    if req.prompt is None:
        raise ApiError(400, "prompt: required (a string, a list of strings, token ids or lists of token ids)",
                       param="prompt")
    if not 1 <= req.n <= MAX_N:
        raise ApiError(400, f"n must be between 1 and {MAX_N}", param="n")
    if req.best_of is not None and req.best_of != req.n:
        raise ApiError(400, "best_of is not supported (only best_of equal to n): leave it out", param="best_of")
    if req.suffix:
        raise ApiError(400, "suffix (fill in the middle) is not supported: leave it out", param="suffix")
    if req.max_tokens is not None and req.max_tokens < 0:
        raise ApiError(400, "max_tokens must be an integer >= 0 (0: score the prompt, generate nothing)",
                       param="max_tokens")
    if req.max_tokens == 0 and req.stream:
        raise ApiError(400, "max_tokens 0 generates nothing to stream: send stream: false", param="stream")
    return req


def _prompt_items(prompt: Any) -> list[str | list[int]]:
    """The request's prompts: a string, strings, token ids or lists of token ids (each a prompt)."""
    def is_ids(x: Any) -> bool:
        return isinstance(x, list) and bool(x) and all(isinstance(t, int) and not isinstance(t, bool) for t in x)

    if isinstance(prompt, str):
        return [prompt]
    if is_ids(prompt):
        return [prompt]
    if isinstance(prompt, list) and prompt and all(isinstance(p, str) or is_ids(p) for p in prompt):
        return list(prompt)
    raise ApiError(400, "prompt must be a string, a list of strings, a list of token ids or a list of lists of "
                   "token ids (none of them empty)", param="prompt")


def _text_prompts(engine, req: CompletionRequest) -> list[tuple[str, Any]]:
    """(the prompt's text, as echoed; its Prompt) for each prompt of the request."""
    out = []
    for item in _prompt_items(req.prompt):
        try:
            ids = engine.encode(item, req.model) if isinstance(item, str) else item
            prompt = engine.prepare_ids(ids, req.model)
        except PromptTooLong as e:
            raise ApiError(400, str(e).replace("the messages are", "the prompt is"), param="prompt",
                           code="context_length_exceeded") from None
        except UserError as e:
            raise ApiError(400, str(e), param="prompt") from None
        text = item if isinstance(item, str) else engine.tokenizer(req.model).decode(item)
        out.append((text, prompt))
    return out


def _text_choice(index: int, c, prompt, echo: str, req: CompletionRequest, tokenizer) -> dict:
    head = echo if req.echo else ""
    logprobs = None
    if req.logprobs is not None:
        logprobs = _text_logprobs(tokenizer, list(zip(c.tokens, c.logprobs or ())), len(head))
        if req.echo:
            echoed = _text_logprobs(tokenizer, list(zip(prompt.ids, c.prompt_logprobs)))
            logprobs = {k: echoed[k] + logprobs[k] for k in logprobs}
    return {"index": index, "text": head + c.text, "logprobs": logprobs, "finish_reason": c.finish_reason}


def _text_usage(done: list, jobs: list, n: int) -> dict:
    prompt = sum(len(p.ids) for p, _, _ in jobs[::n])
    generated = sum(c.completion_tokens for c in done)
    return {"prompt_tokens": prompt, "completion_tokens": generated, "total_tokens": prompt + generated}


def _text_chunk(meta: dict, index: int, text: str, logprobs: dict | None = None, finish: str | None = None) -> str:
    choice = {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish}
    return _sse({**meta, "object": "text_completion", "choices": [choice]})


def _echo_chunk(meta: dict, index: int, echo: str, prompt, tracker, req: CompletionRequest, tokenizer) -> str:
    logprobs = None
    if req.logprobs is not None:
        logprobs = _text_logprobs(tokenizer, list(zip(prompt.ids, tracker.prompt_logprobs or ())))
    return _text_chunk(meta, index, echo, logprobs)


async def _text_stream_events(engine, jobs: list, echoes: list[str], req: CompletionRequest, limiter: Limiter,
                              meta: dict, tokenizer) -> AsyncIterator[str]:
    """The legacy completions' chunk stream: per choice its text pieces (the echoed prompt first), each
    with its tokens' log-probabilities when asked for, then its finish reason; usage; [DONE]."""
    done_all = []
    try:
        async with limiter.slot():
            for i, ((prompt, opts, scored), echo) in enumerate(zip(jobs, echoes)):
                generation = limiter.track(engine.stream(prompt, score_prompt=scored, **opts))
                tracker, sent, offset, echoed = generation.trackers[0], 0, 0, not req.echo
                async for piece, upto in _pump(generation, limiter):
                    if not echoed:  # the prompt's log-probabilities are known once the first step ran
                        yield _echo_chunk(meta, i, echo, prompt, tracker, req, tokenizer)
                        echoed, offset = True, len(echo)
                    logprobs = None
                    if tracker.logprobs is not None:
                        new = list(zip(tracker.tokens[sent:upto], tracker.logprobs[sent:upto]))
                        logprobs, sent = _text_logprobs(tokenizer, new, offset), upto
                    offset += len(piece)
                    yield _text_chunk(meta, i, piece, logprobs)
                if generation.cancelled:  # the server stops
                    return
                if not echoed:
                    yield _echo_chunk(meta, i, echo, prompt, tracker, req, tokenizer)
                    offset = len(echo)
                done = generation.completion
                done_all.append(done)
                rest = None
                if done.logprobs is not None:
                    rest = _text_logprobs(tokenizer, list(zip(done.tokens[sent:], done.logprobs[sent:])), offset)
                yield _text_chunk(meta, i, "", rest, done.finish_reason)
    except Exception:  # headers are sent: report in-band, as OpenAI does
        traceback.print_exc(file=sys.stderr)
        yield _sse(internal_error().response().body.decode())
        return
    if req.include_usage:
        yield _sse({**meta, "object": "text_completion", "choices": [], "usage": _text_usage(done_all, jobs, req.n)})
    yield "data: [DONE]\n\n"
