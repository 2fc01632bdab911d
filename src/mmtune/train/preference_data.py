"""Preference rows and batches: data files -> rendered pairs (or KTO rows) -> one batch per forward pass.

The same path as SFT's (train/dataset.py, train/collate.py), for text and vision-language models alike:

- rows: each side of a pair is rendered by SFT's own renderer (`train.dataset.renderer`: the model's
  chat template through its tokenizer, or its processor for a vision-language model) as prompt +
  completion, the prompt's own assistant turns at weight 0, so a side's labels are exactly the tokens
  SFT would train in that completion and nothing of the prompt (nor of its media). Both sides answer
  one prompt, so both carry the prompt's images and videos (the data layer refuses a pair whose
  `rejected_images` differ from its prompt's). A side without media tensors is kept as rendered; a
  side with media keeps its sample and renders again when the Trainer reads it (a `RowDataset` per
  side), so memory holds one batch of pixels, never the data set's;
- batches: a pair batch is [chosen_1..n, rejected_1..n] in one forward pass, joined by the one
  collator: packed (text models, where packing is exact) or padded with the media tensors laid out
  by the family's `media_layout` (models/registry.py) for that doubled batch: each side's pixels,
  grids and masks in sequence order, so the prompt's media go in twice, once per side.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import torch

from mmtune.chat.render import IGNORE_INDEX, Row, check_media_limits
from mmtune.config import TrainConfig
from mmtune.data.reader import KIND_OF_STAGE, ReadOptions, load_samples
from mmtune.data.schema import Message, Sample
from mmtune.errors import UserError
from mmtune.train.collate import PackCollator, PadCollator
from mmtune.train.dataset import Datasets, DataStats, Item, RowDataset, renderer, report_losses, split_samples

PAIRED = ("dpo", "simpo", "orpo")
Warn = Callable[[str], None]


def sides_of(stage: str) -> tuple[str, str]:
    """The two rendered sequences of a row: a pair's answers, or a KTO row's completion and its
    mismatched `kl` companion."""
    return ("chosen", "rejected") if stage in PAIRED else ("completion", "kl")


# ---------------------------------------------------------------------------- rows


def completion_sample(sample: Sample, completion: list[Message]) -> Sample:
    """The prompt followed by one completion, as a conversation whose only trainable turns are the
    completion's: an assistant turn inside the prompt (an earlier answer) gets weight 0."""
    prompt = [dataclasses.replace(m, weight=0.0) if m.role == "assistant" else m for m in sample.messages]
    return Sample(prompt + list(completion), sample.tools, sample.media_root, sample.source)


def render_completion(sample: Sample, completion: list[Message], tokenizer, max_length: int,
                      render: Callable[[Sample], Row] | None = None) -> Row:
    """Token ids and labels (and, through a processor, media inputs) of prompt + completion, labels on
    the completion's tokens only. `render` is the run's renderer (train.dataset.renderer); without one,
    the template's defaults."""
    if render is None:
        from mmtune.chat.render import render_sample

        return render_sample(completion_sample(sample, completion), tokenizer, train_on="assistant",
                             max_length=max_length)
    return render(completion_sample(sample, completion))


class PreferenceRows:
    """Rendered preference rows for the Trainer (a map-style dataset): per side a RowDataset of the same
    length (a pair's chosen and rejected; a KTO row's completion and kl), KTO's `desirable` flags and,
    once computed (full fine-tuning), the reference log-probs of each row's two sequences (`ref`)."""

    def __init__(self, sides: dict[str, RowDataset], desirable: list[bool] | None = None):
        self.sides = sides
        self.desirable = desirable
        self.ref: list[list[float]] | None = None

    def __len__(self) -> int:
        return len(next(iter(self.sides.values())))

    def __getitem__(self, i: int) -> dict[str, Any]:
        row: dict[str, Any] = {side: rows[i] for side, rows in self.sides.items()}
        if self.desirable is not None:
            row["desirable"] = self.desirable[i]
        if self.ref is not None:
            row["ref"] = self.ref[i]
        return row

    @property
    def lengths(self) -> list[int]:
        """Tokens of each row's trained sequences (for --group-by-length), read without rendering a row."""
        trained = [self.sides[k] for k in self.sides if k != "kl"]
        return [sum(n) for n in zip(*(rows.lengths for rows in trained), strict=True)]

    def sequences(self, side: str) -> list[dict[str, list[int]]]:
        """One side's input_ids and labels, without media."""
        return self.sides[side].rows


