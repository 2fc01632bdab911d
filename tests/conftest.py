"""Shared test set-up: the example media exist before any test looks for them."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples" / "data"


@pytest.fixture(scope="session", autouse=True)
def example_media():
    subprocess.run([sys.executable, str(ROOT / "examples" / "make_media.py")], check=True, capture_output=True)
    return EXAMPLES / "media"


def pytest_collection_modifyitems(config, items):
    """`gpu` tests are skipped without CUDA (they run on the GPU machine)."""
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except Exception:
        has_cuda = False
    if has_cuda:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
