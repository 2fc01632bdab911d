"""Batching rows from render_vision_sample: text padded, media tensors joined the way the model's
forward takes them, text-only rows mixed in freely.

Two ways to join media, by family:
- "concat" (Qwen2-VL, LLaVA...): the forward takes every media item of the batch in one
  tensor (pixel_values, image_grid_thw, ... concatenated along dim 0, in row order, which
  is the order the media tokens appear in the flattened batch); rows without media add nothing.
- "per_row" (Idefics3/SmolVLM): pixel_values is (batch, images, C, H, W); rows are padded
  to the batch's most images with all-zero images (the forward skips those) and stacked;
  text-only rows get only padding.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from mmtune.train.render import IGNORE_INDEX
from mmtune.train.render_vision import TOKEN_KEYS

PER_ROW_PROCESSORS = ("Idefics3Processor", "SmolVLMProcessor")
_META = ("truncated",)


def media_layout(processor) -> str:
    """'per_row' or 'concat' (see the module docstring) for this processor's family."""
    return "per_row" if type(processor).__name__ in PER_ROW_PROCESSORS else "concat"


@dataclass
class VisionCollator:
    """Right-pads input_ids (pad id), labels (-100) and mm_token_type_ids (0), builds attention_mask,
    and joins media tensors by `layout`."""

    pad_token_id: int
    layout: str = "concat"

    def __call__(self, features: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        longest = max(len(f["input_ids"]) for f in features)
        n = len(features)
        batch = {"input_ids": torch.full((n, longest), self.pad_token_id, dtype=torch.long),
                 "labels": torch.full((n, longest), IGNORE_INDEX, dtype=torch.long),
                 "attention_mask": torch.zeros((n, longest), dtype=torch.long)}
        if any("mm_token_type_ids" in f for f in features):
            batch["mm_token_type_ids"] = torch.zeros((n, longest), dtype=torch.long)
        for i, f in enumerate(features):
            k = len(f["input_ids"])
            for key in TOKEN_KEYS:
                if key in f:
                    batch[key][i, :k] = torch.as_tensor(f[key], dtype=torch.long)
            batch["attention_mask"][i, :k] = 1
        media_keys = sorted({k for f in features for k in f if k not in TOKEN_KEYS and k not in _META})
        join = self._per_row if self.layout == "per_row" else self._concat
        for key in media_keys:
            batch[key] = join([f.get(key) for f in features])
        return batch

    @staticmethod
    def _concat(values: list[torch.Tensor | None]) -> torch.Tensor:
        return torch.cat([torch.as_tensor(v) for v in values if v is not None], dim=0)

    @staticmethod
    def _per_row(values: list[torch.Tensor | None]) -> torch.Tensor:
        present = [torch.as_tensor(v) for v in values if v is not None]
        most = max(v.shape[1] for v in present)
        shape, dtype = present[0].shape[2:], present[0].dtype
        rows = []
        for v in values:
            v = torch.zeros((1, 0, *shape), dtype=dtype) if v is None else torch.as_tensor(v)
            pad = torch.zeros((1, most - v.shape[1], *shape), dtype=dtype)
            rows.append(torch.cat([v, pad], dim=1))
        return torch.cat(rows, dim=0)
