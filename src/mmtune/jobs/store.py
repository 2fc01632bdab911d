"""The job store: files, jobs, events and checkpoints in one SQLite file under the data dir.

One connection guarded by a lock serves every thread (API request threads, the validator,
the runners); the database is in WAL mode with a busy timeout, so a `sqlite3` shell or a
backup tool can read it while the service writes. The schema is versioned: `MIGRATIONS`
is an append-only list, and `schema_migrations` records which ones a database has, so an
older database is upgraded in place and a newer one is refused instead of misread.

Ids are made here (`file-…`, `ftjob-…`, `ftevent-…`, `ftckpt-…`) and checked with `ID_RE`
wherever one arrives from a client; no client string ever becomes part of a path.
"""

from __future__ import annotations

import json
import re
import secrets
import sqlite3
import string
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mmtune.errors import UserError

DB_FILE = "jobs.db"
ID_PREFIXES = {"file": "file", "job": "ftjob", "event": "ftevent", "checkpoint": "ftckpt"}
ID_RE = {kind: re.compile(rf"^{prefix}-[A-Za-z0-9]{{8,64}}$") for kind, prefix in ID_PREFIXES.items()}
_ALPHABET = string.ascii_letters + string.digits
ACTIVE = ("validating_files", "queued", "running")
FINAL = ("succeeded", "failed", "cancelled")

MIGRATIONS: list[tuple[int, str, str]] = [
    (1, "files, jobs, events, checkpoints", """
    CREATE TABLE files (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        filename TEXT NOT NULL,
        purpose TEXT NOT NULL,
        bytes INTEGER NOT NULL,
        created_at INTEGER NOT NULL,
        stored_name TEXT NOT NULL,
        status TEXT NOT NULL DEFAULT 'processed',
        check_json TEXT
    );
    CREATE TABLE jobs (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        created_at INTEGER NOT NULL,
        status TEXT NOT NULL,
        model TEXT NOT NULL,
        training_file TEXT NOT NULL,
        validation_file TEXT,
        suffix TEXT,
        seed INTEGER NOT NULL,
        params_json TEXT NOT NULL,
        metadata_json TEXT,
        fine_tuned_model TEXT,
        started_at INTEGER,
        finished_at INTEGER,
        error_json TEXT,
        trained_tokens INTEGER,
        estimated_cost REAL,
        estimated_finish INTEGER,
        result_files_json TEXT NOT NULL DEFAULT '[]',
        pid INTEGER,
        attempts INTEGER NOT NULL DEFAULT 0,
        last_step INTEGER NOT NULL DEFAULT 0,
        last_eval_step INTEGER NOT NULL DEFAULT 0,
        total_steps INTEGER
    );
    CREATE INDEX jobs_by_status ON jobs(status, seq);
    CREATE TABLE events (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        job_id TEXT NOT NULL REFERENCES jobs(id),
        created_at INTEGER NOT NULL,
        level TEXT NOT NULL,
        type TEXT NOT NULL,
        message TEXT NOT NULL,
        data_json TEXT
    );
    CREATE INDEX events_by_job ON events(job_id, seq);
    CREATE TABLE checkpoints (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        job_id TEXT NOT NULL REFERENCES jobs(id),
        step INTEGER NOT NULL,
        created_at INTEGER NOT NULL,
        metrics_json TEXT NOT NULL,
        dir_name TEXT NOT NULL,
        UNIQUE (job_id, step)
    );
    """),
]
SCHEMA_VERSION = MIGRATIONS[-1][0]


def new_id(kind: str) -> str:
    """A fresh random id of `kind` (file | job | event | checkpoint)."""
    return f"{ID_PREFIXES[kind]}-" + "".join(secrets.choice(_ALPHABET) for _ in range(24))


def valid_id(kind: str, value: object) -> bool:
    return isinstance(value, str) and ID_RE[kind].fullmatch(value) is not None


def now() -> int:
    return int(time.time())


# JSON columns and how a row's column maps to a dict key
_JSON_COLS = {"check_json": "check", "params_json": "params", "metadata_json": "metadata", "error_json": "error",
              "result_files_json": "result_files", "data_json": "data", "metrics_json": "metrics"}


def _row(row: sqlite3.Row | None) -> dict[str, Any] | None:
    if row is None:
        return None
    out: dict[str, Any] = {}
    for key in row.keys():
        value = row[key]
        if key in _JSON_COLS:
            out[_JSON_COLS[key]] = json.loads(value) if value is not None else None
        else:
            out[key] = value
    return out


def _dump(value: Any) -> str | None:
    return None if value is None else json.dumps(value, ensure_ascii=False)


