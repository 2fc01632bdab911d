"""The studio's tracked operations (GGUF export, evaluation; merge runs in the browser test) and token
lengths, in-process: the real CLI commands run as subprocesses on a tiny model; the API answers what
the studio shows."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from mmtune.jobs.api import create_jobs_router
from mmtune.jobs.errors import APIError, not_found
from mmtune.jobs.operations import Operations
from mmtune.jobs.service import JobService, Settings
from mmtune.jobs.studio import create_studio_router
from mmtune.serve.app import create_app
from mmtune.serve.pool import ModelPool

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples" / "data"
KEY = "ops-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    work = tmp_path_factory.mktemp("ops")
    service = JobService(work / "data", Settings(concurrency=0))
    service.start()
    files: dict[str, Path] = {}
    state = {"adapter": work / "not-built"}  # the tiny adapter, built by the test that runs on it

    def models() -> dict:
        adapter = state["adapter"]
        meta = adapter / "mmtune.json"
        return {"ft:tiny:x:ftjob-a": {"path": adapter, "job": "ftjob-a", "base": False, "validation_file": "file-val"},
                "ft:tiny:x:ftjob-b": {"path": work / "gone", "job": "ftjob-b", "base": False, "validation_file": None},
                "tiny-base": {"path": json.loads(meta.read_text())["base_model"] if meta.is_file() else "x",
                              "job": "ftjob-a", "base": True, "validation_file": "file-val"}}

    def file_path(file_id: str) -> Path:
        if file_id not in files:
            raise not_found("file", file_id, "file_id")
        return files[file_id]

    val = work / "val.jsonl"
    rows = [{"messages": [{"role": "user", "content": f"Say {w}."}, {"role": "assistant", "content": w}]}
            for w in ("yes", "no", "maybe")]
    val.write_text("".join(json.dumps(r) + "\n" for r in rows))
    files["file-val"] = val
    stopping = threading.Event()
    ops = Operations(work / "operations", models, file_path, stopping)
    app = create_app(ModelPool(), api_key=KEY, routers=(create_jobs_router(service),
                                                        create_studio_router(service, operations=ops)))
    c = TestClient(app)
    c.service, c.ops, c.work, c.state = service, ops, work, state
    yield c
    stopping.set()
    ops.wake()
    service.close()


def wait(client, op_id: str, timeout: float = 240) -> dict:
    deadline = time.time() + timeout
    while True:
        op = client.get(f"/v1/fine_tuning/operations/{op_id}", headers=AUTH).json()
        if op["status"] in ("succeeded", "failed", "cancelled"):
            return op
        assert time.time() < deadline, op
        time.sleep(0.3)


@pytest.mark.slow
def test_export_and_eval_run_the_cli_and_list_their_files(client):
    from infer.tiny import tiny_adapter

    client.state["adapter"] = tiny_adapter("llama")
    post = lambda body: client.post("/v1/fine_tuning/operations", headers=AUTH, json=body)  # noqa: E731
    export = post({"kind": "export", "model": "ft:tiny:x:ftjob-a", "dtype": "F16", "verify": False}).json()
    ev = post({"kind": "eval", "model": "ft:tiny:x:ftjob-a", "max_tokens": 4}).json()
    assert export["status"] == "queued" and export["params"] == {"dtype": "f16", "verify": False}
    assert ev["params"] == {"file_id": "file-val", "max_tokens": 4}  # the job's validation file by default
    listed = client.get("/v1/fine_tuning/operations?job_id=ftjob-a", headers=AUTH).json()["data"]
    assert [o["id"] for o in listed] == [ev["id"], export["id"]]  # newest first

    export = wait(client, export["id"])
    assert export["status"] == "succeeded", export
    [gguf] = export["files"]
    assert gguf["name"] == "ft-tiny-x-ftjob-a-f16.gguf" and gguf["bytes"] > 10_000
    data = client.get(f"/v1/fine_tuning/operations/{export['id']}/files/{gguf['name']}", headers=AUTH).content
    assert data[:4] == b"GGUF" and len(data) == gguf["bytes"]
    assert export["output_dir"].endswith("/output")
    for bad in ("../operation.json", "x/../../operation.json", "nope.bin", "../run.log"):
        assert client.get(f"/v1/fine_tuning/operations/{export['id']}/files/{bad}", headers=AUTH).status_code == 404

    ev = wait(client, ev["id"])
    assert ev["status"] == "succeeded", ev
    m = ev["metrics"]
    assert m["n"] == 3 and set(m) == {"exact_match", "bleu", "rouge_l", "n"}
    rows = client.get(f"/v1/fine_tuning/operations/{ev['id']}/rows", headers=AUTH).json()
    assert rows["total"] == 3 and [r["line"] for r in rows["data"]] == [1, 2, 3]
    assert [r["reference"] for r in rows["data"]] == ["yes", "no", "maybe"]
    from mmtune.infer.metrics import rouge_l

    for r in rows["data"]:  # each row's own scores, from the prediction the CLI wrote
        assert r["scores"]["rouge_l"] == pytest.approx(rouge_l([r["prediction"]], [r["reference"]]))
        assert r["prompt"][-1] == {"role": "user", "content": f"Say {r['reference']}."}
    log = client.get(f"/v1/fine_tuning/operations/{ev['id']}/log", headers=AUTH).json()
    assert "mmtune.cli infer" in log["text"] and "wrote 3 predictions" in log["text"]


def test_bad_requests_name_the_field_and_failures_carry_the_fix(client):
    post = lambda body: client.post("/v1/fine_tuning/operations", headers=AUTH, json=body)  # noqa: E731
    cases = [({"kind": "quantize", "model": "ft:tiny:x:ftjob-a"}, "kind"),
             ({"kind": "merge", "model": "ft:nope"}, "model"),
             ({"kind": "merge", "model": "tiny-base"}, "model"),  # a base has nothing to merge
             ({"kind": "export", "model": "ft:tiny:x:ftjob-a", "dtype": "q3"}, "dtype"),
             ({"kind": "eval", "model": "ft:tiny:x:ftjob-b"}, "file_id"),  # no validation file to default to
             ({"kind": "eval", "model": "ft:tiny:x:ftjob-a", "file_id": "file-nope"}, "file_id"),
             ({"kind": "eval", "model": "ft:tiny:x:ftjob-a", "max_tokens": 0}, "max_tokens"),
             ({"kind": "merge", "model": "ft:tiny:x:ftjob-a", "dtype": "f16"}, "dtype"),
             ({"kind": "merge", "model": "ft:tiny:x:ftjob-a", "colour": 1}, "colour")]
    for body, param in cases:
        r = post(body)
        assert r.status_code == 400 and r.json()["error"]["param"] == param, (body, r.text)
    assert client.get("/v1/fine_tuning/operations/op-nope", headers=AUTH).status_code == 404
    assert client.post("/v1/fine_tuning/operations", json={"kind": "merge"}).status_code == 401
    # a model whose folder is gone: the CLI's own error line, which names the fix
    op = wait(client, post({"kind": "export", "model": "ft:tiny:x:ftjob-b", "verify": False}).json()["id"])
    assert op["status"] == "failed" and op["error"]["code"] == "export_failed"
    assert "gone" in op["error"]["message"] and op["error"]["exit_status"] == 2
    assert client.post(f"/v1/fine_tuning/operations/{op['id']}/cancel", headers=AUTH).status_code == 400


def test_a_queued_operation_cancels_and_a_running_one_survives_a_restart(client, tmp_path):
    stopping = threading.Event()
    stopping.set()  # no runner thread: operations stay as the test puts them
    gate = threading.Event()
    models = {"m": {"path": "x", "job": "ftjob-a", "base": False, "validation_file": None}}
    ops = Operations(tmp_path, lambda: models if gate.is_set() else {}, lambda f: Path(f), stopping)
    with pytest.raises(APIError):
        ops.create({"kind": "merge", "model": "m"})  # not (yet) a model of a job
    gate.set()
    queued = ops.create({"kind": "merge", "model": "m"})
    assert ops.cancel(queued["id"])["status"] == "cancelled"
    other = ops.create({"kind": "merge", "model": "m"})
    ops._update(other["id"], status="running")  # as a server killed mid-run leaves it
    again = Operations(tmp_path, lambda: models, lambda f: Path(f), stopping)
    back = again.get(other["id"])
    assert back["status"] == "queued" and "runs again" in back["note"]
    assert again.get(queued["id"])["status"] == "cancelled"


def test_token_lengths_count_with_the_models_chat_template_and_flag_long_rows(client):
    with open(EXAMPLES / "persona.jsonl", "rb") as f:
        r = client.post("/v1/files", headers=AUTH, files={"file": ("persona.jsonl", f)}, data={"purpose": "fine-tune"})
    fid = r.json()["id"]
    r = client.get(f"/v1/files/{fid}/tokens?model=smollm2-135m-instruct&max_length=60", headers=AUTH)
    assert r.status_code == 200, r.text
    t = r.json()
    from mmtune.models.loader import load_tokenizer

    tok = load_tokenizer("smollm2-135m-instruct")
    rows = [json.loads(line) for line in (EXAMPLES / "persona.jsonl").read_text().splitlines()]
    expected = [len(tok.apply_chat_template(row["messages"], tokenize=True)["input_ids"]) for row in rows]
    assert t["rows"] == len(rows) and t["tokens"]["total"] == sum(expected) and t["tokens"]["max"] == max(expected)
    assert sum(b["count"] for b in t["histogram"]) == len(rows)
    assert t["over"] == [{"line": i + 1, "tokens": n} for i, n in enumerate(expected) if n > 60]
    assert t["rows_over_max_length"] == len(t["over"]) > 0
    assert t["tokens_over_max_length"] == sum(n - 60 for n in expected if n > 60)
    r = client.get(f"/v1/files/{fid}/tokens?model=gpt-9", headers=AUTH)
    assert r.status_code == 400 and r.json()["error"]["param"] == "model"


def test_prompts_split_each_row_into_its_conversation_and_reference(client):
    with open(EXAMPLES / "bad.jsonl", "rb") as f:
        r = client.post("/v1/files", headers=AUTH, files={"file": ("bad.jsonl", f)}, data={"purpose": "fine-tune"})
    fid = r.json()["id"]
    p = client.get(f"/v1/files/{fid}/prompts?limit=2", headers=AUTH).json()
    lines = [json.loads(x) for x in (EXAMPLES / "bad.jsonl").read_text().splitlines()[7:9]]
    # bad.jsonl's rows 1-4 and 7 are rejected by the checker, 6 holds an image; 5 (no answer) is a prompt
    # without a reference
    assert (p["total"], p["skipped"], p["skipped_media"]) == (4, 5, 1)
    assert [d["line"] for d in p["data"]] == [5, 8]
    assert p["data"][0]["reference"] is None
    assert p["data"][1]["messages"] == lines[0]["messages"][:-1]
    assert p["data"][1]["reference"] == lines[0]["messages"][-1]["content"]
    assert client.get(f"/v1/files/{fid}/prompts?offset=3", headers=AUTH).json()["data"][0]["line"] == 10
