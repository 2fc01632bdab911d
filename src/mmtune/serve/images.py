"""`POST /v1/images/generations` (OpenAI's Images API) for image-generation models: picture runs, merged picture
models and FLUX folders, served by `mmtune serve RUN_OR_MODEL` and listed in `/v1/models` beside the text models.

`client.images.generate(model=..., prompt=..., n=..., size="512x512", response_format="b64_json")` gets PNGs
as base64. mmtune's own settings come as extra fields (the openai client's `extra_body`): `seed` (picture i
uses seed + i, so a picture can be drawn again), `steps`, `guidance`, `max_sequence_length`. Fields OpenAI
defines that mean nothing for FLUX (quality, style, background ...) are refused by name, not ignored, and
`response_format="url"` is refused: this server keeps no pictures to link to.

A model is loaded on its first request (a picture run: its base, then its LoRA through diffusers'
`load_lora_weights`); one picture is drawn at a time per model (a diffusers pipeline is not thread-safe).
"""

from __future__ import annotations

import base64
import io
import re
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from mmtune.errors import UserError

MAX_N = 10  # OpenAI's limit
MAX_SIDE = 2048
MAX_PROMPT_CHARS = 4000
MAX_STEPS = 100
SIZE_RE = re.compile(r"^(\d{1,5})x(\d{1,5})$")
KNOWN = ("model", "prompt", "n", "size", "response_format", "user", "seed", "steps", "guidance",
         "max_sequence_length", "output_format")
REFUSED = ("quality", "style", "background", "moderation", "output_compression", "partial_images", "stream")


def is_picture_model(path: str) -> bool:
    """A picture run, merged picture model or FLUX diffusers folder (light: no torch)."""
    from mmtune.imagegen.run import read_run
    from mmtune.models.imagegen_registry import find_image_spec

    return read_run(path) is not None or find_image_spec(path) is not None


class ImagePool:
    """name -> picture run or model; loaded on first use and kept. `sources` add models while the server
    runs (each a callable returning {name: folder})."""

    def __init__(self, models: Mapping[str, str] | None = None, precision: str = "auto"):
        self.models = dict(models or {})
        self.precision = precision
        self.sources: list[Callable[[], Mapping[str, str | Path]]] = []
        self._loaded: dict[str, Any] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()

    @property
    def names(self) -> list[str]:
        return list(self._all())

    def _all(self) -> dict[str, str]:
        out = dict(self.models)
        for source in self.sources:
            out.update({k: str(v) for k, v in source().items()})
        return out

    def __contains__(self, name: str) -> bool:
        return name in self._all()

    def load(self, name: str):
        """The `Loaded` pipeline of `name` (blocking: call it off the event loop) and its lock."""
        from mmtune.imagegen.generate import load_for_generation

        with self._lock:
            if name not in self._loaded:
                self._loaded[name] = load_for_generation(self._all()[name], self.precision)
                self._locks[name] = threading.Lock()
            return self._loaded[name], self._locks[name]


def _error(status: int, message: str, param: str | None = None, code: str | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": "invalid_request_error", "param": param,
                                   "code": code}}, status_code=status)


class _Bad(Exception):
    def __init__(self, message: str, param: str | None = None, status: int = 400, code: str | None = None):
        super().__init__(message)
        self.message, self.param, self.status, self.code = message, param, status, code


