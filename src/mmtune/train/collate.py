"""Batching rendered rows (chat/render.py's `Row.features()`). The Trainer takes any callable
`collator(features) -> batch`: `PackCollator` (the default for rows without media: one
padding-free row per batch) and `PadCollator` (dynamic padding: `packing: false`, and every
vision-language model) are interchangeable without touching the training loop.

A row without media simply has no media keys. Media tensors are joined the way the model's
forward takes them, by the registry's `media_layout` for the family (models/registry.py):
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

from mmtune.chat.render import IGNORE_INDEX, TOKEN_AXIS_TENSORS, TOKEN_KEYS

MEDIA_LAYOUTS = ("concat", "per_row", "packed")


@dataclass
class PadCollator:
    """Dynamic padding: each batch is padded (on the right) to its own longest row, not to max_length.

    input_ids are padded with the tokenizer's pad id, labels with -100 (never trained), other
    per-token inputs (mm_token_type_ids) with 0, and attention_mask marks the real tokens; media
    tensors are joined by `layout` (see the module docstring). `pad_to_multiple_of` rounds the
    length up (8 helps tensor cores on GPUs).
    """

    pad_token_id: int
    pad_to_multiple_of: int | None = None
    layout: str = "concat"

    def __post_init__(self):
        if self.layout not in MEDIA_LAYOUTS:
            raise ValueError(f"media layout must be one of {', '.join(MEDIA_LAYOUTS)}, not {self.layout!r}")

    def __call__(self, features: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        longest = max(len(f["input_ids"]) for f in features)
        if self.pad_to_multiple_of:
            m = self.pad_to_multiple_of
            longest = (longest + m - 1) // m * m
        n = len(features)
        batch = {"input_ids": torch.full((n, longest), self.pad_token_id, dtype=torch.long),
                 "labels": torch.full((n, longest), IGNORE_INDEX, dtype=torch.long),
                 "attention_mask": torch.zeros((n, longest), dtype=torch.long)}
        token_keys = [k for k in TOKEN_KEYS if k in batch or any(k in f for f in features)]
        for key in token_keys[2:]:
            batch[key] = torch.zeros((n, longest), dtype=torch.long)
        for i, f in enumerate(features):
            k = len(f["input_ids"])
            for key in token_keys:
                if key in f:
                    batch[key][i, :k] = torch.as_tensor(f[key], dtype=torch.long)
            batch["attention_mask"][i, :k] = 1
        for key in sorted({k for f in features for k in f if k not in TOKEN_KEYS}):
            values = [None if f.get(key) is None else torch.as_tensor(f[key]) for f in features]
            if self.layout == "packed" and key.startswith("pixel_values"):
                batch[key] = torch.cat([v for v in values if v is not None], dim=-1)
            elif self.layout == "per_row":
                batch[key] = _padded(values, rows=True, tokens=longest if key in TOKEN_AXIS_TENSORS else None)
            else:
                batch[key] = _padded([v for v in values if v is not None], rows=False, tokens=None)
        return batch


@dataclass
class PackCollator:
    """Padding-free packing: the batch's rows laid end to end in ONE row, with no pad token at all.

    position_ids restart at 0 for every row, so rotary positions are those of the row alone, and
    `cu_seq_lens_q/k` (cumulative row lengths, flash-attention's varlen convention) and
    `max_length_q/k` tell the attention where rows begin: transformers' flash-attention reads
    them, mmtune's `varlen_sdpa` too, and plain SDPA/eager find the same boundaries from the
    position_ids. No token attends across a row boundary, so each row's logits are what it would
    get alone. The first label of every row is set to -100: it is never a target unpacked (the
    shift drops it), and packed it would otherwise teach the previous row's last token to
    predict it.
    """

    def __call__(self, features: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor | int]:
        ids: list[int] = []
        labels: list[int] = []
        positions: list[int] = []
        bounds = [0]
        for f in features:
            k = len(f["input_ids"])
            ids.extend(f["input_ids"])
            labels.append(IGNORE_INDEX)
            labels.extend(f["labels"][1:])
            positions.extend(range(k))
            bounds.append(bounds[-1] + k)
        cu = torch.tensor(bounds, dtype=torch.int32)
        longest = max(b - a for a, b in zip(bounds[:-1], bounds[1:], strict=False))
        return {"input_ids": torch.tensor([ids], dtype=torch.long), "labels": torch.tensor([labels], dtype=torch.long),
                "position_ids": torch.tensor([positions], dtype=torch.long), "cu_seq_lens_q": cu, "cu_seq_lens_k": cu,
                "max_length_q": longest, "max_length_k": longest}


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
