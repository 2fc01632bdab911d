"""Vision-language training data: checked in full before the model loads, decoded lazily while training.

A first pass renders every row through the model's processor (render_vision_sample): media
decode, media limits, placeholders, labels and truncation are all checked there, so a bad
image, a video for a model without video, or `--max-length` cutting through media tokens
fails before any model is loaded. That pass keeps only each row's token ids and labels (for
the statistics and the rows it drops); the pixel tensors are thrown away at once. While
training, `LazyVisionDataset[i]` renders row i again, decoding its media then, so memory
holds one batch of pixels, never the whole data set's. The second render must give the
same token ids as the first (a changed media file would not): if not, the run stops.

Text-only rows go through the same path (they simply carry no media tensors). The on-disk
token cache (train/token_cache.py) is not used for vision data: its rows would not carry the
media, and media files are not part of its key.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mmtune.config import TrainConfig
from mmtune.data.schema import Sample
from mmtune.errors import UserError
from mmtune.models.registry import ModelSpec
from mmtune.train.render import IGNORE_INDEX, _where
from mmtune.train.render_vision import render_vision_sample

Warn = Callable[[str], None]


@dataclass
class VisionRow:
    """What the first pass keeps of a row: its sample (to render again) and its token ids and labels."""

    sample: Sample
    input_ids: list[int]
    labels: list[int]


class LazyVisionDataset:
    """Rows rendered on access, media included (a torch map-style dataset: len and getitem).

    `rows[i]["input_ids"]`/`["labels"]` are the first pass's tokens, without media, for
    statistics; `self[i]` is the full row for the collator.
    """

    def __init__(self, rows: list[VisionRow], processor, cfg: TrainConfig, spec: ModelSpec | None):
        self.items = rows
        self.processor = processor
        self.options = render_options(cfg, spec)

    def __len__(self) -> int:
        return len(self.items)

    @property
    def rows(self) -> list[dict[str, list[int]]]:
        return [{"input_ids": r.input_ids, "labels": r.labels} for r in self.items]

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = self.items[i]
        row = render_vision_sample(item.sample, self.processor, **self.options)
        if row["input_ids"] != item.input_ids:
            raise UserError(f"{_where(item.sample)}this row renders to different tokens than when the data was "
                            "checked (did a media file change during training?): restart the run")
        row.pop("truncated", None)
        return row


def render_options(cfg: TrainConfig, spec: ModelSpec | None) -> dict[str, Any]:
    """render_vision_sample's keyword arguments for this run. Pixel bounds are already set on the
    processor (models/vision.load_processor), so they are not repeated here."""
    return {"train_on": cfg.train_on, "max_length": cfg.max_length, "video_fps": cfg.video_fps,
            "video_frames": cfg.video_frames, "spec": spec, "reasoning": cfg.reasoning}


def encode_vision(samples: list[Sample], processor, cfg: TrainConfig, spec: ModelSpec | None,
                  stats) -> list[VisionRow]:
    """The first pass: render every sample (media decoded and dropped again); count and drop rows
    as the text path does (over-long with --drop-long, nothing left to train)."""
    options = render_options(cfg, spec)
    rows: list[VisionRow] = []
    for sample in samples:
        r = render_vision_sample(sample, processor, **options)
        if r["truncated"]:
            if cfg.drop_long:
                stats.dropped_long_rows += 1
                continue
            stats.truncated_rows += 1
            stats.truncated_tokens += r["truncated"]
        if all(x == IGNORE_INDEX for x in r["labels"]):
            stats.dropped_empty_rows += 1
            continue
        rows.append(VisionRow(sample, r["input_ids"], r["labels"]))
    return rows
