"""Where a job's `mmtune train` process runs: this machine (the default, a subprocess the runner
starts itself, jobs/worker.py) or a Ray cluster (`RayExecutor`).

The Ray executor starts one named, detached actor per job on a node that has the job's resources
(`num_gpus` = the job's `gpus`, plus any custom resources the service asks for); the actor runs the
very same command line as the local executor, with its log, metrics and checkpoints written to the
job's folder, which must be on storage the service and the Ray nodes share. The runner follows
the run exactly as it follows a local one (same events, checkpoints, cancel), through a handle
with the `subprocess.Popen` methods it uses: `pid`, `poll`, `wait`, `returncode`, plus `stop`.
A service that restarts finds the actor of an interrupted job by its name, stops it, and queues
the job again (it resumes from its last checkpoint), as it does with a local process.

ray is imported only when a Ray executor is made (`pip install -e ".[cluster]"`).
"""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmtune.errors import UserError

NAMESPACE = "mmtune-jobs"


@dataclass
class RaySettings:
    address: str = "auto"  # a running cluster ("auto": the one this machine belongs to; "ray://host:10001")
    num_cpus: float = 1.0  # CPUs each job's actor reserves
    resources: dict[str, float] = field(default_factory=dict)  # custom resources each job reserves


def actor_name(job_id: str) -> str:
    return f"mmtune-{job_id}"


class _TrainProcess:
    """Runs inside the Ray actor, on the node Ray chose: one training process and its log."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None

    def start(self, args: list[str], cwd: str, env: dict[str, str], log_path: str) -> int:
        import socket

        import ray

        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as log:
            node = ray.get_runtime_context().get_node_id()
            log.write(f"=== on Ray node {node} ({socket.gethostname()})\n".encode())
            log.flush()
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         cwd=cwd, env=env, start_new_session=True)
        return self.proc.pid

    def poll(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def stop(self, grace_s: float) -> int | None:
        import os
        import signal

        if self.proc is None:
            return None
        for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 30.0)):
            if self.proc.poll() is not None:
                break
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                continue
        return self.proc.poll()


class RayRun:
    """A job's run on Ray, with the subprocess.Popen methods the runner uses."""

    def __init__(self, ray, actor, pid: int, poll_s: float = 0.2):
        self._ray, self._actor, self.pid, self._poll_s = ray, actor, pid, poll_s
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                self.returncode = self._ray.get(self._actor.poll.remote(), timeout=60)
            except self._ray.exceptions.RayActorError:  # the actor (its node) died: the run with it
                self.returncode = -9
            if self.returncode is not None:
                self._ray.kill(self._actor)  # detached: it outlives its run unless ended here
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired("ray actor", timeout)
            time.sleep(self._poll_s)
        return self.returncode

    def stop(self, grace_s: float) -> None:
        """Stop the training process (SIGTERM, then SIGKILL after `grace_s`), then the actor."""
        try:
            code = self._ray.get(self._actor.stop.remote(grace_s), timeout=grace_s + 60)
            self.returncode = code if code is not None else -15
        except Exception:
            self.returncode = -9
        self._ray.kill(self._actor)


class RayExecutor:
    """Runs each job's training command in a Ray actor on a node with the job's resources."""

    name = "ray"

    def __init__(self, settings: RaySettings | None = None):
        self.settings = settings or RaySettings()
        try:
            import ray
        except ImportError:
            raise UserError("the Ray executor needs ray: pip install -e '.[cluster]' (or pip install ray)") from None
        self.ray = ray
        if not ray.is_initialized():
            try:
                ray.init(address=self.settings.address, namespace=NAMESPACE, log_to_driver=False)
            except ConnectionError as e:
                raise UserError(f"no Ray cluster at {self.settings.address!r} ({e}): start one with `ray start "
                                "--head` (and `ray start --address HEAD:6379` on the other machines), or pass "
                                "its address") from None
        self._actor_class = ray.remote(_TrainProcess)

    def check(self, gpus: int) -> str | None:
        """Why a job asking for `gpus` GPUs can never run on this cluster, or None."""
        nodes = [n for n in self.ray.nodes() if n.get("Alive")]
        wanted = {"GPU": gpus, "CPU": self.settings.num_cpus, **self.settings.resources}
        for node in nodes:
            have = node.get("Resources", {})
            if all(have.get(k, 0) >= v for k, v in wanted.items() if v):
                return None
        return (f"no node of the Ray cluster has {', '.join(f'{v:g} {k}' for k, v in wanted.items() if v)}: "
                "ask for fewer GPUs, or add a node that has them")

    def start(self, job_id: str, args: list[str], cwd: Path, env: dict[str, str], log_path: Path,
              gpus: int = 0) -> RayRun:
        self.clean_stale(job_id)
        actor = self._actor_class.options(
            name=actor_name(job_id), namespace=NAMESPACE, lifetime="detached", max_restarts=0,
            num_cpus=self.settings.num_cpus, num_gpus=gpus, resources=dict(self.settings.resources) or None,
        ).remote()
        keep = {k: v for k, v in env.items() if k not in ("RAY_ADDRESS",) and not k.startswith("RAY_")}
        pid = self.ray.get(actor.start.remote(args, str(cwd), keep, str(log_path)))  # waits for resources
        return RayRun(self.ray, actor, pid)

    def clean_stale(self, job_id: str) -> bool:
        """Stop the actor a previous service left for this job, if any (its run is resumed afresh)."""
        try:
            actor = self.ray.get_actor(actor_name(job_id), namespace=NAMESPACE)
        except ValueError:
            return False
        try:
            self.ray.get(actor.stop.remote(5.0), timeout=60)
        except Exception:
            pass
        self.ray.kill(actor)
        return True


def make_executor(kind: str, ray_settings: RaySettings | None = None) -> Any:
    """None for the local executor (the runner starts its own subprocess), else the named executor."""
    if kind == "local":
        return None
    if kind == "ray":
        return RayExecutor(ray_settings)
    raise UserError(f"unknown executor {kind!r}: local or ray")