def parse_request(body: Any) -> dict[str, Any]:
    """The checked request: prompt, n, size (None: the model's), seed, steps, guidance, max_sequence_length."""
    if not isinstance(body, dict):
        raise _Bad("the request body must be a JSON object")
    for key in body:
        if key in REFUSED:
            raise _Bad(f"{key} is not supported for FLUX models: leave it out", key, code="unsupported_parameter")
        if key not in KNOWN:
            raise _Bad(f"unknown parameter {key!r}; known: {', '.join(KNOWN)}", key, code="unknown_parameter")
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise _Bad("prompt is required: a non-empty string", "prompt")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise _Bad(f"prompt is longer than {MAX_PROMPT_CHARS} characters", "prompt")
    fmt = body.get("response_format") or "b64_json"
    if fmt != "b64_json":
        raise _Bad("response_format must be b64_json: this server keeps no pictures to give URLs of",
                   "response_format", code="unsupported_parameter")
    if body.get("output_format") not in (None, "png"):
        raise _Bad("output_format must be png", "output_format", code="unsupported_parameter")
    out = {"prompt": prompt, "n": _int(body, "n", 1, MAX_N, 1), "seed": _int(body, "seed", 0, 2**31 - 1, 0),
           "steps": _int(body, "steps", 1, MAX_STEPS, None),
           "max_sequence_length": _int(body, "max_sequence_length", 1, 512, None),
           "guidance": body.get("guidance"), "size": None}
    if out["guidance"] is not None and (isinstance(out["guidance"], bool)
                                        or not isinstance(out["guidance"], int | float)
                                        or not 0 <= out["guidance"] <= 30):
        raise _Bad("guidance must be a number from 0 to 30", "guidance")
    size = body.get("size")
    if size not in (None, "auto"):
        m = SIZE_RE.fullmatch(size) if isinstance(size, str) else None
        if not m:
            raise _Bad(f"size must be WIDTHxHEIGHT such as 1024x1024, or auto (got {str(size)[:40]!r})", "size")
        w, h = int(m.group(1)), int(m.group(2))
        if not (1 <= w <= MAX_SIDE and 1 <= h <= MAX_SIDE):
            raise _Bad(f"size {size}: each side must be from 1 to {MAX_SIDE}", "size")
        out["size"] = (w, h)
    return out


def _int(body: dict, name: str, lo: int, hi: int, default: int | None) -> int | None:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise _Bad(f"{name} must be an integer from {lo} to {hi} (got {value!r})", name)
    return value


def draw(loaded, req: dict[str, Any]) -> list[str]:
    """The request's pictures as base64 PNGs."""
    from mmtune.imagegen.generate import generate
    from mmtune.imagegen.pipeline import vae_scale

    w, h = req["size"] or (None, None)
    multiple = vae_scale(loaded.pipe) * 2
    if req["size"] and (w % multiple or h % multiple):
        raise _Bad(f"size {w}x{h}: both sides must be multiples of {multiple} for this model (its VAE scale x 2)",
                   "size")
    images = generate(loaded, req["prompt"], steps=req["steps"], guidance=req["guidance"], seed=req["seed"],
                      width=w, height=h, num=req["n"], max_sequence_length=req["max_sequence_length"])
    out = []
    for image in images:
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        out.append(base64.b64encode(buf.getvalue()).decode("ascii"))
    return out


def images_router(pool: ImagePool, read_body: Callable) -> APIRouter:
    """The Images API over `pool`; `read_body(request)` reads the JSON body (the server's size-limited reader)."""
    router = APIRouter(prefix="/v1")

    @router.post("/images/generations")
    async def generations(request: Request):
        try:
            body = await read_body(request)
            req = parse_request(body)
            name = body.get("model")
            if not isinstance(name, str) or not name:
                raise _Bad(f"model is required: one of {', '.join(pool.names) or '(none served)'}", "model")
            if name not in pool:
                raise _Bad(f"model {name[:200]!r} is not an image-generation model of this server: "
                           f"{', '.join(pool.names) or 'it serves none'} (GET /v1/models)", "model", 404,
                           "model_not_found")
            loaded, lock = await run_in_threadpool(pool.load, name)

            def run() -> list[str]:
                with lock:
                    return draw(loaded, req)

            pictures = await run_in_threadpool(run)
        except _Bad as e:
            return _error(e.status, e.message, e.param, e.code)
        except UserError as e:  # a size the model cannot draw, a run that cannot load
            return _error(400, str(e))
        w, h = req["size"] or (loaded.resolution, loaded.resolution)
        return {"created": int(time.time()), "data": [{"b64_json": p} for p in pictures],
                "output_format": "png", "size": f"{w}x{h}"}

    return router
