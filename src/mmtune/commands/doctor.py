"""`mmtune doctor [--distributed]`: what this machine has for training, and what is wrong, with the fix.

Without --distributed: versions, devices and their memory, bf16, flash attention, bitsandbytes,
DeepSpeed. With --distributed, inside torchrun (or through the launcher flags, which run torchrun
for you, as `mmtune train` does): every rank joins the process group and takes part in an
all-reduce within --timeout seconds, so a wrong master address, a port in use, a firewall or a
network interface that does not reach the other machines is found in seconds, named, with its fix,
instead of a training run that hangs.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
from typing import Any

PACKAGES = ("torch", "transformers", "peft", "accelerate", "trl", "deepspeed", "bitsandbytes", "flash-attn",
            "liger-kernel", "tensorboard", "wandb", "mlflow", "ray")


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "doctor", help="check this machine (devices, memory, versions) and, with --distributed, that ranks connect",
        description=__doc__.split("\n\n")[1], formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  mmtune doctor\n  mmtune doctor --distributed --nproc-per-node 8\n"
               "  mmtune doctor --distributed --nproc-per-node 8 --nnodes 2 --node-rank 0 --master-addr 10.0.0.1\n"
               "  torchrun --nproc-per-node 8 -m mmtune.cli doctor --distributed")
    p.add_argument("--distributed", action="store_true",
                   help="join the ranks (under torchrun, or with the launch flags below) and all-reduce across them "
                   "(default: off)")
    p.add_argument("--timeout", type=float, default=60.0, metavar="S",
                   help="seconds the ranks have to meet and all-reduce (default: 60)")
    p.add_argument("--json", action="store_true", help="print one JSON report (default: a table)")
    from mmtune.commands.launch import add_launch_arguments

    add_launch_arguments(p)
    p.set_defaults(func=run, _parser=p)


def run(args: argparse.Namespace) -> int:
    from mmtune.commands.launch import exec_torchrun, torchrun_command, wants_launch

    if args.distributed and wants_launch(args):
        argv = getattr(args, "_argv", None) or sys.argv[1:]
        argv = argv[argv.index("doctor") + 1:] if "doctor" in argv else argv
        exec_torchrun(torchrun_command(args, argv, command="doctor"))
    report = machine_report()
    if args.distributed:
        report["distributed"] = distributed_check(args.timeout)
    problems = report["problems"] + report.get("distributed", {}).get("problems", [])
    if args.json:
        print(json.dumps(report, indent=2))
    elif int(os.environ.get("RANK", "0")) == 0 or problems:
        print_report(report)
    return 2 if any(p["severity"] == "error" for p in problems) else 0


def machine_report() -> dict[str, Any]:
    import platform

    import torch

    problems: list[dict[str, str]] = []
    versions = {"python": platform.python_version(), "mmtune": _version("mmtune")}
    versions.update({name: _version(name) for name in PACKAGES})
    cuda = torch.cuda.is_available()
    devices = []
    for i in range(torch.cuda.device_count() if cuda else 0):
        props = torch.cuda.get_device_properties(i)
        free, total = torch.cuda.mem_get_info(i)
        devices.append({"index": i, "name": props.name, "memory_gib": round(total / 2**30, 1),
                        "free_gib": round(free / 2**30, 1), "capability": f"{props.major}.{props.minor}",
                        "bf16": props.major >= 8})
        if free < 0.5 * total:
            problems.append(_problem("warning", f"GPU {i} has only {free / 2**30:.1f} of {total / 2**30:.1f} GiB "
                                     "free: another process holds it", "see `nvidia-smi` and stop it, or set "
                                     "CUDA_VISIBLE_DEVICES to the free GPUs"))
    mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if not cuda and not mps:
        problems.append(_problem("info", "no GPU: training runs on the CPU (fine for tiny models and tests; bf16, "
                                 "QLoRA and flash attention need a CUDA GPU)",
                                 "on a GPU machine install the CUDA build: make install TORCH_SPEC=\"torch==2.13.0\""))
    if cuda and devices and not all(d["bf16"] for d in devices):
        problems.append(_problem("info", "a GPU without bf16 (compute capability < 8.0): precision auto trains fp32",
                                 "use --precision fp16 for half precision on it"))
    flash = importlib.util.find_spec("flash_attn") is not None
    if cuda and not flash:
        problems.append(_problem("info", "flash-attn is not installed: attention uses PyTorch SDPA (also fast)",
                                 "optional: pip install flash-attn --no-build-isolation"))
    bnb = importlib.util.find_spec("bitsandbytes") is not None
    if cuda and not bnb:
        problems.append(_problem("info", "bitsandbytes is not installed: --method qlora is unavailable",
                                 "pip install bitsandbytes (or pip install -e '.[gpu]')"))
    mem = _ram_gib()
    return {
        "versions": versions,
        "cpu": {"cores": os.cpu_count(), "ram_gib": mem},
        "cuda": {"available": cuda, "version": torch.version.cuda, "devices": devices,
                 "nccl": _nccl_version(torch) if cuda else None},
        "mps": mps,
        "bf16": bool(cuda and torch.cuda.is_bf16_supported()),
        "flash_attention": flash,
        "sdpa": hasattr(torch.nn.functional, "scaled_dot_product_attention"),
        "bitsandbytes": bnb and cuda,
        "deepspeed": importlib.util.find_spec("deepspeed") is not None,
        "problems": problems,
    }


def distributed_check(timeout: float) -> dict[str, Any]:
    """Join the process group and all-reduce each rank's number; every failure named with its fix."""
    import datetime
    import time

    import torch
    import torch.distributed as dist

    env = {k: os.environ.get(k) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    if env["RANK"] is None or env["WORLD_SIZE"] is None:
        return {"ok": False, "problems": [_problem(
            "error", "--distributed needs to run on every rank, and this process is not one",
            "add the launch flags (mmtune doctor --distributed --nproc-per-node N [--nnodes M --node-rank R "
            "--master-addr HOST]) or run it under torchrun: torchrun --nproc-per-node N -m mmtune.cli doctor "
            "--distributed")]}
    rank, world = int(env["RANK"]), int(env["WORLD_SIZE"])
    cuda = torch.cuda.is_available()
    backend = "nccl" if cuda else "gloo"
    if cuda:
        torch.cuda.set_device(int(env["LOCAL_RANK"] or 0))
    start = time.perf_counter()
    try:
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout))
        t = torch.tensor([float(rank + 1)], device="cuda" if cuda else "cpu")
        work = dist.all_reduce(t, async_op=True)
        if not work.wait(timeout=datetime.timedelta(seconds=timeout)):
            raise TimeoutError("all_reduce did not finish")
        total = float(t.item())
    except Exception as e:  # every way a rendezvous or a collective fails, named
        return {"ok": False, "rank": rank, "world_size": world, "backend": backend,
                "problems": [_problem("error", f"rank {rank}: {type(e).__name__}: {' '.join(str(e).split())[:300]}",
                                      network_fix(str(e), backend, env))]}
    expected = world * (world + 1) / 2
    ms = round(1000 * (time.perf_counter() - start), 1)
    dist.destroy_process_group()
    problems = [] if total == expected else [_problem(
        "error", f"all-reduce gave {total}, expected {expected}", "ranks disagree: check that every machine runs the "
        "same torch and --nnodes")]
    return {"ok": not problems, "rank": rank, "world_size": world, "backend": backend, "all_reduce": total,
            "expected": expected, "connect_and_all_reduce_ms": ms, "master": f"{env['MASTER_ADDR']}:{env['MASTER_PORT']}",
            "problems": problems}


