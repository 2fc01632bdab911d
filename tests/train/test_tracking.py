"""--report-to: the Trainer's own tracker integrations log the run, read back from what they wrote
(TensorBoard event files, W&B's offline run, MLflow's file store); a missing tracker is refused
before any model loads, naming the install."""

from __future__ import annotations

import importlib.util
import json

import pytest

from mmtune.config import resolve_config
from mmtune.errors import UserError
from mmtune.train import tracking
from mmtune.train.sft import run_sft

STEPS = 3


def settings(model, data, output, **extra) -> dict:
    return {"model": str(model), "data": [str(data)], "output": str(output), "max_steps": STEPS, "batch_size": 4,
            "learning_rate": 3e-3, "logging_steps": 1, "save_strategy": "no", "max_length": 96, **extra}


def tensorboard_scalars(folder) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    files = sorted(folder.rglob("events.out.tfevents.*"))
    assert files, f"no TensorBoard event file under {folder}"
    acc = EventAccumulator(str(files[0].parent))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def wandb_records(path):
    """The protobuf records of a W&B transaction log (.wandb: a 7-byte header, then LevelDB-style
    32 KiB blocks of records, each with a 7-byte header: crc32, length, type full/first/middle/last)."""
    from wandb.proto import wandb_internal_pb2

    raw = path.read_bytes()
    assert raw[:4] == b":W&B", f"{path} is not a W&B transaction log"
    pos, block, pending = 7, 32768, b""
    while pos + 7 <= len(raw):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        length, kind = int.from_bytes(raw[pos + 4:pos + 6], "little"), raw[pos + 6]
        if kind == 0 and length == 0:
            break
        pending += raw[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # full, last: one record complete
            rec = wandb_internal_pb2.Record()
            rec.ParseFromString(pending)
            pending = b""
            yield rec


def wandb_history(folder) -> list[dict]:
    """The logged rows of an offline W&B run, each with the run's project, name and tags."""
    runs = sorted(folder.glob("wandb/offline-run-*/run-*.wandb"))
    assert len(runs) == 1, f"expected one offline W&B run under {folder}, found {runs}"
    rows, meta = [], {}
    for rec in wandb_records(runs[0]):
        kind = rec.WhichOneof("record_type")
        if kind == "history":
            rows.append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in rec.history.item})
        elif kind == "run":
            meta = {"project": rec.run.project, "name": rec.run.display_name, "tags": list(rec.run.tags)}
    return [{**r, "_meta": meta} for r in rows]


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None or importlib.util.find_spec("wandb") is None,
                    reason="tensorboard and wandb are in the `tracking` extra: pip install -e '.[tracking]'")
def test_tensorboard_and_wandb_at_once_log_every_step(tiny_llama, repeated_data, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    for var in ("WANDB_DIR", "WANDB_PROJECT", "WANDB_NAME", "WANDB_TAGS", "TENSORBOARD_LOGGING_DIR"):
        monkeypatch.delenv(var, raising=False)
    out = tmp_path / "run"
    summary = run_sft(resolve_config(settings(tiny_llama, repeated_data, out, report_to=["tensorboard", "wandb"],
                                              run_name="persona-r8", tracker_project="mmtune-tests",
                                              tracker_tags=["ci", "tiny"])))
    ours = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [(r["step"], r["loss"]) for r in ours if "loss" in r]
    assert len(losses) == STEPS

    scalars = tensorboard_scalars(out / "tensorboard")
    assert [s for s, _ in scalars["train/loss"]] == [s for s, _ in losses]
    assert [v for _, v in scalars["train/loss"]] == pytest.approx([v for _, v in losses], rel=1e-5)
    assert "train/learning_rate" in scalars

    rows = [r for r in wandb_history(out) if "train/loss" in r]
    assert [r["train/global_step"] for r in rows] == [s for s, _ in losses]
    assert [r["train/loss"] for r in rows] == pytest.approx([v for _, v in losses], rel=1e-5)
    assert rows[0]["_meta"] == {"project": "mmtune-tests", "name": "persona-r8", "tags": ["ci", "tiny"]}

    manifest = json.loads((out / "mmtune-manifest.json").read_text())
    entries = set(manifest["files"])
    assert {"tensorboard/", "wandb/"} <= entries  # the trackers' folders are the run's, recorded
    assert summary["final_train_loss"] == pytest.approx(losses[-1][1])


@pytest.mark.skipif(importlib.util.find_spec("mlflow") is None,
                    reason="mlflow is not installed (`pip install mlflow-skinny`, in the tracking extra)")
def test_mlflow_logs_to_a_local_file_store(tiny_llama, repeated_data, tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    out = tmp_path / "run"
    run_sft(resolve_config(settings(tiny_llama, repeated_data, out, report_to=["mlflow"],
                                    tracker_project="mmtune-tests")))
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=(out / "mlruns").as_uri())
    exp = client.get_experiment_by_name("mmtune-tests")
    (run,) = client.search_runs([exp.experiment_id])
    history = client.get_metric_history(run.info.run_id, "loss")
    assert [m.step for m in history] == list(range(1, STEPS + 1))


def test_missing_tracker_is_refused_naming_the_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(tracking.importlib.util, "find_spec", lambda n, *a: None if n == "swanlab" else real(n, *a))
    with pytest.raises(UserError, match=r"--report-to swanlab needs the swanlab package.*pip install swanlab"):
        tracking.check_trackers(["swanlab"])


def test_report_to_config_errors():
    base = {"data": ["x.jsonl"], "output": "o"}
    with pytest.raises(UserError, match="unknown tracker.*neptune.*choose from tensorboard"):
        resolve_config({**base, "report_to": ["neptune"]})
    with pytest.raises(UserError, match="add --report-to"):
        resolve_config({**base, "run_name": "x"})
    cfg = resolve_config({**base, "report_to": "wandb"})  # one value in YAML: a list of one
    assert cfg.report_to == ["wandb"]


def test_tracker_env_keeps_what_the_user_set(tmp_path):
    env = {"WANDB_PROJECT": "mine"}
    set_now = tracking.tracker_env(["wandb", "mlflow"], tmp_path, "r", "theirs", ["a", "b"], env)
    assert env["WANDB_PROJECT"] == "mine" and "WANDB_PROJECT" not in set_now
    assert env["WANDB_TAGS"] == "a,b" and env["MLFLOW_EXPERIMENT_NAME"] == "theirs"
    assert env["MLFLOW_TRACKING_URI"] == (tmp_path.resolve() / "mlruns").as_uri()
    assert env["MLFLOW_ALLOW_FILE_STORE"] == "true"  # MLflow 3 refuses the run's file store without it
    theirs = {"MLFLOW_TRACKING_URI": "sqlite:///their.db"}
    tracking.tracker_env(["mlflow"], tmp_path, None, None, [], theirs)
    assert theirs == {"MLFLOW_TRACKING_URI": "sqlite:///their.db"}  # their store, and no file-store opt-in
