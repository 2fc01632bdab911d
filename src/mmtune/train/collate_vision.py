"""Batching rows from render_vision_sample: text padded, media tensors joined the way the model's
forward takes them, text-only rows mixed in freely.

Two ways to join media, by family:
- "concat" (Qwen2-VL, LLaVA...): the forward takes every media item of the batch in one
  tensor (pixel_values, image_grid_thw, ... concatenated along dim 0, in row order, which
  is the order the media tokens appear in the flattened batch); rows without media add nothing.
  Where items differ in their inner sizes (LLaVA-NeXT's tiles per image), they are padded
  with zeros to the largest, as the processor pads within one call (image_sizes says how
  many tiles are real).
- "per_row" (Idefics3/SmolVLM, Mllama): media tensors are (batch, images, ...); rows are
  padded with zeros in every dimension to the batch's largest (all-zero images, which the
  forward skips or masks out) and stacked; text-only rows get only padding. Mllama's
  cross_attention_mask has a token axis (dim 1), padded to the batch's longest row.
- "packed" (MiniCPM-V 4.6 / 4.7): every image/frame's patches are packed (NaViT) along the last axis
  of one (1, C, patch, length) tensor; rows' pixel tensors are joined along that axis, their
  target sizes along dim 0 (the forward splits the pack by them, in token order).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from mmtune.train.render import IGNORE_INDEX
from mmtune.train.render_vision import TOKEN_AXIS_TENSORS, TOKEN_KEYS

PER_ROW_PROCESSORS = ("Idefics3Processor", "SmolVLMProcessor", "MllamaProcessor")
PACKED_PROCESSORS = ("MiniCPMV4_6Processor", "MiniCPMV4_7Processor")
_META = ("truncated",)


def media_layout(processor) -> str:
    """'per_row', 'packed' or 'concat' (see the module docstring) for this processor's family."""
    name = type(processor).__name__
    return "per_row" if name in PER_ROW_PROCESSORS else "packed" if name in PACKED_PROCESSORS else "concat"


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
        for key in TOKEN_KEYS[2:]:
            if any(key in f for f in features):
                batch[key] = torch.zeros((n, longest), dtype=torch.long)
        for i, f in enumerate(features):
            k = len(f["input_ids"])
            for key in TOKEN_KEYS:
                if key in f:
                    batch[key][i, :k] = torch.as_tensor(f[key], dtype=torch.long)
            batch["attention_mask"][i, :k] = 1
        media_keys = sorted({k for f in features for k in f if k not in TOKEN_KEYS and k not in _META})
        for key in media_keys:
            values = [None if f.get(key) is None else torch.as_tensor(f[key]) for f in features]
            if self.layout == "packed" and key.startswith("pixel_values"):
                batch[key] = torch.cat([v for v in values if v is not None], dim=-1)
            elif self.layout == "per_row":
                batch[key] = _padded(values, rows=True, tokens=longest if key in TOKEN_AXIS_TENSORS else None)
            else:
                batch[key] = _padded([v for v in values if v is not None], rows=False, tokens=None)
        return batch


def _padded(values: list[torch.Tensor | None], *, rows: bool, tokens: int | None) -> torch.Tensor:
    """Concatenate along dim 0, zero-padding every other dim to the largest; with `rows`, a None
    (a row without this input) becomes one all-zero row; `tokens` fixes dim 1's length."""
    present = [v for v in values if v is not None]
    ndim, dtype = present[0].dim(), present[0].dtype
    shape = [max(v.shape[d] for v in present) for d in range(1, ndim)]
    if tokens is not None:
        shape[0] = tokens
    if not rows and all(v.shape[1:] == present[0].shape[1:] for v in present):
        return torch.cat(present, dim=0)
    out = []
    for v in values:
        full = torch.zeros((1 if v is None else v.shape[0], *shape), dtype=dtype)
        if v is not None:
            full[tuple(slice(0, s) for s in v.shape)] = v
        out.append(full)
    return torch.cat(out, dim=0)
