"""Two processes (torchrun, gloo on CPU) train one model: the run finishes with one summary and
token counts gathered from both processes."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_two_process_ddp_run_finishes_with_a_summary(tiny_llama, repeated_data, tmp_path):
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    if torchrun is None:
        pytest.skip("torchrun is not installed")
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    with socket.socket() as s:  # a free port for the rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [torchrun, "--nproc-per-node", "2", "--master-port", str(port), "-m", "mmtune.cli", "train",
           "--model", str(tiny_llama), "--data", str(repeated_data), "--output", str(out),
           # 16 rows, 2 processes x 2 rows: 4 steps are exactly one epoch
           "--max-steps", "4", "--batch-size", "2", "--logging-steps", "1", "--save-strategy", "no",
           "--max-length", "96"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 4
    # one epoch over all rows: the trained-token count covers both processes' batches
    assert summary["trained_tokens"] == summary["data"]["train_supervised_tokens"]
    assert summary["input_tokens"] == summary["data"]["train_tokens"]
    assert (out / "adapter_model.safetensors").is_file() and (out / "mmtune.json").is_file()
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 4  # logged once, not once per process
