"""OpenAI's `integrations` on a fine-tuning job (W&B, the one type OpenAI defines), through the official
openai client: accepted, shown on the job, and turned into the run's --report-to wandb settings."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import httpx
import pytest

from mmtune.jobs.worker import train_config
from mmtune.models.registry import DEFAULT_MODEL

needs_wandb = pytest.mark.skipif(importlib.util.find_spec("wandb") is None,
                                 reason="wandb is in the `tracking` extra: pip install -e '.[tracking]'")


@needs_wandb
def test_wandb_integration_reaches_the_run_config(serve, chat_file, tmp_path):
    s = serve(concurrency=0)
    file_id = s.upload(chat_file)
    job = s.client.fine_tuning.jobs.create(
        model=DEFAULT_MODEL, training_file=file_id,
        integrations=[{"type": "wandb", "wandb": {"project": "persona", "tags": ["first"]}}])
    assert job.integrations[0].type == "wandb"
    assert job.integrations[0].wandb.project == "persona" and job.integrations[0].wandb.tags == ["first"]
    again = s.client.fine_tuning.jobs.retrieve(job.id)
    assert again.integrations[0].wandb.project == "persona"  # stored with the job, not only echoed

    row = s.service.store.get_job(job.id)
    cfg = train_config(row, Path(tmp_path / "d.jsonl"), None, tmp_path / "out")
    assert cfg.report_to == ["wandb"] and cfg.tracker_project == "persona"
    assert cfg.run_name == job.id  # OpenAI names the run after the job when no name is given
    assert cfg.tracker_tags == ["mmtune/finetune", f"mmtune/{DEFAULT_MODEL}", f"mmtune/{job.id}", "first"]


@pytest.mark.parametrize(("integrations", "param"), [
    ([{"type": "comet", "comet": {}}], "integrations[0].type"),
    ([{"type": "wandb"}], "integrations[0].wandb"),
    ([{"type": "wandb", "wandb": {"name": "x"}}], "integrations[0].wandb.project"),
    ([{"type": "wandb", "wandb": {"project": "p", "tagz": []}}], "integrations[0].wandb"),
    ([{"type": "wandb", "wandb": {"project": "p", "tags": "a"}}], "integrations[0].wandb.tags"),
    ({"type": "wandb"}, "integrations"),
])
def test_bad_integrations_are_refused_naming_the_field(shared, integrations, param):
    r = httpx.post(f"{shared.base_url}/fine_tuning/jobs",
                   json={"model": DEFAULT_MODEL, "training_file": shared.file_id, "integrations": integrations})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param
