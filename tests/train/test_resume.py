"""--resume after a hard kill: a run SIGKILLed after a checkpoint, then resumed, ends where an
uninterrupted run ends (same final loss, same token counts, every step logged once)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mmtune.config import resolve_config
from mmtune.errors import UserError
from mmtune.train.sft import run_sft

ROOT = Path(__file__).resolve().parents[2]
STEPS = 12


def settings(model: Path, data: Path, output: Path) -> dict:
    # lora_dropout stays on: the resumed run must also restore the RNG state to match
    return {"model": str(model), "data": [str(data)], "output": str(output), "max_steps": STEPS, "batch_size": 2,
            "learning_rate": 3e-3, "logging_steps": 1, "save_strategy": "steps", "save_steps": 2,
            "save_total_limit": 2, "max_length": 96, "seed": 7}


def cli_args(values: dict) -> list[str]:
    args = []
    for k, v in values.items():
        args += [f"--{k.replace('_', '-')}", *(map(str, v) if isinstance(v, list) else [str(v)])]
    return args


def kill_after_first_checkpoint(values: dict, out: Path) -> int:
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.Popen([sys.executable, "-m", "mmtune.cli", "train", *cli_args(values)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if any((c / "trainer_state.json").exists() for c in out.glob("checkpoint-*")):
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.01)
    proc.wait(timeout=60)
    return proc.returncode


@pytest.mark.slow
def test_resume_after_sigkill_matches_an_uninterrupted_run(tiny_llama, repeated_data, tmp_path):
    reference = run_sft(resolve_config({**settings(tiny_llama, repeated_data, tmp_path / "ref"),
                                        "save_strategy": "no"}))

    values = settings(tiny_llama, repeated_data, tmp_path / "run")
    rc = kill_after_first_checkpoint(values, tmp_path / "run")
    assert rc == -signal.SIGKILL, f"the run was not killed mid-way (exit status {rc})"
    assert not (tmp_path / "run" / "summary.json").exists()

    resumed = run_sft(resolve_config({**values, "resume": True}))
    assert resumed["resumed_from"].startswith("checkpoint-")
    assert resumed["steps"] == reference["steps"] == STEPS
    assert abs(resumed["final_train_loss"] - reference["final_train_loss"]) < 1e-3
    assert resumed["trained_tokens"] == reference["trained_tokens"]  # counts restored from the checkpoint
    assert resumed["input_tokens"] == reference["input_tokens"]
    steps = [json.loads(x)["step"] for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, STEPS + 1))  # nothing the killed run logged after its checkpoint remains
    ref_losses = [json.loads(x)["loss"] for x in (tmp_path / "ref" / "metrics.jsonl").read_text().splitlines()]
    losses = [json.loads(x)["loss"] for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert losses == pytest.approx(ref_losses, abs=1e-3)


def test_resume_without_a_checkpoint_says_so(tmp_path):
    cfg = resolve_config({"data": ["x.jsonl"], "output": str(tmp_path), "resume": True})
    with pytest.raises(UserError, match="holds no checkpoint"):
        run_sft(cfg)


def test_an_interrupted_checkpoint_is_skipped(tmp_path):
    from mmtune.train.sft import last_checkpoint

    for step, state in ((2, "{}"), (4, "{}"), (6, '{"trunc')):
        (tmp_path / f"checkpoint-{step}").mkdir()
        (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text(state)
    (tmp_path / "checkpoint-8").mkdir()  # killed before its state was written
    assert last_checkpoint(tmp_path) == str(tmp_path / "checkpoint-4")


def test_a_run_killed_before_its_first_checkpoint_can_simply_start_again(tmp_path):
    from mmtune.train.sft import holds_run

    for name in ("config.yaml", "metrics.jsonl", "loss.png"):  # what such a run leaves
        (tmp_path / name).write_text("x")
    assert not holds_run(tmp_path)
    (tmp_path / "checkpoint-2").mkdir()
    assert holds_run(tmp_path)


def test_resume_from_the_last_steps_checkpoint_trains_no_extra_step(tiny_llama, repeated_data, tmp_path):
    """Killed after saving its final checkpoint (before summary.json): --resume finishes, adds no step."""
    values = {**settings(tiny_llama, repeated_data, tmp_path / "run"), "max_steps": 2, "save_steps": 1}
    first = run_sft(resolve_config(values))
    (tmp_path / "run" / "summary.json").unlink()
    resumed = run_sft(resolve_config({**values, "resume": True}))
    assert resumed["resumed_from"] == "checkpoint-2" and resumed["steps"] == first["steps"] == 2
    steps = [json.loads(x)["step"] for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2]
    assert not (tmp_path / "run" / "checkpoint-3").exists()
