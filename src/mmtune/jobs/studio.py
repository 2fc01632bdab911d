"""What the studio (the browser console) needs from the job service beyond OpenAI's endpoints.

`create_studio_router(service)` adds, under `/v1`:

    GET  /files/{id}/check?rules=        every finding of an uploaded file (the job's rule set by default)
    GET  /files/{id}/lines?line=&count=  raw lines of an uploaded file (the row a finding points at)
    POST /fine_tuning/jobs/estimate      a dry run of a create request: resolved values, steps, tokens,
                                         memory per method, time and cost; nothing is stored or started
    GET  /fine_tuning/jobs/{id}/log?offset=  the training log from a byte offset (negative: from the end)
    GET  /fine_tuning/models             the registry: what each model accepts, memory per method
    GET  /files/{id}/prompts?offset=&limit=  each row as a prompt (its conversation before the last answer)
                                         and that answer as the reference: the playground's inputs
    GET  /files/{id}/tokens?model=&max_length=  tokens per row with a model's tokenizer and chat template,
                                         a histogram, and the rows over max_length
    POST /fine_tuning/operations         start a tracked merge / GGUF export / evaluation (operations.py)
    GET  /fine_tuning/operations[?job_id=&model=], /{id}, /{id}/log?offset=, /{id}/rows, /{id}/files/{name}
    POST /fine_tuning/operations/{id}/cancel

It is mounted next to `create_jobs_router` by `mmtune serve`, behind the app's key check; errors
leave as OpenAI error objects like the jobs router's. Everything here reads (a file's check result is
cached on its row, as job validation does), except the operations, which write only under
`<data dir>/operations/`.
"""

from __future__ import annotations

import functools
import os
import sys
import traceback
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, JSONResponse
from starlette.concurrency import run_in_threadpool

from mmtune.jobs.api import json_body
from mmtune.jobs.errors import APIError, bad_request
from mmtune.jobs.operations import Operations, for_service
from mmtune.jobs.params import ModelRules, is_picture_job, parse_create
from mmtune.jobs.service import JobService
from mmtune.jobs.store import ACTIVE, FINAL
from mmtune.jobs.validate import check_upload
from mmtune.jobs.worker import estimate_total_steps

MAX_FINDINGS = 10_000  # a report holds at most this many findings (the counts stay exact)
MAX_LINES = 50
MAX_LINE_CHARS = 64 * 1024
LOG_CHUNK = 64 * 1024
CHARS_PER_TOKEN = 4  # the token estimate without a tokenizer (English text; other scripts take more)
TOKENS_PER_MESSAGE = 4  # role markers of a chat template
TIMING_JOBS = 5  # succeeded jobs of the same model a time estimate averages over

Endpoint = Callable[..., Awaitable[Any]]


def answer_errors(fn: Endpoint) -> Endpoint:
    """APIError as its OpenAI error object; a bug of ours as a 500 without internals (logged)."""

    @functools.wraps(fn)
    async def wrapper(**kwargs: Any) -> Any:
        try:
            return await fn(**kwargs)
        except APIError as e:
            return JSONResponse(e.to_dict(), status_code=e.status)
        except Exception:
            traceback.print_exc(file=sys.stderr)
            err = APIError(500, "the job service failed to answer this request (its log has the details)",
                           code="internal_error")
            return JSONResponse(err.to_dict(), status_code=500)

    return wrapper


