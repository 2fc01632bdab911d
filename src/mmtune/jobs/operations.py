"""Tracked operations on a job's models: merge a LoRA, export GGUF, evaluate over a data file.

An operation is what a user starts from the studio's job or checkpoints page on one served model
(a job's fine-tuned model, one of its checkpoints, or its base for an evaluation). It runs the same
CLI a user would (`mmtune merge`, `mmtune export`, `mmtune infer --metrics`) as a subprocess, one
at a time, and is tracked like a job: queued -> running -> succeeded | failed | cancelled, with its
log, its result files (listed, downloadable) and, when it fails, the CLI's `error:` line, which
names the fix. Everything lives in the data dir, so a reload, another tab or a server restart
show the same operation (one cut off by a stop runs again on the next start):

    <data dir>/operations/<op id>/operation.json   the record (written whole: temp file + rename)
    <data dir>/operations/<op id>/run.log          the subprocess's output
    <data dir>/operations/<op id>/output/          merged/ | <name>.gguf | predictions.jsonl (+ .metrics.json)
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mmtune.jobs.errors import APIError, bad_request, not_found
from mmtune.jobs.store import now
from mmtune.jobs.worker import log_error, stop_process, training_env

KINDS = ("merge", "export", "eval")
ACTIVE = ("queued", "running")
FINAL = ("succeeded", "failed", "cancelled")
GGUF_DTYPES = ("f32", "f16", "bf16", "q8_0", "q4_0", "q5_0", "q4_k_m", "q5_k_m", "q6_k")  # commands/export.py
OP_RE = re.compile(r"^op-[a-z0-9]{24}$")
RECORD, LOG, OUTPUT = "operation.json", "run.log", "output"
PREDICTIONS = "predictions.jsonl"
MAX_EVAL_TOKENS = 2048
MAX_ROWS_PAGE = 200


def _die_with_parent():
    """A pre-exec hook: the child gets SIGTERM when the server dies (Linux), as training runs do."""
    if sys.platform != "linux":
        return None
    import ctypes
    import signal

    prctl = ctypes.CDLL(None, use_errno=True).prctl

    def hook() -> None:
        prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG

    return hook


class Operations:
    """The operations of one job service's data dir, and the thread that runs them one at a time.

    `models()` maps each served model name a user may operate on to
    `{"path": folder or registry name, "job": job id, "base": bool, "validation_file": file id | None}`."""

    def __init__(self, root: Path, models: Callable[[], dict[str, dict[str, Any]]],
                 file_path: Callable[[str], Path], stopping: threading.Event, python: str = sys.executable,
                 grace_s: float = 10.0):
        self.root, self.models, self.file_path = root, models, file_path
        self.stopping, self.python, self.grace_s = stopping, python, grace_s
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._wake = threading.Condition()
        self._cancelled: set[str] = set()
        self.recover()
        self._thread = threading.Thread(target=self._loop, name="mmtune-operations", daemon=True)
        self._thread.start()

    # ---------------------------------------------------------------- records
    def _dir(self, op_id: str) -> Path:
        if not isinstance(op_id, str) or not OP_RE.fullmatch(op_id):
            raise not_found("operation", op_id, "operation_id")
        return self.root / op_id

    def _read(self, op_id: str) -> dict[str, Any]:
        try:
            return json.loads((self._dir(op_id) / RECORD).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise not_found("operation", op_id, "operation_id") from None

    def _write(self, op: dict[str, Any]) -> None:
        folder = self._dir(op["id"])
        tmp = folder / f".{RECORD}.tmp"
        tmp.write_text(json.dumps(op, ensure_ascii=False, indent=1), encoding="utf-8")
        os.replace(tmp, folder / RECORD)

    def _update(self, op_id: str, **values: Any) -> dict[str, Any]:
        with self._lock:
            op = self._read(op_id)
            op.update(values)
            self._write(op)
            return op

    def _all(self) -> list[dict[str, Any]]:
        out = []
        for folder in self.root.iterdir():
            if OP_RE.fullmatch(folder.name) and (folder / RECORD).is_file():
                try:
                    out.append(json.loads((folder / RECORD).read_text(encoding="utf-8")))
                except (OSError, ValueError):
                    continue
        return sorted(out, key=lambda o: (o.get("sequence", 0), o["id"]))

    def recover(self) -> None:
        """An operation left `running` by a server that stopped is queued again (its output is redone)."""
        for op in self._all():
            if op["status"] == "running":
                self._update(op["id"], status="queued", started_at=None,
                             note="the server stopped while this ran: it runs again from the start")

    # ---------------------------------------------------------------- API
    def create(self, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise bad_request("send a JSON object: {\"kind\": \"merge\" | \"export\" | \"eval\", \"model\": ...}")
        unknown = sorted(set(body) - {"kind", "model", "dtype", "verify", "file_id", "max_tokens"})
        if unknown:
            raise bad_request(f"unknown field(s) {', '.join(unknown)}: an operation takes kind, model and, for "
                              "export, dtype and verify; for eval, file_id and max_tokens", unknown[0])
        kind = body.get("kind")
        if kind not in KINDS:
            raise bad_request(f"kind must be one of {', '.join(KINDS)} (got {str(kind)[:40]!r})", "kind")
        name = body.get("model")
        models = self.models()
        if not isinstance(name, str) or name not in models:
            raise bad_request(f"model {str(name)[:200]!r} is not a model of a job here: name a fine-tuned model, "
                              "one of its checkpoints (GET /v1/fine_tuning/jobs/{id}/checkpoints) or, to "
                              "evaluate it, a job's base model", "model", "model_not_found")
        model = models[name]
        params: dict[str, Any] = {}
        if kind in ("merge", "export") and model["base"]:
            raise bad_request(f"{name} is a base model: {kind} works on a fine-tuned model or a checkpoint "
                              "(evaluate the base instead, with kind eval)", "model")
        if kind == "export":
            dtype = str(body.get("dtype", "f16")).lower()
            if dtype not in GGUF_DTYPES:
                raise bad_request(f"dtype must be one of {', '.join(GGUF_DTYPES)} (got {dtype[:20]!r})", "dtype")
            verify = body.get("verify", True)
            if not isinstance(verify, bool):
                raise bad_request("verify must be true or false", "verify")
            params = {"dtype": dtype, "verify": verify}
        elif "dtype" in body or "verify" in body:
            raise bad_request("dtype and verify are export settings", "dtype" if "dtype" in body else "verify")
        if kind == "eval":
            file_id = body.get("file_id") or model["validation_file"]
            if not file_id:
                raise bad_request(f"the job of {name} has no validation file: name an uploaded file to evaluate "
                                  "on (file_id)", "file_id")
            try:
                self.file_path(file_id)
            except APIError as e:
                raise bad_request(e.message, "file_id", "file_not_found") from None
            max_tokens = body.get("max_tokens", 128)
            if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or not 1 <= max_tokens <= MAX_EVAL_TOKENS:
                raise bad_request(f"max_tokens must be an integer from 1 to {MAX_EVAL_TOKENS}", "max_tokens")
            params = {"file_id": file_id, "max_tokens": max_tokens}
        elif "file_id" in body or "max_tokens" in body:
            raise bad_request("file_id and max_tokens are eval settings", "file_id" if "file_id" in body else "max_tokens")
        op_id = "op-" + "".join(secrets.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(24))
        op = {"id": op_id, "object": "fine_tuning.operation", "kind": kind, "model": name, "job_id": model["job"],
              "params": params, "status": "queued", "created_at": now(), "started_at": None, "finished_at": None,
              "error": None, "files": [], "metrics": None, "output_dir": None, "note": None,
              "sequence": time.time_ns()}
        with self._lock:
            (self.root / op_id).mkdir()
            self._write(op)
        self.wake()
        return self.public(op)

    def list(self, job_id: str | None = None, model: str | None = None) -> dict[str, Any]:
        ops = [o for o in self._all() if (job_id is None or o["job_id"] == job_id)
               and (model is None or o["model"] == model)]
        return {"object": "list", "data": [self.public(o) for o in reversed(ops)], "has_more": False}

    def get(self, op_id: str) -> dict[str, Any]:
        return self.public(self._read(op_id))

    def cancel(self, op_id: str) -> dict[str, Any]:
        with self._lock:
            op = self._read(op_id)
            if op["status"] in FINAL:
                raise bad_request(f"operation {op_id} is already {op['status']}", "operation_id", "operation_finished")
            self._cancelled.add(op_id)
            if op["status"] == "queued":
                op.update(status="cancelled", finished_at=now())
                self._write(op)
        self.wake()
        return self.public(op)

    def log(self, op_id: str) -> Path:
        return self._dir(self._read(op_id)["id"]) / LOG

    def result_file(self, op_id: str, name: str) -> Path:
        """A listed result file (nothing else under the folder, nothing outside it)."""
        op = self._read(op_id)
        if name not in {f["name"] for f in op["files"]}:
            raise not_found("result file", name, "name")
        return self._dir(op_id) / OUTPUT / name

    def rows(self, op_id: str, offset: int, limit: int) -> dict[str, Any]:
        """An evaluation's predictions, each beside its reference with its own exact match / BLEU / ROUGE-L."""
        from mmtune.infer.metrics import bleu, exact_match, rouge_l

        op = self._read(op_id)
        if op["kind"] != "eval":
            raise bad_request(f"operation {op_id} is a {op['kind']}: only an eval has rows", "operation_id")
        path = self._dir(op_id) / OUTPUT / PREDICTIONS
        if op["status"] != "succeeded" or not path.is_file():
            return {"object": "list", "data": [], "total": 0, "offset": offset}
        lines = path.read_text(encoding="utf-8").splitlines()
        data = []
        for text in lines[offset:offset + min(limit, MAX_ROWS_PAGE)]:
            rec = json.loads(text)
            ref, pred = rec.get("reference"), rec.get("prediction", "")
            scores = None if ref is None else {"exact_match": exact_match([pred], [ref]), "bleu": bleu([pred], [ref]),
                                               "rouge_l": rouge_l([pred], [ref])}
            data.append({"line": rec["line"], "prompt": rec["prompt"], "reference": ref, "prediction": pred,
                         "finish_reason": rec.get("finish_reason"), "scores": scores})
        return {"object": "list", "data": data, "total": len(lines), "offset": offset}

    @staticmethod
    def public(op: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in op.items() if k != "sequence"}

    # ---------------------------------------------------------------- running
    def wake(self) -> None:
        with self._wake:
            self._wake.notify_all()

    def _loop(self) -> None:
        while not self.stopping.is_set():
            try:
                queued = [o for o in self._all() if o["status"] == "queued"]
            except OSError:  # the data dir is gone (a test's temporary one): nothing more to run
                return
            if not queued:
                with self._wake:
                    self._wake.wait(1.0)
                continue
            try:
                self.run(queued[0]["id"])
            except Exception as e:  # a bug of ours fails the operation, never the thread
                self._update(queued[0]["id"], status="failed", finished_at=now(),
                             error={"message": f"the operation failed inside the server: {e!r}", "code": "internal_error"})

    def command(self, op: dict[str, Any], out: Path) -> tuple[list[str], Path]:
        """The CLI command of `op` and the path it writes."""
        model = self.models().get(op["model"])
        if model is None:
            raise FileNotFoundError(f"{op['model']} is no longer served here (its job's folder is gone)")
        cli = [self.python, "-m", "mmtune.cli"]
        if op["kind"] == "merge":
            target = out / "merged"
            return [*cli, "merge", "--adapter", str(model["path"]), "--out", str(target)], target
        if op["kind"] == "export":
            name = re.sub(r"[^A-Za-z0-9._-]+", "-", op["model"]).strip("-")
            target = out / f"{name}-{op['params']['dtype']}.gguf"
            args = [*cli, "export", str(model["path"]), "--dtype", op["params"]["dtype"], "--out", str(target)]
            return (args if op["params"]["verify"] else [*args, "--no-verify"]), target
        data = self.file_path(op["params"]["file_id"])
        target = out / PREDICTIONS
        return [*cli, "infer", str(model["path"]), "--data", str(data), "--out", str(target), "--metrics",
                "--skip-bad-rows", "--max-new-tokens", str(op["params"]["max_tokens"]), "--temperature", "0"], target

    def run(self, op_id: str) -> None:
        if self.stopping.is_set():
            return
        folder = self._dir(op_id)
        out = folder / OUTPUT
        if out.exists():  # an earlier, cut-off attempt: start clean
            import shutil

            shutil.rmtree(out)
        out.mkdir()
        op = self._update(op_id, status="running", started_at=now())
        try:
            args, target = self.command(op, out)
        except (FileNotFoundError, APIError) as e:
            self._update(op_id, status="failed", finished_at=now(), error={"message": str(e), "code": "model_gone"})
            return
        with open(folder / LOG, "ab") as log:
            log.write(f"=== {' '.join(args)}\n".encode())
            log.flush()
            proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=folder,
                                    env=training_env(), start_new_session=True, preexec_fn=_die_with_parent())
        while proc.poll() is None:
            if self.stopping.is_set():
                stop_process(proc, self.grace_s)
                return  # stays `running`: the next start queues it again
            if op_id in self._cancelled:
                stop_process(proc, self.grace_s)
                self._update(op_id, status="cancelled", finished_at=now())
                return
            with self._wake:
                self._wake.wait(0.5)
        if proc.returncode != 0 or not target.exists():
            self._update(op_id, status="failed", finished_at=now(), files=self._files(out),
                         error={"message": log_error(folder / LOG), "code": f"{op['kind']}_failed",
                                "exit_status": proc.returncode})
            return
        metrics = None
        if op["kind"] == "eval":
            metrics = json.loads(Path(f"{target}.metrics.json").read_text(encoding="utf-8"))
        self._update(op_id, status="succeeded", finished_at=now(), files=self._files(out), metrics=metrics,
                     output_dir=str(target if target.is_dir() else out))

    @staticmethod
    def _files(out: Path) -> list[dict[str, Any]]:
        return [{"name": p.relative_to(out).as_posix(), "bytes": p.stat().st_size}
                for p in sorted(out.rglob("*")) if p.is_file() and not p.name.startswith(".")]


