"""A picture fine-tuning job end to end through the official openai client, on the tiny random FLUX pipeline:
`mmtune serve` (one server: the jobs API, the chat pool and the image pool) takes a zip of pictures, trains a
LoRA with the picture training command (a few steps at 16 px), reports loss and sample pictures, lists its
checkpoints, and serves `ft:flux...` at /v1/images/generations, where it draws another picture than its base
for the same seed, after a stop of the service mid-job from which it resumed at its picture checkpoint. Then
cancel."""

from __future__ import annotations

import base64
import io
import os
import signal
import threading
import time
import zipfile

import numpy as np
import openai
import pytest
import uvicorn
from PIL import Image

from tests.helpers.tiny_flux import MAX_T5_TOKENS, save_tiny_flux
from tests.serve.running import free_port

COLOURS = [(230, 200, 30), (240, 210, 40), (220, 190, 20)]
SETTINGS = {"trigger_word": "zkx", "repeats": 2, "resolution": 16, "save_steps": 2, "sample_steps": 1,
            "max_sequence_length": MAX_T5_TOKENS, "lora_rank": 4, "lora_alpha": 4.0}


def _png(colour) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), colour).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def pictures_zip(tmp_path_factory):
    path = tmp_path_factory.mktemp("zip") / "yellow.zip"
    with zipfile.ZipFile(path, "w") as zf:
        for i, colour in enumerate(COLOURS):
            zf.writestr(f"yellow/p{i}.png", _png(colour))
            zf.writestr(f"yellow/p{i}.txt", "a circle")
    return path


@pytest.fixture(scope="module")
def server(tmp_path_factory, pictures_zip):
    """`mmtune serve BASE --data-dir D --model-root R` on a real port (uvicorn.run replaced by a server we stop)."""
    from mmtune.cli import main

    root = tmp_path_factory.mktemp("picjobs")
    base = save_tiny_flux(root / "models" / "flux-tiny")
    holder: dict = {}

    def run(app, host, port, **kw):
        holder["server"] = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
        holder["server"].run()

    import mmtune.commands.serve as serve_command

    locked = serve_command._locked_service

    def keep_service(args):  # the service `mmtune serve` makes, for the test to stop and start it
        holder["service"] = locked(args)
        holder["service"].settings.poll_interval, holder["service"].settings.kill_grace_s = 0.1, 0.5
        return holder["service"]

    original, uvicorn.run = uvicorn.run, run
    serve_command._locked_service = keep_service
    port = free_port()
    args = ["serve", f"{base.name}={base}", "--data-dir", str(root / "data"), "--model-root", str(root / "models"),
            "--port", str(port), "--no-ui", "--api-key", "k"]
    thread = threading.Thread(target=lambda: holder.setdefault("rc", main(args)), daemon=True)
    thread.start()
    try:
        deadline = time.time() + 60
        while not (holder.get("server") and holder["server"].started):
            assert time.time() < deadline and thread.is_alive(), "the server did not start"
            time.sleep(0.05)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="k", max_retries=0)
        with open(pictures_zip, "rb") as f:
            file_id = client.files.create(file=("yellow.zip", f), purpose="fine-tune").id
        yield client, base, file_id, holder["service"]
    finally:
        uvicorn.run = original
        serve_command._locked_service = locked
        if holder.get("server"):
            holder["server"].should_exit = True
        thread.join(60)


def _wait(client, job_id, timeout=240, until=("succeeded", "failed", "cancelled")):
    deadline = time.monotonic() + timeout
    while True:
        job = client.fine_tuning.jobs.retrieve(job_id)
        if job.status in until:
            return job
        assert time.monotonic() < deadline, f"job still {job.status}"
        time.sleep(0.3)


def _pixels(item) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(item.b64_json))).convert("RGB"))


