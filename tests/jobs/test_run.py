"""Jobs that really train (a tiny random model, a few steps): cancel, and a service killed with
SIGKILL mid-job that, started again, resumes the job from its checkpoint to success."""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest

from mmtune.jobs.service import JobService

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "data"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return not Path(f"/proc/{pid}/stat").exists() or Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


def _wait(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_cancel_stops_the_training_process(serve, tiny_llama, chat_file):
    s = serve(concurrency=1, kill_grace_s=5, model_roots=(str(tiny_llama.parent),))
    job = s.client.fine_tuning.jobs.create(model=str(tiny_llama), training_file=s.upload(chat_file),
                                           extra_body={"max_steps": 1000})
    pid = _wait(lambda: s.service.store.get_job(job.id)["pid"], 60, "the training process")
    assert s.client.fine_tuning.jobs.retrieve(job.id).status == "running" and _alive(pid)
    cancelled = s.client.fine_tuning.jobs.cancel(job.id)
    assert cancelled.status == "cancelled"
    _wait(lambda: not _alive(pid), 30, "the training process to end")
    _wait(lambda: s.service.store.get_job(job.id)["pid"] is None, 10, "the runner to let go")
    final = s.client.fine_tuning.jobs.retrieve(job.id)
    assert final.status == "cancelled" and final.fine_tuned_model is None and final.finished_at
    messages = [e.message for e in s.client.fine_tuning.jobs.list_events(job.id)]
    assert messages[:2] == ["Training process stopped", "Job cancelled"]
    with pytest.raises(openai.NotFoundError):
        s.client.fine_tuning.jobs.cancel("ftjob-" + "x" * 24)


def _start_server(data_dir: Path, port: int, log: Path, model_root: Path) -> subprocess.Popen:
    with open(log, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "mmtune.cli", "jobs", "serve", "--data-dir", str(data_dir),
                                 "--port", str(port), "--model-root", str(model_root)], stdout=out,
                                stderr=subprocess.STDOUT)

    def up() -> bool:
        assert proc.poll() is None, log.read_text()
        try:
            return httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    _wait(up, 60, "the jobs service to start")
    return proc


def test_sigkilled_service_resumes_job_from_checkpoint(tmp_path, tiny_llama):
    data, port, log = tmp_path / "data", free_port(), tmp_path / "server.log"
    server = _start_server(data, port, log, tiny_llama.parent)
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0)
    try:
        with open(EXAMPLES / "persona.jsonl", "rb") as f:
            file_id = client.files.create(file=("persona.jsonl", f), purpose="fine-tune").id
        job = client.fine_tuning.jobs.create(model=str(tiny_llama), training_file=file_id, suffix="resume", seed=3,
                                             hyperparameters={"batch_size": 2},
                                             extra_body={"max_steps": 4, "save_steps": 1})
        _wait(lambda: client.fine_tuning.jobs.checkpoints.list(job.id).data, 120, "a first checkpoint")
        db = sqlite3.connect(data / "jobs.db")
        train_pid = db.execute("SELECT pid FROM jobs WHERE id = ?", (job.id,)).fetchone()[0]
        server.send_signal(signal.SIGKILL)
        server.wait(10)
        _wait(lambda: not _alive(train_pid), 30, "the training process to die with the service")
        assert db.execute("SELECT status FROM jobs WHERE id = ?", (job.id,)).fetchone()[0] == "running"
        db.close()

        server = _start_server(data, port, log, tiny_llama.parent)
        deadline = time.monotonic() + 150
        while (done := client.fine_tuning.jobs.retrieve(job.id)).status not in ("succeeded", "failed"):
            assert time.monotonic() < deadline, "the resumed job did not finish"
            time.sleep(0.5)
        assert done.status == "succeeded", done.error
        assert done.fine_tuned_model == f"ft:tiny-llama:resume:{job.id}"
        assert done.trained_tokens > 0 and done.model_extra["estimated_cost"] == 0.0

        events = list(client.fine_tuning.jobs.list_events(job.id, limit=100))[::-1]  # oldest first
        messages = [e.message for e in events]
        assert any(m.startswith("The service restarted while this job was running") for m in messages)
        assert any(m.startswith("Resuming training from checkpoint at step") for m in messages)
        steps = [e.data["step"] for e in events if e.type == "metrics"]
        assert steps == [1, 2, 3, 4]  # every step once, none lost or repeated across the restart
        assert all(isinstance(e.data["loss"], float) and e.data["tokens"] > 0 for e in events if e.type == "metrics")
        assert messages[-1] == "The job has successfully completed"

        ckpts = client.fine_tuning.jobs.checkpoints.list(job.id).data
        assert [c.step_number for c in ckpts] == [4, 3]  # newest first; save_total_limit keeps two
        assert ckpts[0].fine_tuned_model_checkpoint == f"{done.fine_tuned_model}:ckpt-step-4"
        assert ckpts[0].metrics.step == 4 and ckpts[0].metrics.train_loss is not None
        csv = client.files.content(done.result_files[0]).text.splitlines()
        assert csv[0].startswith("step,train_loss") and [r.split(",")[0] for r in csv[1:]] == ["1", "2", "3", "4"]
        output = data / "jobs" / job.id / "output"
        assert (output / "adapter_model.safetensors").is_file()
        assert '"resumed_from": "checkpoint-' in (output / "summary.json").read_text()
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(30)
    assert JobService(data).fine_tuned_models() == {done.fine_tuned_model: output}