def service_models(service) -> Callable[[], dict[str, dict[str, Any]]]:
    """What a user may operate on: each succeeded job's model, every checkpoint, and each job's base."""
    from mmtune.jobs.service import checkpoint_name
    from mmtune.jobs.store import FINAL as JOB_FINAL

    def models() -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for job in service.store.jobs_with_status("validating_files", "queued", "running", *JOB_FINAL):
            val = job["validation_file"]
            out.setdefault(job["model"], {"path": job["model"], "job": job["id"], "base": True, "validation_file": val})
            output = service.layout.output(job["id"])
            if job["status"] == "succeeded" and output.is_dir():
                out[job["fine_tuned_model"]] = {"path": output, "job": job["id"], "base": False, "validation_file": val}
            for ck in service.store.list_checkpoints(job["id"], None, 10_000)[0]:
                folder = output / ck["dir_name"]
                if folder.is_dir():
                    out[checkpoint_name(job, ck["step"])] = {"path": folder, "job": job["id"], "base": False,
                                                             "validation_file": val}
        return out

    return models


def for_service(service) -> Operations:
    def file_path(file_id: str) -> Path:
        return service.file_content(file_id)[0]

    return Operations(service.layout.root / "operations", service_models(service), file_path, service.stopping,
                      service.settings.python, service.settings.kill_grace_s)
