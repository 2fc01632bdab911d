"""`mmtune doctor`: the machine report, and with --distributed an all-reduce across ranks that the
launcher starts; the failures a multi-machine start hits are named with their fix."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from mmtune.cli import main
from mmtune.commands.doctor import network_fix

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
       "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_machine_report(capsys):
    import torch

    assert main(["doctor", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["versions"]["torch"] == torch.__version__
    assert report["cuda"]["available"] == torch.cuda.is_available()
    assert report["cpu"]["cores"] == os.cpu_count()
    if not torch.cuda.is_available():
        assert any("no GPU" in p["problem"] and "TORCH_SPEC" in p["fix"] for p in report["problems"])


def test_distributed_all_reduce_across_two_ranks():
    proc = subprocess.run([sys.executable, "-m", "mmtune.cli", "doctor", "--distributed", "--json",
                           "--nproc-per-node", "2", "--master-port", str(free_port()), "--timeout", "60"],
                          env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    decoder, text, reports = json.JSONDecoder(), proc.stdout, []
    while text.strip():  # one JSON report per rank
        obj, end = decoder.raw_decode(text.lstrip())
        reports.append(obj["distributed"])
        text = text.lstrip()[end:]
    assert sorted(r["rank"] for r in reports) == [0, 1]
    assert all(r["ok"] and r["all_reduce"] == 3.0 and r["backend"] == "gloo" for r in reports)


def test_outside_torchrun_distributed_names_the_launch(capsys, monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    assert main(["doctor", "--distributed"]) == 2
    out = capsys.readouterr().out
    assert "--nproc-per-node" in out and "torchrun" in out


def test_port_in_use_and_unresolvable_master_are_refused_before_torchrun():
    with socket.socket() as s:
        s.bind(("", 0))
        s.listen()
        port = s.getsockname()[1]
        proc = subprocess.run([sys.executable, "-m", "mmtune.cli", "doctor", "--distributed", "--nproc-per-node",
                               "2", "--master-port", str(port)], env=ENV, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and f"--master-port {port} is already in use" in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "mmtune.cli", "doctor", "--distributed", "--nnodes", "2",
                           "--node-rank", "1", "--master-addr", "no-such-host.invalid"], env=ENV,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "does not resolve" in proc.stderr


def test_network_failures_name_their_fix():
    env = {"MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29500"}
    assert "GLOO_SOCKET_IFNAME" in network_fix("Socket Timeout", "gloo", env)
    assert "NCCL_SOCKET_IFNAME" in network_fix("wait timeout after 60000ms", "nccl", env)
    assert "--master-port" in network_fix("The server socket has failed to listen: address already in use",
                                          "nccl", env)
    assert "start node 0" in network_fix("Connection refused", "gloo", env)
