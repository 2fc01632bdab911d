"""Fixtures for the model tests: one session folder for the tiny models every test shares."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory):
    """Where tiny_model_dir builds its folders this session (they are cached and shared)."""
    return tmp_path_factory.mktemp("tiny-models")
