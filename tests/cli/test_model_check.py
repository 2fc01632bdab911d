"""`check_model`: what can be loaded here is known in a moment, without loading it; a hub model counts
when it is in the local cache, and is otherwise asked for once (never while HF_HUB_OFFLINE is set)."""

from __future__ import annotations

import time
from pathlib import Path

import huggingface_hub
import pytest
from huggingface_hub import constants

from mmtune.errors import UserError
from mmtune.models import available
from mmtune.models.available import check_model

SHA = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture()
def hub_cache(tmp_path, monkeypatch) -> Path:
    """An empty local hub cache, offline."""
    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


def cache_model(cache: Path, repo_id: str) -> None:
    """The layout `hf download` leaves: refs/main -> snapshots/<sha>/config.json."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(SHA)
    (repo / "snapshots" / SHA).mkdir(parents=True)
    (repo / "snapshots" / SHA / "config.json").write_text("{}")


def test_a_cached_hub_model_passes_offline(hub_cache):
    cache_model(hub_cache, "someone/small-model")
    check_model("someone/small-model")
    with pytest.raises(UserError, match="HF_HUB_OFFLINE"):
        check_model("someone/other-model")


def test_a_registry_model_not_cached_names_its_hub_id_and_the_ways_out(hub_cache):
    with pytest.raises(UserError) as e:
        check_model("qwen2.5-0.5b-instruct")
    msg = str(e.value)
    assert "Qwen/Qwen2.5-0.5B-Instruct" in msg and "hf download" in msg and "local model folder" in msg
    assert "smollm2-135m-instruct" in msg  # the embedded default, which needs no download
    cache_model(hub_cache, "Qwen/Qwen2.5-0.5B-Instruct")
    check_model("qwen2.5-0.5b-instruct")


def test_the_embedded_default_and_local_models_need_no_hub(hub_cache, tmp_path):
    check_model(None)
    check_model("smollm2")  # an alias
    folder = tmp_path / "m"
    folder.mkdir()
    with pytest.raises(UserError, match="no config.json"):
        check_model(str(folder))
    (folder / "config.json").write_text("{}")
    check_model(str(folder))
    (tmp_path / "w.bin").write_text("x")
    with pytest.raises(UserError, match="not a .gguf"):
        check_model(str(tmp_path / "w.bin"))


def test_a_typo_of_a_registry_name_suggests_it(hub_cache):
    with pytest.raises(UserError, match="did you mean qwen2.5-0.5b-instruct"):
        check_model("qwen2.5-0.5b-instrcut")
    with pytest.raises(UserError, match="not a registry name"):
        check_model("not a model id")


def test_online_the_hub_is_asked_once_with_a_short_timeout(hub_cache, monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    calls = []

    def unreachable(url, timeout=None, **kw):
        calls.append((url, timeout, kw.get("retry_on_errors", False)))
        raise ConnectionError("network is unreachable")

    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", unreachable)
    t = time.perf_counter()
    with pytest.raises(UserError, match="cannot be reached .*network is unreachable"):
        check_model("someone/remote-model")
    assert time.perf_counter() - t < 1.0
    assert len(calls) == 1 and calls[0][1] == available.HUB_TIMEOUT_S <= 3.0 and calls[0][2] is False
    assert calls[0][0].endswith("someone/remote-model/resolve/main/config.json")


def test_the_loader_checks_a_hub_id_before_from_pretrained(hub_cache):
    from mmtune.models.loader import load_tokenizer

    with pytest.raises(UserError, match="HF_HUB_OFFLINE"):
        load_tokenizer("someone/uncached-model")
