"""A DPO job (OpenAI's `method: dpo`) on a vision-language model whose training file has image rows, in
OpenAI's own vision shape (`image_url` parts holding base64 data URLs): the upload's check decodes every
image and the job queues; an image that does not decode fails the job naming its line and rule."""

from __future__ import annotations

import base64
import json
from pathlib import Path

from tests.jobs.conftest import EXAMPLES

MODEL = "qwen2-vl-2b-instruct"


def data_url(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def image_pair(url: str, good: str, bad: str) -> dict:
    return {"input": {"messages": [{"role": "user", "content": [
                {"type": "text", "text": "What colour is the shape?"},
                {"type": "image_url", "image_url": {"url": url, "detail": "low"}}]}]},
            "preferred_output": [{"role": "assistant", "content": good}],
            "non_preferred_output": [{"role": "assistant", "content": bad}]}


def write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_a_dpo_job_on_image_pairs_passes_the_file_checks_and_queues(serve, tmp_path):
    s = serve(concurrency=0)
    rows = [image_pair(data_url(EXAMPLES / "media" / "red_circle.png"), "Red.", "Blue."),
            image_pair(data_url(EXAMPLES / "media" / "blue_square.png"), "Blue.", "Green."),
            {"input": {"messages": [{"role": "user", "content": "Say hello."}]},
             "preferred_output": [{"role": "assistant", "content": "Hello there."}],
             "non_preferred_output": [{"role": "assistant", "content": "No."}]}]
    pairs = s.upload(write(tmp_path / "image_pairs.jsonl", rows))
    job = s.client.fine_tuning.jobs.create(model=MODEL, training_file=pairs,
                                           method={"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.2}}})
    assert job.method.type == "dpo" and job.model_extra["mmtune"]["stage"] == "dpo"
    queued = s.service.wait_job(job.id, 30, ("queued", "failed"))
    assert queued["status"] == "queued", queued["error"]
    check = s.service.store.get_file(pairs)["check"]
    assert (check["kind"], check["checked_for"], check["rows"], check["errors"]) == ("preference", "preference", 3, 0)


def test_an_image_that_does_not_decode_fails_the_dpo_job_naming_its_line(serve, tmp_path):
    s = serve(concurrency=0)
    broken = "data:image/png;base64," + base64.b64encode(b"not a png at all").decode("ascii")
    rows = [image_pair(data_url(EXAMPLES / "media" / "red_circle.png"), "Red.", "Blue."),
            image_pair(broken, "Blue.", "Green.")]
    job = s.client.fine_tuning.jobs.create(model=MODEL, training_file=s.upload(write(tmp_path / "p.jsonl", rows)),
                                           method={"type": "dpo"})
    done = s.service.wait_job(job.id, 30)
    assert done["status"] == "failed" and done["error"]["code"] == "invalid_training_file"
    assert "line 2" in done["error"]["message"] and "media-undecodable" in done["error"]["message"], done["error"]
