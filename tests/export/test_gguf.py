"""GGUF export without llama.cpp: the file's layout, the pre-tokenizer name, refusals, the Modelfile.

What llama.cpp itself does with the files is tests/export/test_gguf_llamacpp.py.
"""

from __future__ import annotations

import json
import shutil

import pytest
from helpers.tiny_models import tiny_model_dir
from infer.tiny import tiny_base

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
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    return model.eval(), AutoTokenizer.from_pretrained(folder)


def fields(path) -> dict:
    import gguf

    reader = gguf.GGUFReader(path)
    return {k: f.contents() for k, f in reader.fields.items() if k != "tokenizer.ggml.merges"}


@pytest.mark.parametrize(("family", "dtype"), [("llama", "f16"), ("qwen2", "q8_0")])
def test_gguf_reads_back_with_matching_logits(family, dtype, tmp_path):
    import torch

    out = tmp_path / f"{family}-{dtype}.gguf"
    args = ["export", str(tiny_base(family)), "--dtype", dtype, "--out", str(out), "--no-verify"]
    if family == "qwen2":  # Qwen2's split rules over SmolLM2's vocabulary: not in llama.cpp's table
        args += ["--pre-tokenizer", "qwen2"]
    assert main(args) == 0
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
    f = fields(out)
    assert f["general.architecture"] == "llama" and f["llama.block_count"] == 2
    assert f["tokenizer.ggml.model"] == "gpt2"
    assert f["tokenizer.ggml.pre"] == "smollm"  # SmolLM2's BPE, identified by llama.cpp's probe hash
    assert f["tokenizer.ggml.add_bos_token"] is False  # SmolLM2's tokenizer adds no BOS
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    assert "output.weight" not in types  # tied embeddings: llama.cpp reuses token_embd
    assert types["blk.0.attn_q.weight"] == "Q8_0" and types["blk.0.attn_norm.weight"] == "F32"
    # the permutation is its own kind of shuffle: applying its inverse gives the rows back
    w = np.arange(8 * 3).reshape(8, 3)
    p = permute_qk(w, 2, 2)
    assert not np.array_equal(p, w) and sorted(p[:, 0].tolist()) == sorted(w[:, 0].tolist())


@pytest.mark.parametrize("dtype", ["bf16", "q4_0", "q5_0"])
def test_gguf_py_types_are_written_as_asked(dtype, tmp_path):
    import gguf

    out = export_gguf(str(tiny_base("llama")), tmp_path / f"m-{dtype}.gguf", dtype=dtype.upper())
    reader = gguf.GGUFReader(out)
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    assert types["blk.0.ffn_down.weight"] == dtype.upper() and types["output_norm.weight"] == "F32"
    assert gguf.LlamaFileType(fields(out)["general.file_type"]).name == f"MOSTLY_{dtype.upper()}"


def test_family_keys_are_written(tmp_path):
    """Gemma: norms as 1 + w, soft-capping, which layers slide; Phi-3: its original context."""
    import gguf
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM

    folder = tiny_model_dir("gemma2", tmp_path)
    out = export_gguf(str(folder), tmp_path / "g.gguf", dtype="f32")
    f = fields(out)
    assert f["gemma2.attn_logit_softcapping"] == 50.0 and f["gemma2.final_logit_softcapping"] == 30.0
    assert f["gemma2.attention.sliding_window"] == 32
    assert f["gemma2.attention.sliding_window_pattern"] == [True, False]  # the config's layer_types
    norms = {t.name: np.array(t.data) for t in gguf.GGUFReader(out).tensors}
    hf = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).model.norm.weight.detach().numpy()
    assert np.allclose(norms["output_norm.weight"], hf + 1.0)
    phi = fields(export_gguf(str(tiny_model_dir("phi3", tmp_path)), tmp_path / "p.gguf", dtype="f32"))
    assert phi["phi3.rope.scaling.original_context_length"] == 4096 and phi["phi3.rope.dimension_count"] == 16


# ----------------------------------------------------------------------------- pre-tokenizer


def test_real_smollm2_tokenizer_is_identified_as_llama_cpp_names_it():
    """The embedded model's own GGUF (made by llama.cpp's converter) says `smollm`; so does mmtune."""
    import gguf
    from helpers.tokenizers import GGUF_NAME, gguf_folder

    from mmtune.export.pretokenizers import llama_cpp_pre
    from mmtune.models.loader import load_tokenizer

    upstream = gguf.GGUFReader(gguf_folder() / GGUF_NAME).fields["tokenizer.ggml.pre"].contents()
    name, digest = llama_cpp_pre(load_tokenizer("smollm2-135m-instruct"))
    assert upstream == "smollm" and name == "smollm"
    assert digest == "855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249"