def _items(sides: Sequence[Row], samples: Sequence[Sample]) -> list[Item]:
    return [Item.of(row, sample) for row, sample in zip(sides, samples, strict=True)]


def encode_pairs(samples: list[Sample], tokenizer, cfg: TrainConfig, stats: DataStats, spec,
                 render: Callable[[Sample], Row] | None = None) -> PreferenceRows:
    """dpo/simpo/orpo rows. A pair is kept or lost whole: when either side is over --max-length both are
    truncated (or, with --drop-long, the pair is dropped), and a pair whose truncation left a side with
    no completion token is dropped (all counted)."""
    chosen: list[Item] = []
    rejected: list[Item] = []
    for s in samples:
        check_media_limits(s, spec)
        sides = [completion_sample(s, side) for side in (s.chosen, s.rejected)]
        rows = [render_completion(s, side, tokenizer, cfg.max_length, render) for side in (s.chosen, s.rejected)]
        if _count_losses(rows, cfg, stats):
            c, r = _items(rows, sides)
            chosen.append(c)
            rejected.append(r)
    return PreferenceRows({"chosen": RowDataset(chosen, render), "rejected": RowDataset(rejected, render)})


def kl_partners(samples: Sequence[Sample]) -> list[int]:
    """For each row, the row whose completion goes with its prompt in KTO's mismatched pair: the nearest
    earlier row (cyclically) with another prompt. The previous row alone (TRL's +1 rotation) is often the
    same prompt: a pair split into a desirable and an undesirable row, as pair-split data holds them; its
    completion is then a matched answer, and the reference point rises with the very reward it is
    compared to. Where every row has one prompt there is no mismatched pair: the previous row."""
    prompts = [(s.messages, s.tools) for s in samples]
    n = len(prompts)
    start = list(range(n))  # the first row of each row's run of equal prompts
    for i in range(1, n):
        if prompts[i] == prompts[i - 1]:
            start[i] = start[i - 1]
    last = n - 1  # the row before the first run, cyclically: the end of the data, before its own run of it
    while last > 0 and prompts[last] == prompts[0]:
        last -= 1
    if last == 0:
        return [(i - 1) % n for i in range(n)]
    return [start[i] - 1 if start[i] > 0 else last for i in range(n)]


def encode_unpaired(samples: list[Sample], tokenizer, cfg: TrainConfig, stats: DataStats, spec,
                    render: Callable[[Sample], Row] | None = None) -> PreferenceRows:
    """kto rows: the completion, and `kl`: this row's prompt (and media) with the completion of an earlier
    row with another prompt (`kl_partners`, a mismatched pair): KTO's reference point is the
    policy/reference log-ratio on such pairs."""
    completion: list[Item] = []
    kl: list[Item] = []
    desirable: list[bool] = []
    partners = kl_partners(samples)
    for i, s in enumerate(samples):
        check_media_limits(s, spec)
        other = samples[partners[i]]
        sides = [completion_sample(s, s.completion), completion_sample(s, other.completion)]
        rows = [render_completion(s, c, tokenizer, cfg.max_length, render) for c in (s.completion, other.completion)]
        if _count_losses(rows, cfg, stats):
            c, k = _items(rows, sides)
            completion.append(c)
            kl.append(k)
            desirable.append(bool(s.label))
    return PreferenceRows({"completion": RowDataset(completion, render), "kl": RowDataset(kl, render)}, desirable)


def _count_losses(sides, cfg: TrainConfig, stats: DataStats) -> bool:
    cut = [r.truncated for r in sides if r.truncated]
    if cut:
        if cfg.drop_long:
            stats.dropped_long_rows += 1
            return False
        stats.truncated_rows += 1
        stats.truncated_tokens += sum(cut)
    if any(r.n_supervised == 0 for r in sides):
        stats.dropped_empty_rows += 1
        return False
    return True


