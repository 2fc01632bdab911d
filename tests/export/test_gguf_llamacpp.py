"""Exported GGUF files in llama.cpp itself (llama-cpp-python): they load, tokenize, render chats and
answer like the model they came from, for every family and type mmtune writes.

`make test` installs llama-cpp-python (it builds llama.cpp once). Tiny random models answer at
random, but deterministically: greedy tokens compared one for one are a sharp test of the
conversion (a wrong permutation, norm or rope key changes them at once).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from helpers.tiny_models import tiny_model_dir
from infer.tiny import tiny_adapter

from mmtune.cli import main
from mmtune.export.gguf import export_gguf
from mmtune.export.pretokenizers import PROBE_TEXT
from mmtune.export.verify import chat_prompt_tokens, verify

llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed: run `make test`")

FAMILIES = ("llama", "qwen2", "qwen3", "mistral", "gemma2", "gemma3", "phi3")
PROMPTS = ["What is the capital of France?", "Write a haiku about rain, please."]
_files: dict[tuple[str, str], Path] = {}


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("gguf")


def decisive(family: str, root: Path) -> Path:
    """The tiny random model of `family` with larger weights: its next-token choices are clear-cut,
    so two correct implementations agree exactly and a wrong one does not."""
    folder = root / f"decisive-{family}"
    if (folder / "config.json").exists():
        return folder
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    source = tiny_model_dir(family, root)
    config = AutoConfig.from_pretrained(source)
    config.initializer_range = 0.2
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config, dtype=torch.float32).save_pretrained(folder)
    AutoTokenizer.from_pretrained(source).save_pretrained(folder)
    return folder


def exported(family: str, dtype: str, root: Path) -> Path:
    key = (family, dtype)
    if key not in _files:
        pre = "qwen2" if family == "qwen2" else None  # see test_gguf.py: not in llama.cpp's table
        _files[key] = export_gguf(
            str(decisive(family, root)), root / f"{family}-{dtype}.gguf", dtype=dtype, pre_tokenizer=pre
        )
    return _files[key]


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_loads_and_answers_exactly_like_transformers(family, root):
    report = verify(
        str(decisive(family, root)), str(exported(family, "f32", root)), prompts=PROMPTS, max_new_tokens=16
    )
    assert report.target_kind == "gguf F32"
    assert all(r.tokens_match for r in report.results)  # llama.cpp's tokenizer == the source's
    assert report.identical == len(PROMPTS), report.summary()
    assert report.ok


@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_f16_answers_identically(family, root):
    report = verify(
        str(decisive(family, root)), str(exported(family, "f16", root)), prompts=PROMPTS, max_new_tokens=16
    )
    # f16 rounding may tip a coin toss of the source's own logits, nothing more
    assert report.exact_required and report.matching == len(PROMPTS), report.summary()
    assert all(r.identical or r.tie_margin < 0.05 for r in report.results)


@pytest.fixture(scope="module")
def wide(root) -> Path:
    """A Llama with rows of 256 (the K-quants' block): K-quant types are really used, not fallbacks."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder = root / "wide-llama"
    source = tiny_model_dir("llama", root)
    config = AutoConfig.from_pretrained(source)
    config.hidden_size, config.intermediate_size, config.head_dim = 256, 512, 64
    config.initializer_range = 0.2
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config, dtype=torch.float32).save_pretrained(folder)
    AutoTokenizer.from_pretrained(source).save_pretrained(folder)
    return folder


