"""The jobs API through the official openai client over real HTTP, without training
(`concurrency=0`: jobs are validated and queued, never run)."""

from __future__ import annotations

import sqlite3
import threading

import httpx
import openai
import pytest

from mmtune.jobs.store import SCHEMA_VERSION, Store
from mmtune.models.registry import DEFAULT_MODEL

KEY = "jobs-test-key"


def test_files_upload_list_retrieve_content_delete(serve, chat_file):
    s = serve(concurrency=0)
    f = s.client.files.create(file=("my data.jsonl", chat_file.read_bytes()), purpose="fine-tune")
    assert f.object == "file" and f.id.startswith("file-") and f.purpose == "fine-tune"
    assert f.bytes == chat_file.stat().st_size and f.filename == "my data.jsonl" and f.created_at > 1e9
    assert s.client.files.retrieve(f.id) == f
    assert s.client.files.content(f.id).read() == chat_file.read_bytes()
    second = s.upload(chat_file)
    assert [x.id for x in s.client.files.list()] == [second, f.id]  # newest first
    assert [x.id for x in s.client.files.list(order="asc")] == [f.id, second]
    deleted = s.client.files.delete(f.id)
    assert deleted.deleted and deleted.id == f.id
    with pytest.raises(openai.NotFoundError):
        s.client.files.retrieve(f.id)
    assert [x.id for x in s.client.files.list()] == [second]
    assert sorted(p.name for p in s.service.layout.files.iterdir()) == [f"{second}.jsonl"]


def test_upload_refuses_other_purposes_and_formats(serve, chat_file):
    s = serve(concurrency=0)
    with pytest.raises(openai.BadRequestError) as e:
        s.client.files.create(file=("a.jsonl", b"{}"), purpose="assistants")
    assert e.value.body["param"] == "purpose"
    with pytest.raises(openai.BadRequestError) as e:
        s.client.files.create(file=("a.txt", b"hello"), purpose="fine-tune")
    assert e.value.body["code"] == "invalid_file_format"
    # a client's path-like file name is only a label: the file is stored under a server-made name
    f = s.client.files.create(file=("../../../etc/evil.jsonl", chat_file.read_bytes()), purpose="fine-tune")
    assert f.filename == "evil.jsonl"
    assert (s.service.layout.files / f"{f.id}.jsonl").is_file()


def test_create_job_defaults_and_lifecycle_to_queued(serve, chat_file):
    s = serve(concurrency=0)
    file_id = s.upload(chat_file)
    job = s.client.fine_tuning.jobs.create(model=DEFAULT_MODEL, training_file=file_id, suffix="demo", seed=7)
    assert job.object == "fine_tuning.job" and job.id.startswith("ftjob-") and job.status == "validating_files"
    assert job.hyperparameters.n_epochs == 3 and job.hyperparameters.batch_size == 8
    assert job.seed == 7 and job.model == DEFAULT_MODEL and job.fine_tuned_model is None
    queued = s.service.wait_job(job.id, 30, ("queued",))
    assert queued["mmtune"]["total_steps"] == 9  # ceil(22 rows / batch 8) x 3 epochs
    events = s.client.fine_tuning.jobs.list_events(job.id)
    assert [e.message for e in events] == ["Files validated, moving job to queued state",
                                           f"Validating training file: {file_id}"]
    assert all(e.object == "fine_tuning.job.event" and e.id.startswith("ftevent-") for e in events)
    assert s.client.fine_tuning.jobs.checkpoints.list(job.id).data == []


