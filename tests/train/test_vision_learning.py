"""Real learning through `mmtune train` on CPU: a fresh vision tower on the frozen, real SmolLM2
learns which colour a shape is, judged on held-out images by greedy generation."""

from __future__ import annotations

import pytest

from examples.shapes import COLOURS, accuracy, answers, compose, make_data
from mmtune.config import resolve_config
from mmtune.train.sft import run_sft

STEPS, BATCH, LR = 150, 8, 5e-3


@pytest.mark.slow
def test_fresh_tower_on_frozen_smollm2_learns_colours_of_held_out_shapes(tmp_path):
    base = compose(tmp_path / "base", seed=0)  # as `make shapes` composes it
    train, test = make_data(tmp_path / "data", train=240, test=60)

    before = accuracy(answers(base, test))
    assert before <= 2 / len(COLOURS)  # near chance (1/6): the untrained tower tells the LM nothing

    out = tmp_path / "tuned"
    summary = run_sft(resolve_config({
        "model": str(base), "data": [str(train)], "output": str(out), "method": "frozen",
        "train_vision": "full", "train_projector": True, "learning_rate": LR, "max_steps": STEPS,
        "batch_size": BATCH, "scheduler": "cosine", "warmup_steps": 5, "max_length": 128,
        "logging_steps": 10, "save_strategy": "no", "seed": 0}))
    parts = summary["trainable_by_part"]
    assert parts["language_model"]["trainable"] == 0
    assert parts["vision_tower"]["trainable"] == parts["vision_tower"]["total"] > 0

    pairs = answers(out, test)
    after = accuracy(pairs)
    assert after >= 0.9, f"{after:.0%} right on held-out shapes (before: {before:.0%}); e.g. {pairs[:6]}"
