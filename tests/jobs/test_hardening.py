"""The job service under a hostile or unlucky client: uploads stream to disk and stop at the limit,
validation runs in constant memory, a full disk is a 507 with nothing left behind, and a job's
`model` is only what the operator allows (no file-existence oracle)."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx
import openai
import pytest

from mmtune.jobs.api import create_jobs_app
from mmtune.jobs.service import JobService, Settings
from mmtune.models.registry import DEFAULT_MODEL

ROOT = Path(__file__).resolve().parents[2]


def _multipart(boundary: bytes, size: int, chunk: int = 1 << 16, name: bytes = b"big.jsonl"):
    head = (b"--" + boundary + b'\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nfine-tune\r\n--'
            + boundary + b'\r\nContent-Disposition: form-data; name="file"; filename="' + name + b'"\r\n'
            b"Content-Type: application/octet-stream\r\n\r\n")
    yield head
    line = b'{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n'
    block = line * (chunk // len(line))
    sent = 0
    while sent < size:
        yield block
        sent += len(block)
    yield b"\r\n--" + boundary + b"--\r\n"


def _asgi_post(app, path: str, chunks, headers: dict[str, str]):
    """Drive the ASGI app directly: (status, body, bytes of the request body the app pulled)."""
    pulled = 0
    it = iter(chunks)
    messages: list[dict] = []

    async def receive():
        nonlocal pulled
        try:
            data = next(it)
        except StopIteration:
            return {"type": "http.request", "body": b"", "more_body": False}
        pulled += len(data)
        return {"type": "http.request", "body": data, "more_body": True}

    async def send(message):
        messages.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
             "method": "POST", "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
             "root_path": "", "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80),
             "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()], "app": app}
    asyncio.run(app(scope, receive, send))
    status = next(m["status"] for m in messages if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in messages if m["type"] == "http.response.body")
    return status, json.loads(body), pulled


def test_an_upload_stops_being_read_past_the_limit(tmp_path):
    limit = 1 << 20
    service = JobService(tmp_path / "data", Settings(concurrency=0, max_upload_bytes=limit))
    app = create_jobs_app(service, manage=False)
    status, body, pulled = _asgi_post(app, "/v1/files", _multipart(b"XyZ", 200 << 20),
                                      {"content-type": "multipart/form-data; boundary=XyZ"})
    assert status == 413 and body["error"]["code"] == "file_too_large", body
    assert pulled < limit + (256 << 10), f"read {pulled} bytes of a 200 MiB body with a 1 MiB limit"
    assert os.listdir(service.layout.files) == [], "a partial upload was left on disk"
    status, body, _ = _asgi_post(app, "/v1/files", _multipart(b"XyZ", 300 << 10),
                                 {"content-type": "multipart/form-data; boundary=XyZ"})
    assert status == 200 and body["bytes"] > 300 << 10, body
    assert len(os.listdir(service.layout.files)) == 1
    status, body, pulled = _asgi_post(app, "/v1/files", _multipart(b"XyZ", 200 << 20, name=b"setup.exe"),
                                      {"content-type": "multipart/form-data; boundary=XyZ"})
    assert status == 400 and body["error"]["code"] == "invalid_file_format" and pulled < 256 << 10, (body, pulled)


def test_a_full_disk_on_upload_is_a_507_and_leaves_no_file(serve, chat_file, monkeypatch):
    s = serve(concurrency=0)
    import builtins

    real_open = builtins.open

    def full_disk(path, mode="r", *a, **k):  # the kernel's own ENOSPC: writes to /dev/full fail with it
        if "w" in str(mode) and Path(path).parent == s.service.layout.files:
            return real_open("/dev/full", mode, *a, **k)
        return real_open(path, mode, *a, **k)

    monkeypatch.setattr(builtins, "open", full_disk)
    with pytest.raises(openai.APIStatusError) as e:
        s.upload(chat_file)
    monkeypatch.setattr(builtins, "open", real_open)
    assert e.value.status_code == 507 and "disk is full" in e.value.message, e.value
    assert os.listdir(s.service.layout.files) == []

    def db_full(*a, **k):
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(s.service.store, "add_file", db_full)
    with pytest.raises(openai.APIStatusError) as e:
        s.upload(chat_file)
    assert e.value.status_code == 507
    assert os.listdir(s.service.layout.files) == [], "the stored file outlived its failed row"
    monkeypatch.undo()
    file_id = s.upload(chat_file)
    monkeypatch.setattr(s.service.store, "add_job", db_full)
    r = httpx.post(f"{s.base_url}/fine_tuning/jobs", json={"training_file": file_id})
    assert r.status_code == 507 and r.json()["error"]["code"] == "insufficient_storage", r.text


def test_model_paths_only_under_model_roots_and_no_existence_oracle(serve, chat_file, tmp_path, tiny_llama):
    s = serve(concurrency=0, model_roots=(str(tiny_llama.parent),))
    file_id = s.upload(chat_file)

    def create(model):
        return httpx.post(f"{s.base_url}/fine_tuning/jobs", json={"model": model, "training_file": file_id})

    shadow, missing = create("/etc/shadow"), create("/etc/no-such-file-at-all")
    assert shadow.status_code == missing.status_code == 400
    assert shadow.json()["error"]["message"].replace("shadow", "X") == \
        missing.json()["error"]["message"].replace("no-such-file-at-all", "X")
    assert shadow.json()["error"]["param"] == "model" and "--model-root" in shadow.json()["error"]["message"]
    escape = tmp_path / "escape"
    escape.symlink_to("/etc")
    link_in_root = tiny_llama.parent / "link-out"
    link_in_root.symlink_to(tmp_path)
    for model in (f"{tiny_llama.parent}/../../etc", str(link_in_root / "x")):
        assert create(model).status_code == 400, model
    ok = create(str(tiny_llama))
    assert ok.status_code == 200 and ok.json()["model"] == str(tiny_llama.resolve()), ok.text
    inside_missing = create(str(tiny_llama.parent / "not-there"))
    assert inside_missing.status_code == 404  # inside a root the operator allowed: no secret to keep
    hub = create("someorg/some-model")
    assert hub.status_code == 400 and "--allow-hub-models" in hub.json()["error"]["message"], hub.text
    assert create(DEFAULT_MODEL).status_code == 200
    unknown_ft = create("ft:tiny:x:ftjob-aaaaaaaaaaaaaaaaaaaaaaaa")
    assert unknown_ft.status_code == 404 and unknown_ft.json()["error"]["param"] == "model"
    hubby = serve(concurrency=0, allow_hub_models=True)
    fid = hubby.upload(chat_file)
    r = httpx.post(f"{hubby.base_url}/fine_tuning/jobs", json={"model": "someorg/some-model", "training_file": fid})
    assert r.status_code == 200 and r.json()["model"] == "someorg/some-model"


ROWS = 1_000_000

MEASURE = textwrap.dedent("""
    import json, resource, sys, time
    from mmtune.jobs.service import JobService, Settings
    from mmtune.jobs.validate import check_upload
    service = JobService(sys.argv[1], Settings(concurrency=0))
    def peak():  # this process's high-water RSS (VmHWM: unlike ru_maxrss, not inherited across fork + exec)
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    with open(sys.argv[2], "rb") as f:
        row = service.upload_file("big.jsonl", "fine-tune", f)
    idle = peak()
    t = time.time()
    check = check_upload(service.layout.file_path(row["id"] + ".jsonl"))
    print(json.dumps({"idle": idle, "peak": peak(), "seconds": time.time() - t, "rows": check["rows"],
                      "errors": check["errors"], "warnings": check["warnings"], "kept": len(check["findings"])}))
