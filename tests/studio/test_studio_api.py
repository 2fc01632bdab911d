"""The studio's server side: the static app at /ui (CSP, no key to load, nothing outside its folder)
and the API additions it calls (file check, raw lines, job estimate, log, trainable models)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from mmtune.jobs.api import create_jobs_router
from mmtune.jobs.service import JobService, Settings
from mmtune.jobs.studio import LOG_CHUNK, create_studio_router, job_bases, whole_chars
from mmtune.serve.app import create_app
from mmtune.serve.pool import ModelPool
from mmtune.serve.studio import CSP, UI_DIR, mount_ui

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples" / "data"
KEY = "studio-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    service = JobService(tmp_path_factory.mktemp("studio-data"), Settings(concurrency=0, price_per_million_tokens=3.0))
    service.start()
    app = create_app(ModelPool(), api_key=KEY, routers=(create_jobs_router(service), create_studio_router(service)),
                     unlimited_paths=("/v1/files",))
    mount_ui(app)
    client = TestClient(app)
    client.service = service
    yield client
    service.close()


def upload(client, path: Path) -> str:
    with open(path, "rb") as f:
        r = client.post("/v1/files", headers=AUTH, files={"file": (path.name, f)}, data={"purpose": "fine-tune"})
    assert r.status_code == 200, r.text
    return r.json()["id"]


def test_the_app_loads_without_a_key_under_a_strict_csp(app):
    r = app.get("/", follow_redirects=False)
    assert r.status_code == 307 and r.headers["location"] == "/ui/"
    page = app.get("/ui/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert page.headers["content-security-policy"] == CSP and CSP.startswith("default-src 'self'")
    assert page.headers["x-content-type-options"] == "nosniff"
    for asset in re.findall(r'(?:src|href)="(/ui/[^"]+)"', page.text):
        r = app.get(asset)
        assert r.status_code == 200 and r.headers["content-security-policy"] == CSP, asset
    js = app.get("/ui/app.js")
    assert js.headers["content-type"].startswith("text/javascript")
    for path in ("/ui/../jobs.db", "/ui/%2e%2e/studio.py", "/ui/nope.js", "/ui/studio.py"):
        assert app.get(path).status_code == 404, path
    assert app.get("/v1/fine_tuning/models").status_code == 401  # the API still needs the key


def test_every_asset_is_local_and_packaged():
    """Nothing is fetched from another origin, and pyproject's package-data ships every file."""
    pyproject = (ROOT / "pyproject.toml").read_text()
    files = [p for p in UI_DIR.rglob("*") if p.is_file()]
    assert {p.suffix for p in files} <= {".html", ".js", ".css", ".svg"}
    for suffix in {p.suffix for p in files}:
        assert f'"serve/ui/*{suffix}"' in pyproject
    for p in files:
        text = p.read_text(encoding="utf-8").replace('"http://www.w3.org/2000/svg"', "").replace("'http://www.w3.org/2000/svg'", "")
        assert not re.search(r"https?://|//[a-z0-9.-]+\.[a-z]{2,}/", text), p.name  # no remote script/font/style
        assert "innerHTML" not in text and "insertAdjacentHTML" not in text and "eval(" not in text, p.name


def test_both_languages_have_every_string():
    text = (UI_DIR / "i18n.js").read_text(encoding="utf-8")
    en, zh = (re.search(rf"\n  {lang}: {{(.*?)\n  }},", text, re.S).group(1) for lang in ("en", "zh"))
    keys = [set(re.findall(r"'([\w.]+)':", block)) for block in (en, zh)]
    assert keys[0] == keys[1] and len(keys[0]) > 100
    used = set()
    for p in UI_DIR.glob("*.js"):
        used |= set(re.findall(r"\bt\('([\w.]+)'", p.read_text(encoding="utf-8")))
    assert used <= keys[0], used - keys[0]


