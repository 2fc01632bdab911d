"""Fixtures for the CLI tests: a tiny random Llama (built once per session) and a small data file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


@pytest.fixture()
def small_data(tmp_path) -> Path:
    rows = [{"messages": [{"role": "user", "content": f"What is {i} + {i}?"},
                          {"role": "assistant", "content": f"{i} + {i} is {2 * i}."}]} for i in range(8)]
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path