def create_studio_router(service: JobService, prefix: str = "/v1", operations: Operations | None = None) -> APIRouter:
    router = APIRouter(prefix=prefix, tags=["studio"])
    call = run_in_threadpool
    ops = operations or for_service(service)
    router.operations = ops  # for tests and the server's shutdown

    @router.get("/files/{file_id}/check")
    @answer_errors
    async def file_check(file_id: str, request: Request):
        rules = request.query_params.get("rules")
        if rules not in (None, "", "default", "strict"):
            raise bad_request(f"rules must be default or strict (got {rules[:20]!r})", "rules")
        return await call(full_check, service, file_id, rules or None)

    @router.get("/files/{file_id}/lines")
    @answer_errors
    async def file_lines(file_id: str, request: Request):
        line = _int_param(request, "line", 1, 1, 10**9)
        count = _int_param(request, "count", 1, 1, MAX_LINES)
        return await call(read_lines, service, file_id, line, count)

    @router.post("/fine_tuning/jobs/estimate")
    @answer_errors
    async def estimate_job(request: Request):
        return await call(estimate, service, await json_body(request))

    @router.get("/fine_tuning/jobs/{job_id}/log")
    @answer_errors
    async def job_log(job_id: str, request: Request):
        offset = _int_param(request, "offset", 0, -(2**62), 2**62)
        return await call(read_log, service, job_id, offset)

    @router.get("/fine_tuning/models")
    @answer_errors
    async def trainable_models(request: Request):
        return await call(registry_models)

    @router.get("/files/{file_id}/tokens")
    @answer_errors
    async def file_tokens(file_id: str, request: Request):
        model = request.query_params.get("model") or None
        max_length = _int_param(request, "max_length", 0, 0, 10**7) or None
        return await call(token_lengths, service, file_id, model, max_length)

    @router.get("/files/{file_id}/prompts")
    @answer_errors
    async def file_prompts(file_id: str, request: Request):
        offset = _int_param(request, "offset", 0, 0, 10**9)
        limit = _int_param(request, "limit", 50, 1, MAX_PROMPTS)
        return await call(read_prompts, service, file_id, offset, limit)

    @router.post("/fine_tuning/operations")
    @answer_errors
    async def create_operation(request: Request):
        return await call(ops.create, await json_body(request))

    @router.get("/fine_tuning/operations")
    @answer_errors
    async def list_operations(request: Request):
        q = request.query_params
        return await call(ops.list, q.get("job_id") or None, q.get("model") or None)

    @router.get("/fine_tuning/operations/{op_id}")
    @answer_errors
    async def get_operation(op_id: str):
        return await call(ops.get, op_id)

    @router.post("/fine_tuning/operations/{op_id}/cancel")
    @answer_errors
    async def cancel_operation(op_id: str):
        return await call(ops.cancel, op_id)

    @router.get("/fine_tuning/operations/{op_id}/log")
    @answer_errors
    async def operation_log(op_id: str, request: Request):
        offset = _int_param(request, "offset", 0, -(2**62), 2**62)
        return await call(lambda: read_log_file(ops.log(op_id), offset))

    @router.get("/fine_tuning/operations/{op_id}/rows")
    @answer_errors
    async def operation_rows(op_id: str, request: Request):
        offset = _int_param(request, "offset", 0, 0, 10**9)
        limit = _int_param(request, "limit", 50, 1, 200)
        return await call(ops.rows, op_id, offset, limit)

    @router.get("/fine_tuning/operations/{op_id}/files/{name:path}")
    @answer_errors
    async def operation_file(op_id: str, name: str):
        path = await call(ops.result_file, op_id, name)
        return FileResponse(path, filename=Path(name).name, media_type="application/octet-stream")

    return router


def _int_param(request: Request, name: str, default: int, lo: int, hi: int) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise bad_request(f"{name} must be an integer (got {raw[:40]!r})", name) from None
    if not lo <= value <= hi:
        raise bad_request(f"{name} must be from {lo} to {hi} (got {value})", name)
    return value


# ------------------------------------------------------------------ files


def job_rules(path: Path) -> str:
    """The rule set a job holds this file to (validate.check_upload): strict for OpenAI-shaped .jsonl."""
    from mmtune.data.check import FileReport, iter_findings
    from mmtune.data.reader import ReadOptions

    report = FileReport(str(path))
    for _ in iter_findings(str(path), ReadOptions(check_media=False), report):
        if report.format:
            break
    if not report.format:  # an empty file, or no row read yet
        for _ in iter_findings(str(path), ReadOptions(check_media=False), report):
            pass
    return "strict" if report.format == "openai" and path.suffix == ".jsonl" else "default"


