"""What a job runner (jobs/worker.py) needs from the service that runs it, as a Protocol.

jobs/service.py imports the worker to start runners; the worker only needs this much of the
service, so it names this interface instead of importing service.py back (no import cycle).
`JobService` satisfies it.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Protocol

from mmtune.jobs.layout import Layout
from mmtune.jobs.store import Store


class RunnerHost(Protocol):
    settings: Any  # jobs.service.Settings: python, poll_interval, kill_grace_s, price_per_million_tokens
    layout: Layout
    store: Store
    stopping: threading.Event

    def job_file_paths(self, job: dict[str, Any]) -> dict[str, Path]: ...

    def add_result_file(self, job_id: str, content: bytes, filename: str = ...) -> str: ...

    def picture_folder(self, job_id: str) -> Path: ...

    def notify_success(self, job: dict[str, Any], output: Path) -> None: ...
