"""`mmtune jobs`: fine-tuning jobs through the OpenAI-compatible HTTP API, and the service itself.

create|list|show|events|cancel|wait are a thin client of `/v1/files` and `/v1/fine_tuning/jobs`
(any server that mounts the jobs router: `mmtune jobs serve` or `mmtune serve`); `serve` runs
the job service with only that API. httpx and the server modules are imported inside the
commands, so `mmtune --help` stays fast.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

from mmtune.errors import UserError

DEFAULT_BASE_URL = "http://127.0.0.1:8000/v1"
FINAL = ("succeeded", "failed", "cancelled")
FILE_ID = re.compile(r"^file-[A-Za-z0-9]{8,64}$")

EPILOG = """\
examples:
  mmtune jobs serve --port 8000                          the job service (data in $MMTUNE_HOME)
  mmtune jobs create examples/data/persona.jsonl --suffix persona --max-steps 60 --wait
  mmtune jobs create examples/data/preference.jsonl --stage dpo --model ft:... --wait   DPO on an SFT result
  mmtune jobs list
  mmtune jobs events ftjob-abc123
  mmtune jobs cancel ftjob-abc123
"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "jobs",
        help="fine-tuning jobs: the OpenAI-compatible job service and its client",
        description="Create, follow and cancel fine-tuning jobs over the OpenAI fine-tuning "
        "API, or run the job service (`mmtune jobs serve`).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.set_defaults(_parser=p)
    sub = p.add_subparsers(dest="jobs_command", metavar="SUBCOMMAND")
    _add_create(sub)
    for name, func, text in (
        ("list", run_list, "list jobs, newest first"),
        ("show", run_show, "one job"),
        ("events", run_events, "a job's events (newest last)"),
        ("cancel", run_cancel, "cancel a job (a running one's training process is stopped)"),
        ("wait", run_wait, "print a job's events until it ends; exit 0 if it succeeded"),
    ):
        c = sub.add_parser(name, help=text, description=text)
        if name != "list":
            c.add_argument("job", help="job id (ftjob-...)")
        if name in ("list", "events"):
            c.add_argument(
                "--limit",
                type=int,
                default=20 if name == "list" else 100,
                help="how many to show (default: %(default)s)",
            )
        if name == "wait":
            c.add_argument(
                "--timeout",
                type=float,
                default=None,
                help="give up after this many seconds (default: wait for ever)",
            )
        _add_client(c)
        c.set_defaults(func=func, _parser=c)
    _add_serve(sub)


def _add_client(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--base-url",
        default=os.environ.get("MMTUNE_BASE_URL", DEFAULT_BASE_URL),
        help="the API's base URL (default: $MMTUNE_BASE_URL or %(default)s)",
    )
    p.add_argument(
        "--api-key",
        default=os.environ.get("MMTUNE_API_KEY"),
        help="API key, sent as a Bearer token (default: $MMTUNE_API_KEY; none)",
    )
    p.add_argument("--json", action="store_true", help="print the API's JSON instead of text")


