"""`mmtune data split`: a deterministic train/validation split that copies rows unchanged."""

from __future__ import annotations

import os
import random

from mmtune.data.rawio import container_of, iter_rows, write_rows
from mmtune.errors import UserError


def split_counts(n: int, val_ratio: float) -> int:
    """Rows for validation: round(n * ratio), at least 1 and leaving at least 1 for training."""
    if not 0 < val_ratio < 1:
        raise UserError(f"--val-ratio must be between 0 and 1 (exclusive), got {val_ratio}")
    if n < 2:
        raise UserError(f"cannot split {n} row(s): a split needs at least 2 rows")
    return min(n - 1, max(1, round(n * val_ratio)))


def val_indices(n: int, val_ratio: float, seed: int) -> set[int]:
    return set(random.Random(seed).sample(range(n), split_counts(n, val_ratio)))


def split_file(path: str, val_ratio: float = 0.1, seed: int = 42, out_dir: str | None = None,
               force: bool = False) -> tuple[str, str, int, int]:
    """Writes <stem>.train<ext> and <stem>.val<ext>; returns (train_path, val_path, n_train, n_val)."""
    if not os.path.isfile(path):
        raise UserError(f"{path}: no such file")
    stem, ext = os.path.splitext(os.path.basename(path))
    out_dir = out_dir or os.path.dirname(os.path.abspath(path))
    os.makedirs(out_dir, exist_ok=True)
    train_path = os.path.join(out_dir, f"{stem}.train{ext}")
    val_path = os.path.join(out_dir, f"{stem}.val{ext}")
    for p in (train_path, val_path):
        if os.path.exists(p) and not force:
            raise UserError(f"{p} already exists: remove it, choose --out-dir, or pass --force to overwrite")
    n = 0
    for raw in iter_rows(path):
        if raw.error is not None and container_of(path) == "array":
            raise UserError(f"{path}:{raw.line}: {raw.error.message}; fix the file before splitting")
        n += 1
    val = val_indices(n, val_ratio, seed)
    if container_of(path) in ("jsonl", "txt"):
        _split_lines(path, val, train_path, val_path)
    else:
        write_rows(train_path, (r.value for r in iter_rows(path) if r.index not in val), "array")
        write_rows(val_path, (r.value for r in iter_rows(path) if r.index in val), "array")
    return train_path, val_path, n - len(val), len(val)


def _split_lines(path: str, val: set[int], train_path: str, val_path: str) -> None:
    """Copies each row's exact bytes: nothing is re-serialised, nothing changes."""
    with open(train_path, "wb") as ft, open(val_path, "wb") as fv:
        for raw in iter_rows(path):
            line = raw.text if raw.text.endswith(b"\n") else raw.text + b"\n"
            (fv if raw.index in val else ft).write(line)
