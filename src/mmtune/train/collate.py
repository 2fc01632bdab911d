"""Batching rendered samples. The Trainer takes any callable `collator(features) -> batch`:
`PackCollator` (the default: one padding-free row per batch) and `PadCollator` (dynamic
padding, `packing: false`) are interchangeable without touching the training loop.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

IGNORE_INDEX = -100


@dataclass
class PadCollator:
    """Dynamic padding: each batch is padded (on the right) to its own longest row, not to max_length.

    input_ids are padded with the tokenizer's pad id, labels with -100 (never trained), and
    attention_mask marks the real tokens. `pad_to_multiple_of` rounds the length up (8 helps
    tensor cores on GPUs).
    """

    pad_token_id: int
    pad_to_multiple_of: int | None = None

    def __call__(self, features: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        longest = max(len(f["input_ids"]) for f in features)
        if self.pad_to_multiple_of:
            m = self.pad_to_multiple_of
            longest = (longest + m - 1) // m * m
        n = len(features)
        input_ids = torch.full((n, longest), self.pad_token_id, dtype=torch.long)
        labels = torch.full((n, longest), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((n, longest), dtype=torch.long)
        for i, f in enumerate(features):
            k = len(f["input_ids"])
            input_ids[i, :k] = torch.as_tensor(f["input_ids"], dtype=torch.long)
            labels[i, :k] = torch.as_tensor(f["labels"], dtype=torch.long)
            attention_mask[i, :k] = 1
        return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}


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