def test_hyperparameters_both_shapes_mmtune_extras_and_effective_lr(serve, chat_file):
    s = serve(concurrency=0)
    file_id = s.upload(chat_file)
    legacy = s.client.fine_tuning.jobs.create(
        model=DEFAULT_MODEL, training_file=file_id,
        hyperparameters={"n_epochs": 2, "batch_size": 4, "learning_rate_multiplier": 2.0},
        extra_body={"preset": "fast", "lora_rank": 16, "max_length": 512, "max_steps": 5, "method": "full"})
    assert legacy.hyperparameters.n_epochs == 2 and legacy.hyperparameters.learning_rate_multiplier == 2.0
    own = legacy.model_extra["mmtune"]
    assert own["learning_rate"] == pytest.approx(2e-4) and own["preset"] == "fast" and own["method"] == "full"
    assert (own["lora_rank"], own["lora_alpha"], own["max_length"], own["max_steps"]) == (16, 16, 512, 5)
    current = s.client.fine_tuning.jobs.create(
        model=DEFAULT_MODEL, training_file=file_id,
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1, "batch_size": "auto"}}},
        extra_body={"lora_dropout": 0.0})
    assert current.hyperparameters.n_epochs == 1 and current.hyperparameters.batch_size == 8
    assert current.method.type == "supervised" and current.model_extra["mmtune"]["lora_dropout"] == 0.0


@pytest.mark.parametrize(("body", "param"), [
    ({"hyperparameters": {"n_epochs": 11}}, "hyperparameters.n_epochs"),
    ({"hyperparameters": {"n_epochs": 0}}, "hyperparameters.n_epochs"),
    ({"hyperparameters": {"batch_size": 33}}, "hyperparameters.batch_size"),
    ({"hyperparameters": {"learning_rate_multiplier": 0}}, "hyperparameters.learning_rate_multiplier"),
    ({"hyperparameters": {"learning_rate_multiplier": 5000}}, "hyperparameters.learning_rate_multiplier"),
    ({"hyperparameters": {"n_epochs": "3"}}, "hyperparameters.n_epochs"),
    ({"max_length": 4097}, "max_length"),
    ({"lora_rank": 0}, "lora_rank"),
    ({"lora_dropout": 1.0}, "lora_dropout"),
    ({"preset": "turbo"}, "preset"),
    ({"method": "dora"}, "method"),
    ({"max_steps": 0}, "max_steps"),
    ({"lora_rnak": 8}, "lora_rnak"),
    ({"suffix": "a:b"}, "suffix"),
    ({"seed": -1}, "seed"),
    ({"method": {"type": "reinforcement"}}, "method.type"),
    ({"method": {"type": "dpo"}}, "training_file"),  # a chat file: the 400 names method supervised
    ({"method": {"type": "dpo", "dpo": {"hyperparameters": {"beta": 0}}}}, "method.dpo.hyperparameters.beta"),
    ({"method": {"type": "dpo", "dpo": {"hyperparameters": {"bta": 0.1}}}}, "method.dpo.hyperparameters.bta"),
    ({"method": {"type": "dpo", "supervised": {}}}, "method.supervised"),
    ({"method": {"type": "dpo"}, "stage": "pt"}, "stage"),
    ({"method": {"type": "supervised"}, "stage": "kto"}, "stage"),
    ({"method": {"type": "supervised", "supervised": {"hyperparameters": {"beta": 0.1}}}}, "beta"),
    ({"stage": "orpo", "beta": 0.2}, "beta"),
    ({"stage": "dpo", "label_smoothing": 0.1}, "label_smoothing"),
    ({"stage": "kto", "hyperparameters": {"batch_size": 1}}, "hyperparameters.batch_size"),
    ({"hyperparameters": {"n_epochs": 2}, "method": {"type": "supervised", "supervised": {
        "hyperparameters": {"n_epochs": 3}}}}, "method.supervised.hyperparameters.n_epochs"),
    ({"training_file": "file-doesnotexist0000"}, "training_file"),
    ({"training_file": "../../jobs.db"}, "training_file"),
    ({"model": "smollm2-135m-instrct"}, "model"),
    ({"model": "/no/such/model/dir"}, "model"),
])
def test_create_refuses_bad_parameters(shared, body, param):
    s = shared
    payload = {"model": DEFAULT_MODEL, "training_file": s.file_id, **body}
    r = httpx.post(f"{s.base_url}/fine_tuning/jobs", json=payload)
    assert r.status_code in (400, 404), r.text
    err = r.json()["error"]
    assert err["param"] == param and err["message"] and err["type"] == "invalid_request_error"
    assert s.client.fine_tuning.jobs.list().data == []