def full_check(service: JobService, file_id: str, rules: str | None = None) -> dict[str, Any]:
    """Every finding of the file (up to MAX_FINDINGS, in file order; counts exact) under `rules`
    (None: the set a job applies to it)."""
    from mmtune.data.check import check_file
    from mmtune.data.reader import ReadOptions
    from mmtune.errors import UserError

    row = service.retrieve_file(file_id)
    path, name = service.file_content(file_id)
    applied = job_rules(path)
    rules = rules or applied
    findings: list[dict[str, Any]] = []

    def keep(finding) -> None:
        if len(findings) < MAX_FINDINGS:
            findings.append(finding.to_dict())

    base = {"object": "file.check", "file_id": row["id"], "filename": name, "rules": rules, "job_rules": applied}
    try:
        report = check_file(str(path), ReadOptions(rules=rules), on_finding=keep)
    except UserError as e:
        return {**base, "format": "", "kind": "", "rows": 0, "errors": 1, "warnings": 0, "truncated": False,
                "findings": [{"severity": "error", "line": 0, "field": "", "rule": "unreadable", "message": str(e)}]}
    return {**base, "format": report.format, "kind": report.kind, "rows": report.rows, "errors": report.errors,
            "warnings": report.warnings, "truncated": report.errors + report.warnings > len(findings),
            "findings": findings}


def read_lines(service: JobService, file_id: str, line: int, count: int) -> dict[str, Any]:
    """Lines `line` .. `line + count - 1` of the stored file as text (each cut at MAX_LINE_CHARS)."""
    service.retrieve_file(file_id)
    path, _ = service.file_content(file_id)
    out: list[dict[str, Any]] = []
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            if number >= line + count:
                break
            if number >= line:
                text = raw.decode("utf-8", "replace").rstrip("\r\n")
                out.append({"line": number, "text": text[:MAX_LINE_CHARS], "cut": len(text) > MAX_LINE_CHARS})
    return {"object": "file.lines", "file_id": file_id, "line": line, "data": out}


MAX_OVER_ROWS = 1000  # rows over max_length listed (the count stays exact)
HISTOGRAM_BINS = 20
DEFAULT_MAX_LENGTH = 2048  # what a job trains on unless told (params.py)


@functools.lru_cache(maxsize=4)
def _tokenizer(source: str):
    from mmtune.models.loader import load_tokenizer

    return load_tokenizer(source)