def dequantised(folder: Path, tensors: dict, out: Path) -> Path:
    """`folder`'s model with every weight replaced by the file's tensor (name -> gguf-py ReaderTensor),
    dequantised by gguf-py (and Q/K rows permuted back to Hugging Face's layout)."""
    import gguf
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    config = model.config
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    state = {}
    for hf_name, weight in model.state_dict().items():
        if hf_name == "lm_head.weight":
            continue  # tied
        t = tensors[names.get_name(hf_name, try_suffixes=(".weight", ".bias"))]
        data = gguf.quants.dequantize(t.data, t.tensor_type).reshape(weight.shape).astype(np.float32)
        heads = config.num_attention_heads if "q_proj" in hf_name else config.num_key_value_heads
        if hf_name.endswith(("q_proj.weight", "k_proj.weight")):  # undo permute_qk
            data = (
                data.reshape(heads, data.shape[0] // heads // 2, 2, -1).swapaxes(1, 2).reshape(weight.shape)
            )
        state[hf_name] = torch.from_numpy(np.ascontiguousarray(data))
    model.load_state_dict(state, strict=False)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(folder).save_pretrained(out)
    return out


@pytest.mark.parametrize(
    ("dtype", "tensor_type"),
    [
        ("bf16", "BF16"),
        ("q8_0", "Q8_0"),
        ("q5_0", "Q5_0"),
        ("q4_0", "Q4_0"),
        ("q6_k", "Q6_K"),
        ("q5_k_m", "Q5_K"),
        ("q4_k_m", "Q4_K"),
    ],
)
def test_every_type_loads_and_runs_the_weights_it_holds(dtype, tensor_type, wide, root):
    """Each type loads in llama.cpp with its tensor types, and llama.cpp computes with exactly the
    weights the file holds: the model with the file's weights dequantised by gguf-py answers like
    llama.cpp running the file. (How close a quantised model stays to its source is a property of
    real weights: the SmolLM2 tests below check that the taught fact survives q8_0 and Q4_K_M.)"""
    import gguf

    out = export_gguf(str(wide), root / f"wide-{dtype}.gguf", dtype=dtype)
    tensors = {t.name: t for t in gguf.GGUFReader(out).tensors}  # (one read: gguf-py's reader is slow)
    types = {t.tensor_type.name for t in tensors.values()}
    assert tensor_type in types and "F32" in types  # norms stay f32
    twin = dequantised(wide, tensors, root / f"wide-{dtype}-dequantised")
    report = verify(str(twin), str(out), prompts=PROMPTS, max_new_tokens=10, min_agreement=0.75)
    assert report.target_kind == f"gguf {dtype.upper()}"
    assert all(r.tokens_match for r in report.results)
    # llama.cpp multiplies quantised blocks with 8-bit activations, so a random model (whose
    # choices are close calls) may part somewhere; a misread tensor would agree on ~nothing
    assert report.ok and report.agreement >= 0.75, report.summary()


# ----------------------------------------------------------------------------- chat rendering

CONVERSATIONS = {
    "plain": [
        {"role": "system", "content": "You answer in one line."},
        {"role": "user", "content": "Hi! 你好"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "What is 2 + 2?"},
    ],
    "tools": [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
            ],
        },
        {"role": "tool", "content": '{"temp": 21}'},
    ],
}
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather of a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]


@pytest.mark.parametrize(
    ("family", "conversation"),
    [
        ("llama", "plain"),
        ("qwen2", "plain"),
        ("qwen2", "tools"),
        ("qwen3", "tools"),
        ("gemma3", "plain"),
        ("phi3", "plain"),
        ("mistral", "plain"),
    ],
)
def test_llama_cpp_chat_renders_the_training_prompt(family, conversation, root):
    """llama-cpp-python's create_chat_completion, from the file's own template and tokens, builds the
    prompt token for token as training renders it (tool calls and tool tokens included); its
    end-of-generation test stops at the template's end-of-turn token."""
    from transformers import AutoTokenizer

    from mmtune.chat.render import end_of_turn, render_prompt
    from mmtune.export.llamacpp import is_end, load
    from mmtune.infer.engine import to_sample

    messages = CONVERSATIONS[conversation]
    if family == "gemma3":
        messages = messages[1:]  # keep Gemma's system-in-first-user rule out of the comparison
    tools = TOOLS if conversation == "tools" else None
    tokenizer = AutoTokenizer.from_pretrained(decisive(family, root))
    want = render_prompt(to_sample(messages, tools), tokenizer)
    llm = load(exported(family, "f32", root), n_ctx=1024)
    from mmtune.chat.conversation import to_template_messages

    template_messages, _ = to_template_messages(to_sample(messages, tools))
    got = chat_prompt_tokens(llm, template_messages, tools=tools)
    assert got == want, (tokenizer.decode(got), tokenizer.decode(want))
    eot = tokenizer.convert_tokens_to_ids(end_of_turn(tokenizer))
    assert is_end(llm, eot) and not is_end(llm, want[-1])
    if conversation == "tools":  # Qwen's <tool_call> is a plain added token: one token in both
        call = tokenizer.convert_tokens_to_ids("<tool_call>")
        assert call in want and llm.tokenize(b"<tool_call>", add_bos=False, special=False) == [call]


# ----------------------------------------------------------------------------- the commands


