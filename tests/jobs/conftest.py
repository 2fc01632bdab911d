"""Job-service fixtures: a real uvicorn on 127.0.0.1 serving only the jobs router, the official
openai client pointed at it, and data files. Servers with `concurrency=0` validate and queue
jobs without training them, so API tests spawn no training processes."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import openai
import pytest
import uvicorn

from mmtune.jobs.api import create_jobs_app
from mmtune.jobs.service import JobService, Settings

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "data"
KEY = "jobs-test-key"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running_server(service: JobService, api_key: str | None = None) -> Iterator[str]:
    """`service` behind a real uvicorn (the app starts and closes the service); yields the base URL."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_jobs_app(service, api_key=api_key), host="127.0.0.1",
                                           port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started:
        assert time.time() < deadline and thread.is_alive(), "the server did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.should_exit = True
        thread.join(30)


class Served:
    def __init__(self, service: JobService, base_url: str, api_key: str | None):
        self.service, self.base_url = service, base_url
        self.client = openai.OpenAI(base_url=base_url, api_key=api_key or "unused", max_retries=0)

    def upload(self, path: Path) -> str:
        with open(path, "rb") as f:
            return self.client.files.create(file=(path.name, f), purpose="fine-tune").id


@pytest.fixture
def serve(tmp_path) -> Iterator:
    """serve(**settings) -> Served: a service on its own data dir behind a real server."""
    with_stack: list = []

    def make(api_key: str | None = None, data_dir: Path | None = None, **settings) -> Served:
        service = JobService(data_dir or tmp_path / f"data{len(with_stack)}", Settings(**settings))
        cm = running_server(service, api_key)
        url = cm.__enter__()
        with_stack.append(cm)
        return Served(service, url, api_key)

    yield make
    for cm in reversed(with_stack):
        cm.__exit__(None, None, None)



@pytest.fixture
def chat_file(tmp_path) -> Path:
    """A clean 22-row chat file (the persona example)."""
    return EXAMPLES / "persona.jsonl"


@pytest.fixture
def bad_file() -> Path:
    return EXAMPLES / "bad.jsonl"


@pytest.fixture(scope="module")
def shared(tmp_path_factory) -> Iterator[Served]:
    """One queue-only server for a module's tests that create no jobs (parametrized refusals)."""
    service = JobService(tmp_path_factory.mktemp("shared-data"), Settings(concurrency=0))
    with running_server(service) as url:
        served = Served(service, url, None)
        served.file_id = served.upload(EXAMPLES / "persona.jsonl")
        yield served