def token_lengths(service: JobService, file_id: str, model: str | None, max_length: int | None) -> dict[str, Any]:
    """Tokens per row of an uploaded file with `model`'s tokenizer, rendered through its chat template
    (data/stats.py's counter, as `mmtune data stats --tokenizer` counts), a histogram, and every row over
    `max_length` (line and tokens): the rows a job with that max_length would cut."""
    from mmtune.data.reader import FileReader, ReadOptions
    from mmtune.data.stats import histogram, summarize, token_counter
    from mmtune.models.registry import DEFAULT_MODEL, REGISTRY

    service.retrieve_file(file_id)
    path, name = service.file_content(file_id)
    model = model or DEFAULT_MODEL
    tuned = service.fine_tuned_models()
    if model in REGISTRY:
        if REGISTRY[model].kind == "image-generation":
            raise bad_request(f"{model} makes pictures: it has no chat tokenizer to count with", "model")
        source = model
    elif model in tuned:
        source = str(tuned[model])
    else:
        raise bad_request(f"model {model[:200]!r} is neither a registry model (GET /v1/fine_tuning/models) nor a "
                          "fine-tuned model of this server", "model", "model_not_found")
    max_length = max_length or DEFAULT_MAX_LENGTH
    try:
        count = token_counter(_tokenizer(source))
    except Exception as e:  # noqa: BLE001 - a tokenizer that will not load is the user's to fix
        raise APIError(422, f"the tokenizer of {model} did not load: {e}", param="model",
                       code="tokenizer_unavailable") from None
    counts: list[int] = []
    over: list[dict[str, int]] = []
    over_count = over_tokens = unreadable = 0
    for r in FileReader(str(path), ReadOptions(check_media=False)):
        if r.index < 0:
            continue
        if r.sample is None:
            unreadable += 1
            continue
        n = count(r.sample)
        counts.append(n)
        if n > max_length:
            over_count += 1
            over_tokens += n - max_length
            if len(over) < MAX_OVER_ROWS:
                over.append({"line": r.line, "tokens": n})
    return {"object": "file.tokens", "file_id": file_id, "filename": name, "model": model, "max_length": max_length,
            "rows": len(counts), "unreadable_rows": unreadable, "tokens": summarize(counts),
            "histogram": histogram(counts, HISTOGRAM_BINS), "rows_over_max_length": over_count,
            "tokens_over_max_length": over_tokens, "over": over,
            "method": "the model's tokenizer over each row's text rendered with its chat template (a preference "
                      "pair: its longer side); the tokens an image or video takes are not included"}


MAX_PROMPTS = 200


def read_prompts(service: JobService, file_id: str, offset: int, limit: int) -> dict[str, Any]:
    """Rows `offset`.. of an uploaded file as `{"line", "messages", "reference"}`: the conversation before
    its last assistant turn (OpenAI messages) and that turn's text, as `mmtune infer` splits them. Rows the
    checker rejects are counted in `skipped`, never given as prompts; rows with images or videos (local
    paths a browser cannot send) in `skipped_media` (`mmtune infer` and an eval operation run them)."""
    from mmtune.data.formats import openai
    from mmtune.data.reader import ReadOptions, read_samples
    from mmtune.infer.batch import PROMPT_ONLY_RULES

    service.retrieve_file(file_id)
    path, name = service.file_content(file_id)
    data, total, skipped, media = [], 0, 0, 0
    for r in read_samples(str(path), ReadOptions(check_media=False)):
        if r.sample is None or any(f.is_error and f.rule not in PROMPT_ONLY_RULES for f in r.findings):
            skipped += 1
            continue
        if r.sample.images or r.sample.videos:
            media += 1
            continue
        if offset <= total < offset + limit:
            prompt, answer = r.sample.prompt_and_answer()
            data.append({"line": r.line, "messages": openai.dump(prompt, [])["messages"],
                         "reference": answer.text if answer is not None else None})
        total += 1
    return {"object": "list", "file_id": file_id, "filename": name, "data": data, "total": total,
            "skipped": skipped, "skipped_media": media, "offset": offset}


# ------------------------------------------------------------------ estimate


