"""Data files -> rendered training and validation rows, with every lost row or token counted.

Files are read through the data layer (which refuses a file with errors unless the user
asked to skip bad rows, and then says how many and where). The validation split is made on
samples, before tokenization, with a seeded shuffle, so the same data and seed always give
the same split whatever the model. Rows longer than max_length are truncated or, with
`drop_long`, dropped; either way ONE warning says how many rows and tokens it cost.

One path for every model: each sample is rendered by chat/render.py through the model's
tokenizer, or its processor for a vision-language model, and checked in full before the
model loads (a bad image, a video for a model without video, `--max-length` cutting through
media tokens fail here). A row without media tensors is kept as rendered (cached on disk
and packable, train/token_cache.py); a row with media keeps its sample and renders again
when the Trainer reads it, decoding its media then, so memory holds one batch of pixels,
never the whole data set's. The second render must give the same token ids as the first (a
changed media file would not): if not, the run stops. Data with media is not cached: media
files are not part of the cache key.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from mmtune.chat.conversation import has_reasoning, where
from mmtune.chat.render import IGNORE_INDEX, MediaSizes, Row, is_processor, render_sample
from mmtune.config import TrainConfig
from mmtune.data.reader import ReadOptions, load_samples
from mmtune.data.schema import Sample
from mmtune.errors import UserError
from mmtune.models.registry import ModelSpec

Warn = Callable[[str], None]
Features = dict[str, Any]  # what the collator takes of a row: input_ids, labels (lists), media inputs


@dataclass
class DataStats:
    """What happened to the data on its way to the model (goes into summary.json)."""

    train_rows: int = 0
    val_rows: int = 0
    truncated_rows: int = 0
    truncated_tokens: int = 0
    dropped_long_rows: int = 0
    dropped_empty_rows: int = 0  # no trained token left (answer cut off, or no trainable turn)
    train_tokens: int = 0  # tokens of one pass over the training rows
    train_supervised_tokens: int = 0  # of which are trained targets (labels[1:] != -100)
    reasoning_rows: int = 0  # rows (train and validation) whose reasoning is trained
    reasoning_tokens: int = 0  # trained tokens of reasoning text, train and validation rows
    reasoning_dropped_rows: int = 0  # rows with a trained turn whose reasoning is not (--reasoning drop, or the
    # template shows reasoning only after the last user message)
    reasoning_dropped_turns: int = 0

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass
class Item:
    """What the first pass keeps of a row: its features when they hold no media tensor, else its
    sample (rendered again on access) and its token ids and labels."""

    input_ids: list[int]
    labels: list[int]
    features: Features | None = None
    sample: Sample | None = None

    @classmethod
    def of(cls, row: Row, sample: Sample) -> Item:
        """A rendered row as kept: its features, or (media tensors in them) its sample, to render again."""
        features = row.features()
        lazy = any(not isinstance(v, list) for v in features.values())  # media tensors: decoded again on access
        return cls(row.input_ids, row.labels, None if lazy else features, sample if lazy else None)


class RowDataset:
    """Rendered rows for the Trainer (a map-style dataset: len and getitem). `rows` are every row's
    input_ids and labels without media, for statistics and the cache; `lengths` for grouping."""

    def __init__(self, items: list[Item], template: Callable[[Sample], Row] | None = None):
        self.items = items
        self.template = template

    @classmethod
    def of(cls, rows: list[Features]) -> RowDataset:
        return cls([Item(r["input_ids"], r["labels"], r) for r in rows])

    def __len__(self) -> int:
        return len(self.items)

    @property
    def rows(self) -> list[dict[str, list[int]]]:
        return [{"input_ids": r.input_ids, "labels": r.labels} for r in self.items]

    @property
    def lengths(self) -> list[int]:
        return [len(r.input_ids) for r in self.items]

    def __getitem__(self, i: int) -> Features:
        item = self.items[i]
        if item.features is not None:
            return item.features
        row = self.template(item.sample)
        if row.input_ids != item.input_ids:
            raise UserError(f"{where(item.sample)}this row renders to different tokens than when the data was "
                            "checked (did a media file change during training?): restart the run")
        return row.features()


@dataclass
class Datasets:
    train: Any  # a RowDataset (or a list of features: --stage pt, preference pairs)
    val: Any | None
    stats: DataStats


def read_files(paths: list[str], cfg: TrainConfig, warn: Warn) -> list[Sample]:
    """All usable samples of `paths`, in file order (bad rows refused, or skipped and reported)."""
    options = ReadOptions(media_root=cfg.media_root, enforce_root=cfg.media_root is not None)
    samples: list[Sample] = []
    for path in paths:
        # reasoning is rendered (or dropped, with its own notice) by encode: no reader warning
        samples.extend(load_samples(path, options, skip_bad_rows=cfg.skip_bad_rows, warn=warn,
                                    reasoning_rendered=True))
    return samples


def split_samples(samples: list[Sample], ratio: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """(train, val): a seeded, deterministic hold-out of ceil(ratio * n) rows (at least 1 if ratio > 0)."""
    if ratio <= 0:
        return samples, []
    n_val = max(1, math.ceil(ratio * len(samples)))
    if n_val >= len(samples):
        raise UserError(f"val_ratio {ratio} leaves no training rows out of {len(samples)}: lower --val-ratio "
                        "or give a separate --val-data file")
    order = list(range(len(samples)))
    random.Random(seed).shuffle(order)
    val_idx = set(order[:n_val])
    return ([s for i, s in enumerate(samples) if i not in val_idx],
            [s for i, s in enumerate(samples) if i in val_idx])


def renderer(tokenizer, cfg: TrainConfig, spec: ModelSpec | None) -> Callable[[Sample], Row]:
    """sample -> Row with this run's settings, through the tokenizer or the processor. Pixel bounds
    are already set on a processor (models/vision.load_processor), so only the video sampling is
    passed."""
    sizes = MediaSizes(video_fps=cfg.video_fps, video_frames=cfg.video_frames)
    fmt = spec.tool_format if spec else "auto"

    def render(sample: Sample) -> Row:
        return render_sample(sample, tokenizer, train_on=cfg.train_on, max_length=cfg.max_length, tool_format=fmt,
                             reasoning=cfg.reasoning, sizes=sizes, spec=spec)

    return render


def encode(samples: list[Sample], render: Callable[[Sample], Row], cfg: TrainConfig, stats: DataStats
           ) -> RowDataset:
    """Render each sample; count (and drop, if asked) over-long rows and rows with nothing to train.
    A row with media for a known text model is an error naming the model."""
    items: list[Item] = []
    for sample in samples:
        r = render(sample)
        if r.truncated:
            if cfg.drop_long:
                stats.dropped_long_rows += 1
                continue
            stats.truncated_rows += 1
            stats.truncated_tokens += r.truncated
        if r.n_supervised == 0:
            stats.dropped_empty_rows += 1
            continue
        stats.reasoning_rows += r.reasoning_turns > 0
        stats.reasoning_tokens += r.reasoning_tokens
        stats.reasoning_dropped_rows += r.reasoning_dropped > 0
        stats.reasoning_dropped_turns += r.reasoning_dropped
        items.append(Item.of(r, sample))
    return RowDataset(items, render)


def build_datasets(cfg: TrainConfig, tokenizer, warn: Warn = print, cache_dir: Path | None = None, *,
                   spec: ModelSpec | None = None) -> Datasets:
    """Training rows (and validation rows), ready for the collator. `tokenizer` is the model's
    tokenizer, or its processor for a vision-language model. Text data comes from the on-disk
    cache when an earlier run rendered the same data files with the same tokenizer and settings
    (its warnings are repeated), else is rendered now and cached; data for a processor is never
    cached (its media files are not part of the key)."""
    if is_processor(tokenizer) or not cfg.data_cache:
        return render_datasets(cfg, tokenizer, warn, spec=spec)
    from mmtune.train.token_cache import cache_key, load_cached, save_cached

    key = cache_key(cfg, tokenizer)
    hit = load_cached(key, cache_dir)
    if hit is not None:
        train, val, stats, said = hit
        for message in said:
            warn(message)
        return Datasets(RowDataset.of(train), RowDataset.of(val) if val is not None else None, DataStats(**stats))
    said: list[str] = []

    def record(message: str) -> None:
        said.append(message)
        warn(message)

    data = render_datasets(cfg, tokenizer, record, spec=spec)
    save_cached(key, data.train.rows, data.val.rows if data.val is not None else None, data.stats.to_dict(), said,
                cache_dir)
    return data


def render_datasets(cfg: TrainConfig, tokenizer, warn: Warn = print, *, spec: ModelSpec | None = None) -> Datasets:
    """Read, check, split and render the data files (no cache)."""
    samples = read_files(cfg.data, cfg, warn)
    if cfg.val_data:
        train_s, val_s = samples, read_files(cfg.val_data, cfg, warn)
    else:
        train_s, val_s = split_samples(samples, cfg.val_ratio, cfg.seed)
    if cfg.reasoning == "drop":  # said from the samples: text and vision models alike
        thinking = sum(1 for s in (*train_s, *val_s) if has_reasoning(s))
        if thinking:
            warn(f"note: --reasoning drop: {thinking} of {len(train_s) + len(val_s)} rows carry reasoning; their "
                 "answers are trained, the reasoning is not (--reasoning keep trains it)")
    stats = DataStats()
    render = renderer(tokenizer, cfg, spec)
    train = encode(train_s, render, cfg, stats)
    val = encode(val_s, render, cfg, stats) if val_s else None
    report_losses(stats, len(train_s) + len(val_s), cfg, warn)
    if not len(train):
        raise UserError("no training rows left after rendering: every row was dropped (see the warnings above); "
                        "raise --max-length or check that rows have assistant answers to learn")
    stats.train_rows, stats.val_rows = len(train), len(val) if val is not None else 0
    stats.train_tokens = sum(len(r.input_ids) for r in train.items)
    # targets as the loss sees them: labels shifted by one (the first label is never predicted)
    stats.train_supervised_tokens = sum(sum(1 for x in r.labels[1:] if x != IGNORE_INDEX) for r in train.items)
    return Datasets(train, val or None, stats)


def report_losses(stats: DataStats, total: int, cfg: TrainConfig, warn: Warn) -> None:
    """One warning per kind of loss, with counts: over-long rows, rows left with nothing to train."""
    if stats.truncated_rows:
        warn(f"warning: {stats.truncated_rows} of {total} rows are longer than max_length {cfg.max_length} and "
             f"were truncated, losing {stats.truncated_tokens} tokens (raise --max-length, or pass --drop-long "
             "to drop them instead)")
    if stats.dropped_long_rows:
        warn(f"warning: dropped {stats.dropped_long_rows} of {total} rows longer than max_length "
             f"{cfg.max_length} (--drop-long); raise --max-length to keep them")
    if stats.reasoning_dropped_rows and cfg.reasoning == "keep":
        warn(f"note: the chat template leaves the reasoning out of {stats.reasoning_dropped_turns} assistant turn(s) in "
             f"{stats.reasoning_dropped_rows} of {total} rows, so those answers train without it, as the model sees "
             f"them at inference (Qwen3's template shows reasoning only after the last user message); "
             f"{stats.reasoning_rows} rows train theirs")
    if stats.dropped_empty_rows:
        warn(f"warning: skipped {stats.dropped_empty_rows} of {total} rows with no token to train on (the answer "
             f"was cut by max_length {cfg.max_length}, or no assistant turn is trainable with train_on="
             f"{cfg.train_on})")