def test_unknown_parameter_names_the_closest(serve, chat_file):
    s = serve(concurrency=0)
    with pytest.raises(openai.BadRequestError) as e:
        s.client.fine_tuning.jobs.create(model=DEFAULT_MODEL, training_file=s.upload(chat_file),
                                         extra_body={"lora_rnak": 8})
    assert "did you mean 'lora_rank'" in e.value.body["message"]
    assert e.value.body["code"] == "unknown_parameter"


def test_bad_file_fails_job_naming_line_and_rule(serve, bad_file, chat_file):
    s = serve(concurrency=0)
    job = s.client.fine_tuning.jobs.create(model=DEFAULT_MODEL, training_file=s.upload(bad_file))
    done = s.service.wait_job(job.id, 30)
    job = s.client.fine_tuning.jobs.retrieve(job.id)
    assert job.status == "failed" and done["status"] == "failed" and job.finished_at
    assert job.error.code == "invalid_training_file" and job.error.param == "training_file"
    assert "line 1, messages[1].role" in job.error.message and "role-not-allowed" in job.error.message
    assert "strict rule 4" in job.error.message
    events = s.client.fine_tuning.jobs.list_events(job.id).data
    assert events[0].level == "error" and "line 1" in events[0].message
    # a bad validation file fails the job on validation_file
    job2 = s.client.fine_tuning.jobs.create(model=DEFAULT_MODEL, training_file=s.upload(chat_file),
                                            validation_file=s.client.files.list().data[-1].id)
    s.service.wait_job(job2.id, 30)
    err = s.client.fine_tuning.jobs.retrieve(job2.id).error
    assert err.param == "validation_file" and err.code == "invalid_validation_file"
    assert s.client.files.retrieve(s.client.files.list().data[-1].id).status == "error"


def test_list_jobs_pagination(serve, chat_file):
    s = serve(concurrency=0)
    file_id = s.upload(chat_file)
    ids = [s.client.fine_tuning.jobs.create(model=DEFAULT_MODEL, training_file=file_id).id for _ in range(5)]
    first = s.client.fine_tuning.jobs.list(limit=2)
    assert [j.id for j in first.data] == ids[::-1][:2] and first.has_more
    second = s.client.fine_tuning.jobs.list(limit=2, after=first.data[-1].id)
    assert [j.id for j in second.data] == ids[::-1][2:4] and second.has_more
    last = s.client.fine_tuning.jobs.list(limit=2, after=second.data[-1].id)
    assert [j.id for j in last.data] == ids[:1] and not last.has_more
    assert [j.id for j in s.client.fine_tuning.jobs.list(limit=2)] == ids[::-1]  # auto-pagination
    events = s.client.fine_tuning.jobs.list_events(ids[0], limit=1)
    assert len(events.data) == 1 and len(list(s.client.fine_tuning.jobs.list_events(ids[0], limit=1))) >= 2
    r = httpx.get(f"{s.base_url}/fine_tuning/jobs", params={"limit": 0})
    assert r.status_code == 400 and r.json()["error"]["param"] == "limit"


def test_cancel_queued_job_and_refuse_cancelling_twice_over(serve, chat_file):
    s = serve(concurrency=0)
    job = s.client.fine_tuning.jobs.create(model=DEFAULT_MODEL, training_file=s.upload(chat_file))
    s.service.wait_job(job.id, 30, ("queued",))
    cancelled = s.client.fine_tuning.jobs.cancel(job.id)
    assert cancelled.status == "cancelled" and cancelled.finished_at
    assert s.client.fine_tuning.jobs.cancel(job.id).status == "cancelled"  # idempotent
    assert s.client.fine_tuning.jobs.list_events(job.id).data[0].message == "Job cancelled"
    bad = s.client.fine_tuning.jobs.create(model=DEFAULT_MODEL, training_file=s.client.files.list().data[0].id)
    s.service.wait_job(bad.id, 30, ("queued",))
    with pytest.raises(openai.BadRequestError):  # the file is in use by a queued job
        s.client.files.delete(bad.training_file)


