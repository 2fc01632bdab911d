"""GGUF export: read back through transformers' GGUF loader, logits and tokens match."""

from __future__ import annotations

import pytest
from infer.tiny import tiny_adapter, tiny_base

from mmtune.cli import main
from mmtune.errors import UserError
from mmtune.export.gguf import export_gguf, permute_qk

TEXT = "Hello world, how's it going? 你好 123456 <|im_end|> <tool_call>"
TOLERANCE = {"f32": 1e-5, "f16": 5e-3, "q8_0": 5e-2}


def read_back(path, tokenizer=True):
    """The file through transformers' GGUF loader (the tokenizer takes seconds: only when asked)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    return model.eval(), AutoTokenizer.from_pretrained(
        path.parent, gguf_file=path.name
    ) if tokenizer else None


def reference(folder):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = folder
    if (folder / "adapter_config.json").exists():
        base = tiny_base("qwen2")
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    if base != folder:
        model = PeftModel.from_pretrained(model, str(folder))
    return model.eval(), AutoTokenizer.from_pretrained(folder)


@pytest.mark.parametrize(("family", "dtype"), [("llama", "f16"), ("qwen2", "q8_0")])
def test_gguf_reads_back_with_matching_logits(family, dtype, tmp_path):
    import torch

    out = tmp_path / f"{family}-{dtype}.gguf"
    assert (
        main(["export", str(tiny_base(family)), "--format", "gguf", "--dtype", dtype, "--out", str(out)]) == 0
    )
    model, tok = read_back(out, tokenizer=family == "qwen2")  # both families share the BPE base
    ref, ref_tok = reference(tiny_base(family))
    ids = ref_tok(TEXT)["input_ids"]
    if tok is not None:
        assert tok(TEXT)["input_ids"] == ids  # tokens, merges, added and special tokens survive
        assert tok.chat_template == ref_tok.chat_template
        assert tok.eos_token == ref_tok.eos_token
    with torch.no_grad():
        got, want = model(torch.tensor([ids])).logits, ref(torch.tensor([ids])).logits
    assert (got - want).abs().max().item() < TOLERANCE[dtype]
    assert torch.equal(got.argmax(-1), want.argmax(-1))


def test_gguf_file_follows_llama_cpp_conventions(tmp_path):
    import gguf
    import numpy as np

    out = export_gguf(str(tiny_base("llama")), tmp_path / "m.gguf", dtype="q8_0")
    reader = gguf.GGUFReader(out)
    fields = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("tokenizer.ggml.")}
    assert fields["general.architecture"] == "llama" and fields["llama.block_count"] == 2
    assert reader.fields["tokenizer.ggml.model"].contents() == "gpt2"
    assert reader.fields["tokenizer.ggml.pre"].contents() == "gpt2"
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    assert "output.weight" not in types  # tied embeddings: llama.cpp reuses token_embd
    assert types["blk.0.attn_q.weight"] == "Q8_0" and types["blk.0.attn_norm.weight"] == "F32"
    # the permutation is its own kind of shuffle: applying its inverse gives the rows back
    w = np.arange(8 * 3).reshape(8, 3)
    p = permute_qk(w, 2, 2)
    assert not np.array_equal(p, w) and sorted(p[:, 0].tolist()) == sorted(w[:, 0].tolist())


@pytest.mark.slow
def test_adapter_is_merged_on_the_way(tmp_path):
    import torch

    out = export_gguf(str(tiny_adapter("qwen2", 1)), tmp_path / "a.gguf", dtype="f32")
    model, _ = read_back(out, tokenizer=False)
    ref, tok = reference(tiny_adapter("qwen2", 1))
    ids = torch.tensor([tok(TEXT)["input_ids"]])
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, ref(ids).logits, atol=1e-4)


def test_refuses_what_it_cannot_write(tmp_path):
    phi3 = tmp_path / "phi3"
    phi3.mkdir()
    (phi3 / "config.json").write_text('{"model_type": "phi3"}')
    with pytest.raises(UserError, match="supports llama, qwen2"):
        export_gguf(str(phi3), tmp_path / "x.gguf")
    with pytest.raises(UserError, match=".gguf"):
        export_gguf(str(tiny_base("qwen2")), tmp_path / "x.bin")
