"""The Ray executor: a local Ray cluster of two simulated nodes (ray.cluster_utils.Cluster, one job slot
each) runs jobs of `mmtune jobs serve --executor ray` through the official openai client: two at once, one
per node, to success; a service SIGKILLed mid-job leaves the detached actor behind, and the restarted
service stops it and resumes the job from its checkpoint; cancel stops the job's Ray actor."""

from __future__ import annotations

import importlib.util
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.skipif(importlib.util.find_spec("ray") is None,
                                                   reason="ray is in the `cluster` extra: pip install -e '.[cluster]'")]

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples" / "data"
# a loaded 2-core machine starts Ray's agents slowly: give them time instead of failing the node
os.environ.setdefault("RAY_agent_register_timeout_ms", "180000")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def cluster():
    from ray.cluster_utils import Cluster

    env = {"PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the nodes' workers import mmtune from this checkout
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "resources": {"mmtune_slot": 1},
                                                      "include_dashboard": False})
    c.add_node(num_cpus=1, resources={"mmtune_slot": 1})
    c.wait_for_nodes()
    import ray

    from mmtune.jobs.executor import NAMESPACE

    ray.init(address=c.address, namespace=NAMESPACE, log_to_driver=False)  # the test looks up the jobs' actors
    yield c
    ray.shutdown()
    c.shutdown()
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def start_service(data: Path, port: int, cluster, model_root: Path) -> subprocess.Popen:
    log = open(data.parent / "service.log", "ab")
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "mmtune.cli", "jobs", "serve", "--data-dir", str(data),
                             "--port", str(port), "--model-root", str(model_root), "--concurrency", "2",
                             "--executor", "ray", "--ray-address", cluster.address, "--ray-resource",
                             "mmtune_slot=1"], stdout=log, stderr=subprocess.STDOUT, env=env)

    def up() -> bool:
        assert proc.poll() is None, (data.parent / "service.log").read_text()[-3000:]
        try:
            return httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    wait(up, 120, "the jobs service to start")
    return proc


def ray_node(data: Path, job_id: str) -> str:
    text = (data / "jobs" / job_id / "train.log").read_text()
    return re.findall(r"=== on Ray node (\w+)", text)[-1]


def actor_alive(cluster, job_id: str) -> bool:
    import ray

    from mmtune.jobs.executor import NAMESPACE, actor_name

    try:
        ray.get_actor(actor_name(job_id), namespace=NAMESPACE)
        return True
    except ValueError:
        return False


def test_ray_cluster_runs_jobs_at_once_resumes_after_a_kill_and_cancels(cluster, tiny_llama, tmp_path):
    data, port = tmp_path / "data", free_port()
    service = start_service(data, port, cluster, tiny_llama.parent)
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0)
    try:
        with open(EXAMPLES / "persona.jsonl", "rb") as f:
            file_id = client.files.create(file=("persona.jsonl", f), purpose="fine-tune").id

        def create(steps: int, suffix: str):
            return client.fine_tuning.jobs.create(model=str(tiny_llama), training_file=file_id, suffix=suffix,
                                                  seed=3, hyperparameters={"batch_size": 2},
                                                  extra_body={"max_steps": steps, "save_steps": 1, "gpus": 0})

        a, b = create(12, "a"), create(3, "b")
        # both run at once, one on each node (each node has one job slot)
        wait(lambda: all(client.fine_tuning.jobs.retrieve(j.id).status == "running" for j in (a, b))
             and all("on Ray node" in ((data / "jobs" / j.id / "train.log").read_text()
                                       if (data / "jobs" / j.id / "train.log").exists() else "") for j in (a, b)),
             180, "two running jobs")
        wait(lambda: all(actor_alive(cluster, j.id) for j in (a, b)), 60, "their Ray actors")
        assert ray_node(data, a.id) != ray_node(data, b.id)

        # the service dies mid-job: the detached actor keeps running; the next service stops it and resumes
        wait(lambda: client.fine_tuning.jobs.checkpoints.list(a.id).data, 240, "a first checkpoint of job a")
        service.send_signal(signal.SIGKILL)
        service.wait(10)
        assert actor_alive(cluster, a.id)
        service = start_service(data, port, cluster, tiny_llama.parent)

        done = {}
        for job in (a, b):
            done[job.id] = wait(lambda j=job: (r := client.fine_tuning.jobs.retrieve(j.id)).status in
                                ("succeeded", "failed") and r, 300, f"job {job.id} to finish")
            assert done[job.id].status == "succeeded", done[job.id].error
        events = [e.message for e in client.fine_tuning.jobs.list_events(a.id, limit=100)]
        assert any(m.startswith("The service restarted while this job was running") for m in events)
        assert any(m.startswith("Resuming training from checkpoint at step") for m in events)
        steps = [e.data["step"] for e in client.fine_tuning.jobs.list_events(a.id, limit=100) if e.type == "metrics"]
        assert sorted(steps) == list(range(1, 13))  # every step once across the restart
        assert not actor_alive(cluster, a.id)  # a finished run's actor is gone

        # cancel stops the Ray actor (and its training process)
        c = create(1000, "c")
        wait(lambda: actor_alive(cluster, c.id) and client.fine_tuning.jobs.retrieve(c.id).status == "running",
             180, "job c's actor")
        assert client.fine_tuning.jobs.cancel(c.id).status == "cancelled"
        wait(lambda: not actor_alive(cluster, c.id), 60, "the cancelled job's actor to stop")
    finally:
        service.send_signal(signal.SIGTERM)
        service.wait(60)
