"""HTTP mapping of the job service: OpenAI's `/v1/files` and `/v1/fine_tuning/jobs` endpoints.

`create_jobs_router(service)` is what the inference server mounts (`app.include_router`);
`create_jobs_app(service)` is a minimal app with only this router (`mmtune jobs serve`).
Every error leaves as an OpenAI error object, `{"error": {"message", "type", "param",
"code"}}`, with its status code (400 bad parameters, 401 wrong key, 404 unknown id, 413 too
large). Endpoints parse their own input (no FastAPI 422s), and the router does not depend on
app-level exception handlers, so it behaves the same in any app that mounts it.
"""

from __future__ import annotations

import functools
import json
import secrets
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from mmtune.jobs.errors import APIError, bad_request
from mmtune.jobs.service import JobService
from mmtune.jobs.store import valid_id

MAX_LIMIT = 10_000


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
    try:
        return json.loads(await request.body() or b"{}")
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise bad_request(f"the request body is not valid JSON: {e}", code="invalid_json") from None


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
        form = await request.form()
        upload, purpose = form.get("file"), form.get("purpose")
        if not isinstance(upload, UploadFile):
            raise bad_request("send the file as multipart/form-data field 'file' (with a filename)", "file")
        if not isinstance(purpose, str):
            raise bad_request("purpose is required: use 'fine-tune'", "purpose")
        try:
            return await call(service.upload_file, upload.filename, purpose, upload.file)
        finally:
            await upload.close()

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

    app = FastAPI(title="mmtune fine-tuning jobs", lifespan=lifespan)
    openai_error_handlers(app)
    app.include_router(create_jobs_router(service, api_key))

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    return app