def _add_create(sub: argparse._SubParsersAction) -> None:
    c = sub.add_parser(
        "create",
        help="upload data (or use an uploaded file id) and start a job",
        description="Create a fine-tuning job. DATA is a local .jsonl/.json file (uploaded first) "
        "or the id of an uploaded file. Unset hyper-parameters come from the preset.",
    )
    c.add_argument("data", metavar="DATA", help="training data: a local file or a file id (file-...)")
    c.add_argument("--validation", metavar="DATA", help="validation data: a local file or a file id")
    c.add_argument(
        "--model",
        help="base model: registry name, absolute local path or hub id (default: the "
        "server's default, the embedded SmolLM2)",
    )
    c.add_argument("--suffix", help="added to the model name: ft:<base>:<suffix>:<job id>")
    c.add_argument("--seed", type=int, help="random seed (default: chosen by the server)")
    c.add_argument("--epochs", type=int, dest="n_epochs", help="epochs, 1-10 (default: the preset's)")
    c.add_argument("--batch-size", type=int, help="batch size, 1-32 (default: the preset's)")
    c.add_argument(
        "--lr-multiplier",
        type=float,
        dest="learning_rate_multiplier",
        help="learning rate = preset learning rate x this (default: 1)",
    )
    c.add_argument("--preset", help="hyper-parameter preset: standard, quality or fast (default: standard)")
    c.add_argument("--method", help="lora, qlora or full (default: lora)")
    c.add_argument("--stage", help="sft, pt, dpo, simpo, orpo or kto; the data must be of that stage's kind "
                   "(default: sft; a dpo..kto job is OpenAI's method dpo)")
    c.add_argument("--beta", type=float, help="dpo/simpo/kto: the preference strength (default: the stage's)")
    c.add_argument("--trigger-word", help="picture jobs (DATA a .zip of pictures with .txt captions, --model "
                   "flux.1-dev): the word put in front of every caption")
    c.add_argument("--repeats", type=int, help="picture jobs: times each picture is seen per epoch (default: 10)")
    c.add_argument("--resolution", type=int, help="picture jobs: training side in pixels (default: the model's)")
    for flag, kind, text in (
        ("--lora-rank", int, "LoRA rank"),
        ("--lora-alpha", float, "LoRA alpha"),
        ("--lora-dropout", float, "LoRA dropout"),
        ("--max-length", int, "longest row in tokens (the server caps it, default 4096)"),
        ("--max-steps", int, "stop after this many steps (short runs)"),
        ("--save-steps", int, "checkpoint every this many steps (default: 50)"),
    ):
        c.add_argument(flag, type=kind, help=f"{text} (default: the preset's or the server's)")
    c.add_argument("--wait", action="store_true", help="then print its events until it ends")
    _add_client(c)
    c.set_defaults(func=run_create, _parser=c)


