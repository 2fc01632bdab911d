"""merge: the merged folder loads with plain transformers and answers like base + adapter."""

from __future__ import annotations

import json

import pytest
from infer.tiny import messages, tiny_adapter, tiny_base

from mmtune.cli import main
from mmtune.errors import UserError
from mmtune.export.merge import merge_adapter
from mmtune.infer.engine import Engine


@pytest.fixture(scope="module")
def merged(tmp_path_factory):
    out = tmp_path_factory.mktemp("merge") / "merged"
    assert main(["merge", "--adapter", str(tiny_adapter("qwen2", 1)), "--out", str(out)]) == 0
    return out


def test_merged_folder_is_standalone(merged):
    names = {p.name for p in merged.iterdir()}
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json"} <= names
    assert "chat_template.jinja" in names or "chat_template" in (merged / "tokenizer_config.json").read_text()
    assert "adapter_config.json" not in names  # not mistaken for an adapter
    meta = json.loads((merged / "mmtune.json").read_text())
    assert meta["base_model"] == str(tiny_base("qwen2"))
    assert meta["merged_from"]["adapter_dir"] == str(tiny_adapter("qwen2", 1))


def test_merged_logits_equal_base_plus_adapter(merged):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    ids = torch.tensor([[1, 5, 9, 200, 3000, 17, 42]])
    plain = AutoModelForCausalLM.from_pretrained(merged).eval()
    base = AutoModelForCausalLM.from_pretrained(tiny_base("qwen2"), dtype=torch.float32)
    with_adapter = PeftModel.from_pretrained(base, str(tiny_adapter("qwen2", 1))).eval()
    with torch.no_grad():
        a, b = plain(ids).logits, with_adapter(ids).logits
        bare = with_adapter.get_base_model()
        with with_adapter.disable_adapter():
            c = bare(ids).logits
    assert torch.allclose(a, b, atol=1e-4)
    assert not torch.allclose(a, c, atol=1e-2)  # the adapter matters: the test can fail


def test_merged_greedy_equals_adapter(merged):
    gen = {"temperature": 0, "max_new_tokens": 8}
    assert Engine(str(merged)).chat(messages(), **gen) == Engine(str(tiny_adapter("qwen2", 1))).chat(
        messages(), **gen
    )


def test_merge_refuses_non_adapters_and_existing_out(merged, tmp_path):
    with pytest.raises(UserError, match="no LoRA adapter"):
        merge_adapter(tiny_base("qwen2"), tmp_path / "x")
    with pytest.raises(UserError, match="already exists"):
        merge_adapter(tiny_adapter("qwen2", 1), merged)
