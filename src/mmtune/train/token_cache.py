"""Rendered, tokenized training data cached on disk, so a second run on the same data starts training at once.

The key is a hash of everything the rows depend on: the bytes of every data file (not their
names or times), the tokenizer (vocabulary, merges, special tokens, chat template), the config
fields that shape rendering and splitting, and the source of the rendering code itself, so an
edit to any of them is a miss, never a stale hit. An entry is one .npz (token ids as int32
arrays plus offsets, and a JSON header with the data statistics and the warnings the render
printed, which a hit prints again), written to a temporary name and renamed into place.

The folder is kept under a size budget ($MMTUNE_CACHE_MAX_GB, default 5): after each write the
least recently used entries (a hit counts as a use) are removed until it fits; the entry just
written always stays. Temporary files left by a killed run are removed after an hour.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from mmtune.config import TrainConfig
from mmtune.models.registry import find_spec

Row = dict[str, list[int]]  # input_ids and labels
# the modules whose source decides the rows (train/dataset.py imports this one: named, not imported)
CODE = ("mmtune.chat.render", "mmtune.train.dataset", "mmtune.chat.conversation", "mmtune.chat.reasoning",
        "mmtune.chat.tools")

FORMAT = 1
DEFAULT_MAX_GB = 5.0
_STALE_TMP_S = 3600
# config fields that change which rows exist or what their tokens and labels are
KEY_FIELDS = ("train_on", "reasoning", "max_length", "drop_long", "val_ratio", "seed", "skip_bad_rows", "media_root")


def default_dir() -> Path:
    """$MMTUNE_CACHE/tokenized, else ~/.cache/mmtune/tokenized."""
    env = os.environ.get("MMTUNE_CACHE")
    return (Path(env).expanduser() if env else Path.home() / ".cache" / "mmtune") / "tokenized"


def _file_digest(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def tokenizer_digest(tokenizer) -> str:
    """What tokenization and chat rendering depend on, whatever folder the tokenizer came from."""
    h = hashlib.sha256(type(tokenizer).__name__.encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    h.update(backend.to_str().encode() if backend is not None else repr(sorted(tokenizer.get_vocab().items())).encode())
    h.update(str(getattr(tokenizer, "chat_template", "")).encode())
    h.update(json.dumps(tokenizer.special_tokens_map, sort_keys=True, default=str).encode())
    return h.hexdigest()


def cache_key(cfg: TrainConfig, tokenizer) -> str:
    parts = {
        "format": FORMAT,
        "code": [hashlib.sha256(Path(importlib.util.find_spec(m).origin).read_bytes()).hexdigest() for m in CODE],
        "tool_format": getattr(find_spec(cfg.model), "tool_format", "auto"),
        "data": [_file_digest(p) for p in cfg.data],
        "val_data": [_file_digest(p) for p in cfg.val_data],
        "tokenizer": tokenizer_digest(tokenizer),
        "config": {k: getattr(cfg, k) for k in KEY_FIELDS},
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]


def _flatten(rows: list[Row]) -> dict[str, np.ndarray]:
    lengths = [len(r["input_ids"]) for r in rows]
    return {"ids": np.fromiter((t for r in rows for t in r["input_ids"]), np.int32, sum(lengths)),
            "labels": np.fromiter((t for r in rows for t in r["labels"]), np.int32, sum(lengths)),
            "offsets": np.cumsum([0, *lengths], dtype=np.int64)}


def _rows(ids: np.ndarray, labels: np.ndarray, offsets: np.ndarray) -> list[Row]:
    ids_l, labels_l, off = ids.tolist(), labels.tolist(), offsets.tolist()
    return [{"input_ids": ids_l[a:b], "labels": labels_l[a:b]} for a, b in zip(off[:-1], off[1:], strict=False)]


def save_cached(key: str, train: list[Row], val: list[Row] | None, stats: dict[str, Any], warnings: list[str],
                cache_dir: Path | None = None) -> Path:
    """Store the rows, the data statistics and the warnings their render printed under `key`."""
    folder = Path(cache_dir) if cache_dir else default_dir()
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {f"train_{k}": v for k, v in _flatten(train).items()}
    if val is not None:
        arrays.update({f"val_{k}": v for k, v in _flatten(val).items()})
    header = {"stats": stats, "warnings": warnings}
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp.npz")
    os.close(fd)
    np.savez(tmp, header=np.array(json.dumps(header)), **arrays)
    path = folder / f"{key}.npz"
    os.replace(tmp, path)
    prune(folder, keep=path)
    return path


def max_bytes() -> int:
    """The cache's size budget: $MMTUNE_CACHE_MAX_GB gigabytes (default 5)."""
    raw = os.environ.get("MMTUNE_CACHE_MAX_GB", "")
    try:
        gb = float(raw) if raw else DEFAULT_MAX_GB
    except ValueError:
        gb = DEFAULT_MAX_GB
    return int(gb * 2**30)


def prune(folder: Path, keep: Path | None = None, budget: int | None = None) -> list[Path]:
    """Remove least recently used entries until the folder fits the budget; returns what was removed."""
    budget = max_bytes() if budget is None else budget
    now = time.time()
    entries, removed = [], []
    for p in folder.iterdir():
        try:
            st = p.stat()
        except OSError:
            continue
        if p.name.endswith(".tmp.npz"):
            if now - st.st_mtime > _STALE_TMP_S:
                p.unlink(missing_ok=True)
                removed.append(p)
        elif p.suffix == ".npz":
            entries.append((st.st_mtime, st.st_size, p))
    total = sum(size for _, size, _ in entries)
    for _, size, p in sorted(entries, key=lambda e: e[0]):
        if total <= budget:
            break
        if keep is not None and p == keep:
            continue
        p.unlink(missing_ok=True)
        removed.append(p)
        total -= size
    return removed


def load_cached(key: str, cache_dir: Path | None = None
                ) -> tuple[list[Row], list[Row] | None, dict[str, Any], list[str]] | None:
    """(train rows, val rows, data statistics, warnings to repeat) from the cache, or None (absent or
    unreadable: it is rebuilt)."""
    path = (Path(cache_dir) if cache_dir else default_dir()) / f"{key}.npz"
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            header = json.loads(str(z["header"]))
            train = _rows(z["train_ids"], z["train_labels"], z["train_offsets"])
            val = _rows(z["val_ids"], z["val_labels"], z["val_offsets"]) if "val_ids" in z else None
    except (OSError, ValueError, KeyError):
        return None
    try:
        os.utime(path)  # a hit is a use: pruning removes the least recently used entries first
    except OSError:
        pass
    return train, val, header["stats"], header["warnings"]
