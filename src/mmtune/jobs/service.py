"""The fine-tuning job service: OpenAI's files + fine-tuning jobs, on this machine.

`JobService` owns the data dir (store, uploaded files, job folders) and the background
threads: one validator (checks a new job's files with the data layer: `validating_files`
-> `queued` or `failed`) and `concurrency` runners (each runs one queued job at a time as an
`mmtune train` subprocess, see worker.py). Every public method returns the OpenAI-shaped
object the HTTP API sends, or raises APIError; api.py is only the HTTP mapping of them.

    service = JobService("~/.local/share/mmtune", concurrency=1).start()
    service.add_success_hook(lambda name, output_dir, job: pool.register(name, output_dir))
    app.include_router(create_jobs_router(service))
    ...
    service.close()   # running jobs stop; the next start() re-queues them and they resume

Start-up recovery: a job found `running` was cut off when the service last stopped (its
subprocess died with it); it is queued again and its re-run continues from the last
checkpoint (`mmtune train --resume`). Events and files already recorded stay as they are.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import sqlite3
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from mmtune.errors import UserError
from mmtune.jobs import media_zip
from mmtune.jobs.errors import APIError, bad_request, not_found
from mmtune.jobs.executor import RaySettings, make_executor
from mmtune.jobs.gpus import GpuPool, detect
from mmtune.jobs.layout import Layout, default_data_dir
from mmtune.jobs.params import Limits, ModelRules, is_picture_job, parse_create
from mmtune.jobs.pictures import (
    check_picture_zip,
    describe_zip_finding,
    is_zip_name,
    zip_failure_message,
    zip_problems,
)
from mmtune.jobs.store import ACTIVE, FINAL, Store, new_id, now, valid_id
from mmtune.jobs.validate import check_upload, describe, failure_message, kind_problem, stage_kind
from mmtune.jobs.worker import (
    JobRunner,
    estimate_total_steps,
    fine_tuned_model_name,
    kill_stale,
    last_checkpoint,
)

SuccessHook = Callable[[str, Path, dict[str, Any]], None]
UPLOAD_EXTENSIONS = (".jsonl", ".json", ".zip")  # .zip: a chat data file and its media, or pictures with captions
ORGANIZATION = "org-mmtune-local"
COPY_CHUNK = 1 << 20


@dataclass
class Settings:
    """How the service runs jobs (the `mmtune jobs serve` flags)."""

    concurrency: int = 1  # jobs trained at the same time; 0 = validate and queue only
    price_per_million_tokens: float = 0.0  # for the job's `estimated_cost`
    limits: Limits = field(default_factory=Limits)
    poll_interval: float = 0.5  # seconds between looks at a running job's metrics and checkpoints
    kill_grace_s: float = 10.0  # SIGTERM -> SIGKILL delay when a job is cancelled
    max_upload_bytes: int = 4 << 30
    python: str = sys.executable  # the interpreter that runs `-m mmtune.cli train`
    model_roots: tuple[str, ...] = ()  # folders whose models a job may name by path (--model-root)
    allow_hub_models: bool = False  # whether a job may name a hub id (the training run downloads it)
    executor: str = "local"  # where runs run: local (subprocesses here) | ray (a Ray cluster: jobs/executor.py)
    ray: RaySettings = field(default_factory=RaySettings)  # with executor "ray"
    gpus: tuple[str, ...] | None = None  # devices the local executor shares out among jobs (None: detect them)


class JobService:
    def __init__(self, data_dir: str | Path | None = None, settings: Settings | None = None, **overrides: Any):
        self.settings = dataclasses.replace(settings or Settings(), **overrides)
        if self.settings.concurrency < 0:
            raise UserError("concurrency must be >= 0 (0 = queue jobs without running them)")
        self.layout = Layout(Path(data_dir).expanduser() if data_dir else default_data_dir())
        self.layout.make()
        self.store = Store(self.layout.db)
        self.stopping = threading.Event()
        self._wake = threading.Condition()
        self._threads: list[threading.Thread] = []
        self._hooks: list[SuccessHook] = []
        self._lock_fd: int | None = None
        self.executor = None
        self.gpus = GpuPool(())  # the devices jobs get (jobs/gpus.py), set at start
        self._claiming = threading.Lock()
        self._waiting_noted: set[str] = set()

    # ================================================================ life cycle
    def start(self) -> JobService:
        """Take the data dir, re-queue jobs cut off by the last stop, start the threads (again after `close`)."""
        self.stopping.clear()
        self.lock()
        self.executor = make_executor(self.settings.executor, self.settings.ray)  # None: local subprocesses
        if self.executor is None:  # (a Ray cluster counts its own GPUs)
            self.gpus = GpuPool(detect() if self.settings.gpus is None else self.settings.gpus)
        self.recover()
        self._spawn("mmtune-jobs-validator", self._validate_loop)
        for i in range(self.settings.concurrency):
            self._spawn(f"mmtune-jobs-runner-{i}", self._run_loop)
        return self

    def close(self, timeout: float = 60.0) -> None:
        """Stop the threads; a running job's process is stopped and the job stays `running`
        (the next start re-queues it, and it resumes from its last checkpoint)."""
        self.stopping.set()
        self.wake()
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        self._threads.clear()
        self._release_lock()

    def __enter__(self) -> JobService:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def recover(self) -> list[str]:
        """Queue again every job left `running` by a service that stopped; returns their ids."""
        ids = []
        for job in self.store.jobs_with_status("running"):
            kill_stale(job["pid"], str(self.layout.config(job["id"])))
            if self.executor is not None:
                self.executor.clean_stale(job["id"])  # e.g. the job's Ray actor
            ckpt = last_checkpoint(self.layout.output(job["id"]))
            how = (f"resumes from the checkpoint at step {ckpt[0]}" if ckpt else
                   "starts again from the beginning (no checkpoint was written yet)")
            if self.store.update_job(job["id"], when=("running",), status="queued", pid=None,
                                     event=("warn", "message", "The service restarted while this job was running; "
                                            f"it is queued again and {how}")):
                ids.append(job["id"])
        return ids

    def wake(self) -> None:
        with self._wake:
            self._wake.notify_all()

    def _sleep(self, seconds: float) -> None:
        with self._wake:
            if not self.stopping.is_set():
                self._wake.wait(seconds)

    def _spawn(self, name: str, target: Callable[[], None]) -> None:
        t = threading.Thread(target=target, name=name, daemon=True)
        t.start()
        self._threads.append(t)

    def lock(self) -> None:
        """Take the data dir (one service per data dir: two would both 'recover' the same running job);
        a UserError, one line, when another service holds it. `start` takes it if this was not called."""
        if self._lock_fd is not None:
            return
        try:
            import fcntl
        except ImportError:  # Windows: no advisory lock
            return
        fd = os.open(self.layout.lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            other = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise UserError(f"another mmtune jobs service (pid {other}) is using {self.layout.root}: stop it, or "
                            "give this one another --data-dir") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._lock_fd = fd

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing releases the flock
            self._lock_fd = None

    # ================================================================ hooks for the server
    def add_success_hook(self, hook: SuccessHook) -> None:
        """`hook(fine_tuned_model, output_dir, job_object)` runs (in a runner thread) when a job succeeds."""
        self._hooks.append(hook)

    def notify_success(self, job: dict[str, Any], output: Path) -> None:
        for hook in list(self._hooks):
            try:
                hook(job["fine_tuned_model"], output, job_object(job))
            except Exception as e:  # a broken hook must not fail the finished job
                self.store.add_event(job["id"], "warn", f"a success hook failed: {e!r}")

    def fine_tuned_models(self, pictures: bool | None = False) -> dict[str, Path]:
        """Model name (`ft:<base>:<suffix>:<job id>`) -> output dir, for every succeeded job: of text models
        (the chat pool's), of image-generation models with `pictures=True` (the image pool's), None: all."""
        out = {}
        for job in self.store.succeeded_jobs():
            folder = self.layout.output(job["id"])
            if folder.is_dir() and (pictures is None or is_picture_job(job) == pictures):
                out[job["fine_tuned_model"]] = folder
        return out

    def fine_tuned_pictures(self) -> dict[str, Path]:
        """The picture jobs' fine-tuned models and their checkpoints (of finished runs, which a checkpoint's
        LoRA loads over), and each picture job's base: what `/v1/images/generations` serves."""
        out: dict[str, Path] = {}
        for job in self.store.jobs_with_status(*ACTIVE, *FINAL):
            if is_picture_job(job):
                out.setdefault(job["model"], job["model"])
        out.update(self.fine_tuned_models(pictures=True))
        out.update(self.checkpoint_models(pictures=True))
        return out

    def checkpoint_models(self, pictures: bool = False) -> dict[str, Path]:
        """Checkpoint name (`<fine-tuned name>:ckpt-step-<n>`) -> checkpoint dir, for every job of text models
        (with `pictures`: of picture jobs whose run has finished)."""
        out = {}
        for job in self.store.jobs_with_status(*ACTIVE, *FINAL):
            if is_picture_job(job) != pictures:
                continue
            if pictures and not (self.layout.output(job["id"]) / "mmtune.json").is_file():
                continue
            for ck in self.store.list_checkpoints(job["id"], None, 10_000)[0]:
                folder = self.layout.output(job["id"]) / ck["dir_name"]
                if folder.is_dir():
                    out[checkpoint_name(job, ck["step"])] = folder
        return out

    # ================================================================ files
    def upload_file(self, filename: str | None, purpose: str | None, source: BinaryIO | None = None, *,
                    stored: Path | None = None, size: int | None = None) -> dict[str, Any]:
        """Store an upload: copied from `source`, or (the HTTP API, which streams the body to disk itself)
        a file already written at `stored` (from `upload_target`), renamed into place. The file row is
        added after the file is in place, and a failure to add it removes the file: no file without a row."""
        try:
            if purpose != "fine-tune":
                raise bad_request(f"purpose {str(purpose)[:40]!r} is not supported here: upload training data with "
                                  "purpose 'fine-tune'", "purpose")
            name, ext = upload_name(filename)
            file_id = new_id("file")
            final = self.layout.file_path(f"{file_id}{ext}")
            with storage_errors("the file"):
                if stored is None:
                    size = self._store_bytes(source, final)
                else:
                    os.replace(stored, final)
                stored_as = final.name
                if ext == ".zip" and media_zip.holds_chat_data(final):  # a data file with its media: unpacked
                    stored_as = self._unpack_media_zip(file_id, final)  # and checked (a 400 names the fix)
                elif ext == ".zip":  # pictures with captions, for a picture job
                    refuse_bad_zip(final, name)
                try:
                    row = self.store.add_file(file_id, name, purpose, size, stored_as)
                except BaseException:
                    final.unlink(missing_ok=True)
                    media_zip.remove_folder(self.layout.files, file_id)
                    raise
        finally:
            if stored is not None:
                stored.unlink(missing_ok=True)
        return file_object(row)

    def _unpack_media_zip(self, file_id: str, zip_path: Path) -> str:
        """Unpack an uploaded media zip into files/<file id>/ (the zip itself is not kept: all of it is
        unpacked); the stored name of the file is its data file in that folder."""
        try:
            info = media_zip.unpack_media_zip(zip_path, self.layout.files / file_id)
        finally:
            zip_path.unlink(missing_ok=True)
        return media_zip.stored_name(file_id, info["data_file"])

    def upload_target(self) -> Path:
        """A fresh temporary path in the files folder for an upload being received (see upload_file)."""
        return self.layout.files / f".upload-{new_id('file')}.part"

    def _store_bytes(self, source: BinaryIO, final: Path) -> int:
        """Copy an upload to its server-made name; it appears whole (temp file + rename) or not at all."""
        tmp = final.with_name(f".{final.name}.part")
        size = 0
        try:
            with open(tmp, "wb") as out:
                while chunk := source.read(COPY_CHUNK):
                    size += len(chunk)
                    if size > self.settings.max_upload_bytes:
                        raise upload_too_large(self.settings.max_upload_bytes)
                    out.write(chunk)
            os.replace(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)
        return size

    def add_result_file(self, job_id: str, content: bytes, filename: str = "step_metrics.csv") -> str:
        """A file of the job's results (its step metrics; a picture job's sample pictures), purpose
        fine-tune-results: GET /v1/files/{id}/content downloads it."""
        file_id = new_id("file")
        path = self.layout.file_path(f"{file_id}{Path(filename).suffix}")
        path.write_bytes(content)
        try:
            self.store.add_file(file_id, filename, "fine-tune-results", len(content), path.name)
        except BaseException:
            path.unlink(missing_ok=True)  # no file without its row
            raise
        return file_id

    def list_files(self, after: str | None = None, limit: int = 10_000, order: str = "desc",
                   purpose: str | None = None) -> dict[str, Any]:
        rows, more = self.store.list_files(after, limit, order, purpose)
        return list_object([file_object(r) for r in rows], more)

    def retrieve_file(self, file_id: str) -> dict[str, Any]:
        return file_object(self._file(file_id))

    def file_content(self, file_id: str) -> tuple[Path, str]:
        """The stored file's path and its display name (for the download)."""
        row = self._file(file_id)
        return self.layout.file_path(row["stored_name"]), row["filename"]

    def delete_file(self, file_id: str) -> dict[str, Any]:
        row = self._file(file_id)
        job = self.store.delete_file(file_id)
        if job is not None:
            raise bad_request(f"file {file_id} is used by job {job['id']}, which is {job['status']}: cancel the job "
                              "or wait for it to finish", "file_id", "file_in_use")
        self.layout.file_path(row["stored_name"]).unlink(missing_ok=True)
        media_zip.remove_folder(self.layout.files, file_id)  # an unpacked media zip's folder
        return {"id": file_id, "object": "file", "deleted": True}

    def _file(self, file_id: str) -> dict[str, Any]:
        row = self.store.get_file(file_id) if valid_id("file", file_id) else None
        if row is None:
            raise not_found("file", file_id, "file_id")
        return row

    # ================================================================ jobs
    def create_job(self, body: Any) -> dict[str, Any]:
        rules = ModelRules(self.settings.model_roots, self.settings.allow_hub_models,
                           lambda name: self.fine_tuned_models(pictures=None).get(name))
        job = parse_create(body, self.settings.limits, self.store.get_file, rules)
        self._check_file_kinds(job)
        asked = job["params"]["mmtune"].get("gpus", 0)
        problem = self.gpus.problem(asked) or (self.executor.check(asked) if self.executor is not None else None)
        if problem:
            raise bad_request(f"the job {problem}", "gpus", "insufficient_resources")
        with storage_errors("the job"):
            row = self.store.add_job(job)
        self.wake()
        return job_object(row)

    def _check_file_kinds(self, job: dict[str, Any]) -> None:
        """A 400 when a file holds another kind of data than the job trains (chat data for a dpo job, pairs
        for a supervised one), naming the method that trains it."""
        if is_picture_job(job):
            row = self._file(job["training_file"])
            if not is_zip_name(row["stored_name"]):
                raise bad_request(f"training_file {row['id']} ({row['filename']}) is not a .zip: a picture job "
                                  f"({job['model']}) trains on a zip of pictures with same-name .txt captions "
                                  "(upload one with purpose fine-tune)", "training_file", "invalid_file_kind")
            return
        stage = job["params"]["mmtune"]["stage"]
        for param in ("training_file", "validation_file"):
            if job[param]:
                row = self._file(job[param])
                if is_zip_name(row["stored_name"]):
                    raise bad_request(f"{param} {row['id']} ({row['filename']}) is a zip of pictures, and "
                                      f"{job['model']} is a text model: picture jobs tune an image-generation "
                                      "model (model flux.1-dev or flux.1-schnell, `mmtune models`)", param,
                                      "invalid_file_kind")
                problem = kind_problem(param, row, self.layout.file_path(row["stored_name"]), stage)
                if problem:
                    raise bad_request(problem, param, "invalid_file_kind")

    def list_jobs(self, after: str | None = None, limit: int = 20) -> dict[str, Any]:
        rows, more = self.store.list_jobs(after, limit)
        return list_object([job_object(r) for r in rows], more)

    def retrieve_job(self, job_id: str) -> dict[str, Any]:
        return job_object(self._job(job_id))

    def cancel_job(self, job_id: str) -> dict[str, Any]:
        """Cancel a job that has not ended; a running one's training process is stopped by its runner."""
        job = self._job(job_id)
        if job["status"] == "cancelled":
            return job_object(job)
        if not self.store.update_job(job_id, when=ACTIVE, status="cancelled", finished_at=now(),
                                     estimated_finish=None, event=("info", "message", "Job cancelled")):
            job = self._job(job_id)
            raise bad_request(f"job {job_id} has already {job['status']} and cannot be cancelled", "fine_tuning_job_id",
                              "job_not_cancellable")
        self.wake()
        return job_object(self._job(job_id))

    def list_events(self, job_id: str, after: str | None = None, limit: int = 20) -> dict[str, Any]:
        self._job(job_id)
        rows, more = self.store.list_events(job_id, after, limit)
        return list_object([event_object(r) for r in rows], more)

    def list_checkpoints(self, job_id: str, after: str | None = None, limit: int = 10) -> dict[str, Any]:
        job = self._job(job_id)
        rows, more = self.store.list_checkpoints(job_id, after, limit)
        return list_object([checkpoint_object(r, job) for r in rows], more)

    def wait_job(self, job_id: str, timeout: float = 600.0, statuses: tuple[str, ...] = FINAL) -> dict[str, Any]:
        """The job once its status is one of `statuses` (TimeoutError after `timeout` seconds)."""
        deadline = time.monotonic() + timeout
        while True:
            job = self._job(job_id)
            if job["status"] in statuses:
                return job_object(job)
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} is still {job['status']} after {timeout:.0f} s")
            time.sleep(0.1)

    def _job(self, job_id: str) -> dict[str, Any]:
        row = self.store.get_job(job_id) if valid_id("job", job_id) else None
        if row is None:
            raise not_found("fine-tuning job", job_id, "fine_tuning_job_id")
        return row

    def job_file_paths(self, job: dict[str, Any]) -> dict[str, Path]:
        out = {}
        for param in ("training_file", "validation_file"):
            if job[param]:
                out[param] = self.layout.file_path(self._file(job[param])["stored_name"])
        return out

    # ================================================================ threads
    def _validate_loop(self) -> None:
        while not self.stopping.is_set():
            waiting = self.store.jobs_with_status("validating_files")
            if not waiting:
                self._sleep(1.0)
                continue
            for job in waiting:
                if self.stopping.is_set():
                    return
                self._guard(job["id"], "validating_files", lambda j=job: self.validate_job(j))

    def _run_loop(self) -> None:
        while not self.stopping.is_set():
            with self._claiming:  # the oldest queued job whose GPUs are free, and those GPUs, together
                job = self.store.claim_next("queued", "running", accept=self.gpus.fits if self.gpus.devices else None)
                devices = self.gpus.take(job["id"], job["params"]) if job else None
                if job is None and self.gpus.devices:
                    self._note_waiting()
            if job is None:
                self._sleep(1.0)
                continue
            if job["started_at"] is None:
                self.store.update_job(job["id"], started_at=now())
            try:
                self._guard(job["id"], "running", lambda j=job, d=devices: JobRunner(self, j, devices=d).run())
            finally:
                self.gpus.give_back(job["id"])
                self.wake()  # a job waiting for these GPUs may start now

    def _note_waiting(self) -> None:
        """One event on each queued job that waits for GPUs, saying how many it waits for."""
        free = self.gpus.free()
        for job in self.store.jobs_with_status("queued"):
            need = self.gpus.need(job["params"])
            if need > len(free) and job["id"] not in self._waiting_noted:
                self._waiting_noted.add(job["id"])
                self.store.add_event(job["id"], "info", f"Waiting for {need} GPUs: {len(free)} of "
                                     f"{len(self.gpus.devices)} are free (the others are in use by running jobs)")

    def _guard(self, job_id: str, status: str, work: Callable[[], None]) -> None:
        """Run `work`; a bug in it fails this job (with the traceback in an event), not the thread."""
        try:
            work()
        except Exception as e:
            trace = traceback.format_exc()
            print(trace, file=sys.stderr)
            self.store.update_job(job_id, when=(status,), status="failed", finished_at=now(), pid=None,
                                  error={"code": "internal_error", "message": f"internal error: {e!r}", "param": None},
                                  event=("error", "message", f"internal error: {e!r}", {"traceback": trace}))

    def validate_job(self, job: dict[str, Any]) -> None:
        """validating_files -> queued, or -> failed naming the file, line and rule."""
        if is_picture_job(job):
            self.validate_picture_job(job)
            return
        rows = 0
        for param in ("training_file", "validation_file"):
            file_id = job[param]
            if not file_id:
                continue
            row = self.store.get_file(file_id)
            if row is None:
                self._fail_validation(job, param, "file_not_found", f"{param} {file_id} was deleted")
                return
            check = row["check"]
            kind = stage_kind(job["params"]["mmtune"].get("stage", "sft"))
            if check is None or check.get("checked_for", "sft") != kind:
                check = check_upload(self.layout.file_path(row["stored_name"]), kind)
                self.store.set_file_check(file_id, check)
            if check["errors"]:
                self._fail_validation(job, param, f"invalid_{param}", failure_message(param, row, check))
                return
            if check["warnings"]:
                warns = [f for f in check["findings"] if f["severity"] != "error"]
                self.store.add_event(job["id"], "warn", f"{param} {file_id} has {check['warnings']} warning(s): "
                                     + "; ".join(describe(f) for f in warns[:3]), {"findings": warns[:20]})
            if param == "training_file":
                rows = check["rows"]
        if self.store.update_job(job["id"], when=("validating_files",), status="queued",
                                 total_steps=estimate_total_steps(job, rows),
                                 event=("info", "message", "Files validated, moving job to queued state")):
            self.wake()

    def validate_picture_job(self, job: dict[str, Any]) -> None:
        """A picture job's zip, unpacked into the job's folder and checked (jobs/pictures.py): -> queued, or
        -> failed naming the entry and rule."""
        row = self.store.get_file(job["training_file"])
        if row is None:
            self._fail_validation(job, "training_file", "file_not_found", f"training_file {job['training_file']} "
                                  "was deleted")
            return
        check = check_picture_zip(self.layout.file_path(row["stored_name"]), self.picture_folder(job["id"]))
        self.store.set_file_check(row["id"], {k: v for k, v in check.items() if k != "folder"})
        if check["errors"]:
            self._fail_validation(job, "training_file", "invalid_training_file",
                                  zip_failure_message("training_file", row, check))
            return
        if check["warnings"]:
            warns = [f for f in check["findings"] if f["severity"] != "error"]
            self.store.add_event(job["id"], "warn", f"training_file {row['id']} has {check['warnings']} warning(s): "
                                 + "; ".join(describe_zip_finding(f) for f in warns[:3]), {"findings": warns[:20]})
        skipped = f" ({check['skipped']} __MACOSX/ entries left out)" if check["skipped"] else ""
        self.store.add_event(job["id"], "info", f"{check['rows']} pictures unpacked and checked{skipped}",
                             {"pictures": check["rows"], "skipped_entries": check["skipped"]})
        if self.store.update_job(job["id"], when=("validating_files",), status="queued",
                                 total_steps=estimate_total_steps(job, check["rows"]),
                                 event=("info", "message", "Files validated, moving job to queued state")):
            self.wake()

    def picture_folder(self, job_id: str) -> Path:
        """Where a picture job's zip is unpacked."""
        return self.layout.job_dir(job_id) / "pictures"

    def _fail_validation(self, job: dict[str, Any], param: str, code: str, message: str) -> None:
        self.store.update_job(job["id"], when=("validating_files",), status="failed", finished_at=now(),
                              error={"code": code, "message": message, "param": param},
                              event=("error", "message", message))