def test_file_check_lists_every_finding_under_either_rule_set(app):
    fid = upload(app, EXAMPLES / "bad.jsonl")
    report = app.get(f"/v1/files/{fid}/check", headers=AUTH).json()
    assert report["job_rules"] == "strict" and report["rules"] == "strict"  # an openai .jsonl: what a job applies
    assert (report["errors"], report["warnings"], report["rows"]) == (6, 0, 10)
    default = app.get(f"/v1/files/{fid}/check?rules=default", headers=AUTH).json()
    assert (default["format"], default["kind"], default["errors"], default["warnings"]) == ("openai", "sft", 7, 3)
    got = [(f["line"], f["severity"], f["rule"]) for f in default["findings"]]
    assert got == [(1, "error", "unknown-role"), (2, "error", "invalid-json"), (3, "error", "empty-field"),
                   (4, "error", "not-alternating"), (5, "error", "no-assistant"), (6, "error", "media-missing"),
                   (7, "error", "system-not-first"), (9, "warning", "duplicate-row"), (10, "warning", "whitespace"),
                   (10, "warning", "short-answer")]
    assert default["findings"][0]["field"] == "messages[1].role" and "assistant" in default["findings"][0]["message"]
    r = app.get(f"/v1/files/{fid}/check?rules=lenient", headers=AUTH)
    assert r.status_code == 400 and r.json()["error"]["param"] == "rules"
    r = app.get("/v1/files/file-doesnotexist0000/check", headers=AUTH)
    assert r.status_code == 404 and r.json()["error"]["param"] == "file_id"


def test_lines_give_the_raw_row(app):
    fid = upload(app, EXAMPLES / "bad.jsonl")
    lines = (EXAMPLES / "bad.jsonl").read_text(encoding="utf-8").splitlines()
    r = app.get(f"/v1/files/{fid}/lines?line=2&count=3", headers=AUTH).json()
    assert [(d["line"], d["text"]) for d in r["data"]] == [(2, lines[1]), (3, lines[2]), (4, lines[3])]
    assert app.get(f"/v1/files/{fid}/lines?line=99", headers=AUTH).json()["data"] == []
    assert app.get(f"/v1/files/{fid}/lines?line=0", headers=AUTH).json()["error"]["param"] == "line"