def _add_serve(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser(
        "serve",
        help="run the job service (OpenAI files + fine-tuning jobs API)",
        description="Serve /v1/files and /v1/fine_tuning/jobs. Jobs run one at a time (see "
        "--concurrency) as `mmtune train` subprocesses; state lives in SQLite under --data-dir. "
        "A job cut off by a stop resumes from its last checkpoint when the service starts again.",
    )
    add_service_arguments(s)
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    s.add_argument("--port", type=int, default=8000, help="port (default: %(default)s)")
    from mmtune.commands.serve import add_key_arguments

    add_key_arguments(s)
    s.set_defaults(func=run_serve, _parser=s)


# ---------------------------------------------------------------------------- the client


class Client:
    """The few HTTP calls the commands make; server errors become UserError with the server's message."""

    def __init__(self, args: argparse.Namespace):
        import httpx

        headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
        self.base = args.base_url.rstrip("/")
        self.http = httpx.Client(base_url=self.base, headers=headers, timeout=60.0)

    def call(self, method: str, path: str, **kw: Any) -> Any:
        import httpx

        try:
            r = self.http.request(method, path, **kw)
        except httpx.TransportError as e:
            raise UserError(
                f"cannot reach the job service at {self.base} ({e}): start it with `mmtune jobs serve` "
                "(or `mmtune serve`), or pass --base-url"
            ) from None
        if r.status_code >= 400:
            try:
                err = r.json()["error"]
                msg = err["message"] + (f" (param: {err['param']})" if err.get("param") else "")
            except (ValueError, KeyError, TypeError):
                msg = r.text[:500]
            raise UserError(f"{method} {path}: {r.status_code}: {msg}")
        return r.json()

    def upload(self, path: Path) -> str:
        if not path.is_file():
            raise UserError(f"{path} is not a file: give a .jsonl/.json data file or an uploaded file id")
        with open(path, "rb") as f:
            return self.call("POST", "/files", files={"file": (path.name, f)}, data={"purpose": "fine-tune"})[
                "id"
            ]

    def file_id(self, data: str) -> str:
        """An uploaded file's id: `data` itself when it is one, else the id of `data` uploaded now."""
        if FILE_ID.match(data) and not Path(data).exists():
            return data
        return self.upload(Path(data))


def run_create(args: argparse.Namespace) -> int:
    client = Client(args)
    body: dict[str, Any] = {"training_file": client.file_id(args.data)}
    if args.validation:
        body["validation_file"] = client.file_id(args.validation)
    for key in (
        "model",
        "suffix",
        "seed",
        "preset",
        "method",
        "lora_rank",
        "lora_alpha",
        "lora_dropout",
        "max_length",
        "max_steps",
        "save_steps",
        "stage",
        "beta",
        "trigger_word",
        "repeats",
        "resolution",
    ):
        if getattr(args, key) is not None:
            body[key] = getattr(args, key)
    hyper = {
        k: getattr(args, k)
        for k in ("n_epochs", "batch_size", "learning_rate_multiplier")
        if getattr(args, k) is not None
    }
    if hyper:  # the legacy field: it leaves `method` free for mmtune's training method name
        body["hyperparameters"] = hyper
    job = client.call("POST", "/fine_tuning/jobs", json=body)
    _print_job(job, args.json)
    if args.wait:
        return _wait(client, job["id"], None, args.json)
    return 0


def run_list(args: argparse.Namespace) -> int:
    page = Client(args).call("GET", "/fine_tuning/jobs", params={"limit": args.limit})
    if args.json:
        print(json.dumps(page, indent=2, ensure_ascii=False))
        return 0
    if not page["data"]:
        print("no jobs")
    for job in page["data"]:
        print(_job_line(job))
    return 0


def run_show(args: argparse.Namespace) -> int:
    _print_job(Client(args).call("GET", f"/fine_tuning/jobs/{_job_id(args.job)}"), args.json, full=True)
    return 0


def run_events(args: argparse.Namespace) -> int:
    page = Client(args).call(
        "GET", f"/fine_tuning/jobs/{_job_id(args.job)}/events", params={"limit": args.limit}
    )
    if args.json:
        print(json.dumps(page, indent=2, ensure_ascii=False))
        return 0
    for event in reversed(page["data"]):
        print(_event_line(event))
    return 0


def run_cancel(args: argparse.Namespace) -> int:
    _print_job(Client(args).call("POST", f"/fine_tuning/jobs/{_job_id(args.job)}/cancel"), args.json)
    return 0


def run_wait(args: argparse.Namespace) -> int:
    return _wait(Client(args), _job_id(args.job), args.timeout, args.json)


def _wait(client: Client, job_id: str, timeout: float | None, as_json: bool) -> int:
    """Print events as they arrive until the job ends; 0 if it succeeded, 1 otherwise."""
    seen: set[str] = set()
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        job = client.call("GET", f"/fine_tuning/jobs/{job_id}")
        events = client.call("GET", f"/fine_tuning/jobs/{job_id}/events", params={"limit": 100})["data"]
        for event in reversed(events):
            if event["id"] not in seen:
                seen.add(event["id"])
                print(json.dumps(event, ensure_ascii=False) if as_json else _event_line(event), flush=True)
        if job["status"] in FINAL:
            _print_job(job, as_json)
            return 0 if job["status"] == "succeeded" else 1
        if deadline is not None and time.monotonic() > deadline:
            raise UserError(f"job {job_id} is still {job['status']} after {timeout:.0f} s")
        time.sleep(1.0)


def _job_id(value: str) -> str:
    if not re.fullmatch(r"ftjob-[A-Za-z0-9]{8,64}", value):
        raise UserError(
            f"{value!r} is not a job id: job ids look like ftjob-... (`mmtune jobs list` shows them)"
        )
    return value


def _job_line(job: dict[str, Any]) -> str:
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(job["created_at"]))
    extra = job["fine_tuned_model"] or (job["error"] or {}).get("message") or ""
    return f"{job['id']}  {when}  {job['status']:<16} {job['model']}  {extra}"


def _print_job(job: dict[str, Any], as_json: bool, full: bool = False) -> None:
    if as_json:
        print(json.dumps(job, indent=2, ensure_ascii=False))
        return
    print(_job_line(job))
    if full:
        own = job.get("mmtune") or {}
        print(f"  hyperparameters: {json.dumps(job['hyperparameters'])}")
        print(f"  mmtune: {json.dumps(own)}")
        print(f"  trained tokens: {job['trained_tokens']}  estimated cost: {job.get('estimated_cost')}")
        if job["error"]:
            print(
                f"  error [{job['error']['code']}] ({job['error'].get('param')}): {job['error']['message']}"
            )


def _event_line(event: dict[str, Any]) -> str:
    when = time.strftime("%H:%M:%S", time.localtime(event["created_at"]))
    return f"{when} {event['level']:<5} {event['message']}"


