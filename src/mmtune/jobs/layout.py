"""Where the job service keeps things: every path is made here from server-made ids.

    <data dir>/jobs.db                   the SQLite store
    <data dir>/files/<file id>.<ext>     uploaded files (ext: jsonl | json | zip of pictures) and results (csv | png)
    <data dir>/files/<file id>/<name>    an uploaded media zip, unpacked: its data file and media (media_zip.py)
    <data dir>/jobs/<job id>/config.yaml the job's training config (what `mmtune train --config` reads)
    <data dir>/jobs/<job id>/train.log   the training subprocess's output
    <data dir>/jobs/<job id>/output/     the run: adapter, metrics.jsonl, summary.json, checkpoint-*/
    <data dir>/jobs/<job id>/base/       a job on an earlier LoRA job's model: that model merged (worker.py)
    <data dir>/jobs/<job id>/pictures/   a picture job's zip, unpacked (jobs/pictures.py)
    <data dir>/service.lock              held by the running service (one service per data dir)

The data dir is $MMTUNE_HOME, else ~/.local/share/mmtune.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from mmtune.jobs.store import DB_FILE, valid_id

STORED_EXTENSIONS = (".jsonl", ".json", ".csv", ".zip", ".png")  # .zip: pictures (or a media zip being unpacked)


def default_data_dir() -> Path:
    env = os.environ.get("MMTUNE_HOME")
    return Path(env).expanduser() if env else Path.home() / ".local" / "share" / "mmtune"


@dataclass(frozen=True)
class Layout:
    root: Path

    @property
    def db(self) -> Path:
        return self.root / DB_FILE

    @property
    def files(self) -> Path:
        return self.root / "files"

    @property
    def lock(self) -> Path:
        return self.root / "service.lock"

    def file_path(self, stored_name: str) -> Path:
        """The stored file `stored_name` (`<file id><ext>`, made by the server; re-checked anyway)."""
        folder, slash, inner = stored_name.partition("/")
        if slash:  # <file id>/<data file>: an unpacked media zip's data file, one level down
            if (not valid_id("file", folder) or not inner or "/" in inner or "\\" in inner or inner.startswith(".")
                    or not inner.lower().endswith((".jsonl", ".json"))):
                raise ValueError(f"not a stored file name: {stored_name!r}")
            return self.files / folder / inner
        stem, dot, ext = stored_name.partition(".")
        if not valid_id("file", stem) or f"{dot}{ext}" not in STORED_EXTENSIONS:
            raise ValueError(f"not a stored file name: {stored_name!r}")
        return self.files / stored_name

    def job_dir(self, job_id: str) -> Path:
        if not valid_id("job", job_id):
            raise ValueError(f"not a job id: {job_id!r}")
        return self.root / "jobs" / job_id

    def config(self, job_id: str) -> Path:
        return self.job_dir(job_id) / "config.yaml"

    def log(self, job_id: str) -> Path:
        return self.job_dir(job_id) / "train.log"

    def output(self, job_id: str) -> Path:
        return self.job_dir(job_id) / "output"

    def make(self) -> None:
        for folder in (self.root, self.files, self.root / "jobs"):
            folder.mkdir(parents=True, exist_ok=True)
