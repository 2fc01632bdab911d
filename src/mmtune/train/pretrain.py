"""--stage pt: continued pre-training on plain text, the loss on every token.

Each document is tokenized as the tokenizer does plain text (its BOS, where it adds one) and closed
with the EOS token, so the model learns where documents end. A document longer than --max-length
is cut into blocks of --max-length tokens that overlap by one token, so every token after the
document's first is predicted exactly once and nothing is lost (with --drop-long, such documents
are dropped instead, and counted). The rows then train exactly like SFT rows (same collators,
packing, trainer).
"""

from __future__ import annotations

from collections.abc import Callable

from mmtune.config import TrainConfig
from mmtune.data.reader import KIND_OF_STAGE, ReadOptions, load_samples
from mmtune.data.schema import Sample
from mmtune.errors import UserError
from mmtune.train.dataset import Datasets, DataStats, report_losses, split_samples

Warn = Callable[[str], None]


def document_ids(sample: Sample, tokenizer) -> list[int]:
    media = [p for p in sample.document or [] if p.type != "text"]
    if media:
        raise UserError(f"{sample.source}: this document has {len(media)} media part(s); --stage pt trains on "
                        "text only: remove them")
    tok = getattr(tokenizer, "tokenizer", tokenizer)
    ids = list(tok("".join(p.text for p in sample.document or []))["input_ids"])
    if tok.eos_token_id is not None and (not ids or ids[-1] != tok.eos_token_id):
        ids.append(tok.eos_token_id)
    return ids


def blocks(ids: list[int], length: int) -> list[list[int]]:
    """`ids` in blocks of at most `length` tokens, each starting on the previous block's last token."""
    if len(ids) <= length:
        return [ids]
    step = length - 1
    return [ids[i:i + length] for i in range(0, len(ids) - 1, step)]


def build_text_datasets(cfg: TrainConfig, tokenizer, warn: Warn = print) -> Datasets:
    options = ReadOptions(media_root=cfg.media_root, enforce_root=cfg.media_root is not None)

    def read(paths: list[str]) -> list[Sample]:
        return [s for p in paths for s in load_samples(p, options, skip_bad_rows=cfg.skip_bad_rows, warn=warn,
                                                        kind=KIND_OF_STAGE["pt"])]

    samples = read(cfg.data)
    train_s, val_s = (samples, read(cfg.val_data)) if cfg.val_data else split_samples(samples, cfg.val_ratio,
                                                                                        cfg.seed)
    stats = DataStats()

    def encode(docs: list[Sample]) -> list[dict[str, list[int]]]:
        rows = []
        for s in docs:
            ids = document_ids(s, tokenizer)
            if len(ids) > cfg.max_length and cfg.drop_long:
                stats.dropped_long_rows += 1
                continue
            if len(ids) < 2:
                stats.dropped_empty_rows += 1
                continue
            rows += [{"input_ids": b, "labels": list(b)} for b in blocks(ids, cfg.max_length) if len(b) > 1]
        return rows

    train, val = encode(train_s), encode(val_s) if val_s else None
    report_losses(stats, len(train_s) + len(val_s), cfg, warn)
    if not train:
        raise UserError("no training text left: every document was dropped (see the warnings above)")
    stats.train_rows, stats.val_rows = len(train), len(val) if val else 0
    stats.train_tokens = sum(len(r["input_ids"]) for r in train)
    stats.train_supervised_tokens = sum(len(r["input_ids"]) - 1 for r in train)
    return Datasets(train, val or None, stats)