class Store:
    """All reads and writes of the job service's database; every method is one transaction."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30.0)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA busy_timeout=30000")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self.migrate()

    # ---------------------------------------------------------------- plumbing
    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (BEGIN IMMEDIATE: no other writer can slip in between read and write)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _one(self, sql: str, args: tuple = ()) -> dict[str, Any] | None:
        with self._lock:
            return _row(self._db.execute(sql, args).fetchone())

    def _all(self, sql: str, args: tuple = ()) -> list[dict[str, Any]]:
        with self._lock:
            return [_row(r) for r in self._db.execute(sql, args).fetchall()]

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def migrate(self) -> None:
        """Bring the schema to SCHEMA_VERSION, one recorded migration at a time."""
        with self.tx() as db:
            db.execute("CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, "
                       "name TEXT NOT NULL, applied_at INTEGER NOT NULL)")
            have = db.execute("SELECT COALESCE(MAX(version), 0) FROM schema_migrations").fetchone()[0]
            if have > SCHEMA_VERSION:
                raise UserError(f"{self.path} was written by a newer mmtune (schema {have}, this one knows "
                                f"{SCHEMA_VERSION}): upgrade mmtune, or use another --data-dir")
            for version, name, sql in MIGRATIONS:
                if version > have:
                    for statement in filter(str.strip, sql.split(";")):
                        db.execute(statement)
                    db.execute("INSERT INTO schema_migrations VALUES (?, ?, ?)", (version, name, now()))

    def schema_version(self) -> int:
        with self._lock:
            return self._db.execute("SELECT MAX(version) FROM schema_migrations").fetchone()[0]

    # ---------------------------------------------------------------- pagination
    def _page(self, table: str, where: str, args: tuple, after: str | None, limit: int,
              order: str = "desc", key: str = "seq") -> tuple[list[dict[str, Any]], bool]:
        """Rows of `table` after the row with id `after` (in list order), and whether more follow.

        An `after` id that is not in this list is answered with an empty page, like a
        cursor past the end (the caller has already validated its shape)."""
        cmp, direction = ("<", "DESC") if order == "desc" else (">", "ASC")
        sql, params = f"SELECT * FROM {table} WHERE {where}", list(args)
        if after is not None:
            anchor = self._one(f"SELECT {key} FROM {table} WHERE id = ? AND {where}", (after, *args))
            if anchor is None:
                return [], False
            sql += f" AND {key} {cmp} ?"
            params.append(anchor[key])
        sql += f" ORDER BY {key} {direction}, seq {direction} LIMIT ?"
        rows = self._all(sql, (*params, limit + 1))
        return rows[:limit], len(rows) > limit

    # ---------------------------------------------------------------- files
    def add_file(self, file_id: str, filename: str, purpose: str, size: int, stored_name: str) -> dict[str, Any]:
        with self.tx() as db:
            db.execute("INSERT INTO files (id, filename, purpose, bytes, created_at, stored_name) "
                       "VALUES (?, ?, ?, ?, ?, ?)", (file_id, filename, purpose, size, now(), stored_name))
        return self.get_file(file_id)

    def get_file(self, file_id: str) -> dict[str, Any] | None:
        return self._one("SELECT * FROM files WHERE id = ?", (file_id,))

    def list_files(self, after: str | None, limit: int, order: str, purpose: str | None):
        where, args = ("purpose = ?", (purpose,)) if purpose else ("1", ())
        return self._page("files", where, args, after, limit, order)

    def set_file_check(self, file_id: str, check: dict[str, Any]) -> None:
        with self.tx() as db:
            db.execute("UPDATE files SET check_json = ?, status = ? WHERE id = ?",
                       (_dump(check), "error" if check.get("errors") else "processed", file_id))

    def delete_file(self, file_id: str) -> dict[str, Any] | None:
        """Delete a file's row unless an unfinished job uses it; returns that job (refusal) or None."""
        with self.tx() as db:
            job = _row(db.execute("SELECT id, status FROM jobs WHERE (training_file = ? OR validation_file = ?) "
                                  "AND status IN (?, ?, ?) LIMIT 1", (file_id, file_id, *ACTIVE)).fetchone())
            if job is None:
                db.execute("DELETE FROM files WHERE id = ?", (file_id,))
            return job

    # ---------------------------------------------------------------- jobs
    def add_job(self, job: dict[str, Any]) -> dict[str, Any]:
        with self.tx() as db:
            db.execute(
                "INSERT INTO jobs (id, created_at, status, model, training_file, validation_file, suffix, seed, "
                "params_json, metadata_json) VALUES (?, ?, 'validating_files', ?, ?, ?, ?, ?, ?, ?)",
                (job["id"], now(), job["model"], job["training_file"], job.get("validation_file"),
                 job.get("suffix"), job["seed"], _dump(job["params"]), _dump(job.get("metadata"))))
            self._event(db, job["id"], "info", "message", f"Validating training file: {job['training_file']}")
        return self.get_job(job["id"])

    def get_job(self, job_id: str) -> dict[str, Any] | None:
        return self._one("SELECT * FROM jobs WHERE id = ?", (job_id,))

    def list_jobs(self, after: str | None, limit: int):
        return self._page("jobs", "1", (), after, limit)

    def jobs_with_status(self, *statuses: str) -> list[dict[str, Any]]:
        marks = ", ".join("?" * len(statuses))
        return self._all(f"SELECT * FROM jobs WHERE status IN ({marks}) ORDER BY seq", statuses)

    def succeeded_jobs(self) -> list[dict[str, Any]]:
        return self._all("SELECT * FROM jobs WHERE status = 'succeeded' AND fine_tuned_model IS NOT NULL "
                         "ORDER BY seq")

    def update_job(self, job_id: str, *, when: tuple[str, ...] = (), event: tuple | None = None,
                   **values: Any) -> bool:
        """Set columns of a job (JSON ones by their dict key), only while its status is one of `when`
        (any status if empty), and add `event` (level, type, message[, data]) in the same
        transaction. Returns whether the job was updated."""
        cols = {f"{k}_json" if f"{k}_json" in _JSON_COLS else k: v for k, v in values.items()}
        sets = ", ".join(f"{c} = ?" for c in cols)
        args = [_dump(v) if c in _JSON_COLS else v for c, v in cols.items()]
        sql = f"UPDATE jobs SET {sets} WHERE id = ?"
        args.append(job_id)
        if when:
            sql += f" AND status IN ({', '.join('?' * len(when))})"
            args.extend(when)
        with self.tx() as db:
            changed = db.execute(sql, args).rowcount > 0 if cols else True
            if changed and event is not None:
                self._event(db, job_id, *event)
        return changed

    def claim_next(self, status: str, new_status: str, accept: Callable[[dict[str, Any]], bool] | None = None,
                   **values: Any) -> dict[str, Any] | None:
        """Atomically move the oldest job in `status` to `new_status` and return it (None: none waiting).
        With `accept` (called with a job's params), the oldest job it accepts."""
        with self.tx() as db:
            if accept is None:
                row = db.execute("SELECT id FROM jobs WHERE status = ? ORDER BY seq LIMIT 1", (status,)).fetchone()
            else:
                rows = db.execute("SELECT id, params_json FROM jobs WHERE status = ? ORDER BY seq", (status,))
                row = next((r for r in rows if accept(json.loads(r["params_json"]))), None)
            if row is None:
                return None
            cols = {"status": new_status, **values}
            db.execute(f"UPDATE jobs SET {', '.join(f'{c} = ?' for c in cols)} WHERE id = ?",
                       (*cols.values(), row["id"]))
        return self.get_job(row["id"])

    # ---------------------------------------------------------------- events
    def _event(self, db: sqlite3.Connection, job_id: str, level: str, type_: str, message: str,
               data: Any = None) -> None:
        db.execute("INSERT INTO events (id, job_id, created_at, level, type, message, data_json) "
                   "VALUES (?, ?, ?, ?, ?, ?, ?)", (new_id("event"), job_id, now(), level, type_, message, _dump(data)))

    def add_event(self, job_id: str, level: str, message: str, data: Any = None, type_: str = "message") -> None:
        with self.tx() as db:
            self._event(db, job_id, level, type_, message, data)

    def add_metrics(self, job_id: str, records: list[tuple[str, dict[str, Any]]], last_step: int,
                    last_eval_step: int, **values: Any) -> None:
        """Metric events and the job's progress columns, in one transaction (never half-recorded)."""
        cols = {"last_step": last_step, "last_eval_step": last_eval_step, **values}
        with self.tx() as db:
            for message, data in records:
                self._event(db, job_id, "info", "metrics", message, data)
            db.execute(f"UPDATE jobs SET {', '.join(f'{c} = ?' for c in cols)} WHERE id = ?",
                       (*cols.values(), job_id))

    def list_events(self, job_id: str, after: str | None, limit: int):
        return self._page("events", "job_id = ?", (job_id,), after, limit)

    def all_events(self, job_id: str) -> list[dict[str, Any]]:
        return self._all("SELECT * FROM events WHERE job_id = ? ORDER BY seq", (job_id,))

    # ---------------------------------------------------------------- checkpoints
    def sync_checkpoints(self, job_id: str, found: dict[int, tuple[str, dict[str, Any]]]) -> list[int]:
        """Make the job's checkpoint rows match the checkpoint dirs on disk (step -> (dir, metrics));
        returns the steps that are new. Each new one also gets an event."""
        with self.tx() as db:
            have = {r["step"] for r in db.execute("SELECT step FROM checkpoints WHERE job_id = ?", (job_id,))}
            new = sorted(set(found) - have)
            for step in new:
                dir_name, metrics = found[step]
                db.execute("INSERT INTO checkpoints (id, job_id, step, created_at, metrics_json, dir_name) "
                           "VALUES (?, ?, ?, ?, ?, ?)", (new_id("checkpoint"), job_id, step, now(),
                                                         _dump(metrics), dir_name))
                self._event(db, job_id, "info", "message", f"Checkpoint created at step {step}", {"step": step})
            for step in have - set(found):
                db.execute("DELETE FROM checkpoints WHERE job_id = ? AND step = ?", (job_id, step))
        return new

    def list_checkpoints(self, job_id: str, after: str | None, limit: int):
        return self._page("checkpoints", "job_id = ?", (job_id,), after, limit, key="step")
