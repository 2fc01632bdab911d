"""The runner's pieces that need no training: following metrics.jsonl across a resume's rewrite,
checkpoint scanning, the config a job trains with, model names and failure reasons."""

from __future__ import annotations

import json

import pytest

from mmtune.config import TrainConfig
from mmtune.jobs.params import Limits, resolve
from mmtune.jobs.worker import (
    MetricsTail,
    drop_incomplete_checkpoints,
    estimate_total_steps,
    fine_tuned_model_name,
    log_error,
    metrics_csv,
    scan_checkpoints,
    train_config,
)


def _job(**own):
    params = resolve({"n_epochs": 2, "batch_size": 4}, own, Limits())
    return {"id": "ftjob-abcdefgh12345678", "model": "/models/My Model", "suffix": None, "seed": 5, "params": params}


def test_metrics_tail_reads_complete_lines_and_follows_a_rewrite(tmp_path):
    path = tmp_path / "metrics.jsonl"
    tail = MetricsTail(path)
    assert tail.read() is None  # no file yet
    path.write_text(json.dumps({"step": 1, "loss": 2.0}) + "\n" + '{"step": 2, "lo')  # second line unfinished
    assert tail.read() == [{"step": 1, "loss": 2.0}]
    assert tail.read() is None  # unchanged
    path.write_text("".join(json.dumps({"step": s, "loss": 1.0}) + "\n" for s in (1, 2, 3)))
    assert [r["step"] for r in tail.read()] == [1, 2, 3]
    path.write_text(json.dumps({"step": 1, "loss": 1.5}) + "\n")  # a resume rewrites it shorter
    assert tail.read() == [{"step": 1, "loss": 1.5}]


def test_checkpoints_complete_ones_counted_half_written_ones_dropped(tmp_path):
    for step, complete in ((2, True), (4, True), (6, False)):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        if complete:
            (folder / "trainer_state.json").write_text("{}")
    (tmp_path / "checkpoint-notes").mkdir()
    assert scan_checkpoints(tmp_path) == {2: "checkpoint-2", 4: "checkpoint-4"}
    assert sorted(drop_incomplete_checkpoints(tmp_path)) == ["checkpoint-6", "checkpoint-notes"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-2", "checkpoint-4"]


def test_train_config_carries_every_job_setting(tmp_path):
    job = _job(preset="quality", lora_rank=4, max_steps=7, max_length=300)
    cfg = train_config(job, tmp_path / "d.jsonl", tmp_path / "v.jsonl", tmp_path / "out")
    assert isinstance(cfg, TrainConfig)
    assert (cfg.epochs, cfg.batch_size, cfg.lora_rank, cfg.lora_alpha, cfg.max_steps, cfg.max_length) == (
        2, 4, 4, 64, 7, 300)
    assert cfg.learning_rate == pytest.approx(1e-4) and cfg.seed == 5 and cfg.preset == "quality"
    assert cfg.data == [str(tmp_path / "d.jsonl")] and cfg.val_data == [str(tmp_path / "v.jsonl")]
    assert TrainConfig.from_yaml(cfg.save(tmp_path)) == cfg  # what the subprocess reads back
    assert estimate_total_steps(job, 100) == 7
    assert estimate_total_steps(_job(), 9) == 3 * 2  # ceil(9 / 4) x 2 epochs


def test_fine_tuned_model_names():
    job = _job()
    assert fine_tuned_model_name(job) == "ft:My Model::ftjob-abcdefgh12345678"
    assert fine_tuned_model_name({**job, "model": "smollm2-135m-instruct", "suffix": "x"}) == (
        "ft:smollm2-135m-instruct:x:ftjob-abcdefgh12345678")
    assert fine_tuned_model_name({**job, "model": "/m/SmolLM2.Q4.gguf"}).startswith("ft:SmolLM2.Q4::")


def test_log_error_prefers_the_user_error_line(tmp_path):
    log = tmp_path / "train.log"
    log.write_text("loading\nerror: data.jsonl:3: no assistant turn: add one\nbye\n")
    assert log_error(log) == "data.jsonl:3: no assistant turn: add one"
    log.write_text("Traceback ...\nRuntimeError: boom\n")
    assert log_error(log) == "RuntimeError: boom"
    assert log_error(tmp_path / "missing.log") == "no log was written"


def test_metrics_csv_merges_train_and_eval_rows():
    text = metrics_csv([{"step": 1, "loss": 2.5, "lr": 1e-4, "tokens": 10, "trained_tokens": 4},
                        {"step": 1, "eval_loss": 2.0}, {"step": 2, "loss": 2.25}]).decode()
    assert text.splitlines() == ["step,train_loss,valid_loss,learning_rate,tokens,trained_tokens,epoch",
                                 "1,2.5,2.0,0.0001,10,4,", "2,2.25,,,,,"]
