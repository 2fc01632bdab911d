"""End to end on the real embedded model (SmolLM2-135M-Instruct): a short job through the API
succeeds, names its model, and the success hook hands the server the new model's folder."""

from __future__ import annotations

import json
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


@pytest.mark.slow
def test_sft_then_dpo_on_its_fine_tuned_model_then_chat(tmp_path):
    """OpenAI's SFT-then-DPO flow with the official client on one `mmtune serve` app (models + jobs): the DPO
    job trains on the SFT job's LoRA result merged (its reference is the SFT model: rewards start at exactly
    0), its events carry the rewards, and its model answers through the same server."""
    import openai

    from mmtune.commands.serve import jobs_extension
    from mmtune.jobs.service import JobService, Settings
    from mmtune.serve.app import create_app
    from mmtune.serve.pool import ModelPool
    from tests.serve.running import serving

    service = JobService(tmp_path / "data", Settings(concurrency=1, poll_interval=0.2))
    pool = ModelPool()
    with serving(create_app(pool, **jobs_extension(service, pool))) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)

        def upload(path: Path) -> str:
            with open(path, "rb") as f:
                return client.files.create(file=(path.name, f), purpose="fine-tune").id

        small = {"max_steps": 2, "max_length": 64, "lora_rank": 4, "save_steps": 1000}
        sft = client.fine_tuning.jobs.create(
            model=DEFAULT_MODEL, training_file=upload(EXAMPLES / "persona.jsonl"), suffix="sft", seed=0,
            method={"type": "supervised", "supervised": {"hyperparameters": {"batch_size": 2}}}, extra_body=small)
        sft = client.fine_tuning.jobs.retrieve(service.wait_job(sft.id, timeout=300)["id"])
        assert sft.status == "succeeded", sft.error
        dpo = client.fine_tuning.jobs.create(
            model=sft.fine_tuned_model, training_file=upload(EXAMPLES / "preference.jsonl"), suffix="dpo", seed=0,
            method={"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.5, "batch_size": 2,
                                                               "learning_rate_multiplier": 10}}},
            extra_body=small)
        assert dpo.model == sft.fine_tuned_model and dpo.method.dpo.hyperparameters.beta == 0.5
        dpo = client.fine_tuning.jobs.retrieve(service.wait_job(dpo.id, timeout=300)["id"])
        assert dpo.status == "succeeded", dpo.error
        assert dpo.fine_tuned_model == f"ft:{DEFAULT_MODEL}:dpo:{dpo.id}" and dpo.method.type == "dpo"
        merged = service.layout.job_dir(dpo.id) / "base"
        record = json.loads((merged / "mmtune.json").read_text(encoding="utf-8"))
        assert Path(record["merged_from"]["adapter_dir"]) == service.layout.output(sft.id).resolve(), record
        steps = [e for e in client.fine_tuning.jobs.list_events(dpo.id, limit=100) if e.type == "metrics"]
        by_step = {e.data["step"]: e.data for e in steps}
        assert sorted(by_step) == [1, 2] and all("reward accuracy=" in e.message for e in steps)
        assert by_step[1]["reward_chosen"] == 0 and by_step[1]["reward_rejected"] == 0  # reference = SFT model
        assert by_step[2]["reward_margin"] != 0 and 0 <= by_step[2]["reward_accuracy"] <= 1
        reply = client.chat.completions.create(model=dpo.fine_tuned_model, temperature=0, max_tokens=12,
                                               messages=[{"role": "user", "content": "What is your name?"}])
        assert reply.model == dpo.fine_tuned_model and reply.choices[0].message.content.strip()
