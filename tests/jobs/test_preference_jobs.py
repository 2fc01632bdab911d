"""Preference jobs (OpenAI's `method: dpo`, mmtune's other stages through extra_body) through the
official openai client, without training (`concurrency=0`): what is accepted, echoed, refused and
validated; and the runner's pieces for them (config, names, reward events, result file)."""

from __future__ import annotations

import csv
import io
import json

import openai
import pytest

from mmtune.jobs.params import Limits, ModelRules, parse_create, resolve
from mmtune.jobs.worker import fine_tuned_model_name, metrics_csv, rewards_text, train_config
from mmtune.models.registry import DEFAULT_MODEL
from tests.jobs.conftest import EXAMPLES

PAIRS = EXAMPLES / "preference.jsonl"
KTO = EXAMPLES / "preference_kto.jsonl"


def test_dpo_job_echoes_openai_method_and_validates_pairs(serve):
    s = serve(concurrency=0)
    pairs = s.upload(PAIRS)
    job = s.client.fine_tuning.jobs.create(
        model=DEFAULT_MODEL, training_file=pairs, suffix="dpo",
        method={"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.25, "n_epochs": 2, "batch_size": 4}}})
    assert job.method.type == "dpo" and job.method.supervised is None
    hyper = job.method.dpo.hyperparameters
    assert (hyper.beta, hyper.n_epochs, hyper.batch_size, hyper.learning_rate_multiplier) == (0.25, 2, 4, 1.0)
    assert job.model_extra["mmtune"]["stage"] == "dpo" and job.model_extra["mmtune"]["beta"] == 0.25
    queued = s.service.wait_job(job.id, 30, ("queued", "failed"))
    assert queued["status"] == "queued", queued["error"]
    assert queued["mmtune"]["total_steps"] == 5 * 2  # 20 pairs / batch 4 x 2 epochs
    check = s.service.store.get_file(pairs)["check"]
    assert (check["kind"], check["checked_for"], check["rules"], check["rows"]) == ("preference", "preference",
                                                                                    "default", 20)
    auto = s.client.fine_tuning.jobs.create(model=DEFAULT_MODEL, training_file=pairs, method={"type": "dpo"})
    assert auto.method.dpo.hyperparameters.beta == 0.1  # "auto": DPO's 0.1
    simpo = s.client.fine_tuning.jobs.create(model=DEFAULT_MODEL, training_file=pairs,
                                             extra_body={"stage": "simpo", "simpo_gamma": 1.0})
    assert simpo.method.type == "dpo" and simpo.method.dpo.hyperparameters.beta == 2.0  # SimPO's own default
    assert simpo.model_extra["mmtune"]["stage"] == "simpo" and simpo.model_extra["mmtune"]["simpo_gamma"] == 1.0
    kto = s.client.fine_tuning.jobs.create(model=DEFAULT_MODEL, training_file=s.upload(KTO),
                                           method={"type": "dpo"}, extra_body={"stage": "kto"})
    assert kto.method.type == "dpo" and kto.model_extra["mmtune"]["stage"] == "kto"
    assert s.service.wait_job(kto.id, 30, ("queued", "failed"))["status"] == "queued"
    sft = s.client.fine_tuning.jobs.create(model=DEFAULT_MODEL, training_file=s.upload(EXAMPLES / "persona.jsonl"))
    assert sft.method.type == "supervised" and sft.method.dpo is None
    assert sft.model_extra["mmtune"]["stage"] == "sft" and "beta" not in sft.model_extra["mmtune"]


@pytest.mark.parametrize(("data", "body", "param", "fix"), [
    (PAIRS, {}, "training_file", 'method={"type": "dpo"}'),
    (PAIRS, {"method": {"type": "supervised"}}, "training_file", 'method={"type": "dpo"}'),
    (KTO, {"method": {"type": "dpo"}}, "training_file", '"stage": "kto"'),
    (EXAMPLES / "persona.jsonl", {"method": {"type": "dpo"}}, "training_file", 'method={"type": "supervised"}'),
    (EXAMPLES / "persona.jsonl", {"extra_body": {"stage": "kto"}}, "training_file", "supervised"),
])
def test_a_file_of_another_kind_is_a_400_naming_the_method(serve, data, body, param, fix):
    s = serve(concurrency=0)
    body = dict(body)
    extra = body.pop("extra_body", {})
    with pytest.raises(openai.BadRequestError) as e:
        s.client.fine_tuning.jobs.create(model=DEFAULT_MODEL, training_file=s.upload(data), extra_body=extra, **body)
    err = e.value.body
    assert err["param"] == param and err["code"] == "invalid_file_kind" and fix in err["message"], err
    assert data.name in err["message"]
    assert s.client.fine_tuning.jobs.list().data == []


def test_a_validation_file_of_another_kind_is_refused_too(serve):
    s = serve(concurrency=0)
    with pytest.raises(openai.BadRequestError) as e:
        s.client.fine_tuning.jobs.create(model=DEFAULT_MODEL, training_file=s.upload(PAIRS), method={"type": "dpo"},
                                         validation_file=s.upload(EXAMPLES / "persona.jsonl"))
    assert e.value.body["param"] == "validation_file" and "holds conversations" in e.value.body["message"]


def test_bad_pairs_fail_the_job_naming_line_and_rule(serve, tmp_path):
    s = serve(concurrency=0)
    rows = PAIRS.read_text(encoding="utf-8").splitlines()
    same = json.loads(rows[1])
    same["non_preferred_output"] = same["preferred_output"]
    bad = tmp_path / "pairs.jsonl"
    bad.write_text("\n".join([rows[0], json.dumps(same), *rows[2:]]) + "\n", encoding="utf-8")
    job = s.client.fine_tuning.jobs.create(model=DEFAULT_MODEL, training_file=s.upload(bad), method={"type": "dpo"})
    done = s.service.wait_job(job.id, 30)
    assert done["status"] == "failed" and done["error"]["code"] == "invalid_training_file"
    assert "line 2" in done["error"]["message"] and "identical-sides" in done["error"]["message"]


def test_a_file_checked_for_one_kind_is_checked_again_for_another(serve, tmp_path):
    """The cached check of a file is for the kind its first job trained; another kind checks it again."""
    s = serve(concurrency=0)
    pairs = s.upload(PAIRS)
    s.service.store.set_file_check(pairs, {"rules": "strict", "format": "openai", "kind": "preference",
                                           "checked_for": "sft", "rows": 20, "errors": 1, "warnings": 0,
                                           "findings": []})
    job = s.client.fine_tuning.jobs.create(model=DEFAULT_MODEL, training_file=pairs, method={"type": "dpo"})
    assert s.service.wait_job(job.id, 30, ("queued", "failed"))["status"] == "queued"
    assert s.service.store.get_file(pairs)["check"]["checked_for"] == "preference"


def _parse(body, folder=None):
    rules = ModelRules(fine_tuned=lambda name: folder if name == "ft:smollm2-135m-instruct:sft:ftjob-A1b2C3d4" else None)
    return parse_create({"training_file": "file-abcdefgh1234", **body}, Limits(),
                        lambda fid: {"purpose": "fine-tune"}, rules)


def test_a_job_on_an_earlier_lora_job_trains_on_it_merged(tmp_path):
    adapter = tmp_path / "sft-output"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    job = _parse({"model": "ft:smollm2-135m-instruct:sft:ftjob-A1b2C3d4", "suffix": "dpo",
                  "method": {"type": "dpo"}}, adapter)
    assert job["model"] == str(adapter.resolve())
    assert job["params"]["mmtune"]["parent_model"] == "ft:smollm2-135m-instruct:sft:ftjob-A1b2C3d4"
    assert fine_tuned_model_name(job) == f"ft:smollm2-135m-instruct:dpo:{job['id']}"
    merged = tmp_path / "base"
    cfg = train_config(job, tmp_path / "d.jsonl", None, tmp_path / "out", merged)
    assert cfg.model == str(merged) and cfg.stage == "dpo" and cfg.beta == 0.1
    (adapter / "adapter_config.json").unlink()
    with pytest.raises(Exception, match="no model files"):
        _parse({"model": "ft:smollm2-135m-instruct:sft:ftjob-A1b2C3d4"}, adapter)


def test_train_config_of_each_stage_carries_its_settings(tmp_path):
    for stage, extra, want in (("kto", {"desirable_weight": 2.0}, {"desirable_weight": 2.0, "beta": 0.1}),
                               ("orpo", {"orpo_lambda": 0.5}, {"orpo_lambda": 0.5, "beta": None}),
                               ("dpo", {"dpo_loss": "robust", "label_smoothing": 0.1}, {"label_smoothing": 0.1}),
                               ("dpo", {"sft_weight": 1.0}, {"sft_weight": 1.0, "beta": 0.1}),
                               ("pt", {}, {"beta": None})):
        job = _parse({"model": DEFAULT_MODEL, "stage": stage, **extra})
        cfg = train_config(job, tmp_path / "d.jsonl", None, tmp_path / "out")
        assert cfg.stage == stage and all(getattr(cfg, k) == v for k, v in want.items()), (stage, cfg)


def test_reward_metrics_in_events_and_the_result_file():
    rec = {"step": 3, "loss": 0.5, "reward_chosen": 0.2, "reward_rejected": -0.1, "reward_margin": 0.3,
           "reward_accuracy": 0.75, "eval_loss": 0.6, "eval_reward_accuracy": 0.5, "eval_reward_margin": 0.1}
    assert rewards_text(rec) == ", reward accuracy=0.75, margin=0.3000 (chosen=0.2000, rejected=-0.1000)"
    assert rewards_text(rec, "eval_") == ", reward accuracy=0.50, margin=0.1000"
    assert rewards_text({"step": 1, "loss": 1.0}) == ""
    rows = list(csv.DictReader(io.StringIO(metrics_csv([rec]).decode())))
    assert rows[0]["reward_accuracy"] == "0.75" and rows[0]["valid_reward_accuracy"] == "0.5"
    assert rows[0]["train_loss"] == "0.5" and rows[0]["valid_loss"] == "0.6"
    assert "reward_accuracy" not in metrics_csv([{"step": 1, "loss": 1.0}]).decode()  # SFT: OpenAI's columns


def test_resolve_keeps_sft_jobs_as_they_were():
    own = resolve({}, {}, Limits())["mmtune"]
    assert own["stage"] == "sft" and not {"beta", "dpo_loss", "parent_model"} & own.keys()


def test_jobs_create_cli_stage_and_beta(serve, capsys):
    from mmtune.cli import main

    s = serve(concurrency=0)
    assert main(["jobs", "create", str(PAIRS), "--stage", "dpo", "--beta", "0.2", "--base-url", s.base_url,
                 "--json"]) == 0
    job = json.loads(capsys.readouterr().out)
    assert job["method"] == {"type": "dpo", "dpo": {"hyperparameters": {**job["hyperparameters"], "beta": 0.2}}}
    assert main(["jobs", "create", str(PAIRS), "--base-url", s.base_url]) == 2  # a supervised job: refused
    assert 'method={"type": "dpo"}' in capsys.readouterr().err
