"""The studio: the browser console's static files at `/ui` (and `/` redirecting there).

The files are plain HTML, ES modules and CSS inside the package (serve/ui/), served as they are:
no build step, nothing fetched from another origin. Every answer carries
`Content-Security-Policy: default-src 'self'` (no inline script or style, no other origin: a
dataset row that holds markup can never run) and `X-Content-Type-Options: nosniff`. Pictures may also be
`blob:` URLs: the sample and generated pictures are fetched with the key (an <img src> cannot send it)
and shown as object URLs of what the page itself downloaded; data: URLs stay refused. The pages
need no key to load; every API call they make sends the key the user typed (Bearer).
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse

UI_DIR = Path(__file__).resolve().parent / "ui"
CSP = "default-src 'self'; img-src 'self' blob:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache",
           "Referrer-Policy": "no-referrer"}
TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
         ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml", ".png": "image/png",
         ".ico": "image/x-icon"}


def ui_router() -> APIRouter:
    router = APIRouter(include_in_schema=False)
    files = {p.relative_to(UI_DIR).as_posix(): p for p in UI_DIR.rglob("*")
             if p.is_file() and p.suffix in TYPES}  # the only paths it answers: nothing outside, no listing

    @router.get("/")
    async def root():
        return RedirectResponse("/ui/", status_code=307)

    @router.get("/ui")
    async def ui_bare():
        return RedirectResponse("/ui/", status_code=307)

    @router.get("/ui/{path:path}")
    async def ui_file(path: str):
        found = files.get(path or "index.html")
        if found is None:
            return JSONResponse({"error": {"message": f"no studio file {path[:100]!r}", "type": "invalid_request_error",
                                           "param": None, "code": "unknown_url"}}, status_code=404, headers=HEADERS)
        return FileResponse(found, media_type=TYPES[found.suffix], headers=HEADERS)

    return router


def mount_ui(app: FastAPI) -> None:
    """Add the studio to a server app (its routes need no key: the page asks for it)."""
    app.include_router(ui_router())