def build_preference_datasets(cfg: TrainConfig, tokenizer, warn: Warn = print, spec=None) -> Datasets:
    """Read (the stage's kind only), check, split and render the data files. `tokenizer` is a
    vision-language model's processor."""
    kind = KIND_OF_STAGE["dpo" if cfg.stage in PAIRED else cfg.stage]
    options = ReadOptions(media_root=cfg.media_root, enforce_root=cfg.media_root is not None)

    def read(paths: list[str]) -> list[Sample]:
        return [s for p in paths for s in load_samples(p, options, skip_bad_rows=cfg.skip_bad_rows, warn=warn,
                                                        kind=kind, reasoning_rendered=True)]

    samples = read(cfg.data)
    train_s, val_s = (samples, read(cfg.val_data)) if cfg.val_data else split_samples(samples, cfg.val_ratio,
                                                                                        cfg.seed)
    # each side exactly as SFT renders a conversation ending in that answer (tool format, reasoning,
    # media sizes); the prompt's answers are at weight 0, so "assistant" trains the completion alone
    render = renderer(tokenizer, dataclasses.replace(cfg, train_on="assistant"), spec)
    encode = encode_pairs if cfg.stage in PAIRED else encode_unpaired
    stats = DataStats()
    train = encode(train_s, tokenizer, cfg, stats, spec, render)
    val = encode(val_s, tokenizer, cfg, stats, spec, render) if val_s else None
    report_losses(stats, len(train_s) + len(val_s), cfg, warn)
    if not len(train):
        raise UserError("no training rows left after rendering: every row was dropped (see the warnings above); "
                        "raise --max-length or check that every completion has an assistant answer")
    if cfg.stage == "kto" and cfg.batch_size < 2:
        raise UserError("--stage kto needs --batch-size >= 2: its reference point is estimated from mismatched "
                        "pairs within a batch")
    stats.train_rows, stats.val_rows = len(train), len(val) if val else 0
    trained = sides_of(cfg.stage) if cfg.stage in PAIRED else ("completion",)
    seqs = [r for side in trained for r in train.sequences(side)]
    stats.train_tokens = sum(len(r["input_ids"]) for r in seqs)
    stats.train_supervised_tokens = sum(sum(1 for x in r["labels"][1:] if x != IGNORE_INDEX) for r in seqs)
    return Datasets(train, val or None, stats)


# ---------------------------------------------------------------------------- batches


@dataclasses.dataclass
class PreferenceCollator:
    """One batch of sequences for one forward pass: a pair batch is [chosen_1..n, rejected_1..n], a KTO batch
    its completions (and, in `kl_batch`, the mismatched pairs). `seq_ids` says which sequence each
    token belongs to (-1 on padding), so per-sequence log-probs come out the same packed or padded.
    Media tensors are joined by `layout` (the family's media_layout) in that sequence order.
    Precomputed reference log-probs travel as `ref_logps` (one per sequence, same order)."""

    pad_token_id: int
    pack: bool = True
    layout: str = "concat"

    def sequences(self, seqs: Sequence[dict[str, Any]]) -> dict[str, Any]:
        if self.pack:
            batch = PackCollator()(seqs)
            seq_ids = torch.cat([torch.full((len(s["input_ids"]),), i) for i, s in enumerate(seqs)])[None]
        else:
            batch = PadCollator(self.pad_token_id, layout=self.layout)(seqs)
            rows = torch.arange(len(seqs))[:, None].expand_as(batch["labels"])
            seq_ids = torch.where(batch["attention_mask"].bool(), rows, -1)
        batch["seq_ids"] = seq_ids.long()
        return batch

    def __call__(self, rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
        if "chosen" in rows[0]:
            batch = self.sequences([r["chosen"] for r in rows] + [r["rejected"] for r in rows])
            batch["n_pairs"] = len(rows)
            if "ref" in rows[0]:
                batch["ref_logps"] = torch.tensor([r["ref"][0] for r in rows] + [r["ref"][1] for r in rows])
            return batch
        batch = self.sequences([r["completion"] for r in rows])
        batch["desirable"] = torch.tensor([r["desirable"] for r in rows], dtype=torch.bool)
        batch["kl_batch"] = self.sequences([r["kl"] for r in rows])
        if "ref" in rows[0]:
            batch["ref_logps"] = torch.tensor([r["ref"][0] for r in rows])
            batch["kl_batch"]["ref_logps"] = torch.tensor([r["ref"][1] for r in rows])
        return batch
