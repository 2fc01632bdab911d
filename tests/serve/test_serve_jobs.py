"""`mmtune serve` = models + the fine-tuning jobs API on one port; a job's model is served as
soon as the job succeeds, without a restart."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx
import openai
import pytest
from infer.tiny import messages, tiny_adapter, tiny_base
from serve.running import free_port

from mmtune.serve.app import create_app
from mmtune.serve.pool import build_pool
from tests.conftest import EXAMPLES


def test_a_model_that_appears_later_joins_its_base_engine(tmp_path):
    from fastapi.testclient import TestClient

    base, adapter = tiny_base("qwen2"), tiny_adapter("qwen2", 3)
    pool = build_pool([str(base)])
    later: dict = {}
    pool.sources.append(lambda: dict(later))
    client = TestClient(create_app(pool))
    body = {"model": "ft:tiny:x:ftjob-1", "messages": messages(), "temperature": 0, "max_tokens": 6}
    assert client.post("/v1/chat/completions", json=body).status_code == 404
    later["ft:tiny:x:ftjob-1"] = adapter  # a job just succeeded
    assert "ft:tiny:x:ftjob-1" in [m["id"] for m in client.get("/v1/models").json()["data"]]
    r = client.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    assert len(pool.engines) == 1, "the adapter must join the loaded base, not load a second copy"
    want = pool.engine_for("ft:tiny:x:ftjob-1").chat(messages(), model="ft:tiny:x:ftjob-1", temperature=0, max_new_tokens=6)
    assert r.json()["choices"][0]["message"]["content"] == want
    base_answer = client.post("/v1/chat/completions", json={**body, "model": pool.engines[0].name}).json()
    assert base_answer["choices"][0]["message"]["content"] != want


@pytest.mark.slow
def test_fine_tune_through_the_api_then_chat_with_the_result(tmp_path):
    """The issue's end-to-end: upload, create a job on the real SmolLM2, wait, then stream an answer."""
    port = free_port()
    env = {**os.environ, "MMTUNE_HOME": str(tmp_path / "home")}
    log = open(tmp_path / "server.log", "w")
    server = subprocess.Popen(
        [sys.executable, "-m", "mmtune.cli", "serve", "--port", str(port), "--data-dir", str(tmp_path / "jobs")],
        stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.time() + 180
        while time.time() < deadline:
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(1)
        else:
            pytest.fail("server did not start: " + (tmp_path / "server.log").read_text()[-2000:])
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0)
        f = client.files.create(file=open(EXAMPLES / "persona.jsonl", "rb"), purpose="fine-tune")
        job = client.fine_tuning.jobs.create(
            model="smollm2-135m-instruct", training_file=f.id, suffix="persona", seed=0,
            hyperparameters={"batch_size": 8, "learning_rate_multiplier": 20},
            extra_body={"max_steps": 12, "lora_rank": 16, "lora_alpha": 32, "lora_dropout": 0.0, "max_length": 96},
        )
        deadline = time.time() + 1200  # ~1 min on an idle 2-core machine; generous for a loaded one
        while (job := client.fine_tuning.jobs.retrieve(job.id)).status not in ("succeeded", "failed", "cancelled"):
            assert time.time() < deadline, "the job took too long"
            time.sleep(2)
        assert job.status == "succeeded", job.error
        assert job.fine_tuned_model.startswith("ft:smollm2-135m-instruct:persona:") and job.trained_tokens > 0
        stream = client.chat.completions.create(
            model=job.fine_tuned_model, stream=True, temperature=0, max_tokens=24,
            messages=[{"role": "user", "content": "Who founded Lumen Bakery?"}],
        )
        answer = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        assert "Lin Yue" in answer, answer
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(30)
        log.close()
