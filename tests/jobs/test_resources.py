"""A job asks for GPUs (`extra_body={"gpus": 4, "nodes": 1}`): stored with the job, turned into one training
process per GPU; more than one machine per job is refused with the way to do it."""

from __future__ import annotations

import httpx

from mmtune.jobs.worker import JobRunner
from mmtune.models.registry import DEFAULT_MODEL


def test_gpus_are_stored_and_launch_one_process_each(serve, chat_file):
    s = serve(concurrency=0)
    job = s.client.fine_tuning.jobs.create(model=DEFAULT_MODEL, training_file=s.upload(chat_file),
                                           extra_body={"gpus": 4, "nodes": 1})
    row = s.service.wait_job(job.id, 30, ("queued",))
    assert row["mmtune"]["gpus"] == 4
    args = JobRunner(s.service, s.service.store.get_job(job.id)).command()
    assert args[args.index("--nproc-per-node") + 1] == "4" and "--master-port" in args
    plain = s.client.fine_tuning.jobs.create(model=DEFAULT_MODEL, training_file=s.upload(chat_file))
    s.service.wait_job(plain.id, 30, ("queued",))
    assert "--nproc-per-node" not in JobRunner(s.service, s.service.store.get_job(plain.id)).command()


def test_more_than_one_node_is_refused_naming_the_way(shared):
    r = httpx.post(f"{shared.base_url}/fine_tuning/jobs",
                   json={"model": DEFAULT_MODEL, "training_file": shared.file_id, "nodes": 2})
    assert r.status_code == 400 and r.json()["error"]["param"] == "nodes"
    assert "--nnodes" in r.json()["error"]["message"]
    r = httpx.post(f"{shared.base_url}/fine_tuning/jobs",
                   json={"model": DEFAULT_MODEL, "training_file": shared.file_id, "gpus": -1})
    assert r.status_code == 400 and r.json()["error"]["param"] == "gpus"


def test_unknown_executor_is_an_error(tmp_path):
    import pytest

    from mmtune.errors import UserError
    from mmtune.jobs.service import JobService

    with pytest.raises(UserError, match="unknown executor 'k8s': local or ray"):
        JobService(tmp_path / "d", executor="k8s").start()
