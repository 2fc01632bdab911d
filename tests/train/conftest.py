"""Fixtures for the training tests: template tokenizers (made once per session) and small data files;
`tiny_llama` is in tests/conftest.py."""

from __future__ import annotations

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
def tok(tmp_path_factory):
    """`tok(family)`: the local test tokenizer with that family's chat template, made once per session."""
    from helpers.tokenizers import make_tokenizer

    cache: dict = {}
    root = tmp_path_factory.mktemp("tokenizers")

    def get(family: str):
        if family not in cache:
            cache[family] = make_tokenizer(family, root)
        return cache[family]

    return get


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
