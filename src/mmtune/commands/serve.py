"""`mmtune serve`: an OpenAI-compatible HTTP server for base models, adapters and merged models."""

from __future__ import annotations

import argparse
import ipaddress
import os
from pathlib import Path

from mmtune.errors import UserError

DEFAULT_MAX_IMAGES = 8  # = infer.media.SERVER_MAX_IMAGES (not imported: `mmtune --help` stays light)
DEFAULT_MAX_IMAGE_MEGAPIXELS = 40.0  # = infer.media.SERVER_MAX_IMAGE_PIXELS / 1e6
DEFAULT_DRAIN_S = 5.0

EPILOG = """\
The same server runs the fine-tuning jobs API (/v1/files, /v1/fine_tuning/jobs; see
`mmtune jobs --help`) and serves each job's model (`ft:...`) as soon as the job succeeds.

examples:
  mmtune serve                                   the default model + the jobs API on http://127.0.0.1:8000/v1
  mmtune serve runs/a runs/b                     two adapters over one copy of their base
  mmtune serve support=runs/a runs/a-merged      NAME=PATH picks the name clients send as `model`
  mmtune serve runs/a --api-key secret --max-concurrency 8
  mmtune serve qwen2-vl-2b-instruct --media-root ~/pictures   image_url parts may name files in ~/pictures
  mmtune serve runs/a --host 0.0.0.0 --api-key "$KEY" --max-tokens-cap 1024 --model-root ~/models
                                                 other machines may reach it: a key is required

Limits are checked before any work (400s naming the field): the prompt and max_tokens must fit the
model's context, images are bounded by --max-images / --max-image-megapixels, bodies by --max-request-mb.
A generation stops when its client disconnects; SIGTERM drains for --drain-seconds, then exits.

Then: OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="secret").chat.completions.create(model="a", ...)
"""


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "serve",
        help="serve models over an OpenAI-compatible API (/v1/chat/completions)",
        description="Serve base models, LoRA adapters (several over one base; the request's `model` picks one) "
        "and merged models with OpenAI's /v1/models and /v1/chat/completions (streaming included).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "models",
        nargs="*",
        metavar="MODEL",
        help="[NAME=]model: registry name, hub id, model folder, .gguf file or training output "
        "folder (default: the embedded smollm2-135m-instruct)",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port to listen on (default: 8000)")
    add_key_arguments(p)
    p.add_argument(
        "--max-concurrency",
        type=int,
        default=4,
        help="requests generating at once; more wait in a queue (default: 4)",
    )
    p.add_argument("--dtype", default=None, help="bf16, fp16 or fp32 (default: bf16 on a GPU, else fp32)")
    p.add_argument(
        "--max-tokens-cap",
        type=int,
        default=None,
        metavar="N",
        help="most tokens one request may generate; a larger max_tokens is a 400 (default: what the model's "
        "context leaves after the prompt, which is also the default max_tokens)",
    )
    p.add_argument(
        "--drain-seconds",
        type=float,
        default=DEFAULT_DRAIN_S,
        metavar="S",
        help="on SIGTERM/Ctrl-C, let running requests finish for up to S seconds, then stop them and exit "
        f"(default: {DEFAULT_DRAIN_S:g})",
    )
    p.add_argument(
        "--max-request-mb",
        type=float,
        default=None,
        metavar="MB",
        help="largest request body in MiB, base64 images included; larger ones get a 413 (default: 20)",
    )
    p.add_argument(
        "--media-root",
        default=None,
        metavar="DIR",
        help="vision models: let image_url parts name local files (paths or file:// URLs) inside DIR, and only "
        "there (default: none; data: URLs only)",
    )
    p.add_argument(
        "--allow-remote-media",
        action="store_true",
        help="vision models: let image_url parts be http(s) URLs, which the server downloads (default: off)",
    )
    p.add_argument(
        "--max-images",
        type=int,
        default=DEFAULT_MAX_IMAGES,
        metavar="N",
        help=f"vision models: most images in one request (default: {DEFAULT_MAX_IMAGES})",
    )
    p.add_argument(
        "--max-image-megapixels",
        type=float,
        default=DEFAULT_MAX_IMAGE_MEGAPIXELS,
        metavar="MP",
        help="vision models: largest image, width x height in millions, read from its header before it is "
        f"decoded; larger ones are a 400 (default: {DEFAULT_MAX_IMAGE_MEGAPIXELS:g})",
    )
    from mmtune.commands.chat import add_media_size_arguments

    add_media_size_arguments(p, server=True)
    p.add_argument("--no-jobs", action="store_true", help="serve models only, without the fine-tuning jobs API")
    p.add_argument("--no-ui", action="store_true", help="do not serve the studio (the browser console at /ui)")
    from mmtune.commands.jobs import add_service_arguments

    add_service_arguments(p.add_argument_group("fine-tuning jobs"))
    p.set_defaults(func=run, _parser=p)


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from mmtune.commands.chat import media_sizes
    from mmtune.commands.preflight import check_model_arg
    from mmtune.infer.media import MediaPolicy
    from mmtune.serve.app import create_app
    from mmtune.serve.pool import build_pool, parse_model_arg

    # every flag is checked, and the data dir taken, before any model loads
    check_exposure(args.host, args.api_key, args.insecure_no_key)
    media = MediaPolicy.server(args.media_root, args.allow_remote_media, max_images=args.max_images,
                               max_image_pixels=megapixels(args.max_image_megapixels))
    limit = body_limit(args.max_request_mb)
    if args.max_tokens_cap is not None and args.max_tokens_cap < 1:
        raise UserError(f"--max-tokens-cap must be at least 1 (got {args.max_tokens_cap})")
    if not args.drain_seconds >= 0:
        raise UserError(f"--drain-seconds must be >= 0 (got {args.drain_seconds:g})")
    service = None if args.no_jobs else _locked_service(args)
    try:
        text_models, pictures = split_picture_models(args.models)
        for arg in text_models:  # a missing folder or an unknown model: one line now, not after the others load
            check_model_arg(parse_model_arg(arg)[1])
        if pictures and not text_models:
            from mmtune.serve.pool import ModelPool

            pool = ModelPool(dtype=args.dtype, sizes=media_sizes(args))  # picture models only
        else:
            pool = build_pool(text_models, dtype=args.dtype, sizes=media_sizes(args))
        extra = {} if service is None else jobs_extension(service, pool)
        image_pool = None
        if pictures or service is not None:  # the picture jobs' models are served beside the chat models
            extra, image_pool = with_images(extra, pictures)
            if service is not None:
                image_pool.sources.append(service.fine_tuned_pictures)
        app = create_app(pool, api_key=args.api_key, max_concurrency=args.max_concurrency, media=media,
                         max_body_bytes=limit, max_tokens_cap=args.max_tokens_cap, **extra)
        if image_pool is not None:
            app.state.image_pool = image_pool  # /v1/models lists its models too
        if not args.no_ui:
            from mmtune.serve.studio import mount_ui

            mount_ui(app)
        print(f"serving {', '.join([*pool.names, *pictures])} on http://{args.host}:{args.port}/v1", flush=True)
        if not args.no_ui:
            print(f"studio on http://{args.host}:{args.port}/ui/", flush=True)
        if service is not None:
            print(f"fine-tuning jobs API on http://{args.host}:{args.port}/v1/fine_tuning/jobs", flush=True)
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning",
                    timeout_graceful_shutdown=args.drain_seconds)
    finally:
        if service is not None:
            service.close()
    return 0