def test_an_unknown_tokenizer_stops_the_export_with_the_fix(tmp_path):
    # The tiny Qwen2 loads as Qwen2Tokenizer, whose split rules differ from SmolLM2's: its ids for
    # the probe text match no tokenizer llama.cpp knows, so there is no honest name to write.
    with pytest.raises(UserError, match=r"probe hash [0-9a-f]{64}.*--pre-tokenizer NAME"):
        export_gguf(str(tiny_base("qwen2")), tmp_path / "q.gguf")
    assert not list(tmp_path.glob("*.gguf*"))
    # a changed split pattern is a different tokenizer too
    folder = tmp_path / "split"
    shutil.copytree(tiny_base("llama"), folder)
    tok = json.loads((folder / "tokenizer.json").read_text())
    tok["pre_tokenizer"] = {
        "type": "Sequence",
        "pretokenizers": [{"type": "Punctuation", "behavior": "Isolated"}, tok["pre_tokenizer"]],
    }
    (folder / "tokenizer.json").write_text(json.dumps(tok))
    with pytest.raises(UserError, match="llama.cpp does not know the tokenizer"):
        export_gguf(str(folder), tmp_path / "s.gguf")


def test_refuses_what_it_cannot_write(tmp_path):
    other = tmp_path / "minicpm3"
    other.mkdir()
    (other / "config.json").write_text('{"model_type": "minicpm3"}')
    with pytest.raises(UserError, match="supports llama, mistral, qwen2, qwen3, gemma2, gemma3_text, phi3"):
        export_gguf(str(other), tmp_path / "x.gguf")
    with pytest.raises(UserError, match=".gguf"):
        export_gguf(str(tiny_base("llama")), tmp_path / "x.bin")
    with pytest.raises(UserError, match="q4_k_m"):
        export_gguf(str(tiny_base("llama")), tmp_path / "x.gguf", dtype="q3_k")


# ----------------------------------------------------------------------------- Ollama


@pytest.mark.parametrize(
    ("family", "markers", "stops"),
    [
        ("qwen2", ["<|im_start|>{{ .Role }}", "<|im_start|>assistant\n"], ["<|im_end|>"]),
        ("llama", ["<|start_header_id|>{{ .Role }}<|end_header_id|>", "<|eot_id|>"], ["<|eot_id|>"]),
        ("gemma2", ["<start_of_turn>user\n", "<start_of_turn>model\n"], ["<end_of_turn>"]),
        ("phi3", ["<|{{ .Role }}|>", "<|assistant|>\n"], ["<|end|>"]),
        ("mistral", ["[INST] ", "[/INST]"], ["</s>"]),
    ],
)
def test_modelfile_carries_the_family_template_and_stops(family, markers, stops, tmp_path):
    from transformers import AutoTokenizer

    from mmtune.export.ollama import write_modelfile

    tok = AutoTokenizer.from_pretrained(tiny_model_dir(family, tmp_path))
    text = write_modelfile(tmp_path / "m.gguf", tok, context_length=1024).read_text()
    assert text.startswith("FROM ./m.gguf\n")
    template = text.split('TEMPLATE """', 1)[1].split('"""', 1)[0]
    assert all(m in template for m in markers), template
    assert "{{ .Content }}" in template and "range" in template
    for stop in stops:
        assert f"PARAMETER stop {json.dumps(stop)}" in text
    assert "PARAMETER num_ctx 1024" in text
    if family == "gemma2":  # Gemma's template writes <bos> itself; its tokenizer here adds none
        assert template.startswith("<bos>")


def test_modelfile_keeps_the_default_system_prompt():
    """SmolLM2's template writes a system prompt when there is none: Ollama must get it as SYSTEM."""
    from mmtune.export.ollama import default_system
    from mmtune.models.loader import load_tokenizer

    tok = load_tokenizer("smollm2-135m-instruct")
    system = default_system(tok)
    assert system and "SmolLM" in system
    rendered = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    assert f"<|im_start|>system\n{system}<|im_end|>" in rendered


def test_the_check_uses_the_runs_own_validation_prompts(tmp_path):
    """A run's val_data rows, cut before their last answer, are the prompts `export` checks with;
    a merged folder finds them through the run it was merged from."""
    from mmtune.export.verify import run_prompts

    val = tmp_path / "val.jsonl"
    rows = [
        {"messages": [{"role": "user", "content": "Q1"}, {"role": "assistant", "content": "A1"}]},
        {
            "messages": [
                {"role": "system", "content": "S"},
                {"role": "user", "content": "Q2"},
                {"role": "assistant", "content": "A2"},
                {"role": "user", "content": "Q3"},
                {"role": "assistant", "content": "A3"},
            ]
        },
    ]
    val.write_text("".join(json.dumps(r) + "\n" for r in rows))
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(f"val_data: [{val}]\n")
    prompts = run_prompts(str(run))
    assert [[m.text for m in p.messages] for p in prompts] == [["Q1"], ["S", "Q2", "A2", "Q3"]]
    merged = tmp_path / "merged"
    merged.mkdir()
    (merged / "mmtune.json").write_text(json.dumps({"merged_from": {"adapter_dir": str(run)}}))
    assert len(run_prompts(str(merged))) == 2
    assert run_prompts(str(tmp_path / "nothing")) is None