# ---------------------------------------------------------------------------- the service


def add_service_arguments(s: argparse.ArgumentParser) -> None:
    """The job service's flags, shared by `mmtune jobs serve` and `mmtune serve`."""
    s.add_argument(
        "--data-dir",
        help="where files, jobs and the database live (default: $MMTUNE_HOME or ~/.local/share/mmtune)",
    )
    s.add_argument("--concurrency", type=int, default=1, help="jobs trained at once (default: %(default)s)")
    s.add_argument(
        "--price-per-million",
        type=float,
        default=0.0,
        help="price per 1M trained tokens, for a job's estimated_cost (default: %(default)s)",
    )
    s.add_argument(
        "--max-length-limit",
        type=int,
        default=4096,
        help="largest max_length a job may ask for (default: %(default)s)",
    )
    s.add_argument(
        "--model-root",
        action="append",
        default=[],
        metavar="DIR",
        help="a job's `model` may be a model folder or .gguf file inside DIR (repeatable; default: none, so "
        "jobs name registry models and this server's fine-tuned models only)",
    )
    s.add_argument(
        "--allow-hub-models",
        action="store_true",
        help="a job's `model` may be a Hugging Face hub id (org/name), which its training run downloads "
        "(default: off)",
    )
    s.add_argument("--gpus", metavar="IDS",
                   help="the GPUs jobs share, e.g. 0,1,2,3: each running job gets its own (a job asks for N with "
                   "extra_body gpus; no ask: one) and waits while they are taken; none: hand out no GPU "
                   "(default: CUDA_VISIBLE_DEVICES, else every GPU torch sees; local executor only)")
    s.add_argument("--executor", choices=("local", "ray"), default="local",
                   help="where jobs train: local (subprocesses on this machine) or ray (actors on a Ray cluster's "
                   "nodes; --data-dir on storage they share; pip install -e '.[cluster]') (default: local)")
    s.add_argument("--ray-address", default="auto", metavar="ADDR",
                   help="with --executor ray: the cluster (default: auto, the one `ray start` joined here)")
    s.add_argument("--ray-resource", action="append", default=[], metavar="NAME=N",
                   help="with --executor ray: a custom Ray resource each job reserves (repeatable; default: none)")


def make_service(args: argparse.Namespace):
    """The JobService the flags of `add_service_arguments` describe (not started)."""
    from mmtune.jobs.gpus import parse_devices
    from mmtune.jobs.params import Limits
    from mmtune.jobs.service import JobService, Settings

    roots = []
    for root in args.model_root:
        folder = Path(root).expanduser()
        if not folder.is_dir():
            raise UserError(f"--model-root {root} is not a folder: give an existing folder of models")
        roots.append(str(folder.resolve()))
    settings = Settings(
        concurrency=args.concurrency,
        price_per_million_tokens=args.price_per_million,
        limits=Limits(max_length=args.max_length_limit),
        model_roots=tuple(roots),
        allow_hub_models=args.allow_hub_models,
        executor=args.executor,
        ray=ray_settings(args),
        gpus=None if args.gpus is None else parse_devices(args.gpus),
    )
    return JobService(args.data_dir, settings)


def ray_settings(args: argparse.Namespace):
    from mmtune.jobs.executor import RaySettings

    resources = {}
    for item in args.ray_resource:
        name, _, value = item.partition("=")
        try:
            resources[name] = float(value or 1)
        except ValueError:
            raise UserError(f"--ray-resource {item!r}: give NAME=N, like slot=1") from None
    return RaySettings(address=args.ray_address, resources=resources)


def run_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from mmtune.commands.serve import check_exposure
    from mmtune.jobs.api import create_jobs_app

    check_exposure(args.host, args.api_key, args.insecure_no_key)
    service = make_service(args)
    service.lock()  # another service on this data dir: one line, before the server starts
    try:
        app = create_jobs_app(service, api_key=args.api_key)
        print(
            f"mmtune jobs service: http://{args.host}:{args.port}/v1 (data: {service.layout.root})",
            file=sys.stderr,
        )
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning", timeout_graceful_shutdown=5)
    finally:
        service.close()
    return 0