def estimate(service: JobService, body: Any) -> dict[str, Any]:
    """What `create` would do with `body`, without doing it: the same checks (the same 400s), then the
    numbers a user decides on. Steps come from the checked training file; tokens are estimated from
    its text; time from the measured speed of this server's earlier jobs of the same model."""
    from mmtune.models.memory import METHODS as MEMORY_METHODS
    from mmtune.models.memory import estimate_memory
    from mmtune.models.registry import find_spec

    rules = ModelRules(service.settings.model_roots, service.settings.allow_hub_models,
                       lambda name: service.fine_tuned_models().get(name))
    job = parse_create(body, service.settings.limits, service.store.get_file, rules)
    if is_picture_job(job):
        raise bad_request("estimates are made for text jobs only (tokens, memory): a picture job's steps are its "
                          "pictures x repeats x epochs / batch size", "model", "unsupported")
    hyper, own = job["params"]["hyperparameters"], job["params"]["mmtune"]
    check = _cached_check(service, job["training_file"])
    steps = estimate_total_steps(job, check["rows"]) if not check["errors"] else None
    per_epoch = _estimate_tokens(service, job["training_file"], own["max_length"])
    epochs = int(hyper["n_epochs"])
    tokens = per_epoch * epochs
    if own["max_steps"] and check["rows"]:
        # max_steps cuts (or repeats) the data: tokens scale with the batches actually run
        batches_per_epoch = max(1, -(-check["rows"] // hyper["batch_size"]))
        tokens = round(per_epoch * own["max_steps"] / batches_per_epoch)
    spec = find_spec(job["model"])
    memory = None
    if spec is not None and spec.kind != "image-generation":
        memory = {m: estimate_memory(spec, m, own["max_length"], hyper["batch_size"], lora_rank=own["lora_rank"])
                  for m in MEMORY_METHODS}
    device, free = free_memory()
    chosen = "full" if own["method"] == "full" else ("qlora" if own["method"] == "qlora" else "lora")
    seconds_per_token = _seconds_per_token(service, job["model"])
    price = service.settings.price_per_million_tokens
    return {
        "object": "fine_tuning.job.estimate",
        "model": job["model"],
        "training_file": job["training_file"],
        "validation_file": job["validation_file"],
        "hyperparameters": hyper,
        "mmtune": own,
        "file_check": {k: check[k] for k in ("rules", "format", "rows", "errors", "warnings")},
        "total_steps": steps,
        "tokens": {"per_epoch": per_epoch, "total": tokens,
                   "method": f"text characters / {CHARS_PER_TOKEN} + {TOKENS_PER_MESSAGE} per message, each row "
                             "cut at max_length (no tokenizer is loaded for an estimate)"},
        "memory_gib": memory,
        "device": device,
        "free_memory_gib": free,
        "fits": None if memory is None or free is None else memory[chosen]["total"] <= free,
        "time_s": None if seconds_per_token is None else round(tokens * seconds_per_token, 1),
        "time_basis": (f"measured on this server's last {TIMING_JOBS} succeeded jobs of this model"
                       if seconds_per_token is not None else
                       "no succeeded job of this model on this server yet to time it from"),
        "estimated_cost": round(tokens / 1e6 * price, 6),
        "price_per_million_tokens": price,
    }


def _cached_check(service: JobService, file_id: str) -> dict[str, Any]:
    row = service.store.get_file(file_id)
    if row["check"] is None:
        path, _ = service.file_content(file_id)
        row["check"] = check_upload(path)
        service.store.set_file_check(file_id, row["check"])
    return row["check"]


def _estimate_tokens(service: JobService, file_id: str, max_length: int) -> int:
    from mmtune.data.reader import FileReader, ReadOptions

    path, _ = service.file_content(file_id)
    total = 0
    for result in FileReader(str(path), ReadOptions(check_media=False)):
        if result.sample is None:
            continue
        messages = [*result.sample.messages, *(result.sample.chosen or []), *(result.sample.rejected or [])]
        chars = sum(len(p.text) for m in messages for p in m.parts)
        total += min(max_length, chars // CHARS_PER_TOKEN + TOKENS_PER_MESSAGE * len(messages))
    return total


def _seconds_per_token(service: JobService, model: str) -> float | None:
    done = [j for j in service.store.succeeded_jobs() if j["model"] == model and j["trained_tokens"]
            and j["started_at"] and j["finished_at"] and j["finished_at"] > j["started_at"]][-TIMING_JOBS:]
    if not done:
        return None
    return sum(j["finished_at"] - j["started_at"] for j in done) / sum(j["trained_tokens"] for j in done)


def free_memory() -> tuple[str, float | None]:
    """("cuda:0", free GiB) when torch is loaded and sees a GPU, else ("cpu", available RAM GiB)."""
    torch = sys.modules.get("torch")  # never imported here: the server has it loaded when it serves models
    if torch is not None and torch.cuda.is_available():
        free, _ = torch.cuda.mem_get_info(0)
        return "cuda:0", round(free / 1024**3, 3)
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return "cpu", round(int(line.split()[1]) * 1024 / 1024**3, 3)
    except OSError:
        pass
    if hasattr(os, "sysconf") and "SC_AVPHYS_PAGES" in os.sysconf_names:
        return "cpu", round(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 1024**3, 3)
    return "cpu", None


# ------------------------------------------------------------------ log, models


def read_log(service: JobService, job_id: str, offset: int) -> dict[str, Any]:
    """Up to LOG_CHUNK bytes of the job's training log from `offset` (negative: that many bytes before
    the end). The text ends on a whole UTF-8 character; `next_offset` is where to ask next."""
    service.retrieve_job(job_id)
    return read_log_file(service.layout.log(job_id), offset)


def read_log_file(path: Path, offset: int) -> dict[str, Any]:
    """read_log for any log file (an operation's too)."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return {"object": "fine_tuning.job.log", "offset": 0, "next_offset": 0, "size": 0, "text": ""}
    start = max(0, size + offset) if offset < 0 else min(offset, size)
    with open(path, "rb") as f:
        f.seek(start)
        data = f.read(LOG_CHUNK)
    if offset < 0:  # started mid-line, maybe mid-character: begin at the next line
        cut = data.find(b"\n")
        if start > 0 and cut >= 0:
            start, data = start + cut + 1, data[cut + 1:]
    end = whole_chars(data)
    return {"object": "fine_tuning.job.log", "offset": start, "next_offset": start + end, "size": size,
            "text": data[:end].decode("utf-8", "replace")}


def whole_chars(data: bytes) -> int:
    """The length of `data` without a UTF-8 character cut off at its end (it comes with the next read)."""
    for back in range(1, min(4, len(data)) + 1):
        b = data[-back]
        if b & 0xC0 != 0x80:  # an ASCII or lead byte: how long is its character?
            need = 1 if b < 0x80 else 2 if b < 0xE0 else 3 if b < 0xF0 else 4
            return len(data) - back if need > back else len(data)
    return len(data)


def registry_models() -> dict[str, Any]:
    """The registry's models: what each accepts, its size, and memory per method (LoRA rank 16, 2048
    tokens, batch 1); the presets and training methods a job may name."""
    from mmtune.config import DEFAULT_PRESET, METHODS, PRESETS
    from mmtune.models.memory import METHODS as MEMORY_METHODS
    from mmtune.models.memory import estimate_memory
    from mmtune.models.registry import DEFAULT_MODEL, REGISTRY

    data = []
    for spec in REGISTRY.values():
        accepts = ["text"] + (["images"] if spec.kind == "vision" else []) + (["video"] if spec.supports_video else [])
        data.append({"id": spec.name, "object": "model.spec", "kind": spec.kind, "accepts": accepts,
                     "params_b": spec.params_b, "description": spec.description, "hf_path": spec.hf_path,
                     "default": spec.name == DEFAULT_MODEL,
                     "memory_gib": {m: estimate_memory(spec, m)["total"] for m in MEMORY_METHODS}})
    return {"object": "list", "data": data, "memory_basis": "LoRA rank 16, 2048 tokens, batch 1",
            "presets": PRESETS, "default_preset": DEFAULT_PRESET, "methods": list(METHODS)}


def job_bases(service: JobService) -> Callable[[], dict[str, str]]:
    """A model-pool source: each job's base model (a registry name or an allowed folder), served under the
    name the job gives it, so a playground can put a job's base beside its fine-tuned model."""

    def source() -> dict[str, str]:
        out = {}
        for job in service.store.jobs_with_status(*ACTIVE, *FINAL):
            if not is_picture_job(job):  # a picture job's base is the image pool's (service.fine_tuned_pictures)
                out.setdefault(job["model"], job["model"])
        return out

    return source