@pytest.mark.parametrize("path", [
    "/files/..%2F..%2Fjobs.db",
    "/files/..%2Fjobs.db/content",
    "/files/file-..%2F..%2Fetc%2Fpasswd/content",
    "/files/file-AAAAAAAAAAAAAAAA.jsonl/content",
    "/files/%2Fetc%2Fpasswd/content",
    "/fine_tuning/jobs/ftjob-..%2F..%2Fjobs.db",
    "/fine_tuning/jobs/..%2F..%2Fjobs.db/events",
    "/fine_tuning/jobs/ftjob-xx%00yy/checkpoints",
    "/files?after=..%2F..%2Fjobs.db",
    "/fine_tuning/jobs?after=%2Fetc%2Fpasswd",
])
def test_path_traversal_ids_are_refused(shared, path):
    s = shared
    r = httpx.get(s.base_url + path)
    assert r.status_code in (400, 404), (path, r.status_code)
    assert "error" in r.json() and b"sqlite" not in r.content.lower() and b"root:" not in r.content


def test_twenty_concurrent_creations_leave_a_consistent_store(serve, chat_file):
    s = serve(concurrency=0)
    file_id = s.upload(chat_file)
    ids, errors = [], []

    def create(i: int) -> None:
        try:
            job = s.client.fine_tuning.jobs.create(model=DEFAULT_MODEL, training_file=file_id, suffix=f"c{i}")
            ids.append(job.id)
        except Exception as e:  # collected: asserted empty below
            errors.append(e)

    threads = [threading.Thread(target=create, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == [] and len(set(ids)) == 20
    listed = [j.id for j in s.client.fine_tuning.jobs.list(limit=7)]
    assert sorted(listed) == sorted(ids)
    for job_id in ids:
        s.service.wait_job(job_id, 60, ("queued",))
    assert {j.status for j in s.client.fine_tuning.jobs.list(limit=100)} == {"queued"}
    db = sqlite3.connect(s.service.layout.db)
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    per_job = db.execute("SELECT job_id, COUNT(*) FROM events GROUP BY job_id").fetchall()
    assert len(per_job) == 20 and {n for _, n in per_job} == {2}
    assert db.execute("SELECT COUNT(DISTINCT id) FROM events").fetchone()[0] == 40


def test_api_key_is_required_when_set(serve, chat_file):
    s = serve(api_key=KEY, concurrency=0)
    assert s.client.files.list().data == []
    r = httpx.get(f"{s.base_url}/files", headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(f"{s.base_url}/nope").json()["error"]["code"] == "unknown_url"


def test_schema_is_versioned_and_newer_databases_are_refused(tmp_path):
    store = Store(tmp_path / "jobs.db")
    assert store.schema_version() == SCHEMA_VERSION
    store.close()
    again = Store(tmp_path / "jobs.db")  # re-opening applies nothing twice
    assert again.schema_version() == SCHEMA_VERSION
    again._db.execute("INSERT INTO schema_migrations VALUES (?, 'from the future', 0)", (SCHEMA_VERSION + 1,))
    again.close()
    from mmtune.errors import UserError

    with pytest.raises(UserError, match="newer mmtune"):
        Store(tmp_path / "jobs.db")


def test_one_service_per_data_dir(tmp_path):
    from mmtune.errors import UserError
    from mmtune.jobs.service import JobService

    with JobService(tmp_path, concurrency=0):
        with pytest.raises(UserError, match="another mmtune jobs service"):
            JobService(tmp_path, concurrency=0).start()
