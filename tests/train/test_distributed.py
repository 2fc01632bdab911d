"""Training on several machines, on loopback: `mmtune train --nnodes 2 --node-rank 0|1 --master-addr ...`
(the launcher runs torchrun, gloo on CPU) reaches the same losses as one process on the same global batch,
with packing and the head-only chunked loss on; its checkpoint, written once, resumes on one process."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from mmtune.commands.launch import strip_launch_flags
from mmtune.config import resolve_config
from mmtune.train.sft import run_sft

ROOT = Path(__file__).resolve().parents[2]


def settings(model, data, output, **extra) -> dict:
    # constant schedule, no dropout: a 2-step run and a 4-step run take identical first steps
    return {"model": str(model), "data": [str(data)], "output": str(output), "batch_size": 4, "max_steps": 4,
            "learning_rate": 3e-3, "scheduler": "constant", "lora_dropout": 0.0, "logging_steps": 1,
            "save_strategy": "no", "max_length": 96, "seed": 3, **extra}


def flags(values: dict) -> list[str]:
    out = []
    for k, v in values.items():
        out += [f"--{k.replace('_', '-')}", *(map(str, v) if isinstance(v, list) else [str(v)])]
    return out


def losses(folder: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


ENV = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
       "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}


@pytest.fixture(scope="module")
def reference(tiny_llama, tmp_path_factory):
    """One process, batch 4, 4 steps: the losses the distributed runs must reach."""
    folder = tmp_path_factory.mktemp("one")
    data = folder / "train.jsonl"
    pairs = [("What is your name?", "My name is Mochi."), ("Where is the bakery?", "At 17 Qiushi Lane."),
             ("When do you open?", "At 7 am, every day."), ("Who founded it?", "Lin Yue, in 2019.")] * 4
    data.write_text("".join(json.dumps({"messages": [{"role": "user", "content": q},
                                                     {"role": "assistant", "content": a}]}) + "\n"
                            for q, a in pairs))
    run_sft(resolve_config(settings(tiny_llama, data, folder / "run")))
    return data, losses(folder / "run")


@pytest.mark.slow
def test_fsdp2_on_cpu_matches_one_process(tiny_llama, reference, tmp_path):
    """accelerate launch with the shipped FSDP2 config (use_cpu: gloo), 2 processes x 2 rows."""
    data, ref = reference
    config = (ROOT / "examples" / "accelerate" / "fsdp.yaml").read_text().replace("use_cpu: false", "use_cpu: true")
    (tmp_path / "fsdp_cpu.yaml").write_text(config)
    out = tmp_path / "fsdp"
    accelerate = Path(sys.executable).parent / "accelerate"
    proc = subprocess.run([str(accelerate), "launch", "--config_file", str(tmp_path / "fsdp_cpu.yaml"),
                           "--main_process_port", str(free_port()), "-m", "mmtune.cli", "train",
                           *flags(settings(tiny_llama, data, out, batch_size=2, max_steps=2))],
                          env=ENV, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = losses(out)
    assert sorted(got) == [1, 2] and [got[1], got[2]] == pytest.approx([ref[1], ref[2]], rel=1e-4)
    assert (out / "adapter_model.safetensors").is_file()  # gathered into one ordinary adapter on save
    assert json.loads((out / "summary.json").read_text())["loss_path"] == "chunked"  # head-only + chunked


@pytest.mark.slow
def test_two_nodes_match_one_process_and_resume_on_one(tiny_llama, reference, tmp_path):
    repeated_data, ref = reference
    port = free_port()
    two = tmp_path / "two"
    # 2 machines x 1 process x 2 rows = the reference's global batch of 4; stop at step 2 with a checkpoint
    train = flags(settings(tiny_llama, repeated_data, two, batch_size=2, max_steps=2, save_strategy="steps",
                           save_steps=2))
    env = ENV
    nodes = [subprocess.Popen([sys.executable, "-m", "mmtune.cli", "train", *train, "--nproc-per-node", "1",
                               "--nnodes", "2", "--node-rank", str(rank), "--master-addr", "127.0.0.1",
                               "--master-port", str(port)], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True) for rank in (0, 1)]
    for node in nodes:
        _, err = node.communicate(timeout=400)
        assert node.returncode == 0, err[-3000:]

    got = losses(two)
    assert sorted(got) == [1, 2]  # logged once, by rank 0
    assert [got[1], got[2]] == pytest.approx([ref[1], ref[2]], rel=1e-4)
    summary = json.loads((two / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["loss_path"] == "chunked"  # head-only chunked loss under DDP
    ckpts = sorted(p.name for p in two.glob("checkpoint-*"))
    assert ckpts == ["checkpoint-2"]  # written once: one folder, one set of weights
    assert len(list((two / "checkpoint-2").glob("adapter_model.safetensors"))) == 1
    assert sorted(p.name for p in (two / "checkpoint-2").glob("rng_state*")) == ["rng_state_0.pth",
                                                                                 "rng_state_1.pth"]

    # the 2-process checkpoint resumes on 1 process with the same global batch and ends where the reference does
    resumed = run_sft(resolve_config(settings(tiny_llama, repeated_data, two, resume=True)))
    after = losses(two)
    assert sorted(after) == [1, 2, 3, 4]
    assert [after[3], after[4]] == pytest.approx([ref[3], ref[4]], rel=1e-4)
    assert resumed["resumed_from"] == "checkpoint-2" and resumed["steps"] == 4


def test_launcher_drops_its_own_flags_and_refuses_contradictions():
    import argparse

    from mmtune.commands.launch import torchrun_command
    from mmtune.errors import UserError

    argv = ["--data", "d.jsonl", "--nnodes", "2", "--node-rank=1", "--master-addr", "h", "--nproc-per-node", "8"]
    assert strip_launch_flags(argv) == ["--data", "d.jsonl"]
    args = argparse.Namespace(nnodes=2, node_rank=1, master_addr="10.0.0.1", nproc_per_node="8")
    cmd = torchrun_command(args, argv)
    assert cmd[1:3] == ["-m", "torch.distributed.run"]
    assert cmd[3:13] == ["--nproc-per-node", "8", "--nnodes", "2", "--node-rank", "1", "--master-addr",
                         "10.0.0.1", "--master-port", "29500"]
    assert cmd[13:] == ["-m", "mmtune.cli", "train", "--data", "d.jsonl"]
    with pytest.raises(UserError, match="needs --master-addr"):
        torchrun_command(argparse.Namespace(nnodes=2), [])
    with pytest.raises(UserError, match="--node-rank 2 is not below --nnodes 2"):
        torchrun_command(argparse.Namespace(nnodes=2, node_rank=2, master_addr="h"), [])
