"""`mmtune train --nproc-per-node N [--nnodes M --node-rank R --master-addr HOST --master-port P]`:
the same training command on N processes per machine and M machines, with no accelerate knowledge.

The launcher checks the config and inputs once, then replaces itself with torchrun
(`python -m torch.distributed.run ... -m mmtune.cli train <the same flags>`), so every process
runs exactly `mmtune train` as a user would under torchrun themselves. Run the same command on
every machine, changing only --node-rank; the output folder should be on storage all machines
share (rank 0 writes it, every rank reads checkpoints from it to resume).
"""

from __future__ import annotations

import argparse
import os
import sys

LAUNCH_FLAGS = ("nproc_per_node", "nnodes", "node_rank", "master_addr", "master_port")
DEFAULT_PORT = 29500


def add_launch_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "launching on several processes or machines (runs torchrun for you; the same command on every machine)")
    group.add_argument("--nproc-per-node", metavar="N", default=argparse.SUPPRESS,
                       help="training processes on this machine, one per GPU (default: 1, no torchrun; "
                       "gpu = all this machine's GPUs)")
    group.add_argument("--nnodes", type=_positive, metavar="M", default=argparse.SUPPRESS,
                       help="machines taking part (default: 1)")
    group.add_argument("--node-rank", type=_non_negative, metavar="R", default=argparse.SUPPRESS,
                       help="this machine's number, 0 to M-1; 0 is the one at --master-addr (default: 0)")
    group.add_argument("--master-addr", metavar="HOST", default=argparse.SUPPRESS,
                       help="address of node 0 that every machine can reach (default: 127.0.0.1; needed with "
                       "--nnodes > 1)")
    group.add_argument("--master-port", type=_port, metavar="PORT", default=argparse.SUPPRESS,
                       help=f"a free TCP port on node 0 (default: {DEFAULT_PORT})")


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, not {value}")
    return value


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, not {value}")
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a TCP port from 1 to 65535, not {value}")
    return value


def wants_launch(args: argparse.Namespace) -> bool:
    """Launch flags given, and not already inside a torchrun/accelerate process."""
    return any(hasattr(args, name) for name in LAUNCH_FLAGS) and "LOCAL_RANK" not in os.environ


def torchrun_command(args: argparse.Namespace, argv: list[str], command: str = "train") -> list[str]:
    """The torchrun command line for these launch flags; `argv` is `mmtune <command>`'s own flags
    (launch flags are dropped from it). Raises UserError for flags that contradict each other, a
    --master-addr that does not resolve, or (on node 0) a --master-port already in use."""
    from mmtune.errors import UserError

    nproc = str(getattr(args, "nproc_per_node", "1"))
    if nproc not in ("gpu", "auto") and not (nproc.isdigit() and int(nproc) >= 1):
        raise UserError(f"--nproc-per-node must be a number >= 1 or gpu, not {nproc!r}")
    nnodes, rank = getattr(args, "nnodes", 1), getattr(args, "node_rank", 0)
    if rank >= nnodes:
        raise UserError(f"--node-rank {rank} is not below --nnodes {nnodes}: number the machines 0 to {nnodes - 1}")
    if nnodes > 1 and not hasattr(args, "master_addr"):
        raise UserError("--nnodes > 1 needs --master-addr HOST: the address of node 0 (--node-rank 0) that every "
                        "machine can reach, the same on every machine")
    addr, port = getattr(args, "master_addr", "127.0.0.1"), getattr(args, "master_port", DEFAULT_PORT)
    check_rendezvous(addr, port, rank)
    return [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", nproc, "--nnodes", str(nnodes),
            "--node-rank", str(rank), "--master-addr", addr, "--master-port", str(port),
            "-m", "mmtune.cli", command, *strip_launch_flags(argv)]


def check_rendezvous(addr: str, port: int, node_rank: int) -> None:
    """What makes a multi-machine start hang or fail with an obscure message, checked first: the master
    address must resolve, and on node 0 (which listens on it) the port must be free."""
    import socket

    from mmtune.errors import UserError

    try:
        socket.getaddrinfo(addr, port)
    except socket.gaierror as e:
        raise UserError(f"--master-addr {addr!r} does not resolve on this machine ({e.strerror}): give node 0's IP "
                        "address or a host name every machine can resolve") from None
    if node_rank == 0:
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("", port))
            except OSError:
                raise UserError(f"--master-port {port} is already in use on this machine (node 0 listens on it): "
                                "choose another free port, the same on every machine (or stop what holds it: "
                                f"`ss -ltnp | grep {port}`)") from None


def strip_launch_flags(argv: list[str]) -> list[str]:
    flags = {"--" + name.replace("_", "-") for name in LAUNCH_FLAGS}
    out, skip = [], False
    for item in argv:
        if skip:
            skip = False
            continue
        name = item.split("=", 1)[0]
        if name in flags:
            skip = "=" not in item
            continue
        out.append(item)
    return out


def exec_torchrun(command: list[str]) -> None:
    """Replace this process with torchrun (its exit status is the run's)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(command[0], command)
