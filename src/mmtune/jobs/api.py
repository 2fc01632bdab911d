"""HTTP mapping of the job service: OpenAI's `/v1/files` and `/v1/fine_tuning/jobs` endpoints.

`create_jobs_router(service)` is what the inference server mounts (`app.include_router`);
`create_jobs_app(service)` is a minimal app with only this router (`mmtune jobs serve`).
Every error leaves as an OpenAI error object, `{"error": {"message", "type", "param",
"code"}}`, with its status code (400 bad parameters, 401 wrong key, 404 unknown id, 413 too
large). Endpoints parse their own input (no FastAPI 422s), and the router does not depend on
app-level exception handlers, so it behaves the same in any app that mounts it.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import secrets
import sys
import traceback
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from mmtune.jobs.errors import APIError, bad_request
from mmtune.jobs.service import JobService, storage_errors, upload_name, upload_too_large
from mmtune.jobs.store import valid_id

MAX_LIMIT = 10_000
MAX_JSON_DEPTH = 64
MAX_JSON_BYTES = 1 << 20  # a job request
MAX_FIELD_BYTES = 1024  # `purpose` and any other small form field
MAX_PARTS = 16


Endpoint = Callable[..., Awaitable[Any]]


def _guard(api_key: str | None) -> Callable[[Endpoint], Endpoint]:
    """Wrap an endpoint (which takes `request`): check the key, answer APIError as an OpenAI error."""

    def wrap(fn: Endpoint) -> Endpoint:
        @functools.wraps(fn)  # FastAPI reads the endpoint's own signature through __wrapped__
        async def wrapper(**kwargs: Any) -> Any:
            try:
                _check_key(kwargs["request"], api_key)
                return await fn(**kwargs)
            except APIError as e:
                return JSONResponse(e.to_dict(), status_code=e.status)
            except Exception:  # a bug of ours: logged with its traceback, answered as an OpenAI error
                traceback.print_exc(file=sys.stderr)
                err = APIError(500, "the job service failed to answer this request (its log has the details)",
                               code="internal_error")
                return JSONResponse(err.to_dict(), status_code=500)

        return wrapper

    return wrap


def _check_key(request: Request, api_key: str | None) -> None:
    if api_key is None:
        return
    given = request.headers.get("authorization", "")
    token = given[7:] if given.lower().startswith("bearer ") else ""
    if not secrets.compare_digest(token.encode(), api_key.encode()):
        raise APIError(401, "Incorrect API key provided: pass the server's --api-key as a Bearer token "
                       "(openai.OpenAI(api_key=...))", code="invalid_api_key")


def _limit(request: Request, default: int) -> int:
    raw = request.query_params.get("limit")
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise bad_request(f"limit must be an integer from 1 to {MAX_LIMIT} (got {raw[:40]!r})", "limit") from None
    if not 1 <= value <= MAX_LIMIT:
        raise bad_request(f"limit must be from 1 to {MAX_LIMIT} (got {value})", "limit")
    return value


def _after(request: Request, kind: str) -> str | None:
    raw = request.query_params.get("after")
    if raw is None or raw == "":
        return None
    if not valid_id(kind, raw):
        raise bad_request(f"after must be the id of a listed object (got {raw[:80]!r})", "after", "invalid_cursor")
    return raw


async def _json_body(request: Request) -> Any:
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > MAX_JSON_BYTES:
            raise APIError(413, f"the request body is larger than {MAX_JSON_BYTES} bytes: a job request is a small "
                           "JSON object (upload data with POST /v1/files)", code="request_too_large")
    try:
        value = json.loads(bytes(raw) or b"{}")
    except RecursionError:
        raise bad_request(f"the request body is nested more than {MAX_JSON_DEPTH} levels deep", code="invalid_json"
                          ) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise bad_request(f"the request body is not valid JSON: {e}", code="invalid_json") from None
    problem = _json_problem(value)
    if problem:
        raise bad_request(problem, code="invalid_json")
    return value


json_body = _json_body  # public: the studio router reads job-shaped bodies with the same rules


def _json_problem(value: Any) -> str | None:
    """Too deep, a lone surrogate in a string, or a non-finite number (iterative: no stack to overflow)."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            return f"the request body is nested more than {MAX_JSON_DEPTH} levels deep"
        if isinstance(item, dict):
            stack.extend((k, depth + 1) for k in item)
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
        elif isinstance(item, str) and not _valid_unicode(item):
            return f"{item[:40]!r} holds a lone UTF-16 surrogate (half of an escaped character pair): send valid Unicode"
        elif isinstance(item, float) and not math.isfinite(item):
            return f"{item} is not a JSON number: send a finite number"
    return None