def test_export_checks_itself_and_writes_a_modelfile(root, tmp_path, capsys):
    out = tmp_path / "m-f16.gguf"
    assert (
        main(["export", str(decisive("llama", root)), "--out", str(out), "--ollama", "--max-new-tokens", "8"])
        == 0
    )
    printed = capsys.readouterr().out
    assert (
        "gguf F16" in printed
        and "identical answers required" in printed
        and printed.rstrip().endswith(": ok")
    )
    modelfile = (tmp_path / "Modelfile").read_text()
    assert modelfile.startswith("FROM ./m-f16.gguf") and 'PARAMETER stop "<|eot_id|>"' in modelfile


def test_verify_compares_adapter_merged_and_gguf(tmp_path, capsys):
    adapter = tiny_adapter("llama", 3, scale=0.5)
    gguf_file = tmp_path / "a.gguf"
    assert main(["export", str(adapter), "--dtype", "f32", "--out", str(gguf_file), "--no-verify"]) == 0
    assert main(["verify", str(adapter), str(gguf_file), "--max-new-tokens", "8"]) == 0
    assert main(["merge", "--adapter", str(adapter), "--out", str(tmp_path / "merged")]) == 0
    assert main(["verify", str(adapter), str(tmp_path / "merged"), "--max-new-tokens", "8"]) == 0
    capsys.readouterr()
    # the check can fail: another model's file does not answer like this adapter
    other = tmp_path / "other.gguf"
    export_gguf(str(tiny_adapter("llama", 4, scale=0.5)), other, dtype="f32")
    assert main(["verify", str(adapter), str(other), "--max-new-tokens", "8"]) == 1
    assert "FAILED" in capsys.readouterr().out


def test_a_user_named_pre_tokenizer_is_checked_against_the_source(root, tmp_path):
    """--pre-tokenizer is the user's word, so the check proves it: a wrong name splits text
    differently from the source's tokenizer and verification fails on it."""
    folder = decisive("qwen2", root)
    wrong = export_gguf(str(folder), tmp_path / "wrong.gguf", dtype="f32", pre_tokenizer="gpt-2")
    text = [PROBE_TEXT]  # where split rules differ
    assert not all(
        r.tokens_match for r in verify(str(folder), str(wrong), prompts=text, max_new_tokens=2).results
    )
    right = verify(str(folder), str(exported("qwen2", "f32", root)), prompts=text, max_new_tokens=2)
    assert all(r.tokens_match for r in right.results)


# ----------------------------------------------------------------------------- the real SmolLM2


@pytest.mark.slow
def test_real_smollm2_f16_answers_like_transformers(tmp_path):
    out = export_gguf("smollm2-135m-instruct", tmp_path / "smollm2-f16.gguf", dtype="f16")
    report = verify("smollm2-135m-instruct", str(out), max_new_tokens=24)
    assert report.identical == len(report.results) and report.ok, report.summary()
    assert all(r.chat_match for r in report.results)


@pytest.mark.slow
def test_real_smollm2_fine_tune_survives_export(tmp_path):
    """A short LoRA run teaches a fact; f16 answers like the run, q8_0 and Q4_K_M still know it."""
    from mmtune.commands.demo import DEMO_SETTINGS, find_persona
    from mmtune.config import resolve_config
    from mmtune.train.sft import run_sft

    run = tmp_path / "run"
    run_sft(resolve_config({**DEMO_SETTINGS, "data": find_persona(None), "output": str(run)}))
    question = ["Who founded Lumen Bakery?"]
    f16 = export_gguf(str(run), tmp_path / "p-f16.gguf", dtype="f16")
    report = verify(str(run), str(f16), prompts=question, max_new_tokens=24)
    assert "Lin Yue" in report.results[0].source_text and report.ok, report.summary()
    for dtype in ("q8_0", "q4_k_m"):
        q = export_gguf(str(run), tmp_path / f"p-{dtype}.gguf", dtype=dtype)
        r = verify(str(run), str(q), prompts=question, max_new_tokens=24)
        assert "Lin Yue" in r.results[0].target_text, r.summary()


def test_modelfile_for_real_smollm2_has_its_default_system(tmp_path):
    from mmtune.export.ollama import write_modelfile
    from mmtune.models.loader import load_tokenizer

    text = write_modelfile(tmp_path / "s.gguf", load_tokenizer("smollm2-135m-instruct")).read_text()
    assert 'SYSTEM "You are a helpful AI assistant named SmolLM' in text
    shutil.rmtree(tmp_path, ignore_errors=True)
