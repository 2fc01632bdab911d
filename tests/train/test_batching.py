"""Length-grouped batching: --group-by-length reaches the Trainer's sampler, and its batches hold
rows of similar length (the random default mixes them)."""

from __future__ import annotations

from conftest import chat, write_jsonl
from test_sft import make_cfg

from mmtune.models.loader import load_tokenizer
from mmtune.train.dataset import build_datasets
from mmtune.train.sft import build_trainer, load_for_training


def spread(trainer, batch: int) -> float:
    """Mean over batches of (longest - shortest) row length in the batch."""
    order = list(trainer._get_train_sampler())
    lengths = [len(trainer.train_dataset[i]["input_ids"]) for i in order]
    groups = [lengths[i:i + batch] for i in range(0, len(lengths), batch)]
    return sum(max(g) - min(g) for g in groups) / len(groups)


def test_group_by_length_batches_similar_lengths(tiny_llama, tmp_path):
    rows = [chat(f"question {i}", " ".join(["word"] * (1 + (i * 37) % 120))) for i in range(320)]
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    spreads = {}
    for grouped in (False, True):
        cfg = make_cfg(tiny_llama, data, tmp_path / f"out{grouped}", group_by_length=grouped, batch_size=8, max_length=256,
                       data_cache=False)
        tokenizer = load_tokenizer(cfg.model)
        trainer = build_trainer(cfg, load_for_training(cfg, "fp32"), tokenizer, build_datasets(cfg, tokenizer),
                                "fp32", [])
        assert trainer.args.train_sampling_strategy == ("group_by_length" if grouped else "random")
        spreads[grouped] = spread(trainer, 8)
    assert spreads[True] < spreads[False] / 2.5, spreads