def network_fix(message: str, backend: str, env: dict[str, str | None]) -> str:
    """The fix for a rendezvous or collective failure, from its message."""
    text = message.lower()
    iface = "NCCL_SOCKET_IFNAME" if backend == "nccl" else "GLOO_SOCKET_IFNAME"
    master = f"{env.get('MASTER_ADDR')}:{env.get('MASTER_PORT')}"
    if "address already in use" in text or "eaddrinuse" in text:
        return f"the port of {master} is in use on node 0: pass another --master-port, the same on every machine"
    if "name or service not known" in text or "getaddrinfo" in text or "nodename nor servname" in text:
        return f"the master address of {master} does not resolve: give node 0's IP address with --master-addr"
    if "connection refused" in text or "no route to host" in text or "connect" in text and "fail" in text:
        return (f"nothing answers at {master}: start node 0 (--node-rank 0) too, check --master-addr is node 0's "
                "address and that a firewall lets the port through")
    if "timed out" in text or "timeout" in text:
        return (f"not every rank arrived: run the same command on every machine (same --nnodes, --master-addr "
                f"{env.get('MASTER_ADDR')}, --master-port {env.get('MASTER_PORT')}, a different --node-rank each), "
                f"open the port in the firewall, and if the machines have several networks set {iface} to the "
                "interface that reaches the others (e.g. eth0; `ip addr` lists them)")
    if "nccl" in text:
        return (f"NCCL failed: run with NCCL_DEBUG=INFO to see where; set {iface} to the interface that reaches the "
                "other machines, and NCCL_IB_DISABLE=1 if there is no InfiniBand")
    return f"run with TORCH_DISTRIBUTED_DEBUG=DETAIL to see where it fails; check {iface} and the firewall"