def _valid_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


async def receive_upload(request: Request, service: JobService) -> dict[str, Any]:
    """Parse a multipart upload as it arrives: the `file` part is written straight to a temporary file in
    the data dir, and reading stops as soon as it passes the size limit (a 413); small fields are capped."""
    from python_multipart.exceptions import MultipartParseError
    from python_multipart.multipart import MultipartParser, parse_options_header

    kind, options = parse_options_header(request.headers.get("content-type", ""))
    boundary = options.get(b"boundary", b"")
    if kind != b"multipart/form-data" or not 0 < len(boundary) <= 200:
        raise bad_request("send the file as multipart/form-data with a field 'file' (with a filename) and "
                          "'purpose' (the openai client's files.create does)", "file")
    limit = service.settings.max_upload_bytes
    target = service.upload_target()
    parts = _Parts(limit)
    out = None
    try:
        parser = MultipartParser(boundary, parts.callbacks())
        async for chunk in request.stream():
            try:
                parser.write(chunk)
            except MultipartParseError as e:
                raise bad_request(f"the multipart body is malformed: {e}", "file") from None
            if parts.error:
                raise parts.error
            if parts.pending:
                if out is None:
                    with storage_errors("the file"):
                        out = await run_in_threadpool(open, target, "wb")
                data, parts.pending = b"".join(parts.pending), []
                with storage_errors("the file"):
                    await run_in_threadpool(out.write, data)
        try:
            parser.finalize()
        except MultipartParseError as e:
            raise bad_request(f"the multipart body is malformed: {e}", "file") from None
        if parts.error:
            raise parts.error
        if parts.filename is None:
            raise bad_request("send the file as multipart/form-data field 'file' (with a filename)", "file")
        purpose = parts.fields.get("purpose")
        if purpose is None:
            raise bad_request("purpose is required: use 'fine-tune'", "purpose")
        with storage_errors("the file"):
            if out is None:  # an empty file
                out = await run_in_threadpool(open, target, "wb")
            await run_in_threadpool(out.close)
        out = None
        return await run_in_threadpool(lambda: service.upload_file(parts.filename, purpose, stored=target,
                                                                   size=parts.size))
    finally:
        if out is not None:
            with contextlib.suppress(OSError):  # a full disk fails the flush again: already answered
                out.close()
        target.unlink(missing_ok=True)


class _Parts:
    """python-multipart callbacks: the `file` part's bytes queued in `pending`, small fields kept."""

    def __init__(self, limit: int):
        self.limit = limit
        self.fields: dict[str, str] = {}
        self.filename: str | None = None
        self.size = 0
        self.pending: list[bytes] = []
        self.error: APIError | None = None
        self._headers: dict[bytes, bytes] = {}
        self._field, self._value = b"", b""
        self._name: str | None = None
        self._is_file = False
        self._data = bytearray()
        self._count = 0

    def callbacks(self) -> dict[str, Any]:
        return {"on_part_begin": self._begin, "on_part_data": self._part_data, "on_part_end": self._end,
                "on_header_field": self._header_field, "on_header_value": self._header_value,
                "on_header_end": self._header_end, "on_headers_finished": self._headers_done}

    def _fail(self, error: APIError) -> None:
        self.error = self.error or error

    def _begin(self) -> None:
        self._headers, self._name, self._is_file, self._data = {}, None, False, bytearray()
        self._count += 1
        if self._count > MAX_PARTS:
            self._fail(bad_request(f"the upload has more than {MAX_PARTS} form fields: send 'file' and 'purpose'",
                                   "file"))

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]
        if len(self._value) > MAX_FIELD_BYTES:
            self._fail(bad_request("a multipart header is too long", "file"))
            self._value = b""

    def _header_end(self) -> None:
        self._headers[self._field.lower()] = self._value
        self._field, self._value = b"", b""

    def _headers_done(self) -> None:
        from python_multipart.multipart import parse_options_header

        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        name = options.get(b"name", b"").decode("utf-8", "replace")
        self._name = name
        if name == "file" and b"filename" in options:
            if self.filename is not None:
                self._fail(bad_request("send one file per upload", "file"))
            self.filename = options[b"filename"].decode("utf-8", "replace")
            self._is_file = True
            try:
                upload_name(self.filename)  # a wrong file type is refused before its bytes are read
            except APIError as e:
                self._fail(e)

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self.error:
            return
        if self._is_file:
            self.size += end - start
            if self.size > self.limit:
                self._fail(upload_too_large(self.limit))
                return
            self.pending.append(data[start:end])
        else:
            self._data += data[start:end]
            if len(self._data) > MAX_FIELD_BYTES:
                self._fail(bad_request(f"form field {str(self._name)[:40]!r} is longer than {MAX_FIELD_BYTES} bytes",
                                       str(self._name)[:40]))

    def _end(self) -> None:
        if not self._is_file and self._name is not None:
            self.fields[self._name] = self._data.decode("utf-8", "replace")