# ==================================================================== OpenAI objects


def upload_name(filename: str | None) -> tuple[str, str]:
    """(display name, stored extension) of an upload, or a 400 naming the rule."""
    name = clean_filename(filename)
    ext = next((e for e in UPLOAD_EXTENSIONS if name.lower().endswith(e)), None)
    if ext is None:
        raise bad_request(f"file {name!r} must be a .jsonl file (one JSON object per line), a .json array, or a "
                          ".zip of one such file with the images it names, or a .zip of pictures with .txt "
                          "captions (a picture job)", "file", "invalid_file_format")
    return name, ext


def refuse_bad_zip(path: Path, name: str) -> None:
    """A 400 listing every problem of an uploaded picture zip's directory (the file is not kept)."""
    problems = zip_problems(path)
    if problems:
        path.unlink(missing_ok=True)
        shown = "; ".join(describe_zip_finding(f) for f in problems[:5])
        more = f"; and {len(problems) - 5} more" if len(problems) > 5 else ""
        raise bad_request(f"{name} cannot be a picture training file: {shown}{more}", "file", "invalid_file")


def upload_too_large(limit: int) -> APIError:
    return APIError(413, f"the file is larger than this server's upload limit of {limit} bytes: split it, or "
                    "raise the limit", param="file", code="file_too_large")