def print_report(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title="mmtune doctor", show_header=False, title_justify="left")
    v = report["versions"]
    table.add_row("versions", ", ".join(f"{k} {val}" for k, val in v.items() if val))
    table.add_row("cpu", f"{report['cpu']['cores']} cores, {report['cpu']['ram_gib']} GiB RAM")
    cuda = report["cuda"]
    if cuda["devices"]:
        for d in cuda["devices"]:
            table.add_row(f"GPU {d['index']}", f"{d['name']}, {d['memory_gib']} GiB ({d['free_gib']} free), "
                          f"capability {d['capability']}, bf16 {'yes' if d['bf16'] else 'no'}")
        table.add_row("CUDA / NCCL", f"{cuda['version']} / {cuda['nccl']}")
    else:
        table.add_row("GPU", "none" + (" (Apple MPS available)" if report["mps"] else ""))
    table.add_row("bf16", "yes" if report["bf16"] else "no")
    table.add_row("flash attention", "flash-attn installed" if report["flash_attention"] else
                  "PyTorch SDPA (flash-attn not installed)")
    table.add_row("bitsandbytes (QLoRA)", "yes" if report["bitsandbytes"] else "no")
    table.add_row("DeepSpeed", "installed" if report["deepspeed"] else "not installed")
    d = report.get("distributed")
    if d:
        table.add_row("distributed", f"{'ok' if d['ok'] else 'FAILED'}: rank {d.get('rank')} of {d.get('world_size')} "
                      f"({d.get('backend')}), all-reduce {d.get('all_reduce')} (expected {d.get('expected')}), "
                      f"{d.get('connect_and_all_reduce_ms')} ms via {d.get('master')}")
    console.print(table)
    for p in report["problems"] + (d or {}).get("problems", []):
        console.print(f"{p['severity']}: {p['problem']}\n  fix: {p['fix']}", markup=False, highlight=False)


def _problem(severity: str, problem: str, fix: str) -> dict[str, str]:
    return {"severity": severity, "problem": problem, "fix": fix}


def _version(name: str) -> str | None:
    import importlib.metadata

    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _nccl_version(torch) -> str | None:
    try:
        return ".".join(map(str, torch.cuda.nccl.version()))
    except Exception:
        return None


def _ram_gib() -> float | None:
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        return None
