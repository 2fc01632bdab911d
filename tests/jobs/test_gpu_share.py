"""The local service shares its GPUs out among the jobs it runs at once (jobs/gpus.py): each running job
sees only its own devices, a job whose GPUs are taken waits while later jobs that fit start, and a job
asking for more GPUs than the service has is refused when it is created. The training processes here
are a stand-in interpreter that records what it was given (this machine has no GPU to train on)."""

from __future__ import annotations

import json
import stat
import time

import httpx
import pytest

from mmtune.errors import UserError
from mmtune.jobs.gpus import GpuPool, parse_devices
from mmtune.models.registry import DEFAULT_MODEL


def test_pool_first_fit_and_release():
    pool = GpuPool(("0", "1", "2"))
    two, none = {"mmtune": {"gpus": 2}}, {"mmtune": {}}
    assert pool.need(none) == 1 and pool.need(two) == 2
    assert pool.take("a", two) == ("0", "1")
    assert not pool.fits(two) and pool.fits(none)
    assert pool.take("b", two) is None  # nothing is held for a job that did not get its GPUs
    assert pool.take("c", none) == ("2",) and pool.free() == ()
    pool.give_back("a")
    assert pool.free() == ("0", "1") and pool.take("b", two) == ("0", "1")
    assert pool.held() == {"b": ("0", "1"), "c": ("2",)}
    assert "asks for 4 GPUs but this service has 3 (0, 1, 2)" in pool.problem(4) and pool.problem(3) is None


def test_a_pool_without_devices_counts_nothing():
    pool = GpuPool(())
    assert pool.need({"mmtune": {"gpus": 4}}) == 0 and pool.take("a", {"mmtune": {"gpus": 4}}) == ()
    assert pool.problem(4) is None  # on a CPU machine gpus is the number of training processes


def test_device_lists():
    assert parse_devices("0, 1,3") == ("0", "1", "3") and parse_devices("none") == () == parse_devices("")
    assert parse_devices("GPU-5d2c,GPU-77aa") == ("GPU-5d2c", "GPU-77aa")
    with pytest.raises(UserError, match="names a device twice"):
        parse_devices("0,0")
    with pytest.raises(UserError, match="separated by commas"):
        parse_devices("0,,1")


def fake_python(tmp_path, seconds: float):
    """An interpreter stand-in: appends its job folder, CUDA_VISIBLE_DEVICES and start/end times to a log."""
    log = tmp_path / "runs.jsonl"
    script = tmp_path / "python"
    script.write_text(f"""#!/bin/sh
start=$(date +%s.%N)
sleep {seconds}
printf '{{"dir": "%s", "gpus": "%s", "start": %s, "end": %s}}\\n' "$PWD" "$CUDA_VISIBLE_DEVICES" "$start" \\
  "$(date +%s.%N)" >> {log}
exit 3
""")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return script, log


def test_jobs_get_their_own_gpus_and_wait_for_taken_ones(serve, chat_file, tmp_path):
    python, log = fake_python(tmp_path, 2.0)
    s = serve(concurrency=3, gpus=("0", "1", "2"), python=str(python), poll_interval=0.1)
    file_id = s.upload(chat_file)
    r = httpx.post(f"{s.base_url}/fine_tuning/jobs", json={"model": DEFAULT_MODEL, "training_file": file_id, "gpus": 4})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == "gpus" and "asks for 4 GPUs but this service has 3" in err["message"]

    a = s.client.fine_tuning.jobs.create(model=DEFAULT_MODEL, training_file=file_id, extra_body={"gpus": 2})
    s.service.wait_job(a.id, 60, ("running",))
    b = s.client.fine_tuning.jobs.create(model=DEFAULT_MODEL, training_file=file_id, extra_body={"gpus": 2})
    c = s.client.fine_tuning.jobs.create(model=DEFAULT_MODEL, training_file=file_id)  # no ask: one GPU
    for job in (a, b, c):
        s.service.wait_job(job.id, 60, ("failed",))  # (the stand-in trains nothing)
    runs = {json.loads(x)["dir"].rsplit("/", 1)[-1]: json.loads(x) for x in log.read_text().splitlines()}
    by_job = {j.id: next(v for k, v in runs.items() if j.id in k) for j in (a, b, c)}
    assert by_job[a.id]["gpus"] == "0,1" and by_job[c.id]["gpus"] == "2" and by_job[b.id]["gpus"] == "0,1"
    assert by_job[c.id]["start"] < by_job[a.id]["end"]  # the later one-GPU job did not wait behind b
    assert by_job[b.id]["start"] >= by_job[a.id]["end"] - 0.05  # b waited for a's GPUs
    waited = [e["message"] for e in s.service.store.all_events(b.id) if e["message"].startswith("Waiting")]
    assert waited == ["Waiting for 2 GPUs: 1 of 3 are free (the others are in use by running jobs)"] or waited == [
        "Waiting for 2 GPUs: 0 of 3 are free (the others are in use by running jobs)"], waited
    started = [e for e in s.service.store.all_events(b.id) if e["message"].startswith("Fine-tuning job started")]
    assert started[0]["message"] == "Fine-tuning job started on GPU 0, 1" and started[0]["data"] == {"gpus": ["0", "1"]}
    deadline = time.monotonic() + 10
    while s.service.gpus.held() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert s.service.gpus.held() == {}  # every job gave its GPUs back
