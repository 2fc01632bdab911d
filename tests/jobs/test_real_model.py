"""End to end on the real embedded model (SmolLM2-135M-Instruct): a short job through the API
succeeds, names its model, and the success hook hands the server the new model's folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from mmtune.models.registry import DEFAULT_MODEL

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "data"


@pytest.mark.slow
def test_short_job_on_the_embedded_model(serve, tmp_path):
    s = serve(concurrency=1, price_per_million_tokens=2.0)
    served: list[tuple[str, Path, dict]] = []
    s.service.add_success_hook(lambda name, folder, job: served.append((name, folder, job)))
    rows = (EXAMPLES / "persona.jsonl").read_text(encoding="utf-8").splitlines()
    val = tmp_path / "val.jsonl"
    val.write_text("\n".join(rows[:2]) + "\n", encoding="utf-8")
    job = s.client.fine_tuning.jobs.create(
        model=DEFAULT_MODEL, training_file=s.upload(EXAMPLES / "persona.jsonl"), validation_file=s.upload(val),
        suffix="persona", hyperparameters={"batch_size": 1, "learning_rate_multiplier": 2},
        extra_body={"max_steps": 2, "max_length": 256, "lora_rank": 4})
    done = s.service.wait_job(job.id, timeout=240)
    assert done["status"] == "succeeded", done["error"]
    name = f"ft:{DEFAULT_MODEL}:persona:{job.id}"
    job = s.client.fine_tuning.jobs.retrieve(job.id)
    assert job.fine_tuned_model == name and job.trained_tokens > 0
    assert job.model_extra["estimated_cost"] == pytest.approx(job.trained_tokens / 1e6 * 2.0)
    output = s.service.layout.output(job.id)
    assert s.service.fine_tuned_models() == {name: output}
    assert served == [(name, output, served[0][2])] and served[0][2]["fine_tuned_model"] == name
    assert (output / "adapter_model.safetensors").is_file() and (output / "mmtune.json").is_file()
    events = list(s.client.fine_tuning.jobs.list_events(job.id, limit=100))
    assert any(e.type == "metrics" and "valid_loss" in e.data for e in events)  # validation file was used
    assert sum(e.type == "metrics" and "train_loss" in e.data for e in events) == 2