def add_key_arguments(p) -> None:
    """--api-key and --insecure-no-key (serve and jobs serve)."""
    p.add_argument(
        "--api-key",
        default=os.environ.get("MMTUNE_API_KEY"),
        help="require `Authorization: Bearer KEY` on every route but /health (default: $MMTUNE_API_KEY; on "
        "127.0.0.1 no key is needed, on any other address a key is required)",
    )
    p.add_argument(
        "--insecure-no-key",
        action="store_true",
        help="listen on a non-loopback --host without an API key (anyone who can reach it can use it)",
    )


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_exposure(host: str, api_key: str | None, insecure: bool) -> None:
    """A server other machines can reach must have a key, unless the operator says otherwise."""
    if api_key or insecure or is_loopback(host):
        return
    raise UserError(f"--host {host} lets other machines reach this server, and it has no API key: give "
                    "--api-key KEY (or set $MMTUNE_API_KEY), or --insecure-no-key to serve without one")


def megapixels(mp: float | None) -> int | None:
    if mp is None:
        return None
    if not mp > 0:
        raise UserError(f"--max-image-megapixels must be > 0 (got {mp:g})")
    return int(mp * 1_000_000)


def body_limit(mb: float | None) -> int:
    """--max-request-mb in bytes."""
    from mmtune.serve.app import MAX_BODY_BYTES, MAX_BODY_MB

    if mb is None:
        return MAX_BODY_BYTES
    if not mb > 0:
        raise UserError(f"--max-request-mb must be > 0 (got {mb:g}); the default is {MAX_BODY_MB}")
    return int(mb * 1024 * 1024)


def _locked_service(args: argparse.Namespace):
    """The job service of the flags, holding its data dir (one clear line if another service has it)."""
    from mmtune.commands.jobs import make_service

    service = make_service(args)
    service.lock()
    return service


def jobs_extension(service, pool) -> dict:
    """create_app arguments that add the jobs API; its fine-tuned models and their checkpoints (under
    the names the checkpoints API gives them) join `pool` live."""
    import contextlib

    from starlette.concurrency import run_in_threadpool

    from mmtune.jobs.api import create_jobs_router
    from mmtune.jobs.studio import create_studio_router, job_bases

    pool.sources.append(service.fine_tuned_models)
    pool.sources.append(service.checkpoint_models)
    pool.sources.append(job_bases(service))  # each job's base, to chat with beside its checkpoints

    @contextlib.asynccontextmanager
    async def lifespan(app):
        await run_in_threadpool(service.start)
        try:
            yield
        finally:
            await run_in_threadpool(service.close)

    return {"routers": (create_jobs_router(service), create_studio_router(service)),
             "unlimited_paths": ("/v1/files",), "lifespan": lifespan}


def split_picture_models(models: list[str]) -> tuple[list[str], dict[str, str]]:
    """(text model arguments, {name: path} of the image-generation ones: picture runs, merged picture models,
    FLUX folders or registry names, served at /v1/images/generations)."""
    from mmtune.serve.images import is_picture_model
    from mmtune.serve.pool import parse_model_arg

    text, pictures = [], {}
    for arg in models:
        name, path = parse_model_arg(arg)
        if is_picture_model(path):
            pictures[name or Path(path).name or path] = path
        else:
            text.append(arg)
    return text, pictures


def with_images(extra: dict, pictures: dict[str, str]):
    """(create_app arguments plus the Images API over `pictures`, its ImagePool)."""
    from mmtune.serve.app import read_json_body
    from mmtune.serve.images import ImagePool, images_router

    pool = ImagePool(pictures)
    return {**extra, "routers": (*extra.get("routers", ()), images_router(pool, read_json_body))}, pool
