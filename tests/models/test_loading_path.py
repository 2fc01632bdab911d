"""The one loading path: a vision model is told by its registry entry (`model_spec`: name, folder, or a
hub repo's config.json), its processor comes from one place (models/vision.load_processor), and every
tokenizer gets its pad token from `ensure_pad_token`."""

from __future__ import annotations

import json

import pytest

from mmtune.errors import UserError
from mmtune.models import loader
from mmtune.models.vision import processor_folder


class _Tok:
    """Just what ensure_pad_token reads and sets."""

    def __init__(self, vocab, eos=None, pad=None):
        self.vocab, self.eos_token, self.pad_token = vocab, eos, pad

    def get_vocab(self):
        return self.vocab


def test_pad_token_prefers_a_pad_like_token_then_eos_and_never_adds_one():
    assert loader.ensure_pad_token(_Tok({"<pad>": 0, "</s>": 1}, eos="</s>"), "m").pad_token == "<pad>"
    assert loader.ensure_pad_token(_Tok({"</s>": 1}, eos="</s>"), "m").pad_token == "</s>"
    assert loader.ensure_pad_token(_Tok({"x": 0}, pad="x"), "m").pad_token == "x"  # kept as it is
    with pytest.raises(UserError, match="my-model has neither a pad nor an eos token.*pad_token"):
        loader.ensure_pad_token(_Tok({"a": 0}), "my-model")


def test_a_hub_repo_the_registry_lacks_is_told_by_its_config(monkeypatch, tmp_path):
    import huggingface_hub

    config = tmp_path / "config.json"
    config.write_text(json.dumps({"model_type": "qwen2_vl", "text_config": {"hidden_size": 8}}))
    asked = []

    def fetch(repo, filename):
        asked.append((repo, filename))
        return str(config)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fetch)
    spec = loader.model_spec("someone/my-qwen2-vl-finetune")
    assert spec.kind == "vision" and spec.family == "qwen2_vl" and asked == [("someone/my-qwen2-vl-finetune",
                                                                                "config.json")]
    assert loader.model_spec("qwen2.5-0.5b-instruct").kind == "text" and len(asked) == 1  # a name: no fetch
    assert loader.model_spec(str(tmp_path)).family == "qwen2_vl" and len(asked) == 1  # a folder: its config

    def offline(repo, filename):
        raise OSError("no network")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    assert loader.model_spec("someone/other") is None  # loading then says why


def test_a_hub_processor_is_fetched_as_files_and_failures_say_why(monkeypatch, tmp_path):
    import huggingface_hub

    assert processor_folder(str(tmp_path)) == str(tmp_path)  # a local folder as it is
    asked = {}

    def fake(repo, allow_patterns):
        asked.update(repo=repo, patterns=allow_patterns)
        return str(tmp_path)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake)
    assert processor_folder("Qwen/Qwen2-VL-2B-Instruct") == str(tmp_path)
    assert asked["repo"] == "Qwen/Qwen2-VL-2B-Instruct" and "*.safetensors" not in asked["patterns"]
    assert processor_folder("qwen2-vl-2b-instruct") == str(tmp_path)  # a registry name: its hub id
    assert asked["repo"] == "Qwen/Qwen2-VL-2B-Instruct" and "*.safetensors" not in asked["patterns"]

    def offline(repo, allow_patterns):
        raise OSError("no network")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(UserError, match="cannot fetch the processor.*no network.*pass it as --model"):
        processor_folder("Qwen/Qwen2-VL-2B-Instruct")