def test_a_picture_job_end_to_end_with_the_openai_client(server):
    """Train (stopped mid-run with the service, resumed from its picture checkpoint when the service starts
    again), events with loss and sample pictures, checkpoints, then `images.generate` against the base."""
    client, base, file_id, service = server
    job = client.fine_tuning.jobs.create(model=str(base), training_file=file_id, suffix="zkx", seed=1,
                                         hyperparameters={"learning_rate_multiplier": 500.0},
                                         extra_body={**SETTINGS, "max_steps": 12, "save_steps": 3})
    output = service.layout.output(job.id)
    deadline = time.monotonic() + 180
    while not (output / "checkpoint-3" / "state.json").is_file():
        assert time.monotonic() < deadline, client.fine_tuning.jobs.retrieve(job.id)
        time.sleep(0.02)
    os.killpg(service.store.get_job(job.id)["pid"], signal.SIGSTOP)  # frozen mid-run: it cannot finish
    service.close()  # SIGTERM, then SIGKILL: the run dies as with a killed service
    assert client.fine_tuning.jobs.retrieve(job.id).status == "running"  # cut off, not ended
    service.start()  # re-queued; the re-run passes --resume
    done = _wait(client, job.id)
    assert done.status == "succeeded", done.error
    assert done.fine_tuned_model == f"ft:flux-tiny:zkx:{job.id}"
    events = list(client.fine_tuning.jobs.list_events(job.id, limit=200))[::-1]
    messages = [e.message for e in events]
    assert "3 pictures unpacked and checked" in messages
    resumed = [m for m in messages if m.startswith("Resuming training from checkpoint at step ")]
    assert len(resumed) == 1 and int(resumed[0].rsplit(" ", 1)[1]) in (3, 6, 9)
    assert "resuming from checkpoint-" in service.layout.log(job.id).read_text()
    losses = [e.data for e in events if e.message.startswith("Step ")]
    assert [d["step"] for d in losses] == list(range(1, 13)) and all(np.isfinite(d["train_loss"]) for d in losses)
    samples = [e.data for e in events if e.message.startswith("Sample pictures")]
    assert samples[0]["step"] == 3 and samples[-1]["step"] == 12 and all(len(s["samples"]) == 1 for s in samples)
    assert samples[0]["samples"][0]["prompt"] == "zkx" and samples[-1]["samples"][0]["filename"] == "sample-0.png"
    picture = Image.open(io.BytesIO(client.files.content(samples[-1]["samples"][0]["file_id"]).content))
    assert picture.size == (16, 16)
    assert samples[-1]["samples"][0]["file_id"] in done.result_files
    checkpoints = client.fine_tuning.jobs.checkpoints.list(job.id).data
    assert sorted(c.step_number for c in checkpoints) == [6, 9]  # the last two kept
    at_9 = f"{done.fine_tuned_model}:ckpt-step-9"
    assert at_9 in [c.fine_tuned_model_checkpoint for c in checkpoints]
    models = [m.id for m in client.models.list()]
    assert {done.fine_tuned_model, at_9, "flux-tiny"} <= set(models)
    kw = dict(prompt="zkx, a circle", size="16x16", response_format="b64_json", extra_body={"seed": 7, "steps": 2})
    tuned = _pixels(client.images.generate(model=done.fine_tuned_model, **kw).data[0])
    again = _pixels(client.images.generate(model=done.fine_tuned_model, **kw).data[0])
    plain = _pixels(client.images.generate(model="flux-tiny", **kw).data[0])
    checkpoint = _pixels(client.images.generate(model=at_9, **kw).data[0])
    assert tuned.shape == (16, 16, 3) and np.array_equal(tuned, again)  # the same seed, the same picture
    assert not np.array_equal(tuned, plain) and not np.array_equal(tuned, checkpoint)  # the LoRA, and its progress
    with pytest.raises(openai.NotFoundError):  # a picture model is not a chat model
        client.chat.completions.create(model=done.fine_tuned_model, messages=[{"role": "user", "content": "hi"}])


def test_cancel_stops_a_picture_job(server):
    client, base, file_id, _ = server
    job = client.fine_tuning.jobs.create(model=str(base), training_file=file_id,
                                         extra_body={**SETTINGS, "max_steps": 100_000, "save_steps": 100_000})
    _wait(client, job.id, 60, ("running",))
    assert client.fine_tuning.jobs.cancel(job.id).status == "cancelled"
    deadline = time.monotonic() + 30
    while "Training process stopped" not in [e.message for e in client.fine_tuning.jobs.list_events(job.id)]:
        assert time.monotonic() < deadline, "the training process was not stopped"
        time.sleep(0.2)
    assert client.fine_tuning.jobs.retrieve(job.id).fine_tuned_model is None