@contextlib.contextmanager
def storage_errors(what: str):
    """A full disk (or database) while storing `what` as a 507 that says so; other OS errors as a 500
    with their reason. The caller cleans up what it wrote."""
    try:
        yield
    except sqlite3.OperationalError as e:
        if "full" in str(e).lower():
            raise APIError(507, f"the server's disk is full: {what} was not stored (nothing was kept); free space "
                           "on the server and try again", code="insufficient_storage") from None
        raise
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise APIError(507, f"the server's disk is full: {what} was not stored (nothing was kept); free space "
                           "on the server and try again", code="insufficient_storage") from None
        raise APIError(500, f"the server could not store {what}: {e.strerror or e}", code="storage_error") from None


def clean_filename(filename: str | None) -> str:
    """The display name of an upload: its last path part, printable, at most 255 characters."""
    name = (filename or "").replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in name if ch.isprintable() and not "\ud800" <= ch <= "\udfff").strip()
    if not name or name in (".", ".."):
        raise bad_request("the upload has no file name: send the file as multipart field 'file' with a filename",
                          "file")
    return name[-255:]


def list_object(data: list[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    return {"object": "list", "data": data, "has_more": has_more,
            "first_id": data[0]["id"] if data else None, "last_id": data[-1]["id"] if data else None}


def file_object(row: dict[str, Any]) -> dict[str, Any]:
    check = row.get("check")
    details = None
    if check and check.get("errors"):
        first = next((f for f in check["findings"] if f["severity"] == "error"), None)
        details = f"{check['errors']} error(s); first: {describe(first)}" if first else None
    return {"id": row["id"], "object": "file", "bytes": row["bytes"], "created_at": row["created_at"],
            "filename": row["filename"], "purpose": row["purpose"], "status": row["status"],
            "status_details": details, "expires_at": None}


def job_object(row: dict[str, Any]) -> dict[str, Any]:
    params = row["params"]
    hyper = params["hyperparameters"]
    return {
        "id": row["id"],
        "object": "fine_tuning.job",
        "created_at": row["created_at"],
        "model": params["mmtune"].get("parent_model") or row["model"],
        "training_file": row["training_file"],
        "validation_file": row["validation_file"],
        "status": row["status"],
        "error": row["error"],
        "fine_tuned_model": row["fine_tuned_model"],
        "finished_at": row["finished_at"],
        "estimated_finish": row["estimated_finish"] if row["status"] == "running" else None,
        "hyperparameters": hyper,
        "method": method_object(params),
        "organization_id": ORGANIZATION,
        "result_files": row["result_files"] or [],
        "seed": row["seed"],
        "trained_tokens": row["trained_tokens"],
        "integrations": params.get("integrations", []),
        "metadata": row["metadata"],
        # mmtune's own fields
        "estimated_cost": row["estimated_cost"],
        "suffix": row["suffix"],
        "mmtune": {**params["mmtune"], "step": row["last_step"], "total_steps": row["total_steps"],
                   "attempts": row["attempts"]},
    }


def method_object(params: dict[str, Any]) -> dict[str, Any]:
    """OpenAI's `method` of a job: supervised (stages sft, pt) or dpo (dpo, simpo, orpo, kto; with beta where
    the stage has one); the job's `mmtune.stage` says which stage it is."""
    hyper, own = params["hyperparameters"], params["mmtune"]
    if own.get("stage", "sft") in ("sft", "pt"):
        return {"type": "supervised", "supervised": {"hyperparameters": hyper}}
    dpo = {**hyper, **({"beta": own["beta"]} if "beta" in own else {})}
    return {"type": "dpo", "dpo": {"hyperparameters": dpo}}


def event_object(row: dict[str, Any]) -> dict[str, Any]:
    return {"id": row["id"], "object": "fine_tuning.job.event", "created_at": row["created_at"],
            "level": row["level"], "message": row["message"], "data": row["data"], "type": row["type"]}


def checkpoint_name(job: dict[str, Any], step: int) -> str:
    return f"{fine_tuned_model_name(job)}:ckpt-step-{step}"


def checkpoint_object(row: dict[str, Any], job: dict[str, Any]) -> dict[str, Any]:
    return {"id": row["id"], "object": "fine_tuning.job.checkpoint", "created_at": row["created_at"],
            "fine_tuned_model_checkpoint": checkpoint_name(job, row["step"]), "fine_tuning_job_id": job["id"],
            "metrics": row["metrics"], "step_number": row["step"]}