def test_estimate_resolves_and_counts_without_creating_anything(app):
    fid = upload(app, EXAMPLES / "persona.jsonl")
    before = app.get("/v1/fine_tuning/jobs", headers=AUTH).json()["data"]
    body = {"model": "smollm2-135m-instruct", "training_file": fid, "preset": "fast",
            "hyperparameters": {"batch_size": 4}, "lora_rank": 8, "max_length": 512}
    r = app.post("/v1/fine_tuning/jobs/estimate", headers=AUTH, json=body)
    assert r.status_code == 200, r.text
    e = r.json()
    rows = len((EXAMPLES / "persona.jsonl").read_text().splitlines())
    assert e["hyperparameters"]["n_epochs"] == 2 and e["hyperparameters"]["batch_size"] == 4  # fast preset + override
    assert e["mmtune"]["lora_rank"] == 8 and e["mmtune"]["lora_alpha"] == 16 and e["mmtune"]["learning_rate"] == 1e-4
    assert e["file_check"]["rows"] == rows and e["total_steps"] == -(-rows // 4) * 2
    assert e["tokens"]["total"] == 2 * e["tokens"]["per_epoch"] and 10 * rows < e["tokens"]["per_epoch"] < 512 * rows
    assert e["estimated_cost"] == pytest.approx(e["tokens"]["total"] / 1e6 * 3.0)
    assert set(e["memory_gib"]) == {"full", "lora", "qlora"}
    assert e["memory_gib"]["qlora"]["total"] < e["memory_gib"]["lora"]["total"] < e["memory_gib"]["full"]["total"]
    assert e["free_memory_gib"] > 0 and e["fits"] is True
    assert e["time_s"] is None and "no succeeded job" in e["time_basis"]
    assert app.get("/v1/fine_tuning/jobs", headers=AUTH).json()["data"] == before  # a dry run
    r = app.post("/v1/fine_tuning/jobs/estimate", headers=AUTH, json={**body, "lora_rank": 0})
    assert r.status_code == 400 and r.json()["error"]["param"] == "lora_rank"  # the same 400 as create
    r = app.post("/v1/fine_tuning/jobs/estimate", headers=AUTH, json={**body, "lora_rnak": 4})
    assert r.status_code == 400 and "lora_rank" in r.json()["error"]["message"]
    assert app.post("/v1/fine_tuning/jobs/estimate", json=body).status_code == 401


def test_log_reads_from_an_offset_and_never_cuts_a_character(app):
    fid = upload(app, EXAMPLES / "persona.jsonl")
    job = app.post("/v1/fine_tuning/jobs", headers=AUTH, json={"training_file": fid}).json()
    empty = app.get(f"/v1/fine_tuning/jobs/{job['id']}/log", headers=AUTH).json()
    assert (empty["text"], empty["next_offset"]) == ("", 0)
    log = app.service.layout.log(job["id"])
    log.parent.mkdir(parents=True, exist_ok=True)
    text = "a" * (LOG_CHUNK - 1) + "é" + "\nline two 训练\n"  # é straddles the chunk boundary
    log.write_text(text, encoding="utf-8")
    first = app.get(f"/v1/fine_tuning/jobs/{job['id']}/log?offset=0", headers=AUTH).json()
    assert first["text"] == "a" * (LOG_CHUNK - 1) and first["next_offset"] == LOG_CHUNK - 1
    rest = app.get(f"/v1/fine_tuning/jobs/{job['id']}/log?offset={first['next_offset']}", headers=AUTH).json()
    assert first["text"] + rest["text"] == text and rest["next_offset"] == rest["size"] == len(text.encode())
    tail = app.get(f"/v1/fine_tuning/jobs/{job['id']}/log?offset=-20", headers=AUTH).json()
    assert tail["text"] == "line two 训练\n"  # from the next whole line
    assert app.get("/v1/fine_tuning/jobs/ftjob-doesnotexist0000/log", headers=AUTH).status_code == 404
    assert whole_chars("训".encode()[:2]) == 0 and whole_chars(b"ab") == 2 and whole_chars("x训".encode()) == 4


def test_trainable_models_and_job_bases(app):
    r = app.get("/v1/fine_tuning/models", headers=AUTH).json()
    by_id = {m["id"]: m for m in r["data"]}
    assert by_id["smollm2-135m-instruct"]["default"] and by_id["smollm2-135m-instruct"]["accepts"] == ["text"]
    assert any("images" in m["accepts"] for m in r["data"]) and any("video" in m["accepts"] for m in r["data"])
    assert set(r["presets"]) == {"standard", "quality", "fast"} and "lora" in r["methods"]
    fid = upload(app, EXAMPLES / "persona.jsonl")
    app.post("/v1/fine_tuning/jobs", headers=AUTH, json={"training_file": fid, "model": "smollm2-135m-instruct"})
    assert job_bases(app.service)() == {"smollm2-135m-instruct": "smollm2-135m-instruct"}
    json.dumps(r)


@pytest.mark.parametrize("flags", [[], ["--no-ui"], ["--no-jobs"]])
def test_mmtune_serve_mounts_the_studio_unless_told_not_to(flags, tmp_path, monkeypatch):
    """`mmtune serve` as the CLI runs it (the model load and uvicorn replaced): /ui and the studio routes
    are there by default, gone with --no-ui; without the jobs API the page still loads."""
    import uvicorn

    import mmtune.serve.pool as pool_module
    from mmtune.cli import build_parser

    apps = []
    monkeypatch.setattr(pool_module, "build_pool", lambda *a, **k: ModelPool())
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: apps.append(app))
    args = build_parser().parse_args(["serve", "--data-dir", str(tmp_path / "d"), "--api-key", KEY, *flags])
    assert args.func(args) == 0
    with TestClient(apps[0]) as client:
        page = client.get("/ui/")
        assert page.status_code == (404 if "--no-ui" in flags else 200)
        models = client.get("/v1/fine_tuning/models", headers=AUTH)
        assert models.status_code == (404 if "--no-jobs" in flags else 200)