def create_jobs_router(service: JobService, api_key: str | None = None, prefix: str = "/v1") -> APIRouter:
    """The files and fine-tuning jobs endpoints of `service`, under `prefix`.

    With `api_key`, every request must carry `Authorization: Bearer <api_key>` (401 otherwise);
    leave it None when the mounting app checks keys itself."""
    router = APIRouter(prefix=prefix, tags=["fine-tuning"])
    call = run_in_threadpool
    guard = _guard(api_key)

    # ------------------------------------------------------------------ files
    @router.post("/files")
    @guard
    async def upload_file(request: Request):
        return await receive_upload(request, service)

    @router.get("/files")
    @guard
    async def list_files(request: Request):
        order = request.query_params.get("order", "desc")
        if order not in ("asc", "desc"):
            raise bad_request(f"order must be asc or desc (got {order[:20]!r})", "order")
        return await call(service.list_files, _after(request, "file"), _limit(request, MAX_LIMIT), order,
                          request.query_params.get("purpose"))

    @router.get("/files/{file_id}")
    @guard
    async def retrieve_file(file_id: str, request: Request):
        return await call(service.retrieve_file, file_id)

    @router.delete("/files/{file_id}")
    @guard
    async def delete_file(file_id: str, request: Request):
        return await call(service.delete_file, file_id)

    @router.get("/files/{file_id}/content")
    @guard
    async def file_content(file_id: str, request: Request):
        path, name = await call(service.file_content, file_id)
        return FileResponse(path, media_type="application/octet-stream", filename=name)

    # ------------------------------------------------------------------ fine-tuning jobs
    @router.post("/fine_tuning/jobs")
    @guard
    async def create_job(request: Request):
        return await call(service.create_job, await _json_body(request))

    @router.get("/fine_tuning/jobs")
    @guard
    async def list_jobs(request: Request):
        return await call(service.list_jobs, _after(request, "job"), _limit(request, 20))

    @router.get("/fine_tuning/jobs/{job_id}")
    @guard
    async def retrieve_job(job_id: str, request: Request):
        return await call(service.retrieve_job, job_id)

    @router.post("/fine_tuning/jobs/{job_id}/cancel")
    @guard
    async def cancel_job(job_id: str, request: Request):
        return await call(service.cancel_job, job_id)

    @router.get("/fine_tuning/jobs/{job_id}/events")
    @guard
    async def list_events(job_id: str, request: Request):
        return await call(service.list_events, job_id, _after(request, "event"), _limit(request, 20))

    @router.get("/fine_tuning/jobs/{job_id}/checkpoints")
    @guard
    async def list_checkpoints(job_id: str, request: Request):
        return await call(service.list_checkpoints, job_id, _after(request, "checkpoint"), _limit(request, 10))

    return router


def openai_error_handlers(app: FastAPI) -> None:
    """Unknown routes and wrong methods as OpenAI error objects (for an app of our own)."""

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        codes = {404: "unknown_url", 405: "method_not_allowed"}
        err = APIError(exc.status_code, str(exc.detail), code=codes.get(exc.status_code))
        return JSONResponse(err.to_dict(), status_code=exc.status_code)


def create_jobs_app(service: JobService, api_key: str | None = None, manage: bool = True) -> FastAPI:
    """A FastAPI app with only the jobs router; with `manage`, the app starts and closes the service."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if manage:
            await run_in_threadpool(service.start)
        try:
            yield
        finally:
            if manage:
                await run_in_threadpool(service.close)

    app = FastAPI(title="mmtune fine-tuning jobs", lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None)
    openai_error_handlers(app)
    app.include_router(create_jobs_router(service, api_key))
    guard = _guard(api_key)

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/openapi.json", include_in_schema=False)
    @guard
    async def openapi(request: Request):
        return JSONResponse(app.openapi())

    @app.get("/docs", include_in_schema=False)
    @guard
    async def docs(request: Request):
        from fastapi.openapi.docs import get_swagger_ui_html

        return get_swagger_ui_html(openapi_url="/openapi.json", title=f"{app.title} - docs")

    return app