""")


@pytest.mark.slow
def test_validating_a_million_row_upload_stays_in_constant_memory(tmp_path):
    """Every row has a finding (the case that kept them all: 502 MB); the service must stay within 100 MB."""
    data = tmp_path / "big.jsonl"
    bad = json.dumps({"messages": [{"role": "wizard", "content": "hi"}, {"role": "assistant", "content": "yo"}]})
    with open(data, "w") as f:
        for _ in range(ROWS // 1000):
            f.write((bad + "\n") * 1000)
    out = subprocess.run([sys.executable, "-c", MEASURE, str(tmp_path / "svc"), str(data)], capture_output=True,
                         text=True, timeout=1800, env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    print(got)
    assert got["rows"] == ROWS and got["errors"] >= ROWS and got["kept"] == 100, got
    assert got["peak"] - got["idle"] < 100 * 2**20, f"peak {got['peak'] / 2**20:.0f} MiB, idle {got['idle'] / 2**20:.0f}"


def test_a_second_service_on_the_same_data_dir_is_one_line(tmp_path):
    data = tmp_path / "data"
    first = JobService(data, Settings(concurrency=0)).start()
    try:
        for argv in (["jobs", "serve", "--data-dir", str(data), "--port", "1"],
                     ["serve", "/no/such/model", "--data-dir", str(data), "--port", "1"]):
            out = subprocess.run([sys.executable, "-m", "mmtune.cli", *argv], capture_output=True, text=True,
                                 timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
            assert out.returncode == 2, out.stderr
            lines = out.stderr.strip().splitlines()
            assert len(lines) == 1 and "another mmtune jobs service" in lines[0], out.stderr
            assert "Traceback" not in out.stderr
    finally:
        first.close()


def test_the_jobs_apps_schema_and_docs_need_the_key(serve):
    s = serve(api_key="k", concurrency=0)
    root = s.base_url.removesuffix("/v1")
    assert httpx.get(f"{root}/health").json() == {"status": "ok"}
    for path in ("/docs", "/openapi.json", "/redoc"):
        r = httpx.get(f"{root}{path}")
        assert r.status_code in (401, 404) and "error" in r.json(), (path, r.status_code)
    keyed = {"Authorization": "Bearer k"}
    assert "/v1/fine_tuning/jobs" in httpx.get(f"{root}/openapi.json", headers=keyed).json()["paths"]
    assert httpx.get(f"{root}/docs", headers=keyed).status_code == 200
