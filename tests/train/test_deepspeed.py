"""DeepSpeed ZeRO on this CPU machine (DeepSpeed's CPU accelerator, gloo): `mmtune train --deepspeed zero2|zero3
--nproc-per-node 2` reaches the same losses and gradient norms as one plain process on the same global batch,
with packing and the head-only chunked loss on (under ZeRO-3 the partitioned output layer is gathered for it);
a ZeRO-2 checkpoint written by 2 processes resumes on 1."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from mmtune.config import resolve_config
from mmtune.errors import UserError
from mmtune.train.sft import run_sft

pytest.importorskip("deepspeed")

from train.test_distributed import settings  # noqa: E402  (the same runs: constant schedule, no dropout)

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
       "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}


def flags(values: dict) -> list[str]:
    out = []
    for k, v in values.items():
        if v is True:  # a switch (--resume)
            out.append(f"--{k.replace('_', '-')}")
            continue
        out += [f"--{k.replace('_', '-')}", *(map(str, v) if isinstance(v, list) else [str(v)])]
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def metrics(folder: Path) -> dict[int, dict]:
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r for r in rows if "loss" in r}


def train(args: list[str], nproc: int) -> None:
    proc = subprocess.run([sys.executable, "-m", "mmtune.cli", "train", *args, "--nproc-per-node", str(nproc),
                           "--master-port", str(free_port())], env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ds") / "train.jsonl"
    pairs = [("What is your name?", "My name is Mochi."), ("Where is the bakery?", "At 17 Qiushi Lane."),
             ("When do you open?", "At 7 am, every day."), ("Who founded it?", "Lin Yue, in 2019.")] * 4
    path.write_text("".join(json.dumps({"messages": [{"role": "user", "content": q},
                                                     {"role": "assistant", "content": a}]}) + "\n"
                            for q, a in pairs))
    return path


def reference(model, data, out, **extra) -> dict[int, dict]:
    """One plain process (no DeepSpeed), batch 4: what the 2 x 2-row DeepSpeed runs must reach."""
    run_sft(resolve_config(settings(model, data, out, **extra)))
    return metrics(out)


def same_steps(got: dict[int, dict], ref: dict[int, dict], steps: list[int]) -> None:
    assert [got[s]["loss"] for s in steps] == pytest.approx([ref[s]["loss"] for s in steps], rel=1e-4)
    assert [got[s]["grad_norm"] for s in steps] == pytest.approx([ref[s]["grad_norm"] for s in steps], rel=1e-3)


@pytest.mark.slow
def test_zero2_lora_matches_one_process_and_resumes_on_one(tiny_llama, data, tmp_path):
    ref = reference(tiny_llama, data, tmp_path / "one")
    two = tmp_path / "zero2"
    train([*flags(settings(tiny_llama, data, two, batch_size=2, max_steps=2, save_strategy="steps", save_steps=2)),
           "--deepspeed", "zero2"], nproc=2)
    got = metrics(two)
    assert sorted(got) == [1, 2]  # logged once, by rank 0
    same_steps(got, ref, [1, 2])
    summary = json.loads((two / "summary.json").read_text())
    assert summary["loss_path"] == "chunked"  # the head-only chunked loss, under DeepSpeed
    assert (two / "adapter_model.safetensors").is_file()
    assert [p.name for p in two.glob("checkpoint-*")] == ["checkpoint-2"]
    # DeepSpeed's own checkpoint (one optimizer-state shard per process), beside an ordinary adapter
    shards = sorted(p.name for p in (two / "checkpoint-2").glob("global_step2/*optim_states.pt"))
    assert len(shards) == 2, shards

    # the 2-process checkpoint resumes on 1 process (batch 4: the same global batch), ending where one process does
    train([*flags(settings(tiny_llama, data, two, resume=True)), "--deepspeed", "zero2"], nproc=1)
    after = metrics(two)
    assert sorted(after) == [1, 2, 3, 4]
    same_steps(after, ref, [3, 4])
    assert json.loads((two / "summary.json").read_text())["resumed_from"] == "checkpoint-2"
    # DeepSpeed refuses shards made for another world size: mmtune converted the checkpoint to its universal form
    assert (two / "checkpoint-2" / "global_step2_universal").is_dir()


@pytest.fixture(scope="module")
def full_reference(tiny_llama, data, tmp_path_factory) -> tuple[Path, dict[int, dict]]:
    out = tmp_path_factory.mktemp("full") / "one"
    return out, reference(tiny_llama, data, out, method="full", max_steps=2)


@pytest.mark.slow
@pytest.mark.parametrize("zero", ["zero3", "zero3_offload"])  # offload: DeepSpeedCPUAdam (a JIT-built C++ op)
def test_zero3_full_matches_one_process_with_the_gathered_head(tiny_llama, data, full_reference, zero, tmp_path):
    plain_run, ref = full_reference
    out = tmp_path / zero
    train([*flags(settings(tiny_llama, data, out, batch_size=2, max_steps=2, method="full")),
           "--deepspeed", zero], nproc=2)
    got = metrics(out)
    same_steps(got, ref, [1, 2])  # step 1's loss and gradient norm, and step 2 (after an update from them)
    assert json.loads((out / "summary.json").read_text())["loss_path"] == "chunked"
    # the partitioned weights are gathered into one ordinary model on save: it loads and equals the plain run's
    from safetensors.torch import load_file

    mine, plain = load_file(out / "model.safetensors"), load_file(plain_run / "model.safetensors")
    assert mine.keys() == plain.keys()
    # offload steps with DeepSpeedCPUAdam, not torch's AdamW: the same update to float rounding, well under one
    # step's size (the learning rate, 3e-3)
    worst = max(float((mine[k] - plain[k]).abs().max()) for k in plain)
    assert worst <= (3e-4 if zero == "zero3_offload" else 1e-4), worst


def test_deepspeed_settings_are_checked_before_anything_loads(tmp_path):
    from mmtune.train.zero import check_deepspeed, deepspeed_config

    assert deepspeed_config("zero3")["zero_optimization"]["stage"] == 3
    assert deepspeed_config("zero3_offload")["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    with pytest.raises(UserError, match="no such file"):
        check_deepspeed(str(tmp_path / "missing.json"))
    (tmp_path / "bad.json").write_text("{stage: 2")
    with pytest.raises(UserError, match="not a readable JSON file"):
        check_deepspeed(str(tmp_path / "bad.json"))
    base = {"data": ["d.jsonl"], "output": "o"}
    with pytest.raises(UserError, match="neither zero2, zero3, zero3_offload nor a .json"):
        resolve_config({**base, "deepspeed": "zero4"})
    with pytest.raises(UserError, match="applies to --stage sft and pt"):
        resolve_config({**base, "deepspeed": "zero2", "stage": "dpo"})
    with pytest.raises(UserError, match="runs under a launcher"):
        run_sft(resolve_config({**base, "deepspeed": "zero2", "output": str(tmp_path / "o")}))
