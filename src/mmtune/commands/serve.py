"""`mmtune serve`: an OpenAI-compatible HTTP server for base models, adapters and merged models."""

from __future__ import annotations

import argparse
import os

from mmtune.errors import UserError

EPILOG = """\
The same server runs the fine-tuning jobs API (/v1/files, /v1/fine_tuning/jobs; see
`mmtune jobs --help`) and serves each job's model (`ft:...`) as soon as the job succeeds.

examples:
  mmtune serve                                   the default model + the jobs API on http://127.0.0.1:8000/v1
  mmtune serve runs/a runs/b                     two adapters over one copy of their base
  mmtune serve support=runs/a runs/a-merged      NAME=PATH picks the name clients send as `model`
  mmtune serve runs/a --api-key secret --max-concurrency 8
  mmtune serve qwen2-vl-2b-instruct --media-root ~/pictures   image_url parts may name files in ~/pictures

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
    p.add_argument(
        "--api-key",
        default=os.environ.get("MMTUNE_API_KEY"),
        help="require `Authorization: Bearer KEY` (default: $MMTUNE_API_KEY, else no key)",
    )
    p.add_argument(
        "--max-concurrency",
        type=int,
        default=4,
        help="requests generating at once; more wait in a queue (default: 4)",
    )
    p.add_argument("--dtype", default=None, help="bf16, fp16 or fp32 (default: bf16 on a GPU, else fp32)")
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
    from mmtune.commands.chat import add_media_size_arguments

    add_media_size_arguments(p, server=True)
    p.add_argument("--no-jobs", action="store_true", help="serve models only, without the fine-tuning jobs API")
    from mmtune.commands.jobs import add_service_arguments

    add_service_arguments(p.add_argument_group("fine-tuning jobs"))
    p.set_defaults(func=run, _parser=p)


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from mmtune.commands.chat import media_sizes
    from mmtune.infer.media import MediaPolicy
    from mmtune.serve.app import create_app
    from mmtune.serve.pool import build_pool

    media = MediaPolicy.server(args.media_root, args.allow_remote_media)  # bad flags fail before models load
    limit = body_limit(args.max_request_mb)
    pool = build_pool(args.models, dtype=args.dtype, sizes=media_sizes(args))
    extra = {} if args.no_jobs else jobs_extension(args, pool)
    app = create_app(pool, api_key=args.api_key, max_concurrency=args.max_concurrency, media=media,
                     max_body_bytes=limit, **extra)
    print(f"serving {', '.join(pool.names)} on http://{args.host}:{args.port}/v1", flush=True)
    if not args.no_jobs:
        print(f"fine-tuning jobs API on http://{args.host}:{args.port}/v1/fine_tuning/jobs", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


def body_limit(mb: float | None) -> int:
    """--max-request-mb in bytes."""
    from mmtune.serve.app import MAX_BODY_BYTES, MAX_BODY_MB

    if mb is None:
        return MAX_BODY_BYTES
    if not mb > 0:
        raise UserError(f"--max-request-mb must be > 0 (got {mb:g}); the default is {MAX_BODY_MB}")
    return int(mb * 1024 * 1024)


def jobs_extension(args: argparse.Namespace, pool) -> dict:
    """create_app arguments that add the jobs API; its fine-tuned models join `pool` live."""
    import contextlib

    from starlette.concurrency import run_in_threadpool

    from mmtune.commands.jobs import make_service
    from mmtune.jobs.api import create_jobs_router

    service = make_service(args)
    pool.sources.append(service.fine_tuned_models)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        await run_in_threadpool(service.start)
        try:
            yield
        finally:
            await run_in_threadpool(service.close)

    return {"routers": (create_jobs_router(service),), "unlimited_paths": ("/v1/files",), "lifespan": lifespan}
