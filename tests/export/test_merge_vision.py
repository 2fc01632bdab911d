"""merge on a vision-language model's LoRA adapter: processor saved, answers equal the adapter's."""

from __future__ import annotations

import json

import pytest
from infer.tiny_vision import image_file, image_messages, lively_vlm, vision_adapter

from mmtune.cli import main
from mmtune.infer.engine import Engine

GREEDY = {"temperature": 0, "max_new_tokens": 8}


@pytest.fixture(scope="module")
def merged(tmp_path_factory):
    out = tmp_path_factory.mktemp("merge-vision") / "merged"
    assert main(["merge", "--adapter", str(vision_adapter("qwen2_vl", 1)), "--out", str(out)]) == 0
    return out


def test_merged_vision_folder_is_standalone(merged):
    names = {p.name for p in merged.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "processor_config.json"} <= names
    assert "adapter_config.json" not in names
    config = json.loads((merged / "config.json").read_text())
    assert config["model_type"] == "qwen2_vl" and "vision_config" in config
    assert json.loads((merged / "mmtune.json").read_text())["base_model"] == str(lively_vlm("qwen2_vl"))


def test_merged_vision_answers_equal_the_adapter(merged):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    from mmtune.infer.engine import to_sample
    from mmtune.infer.vision import encode

    plain, tuned = Engine(str(merged)), Engine(str(vision_adapter("qwen2_vl", 1)))
    assert plain.is_vision
    for seed in (0, 1):
        msgs = image_messages(str(image_file(seed)))
        assert plain.chat(msgs, **GREEDY) == tuned.chat(msgs, **GREEDY)
        assert plain.chat(msgs, **GREEDY) != tuned.chat(msgs, model=tuned.name, **GREEDY)  # the adapter matters
    batch = encode([to_sample(image_messages(str(image_file(0))))], plain._processors[None])
    base = AutoModelForImageTextToText.from_pretrained(lively_vlm("qwen2_vl"), dtype=torch.float32)
    with_adapter = PeftModel.from_pretrained(base, str(vision_adapter("qwen2_vl", 1))).eval()
    with torch.no_grad():
        a, b = plain.model(**batch).logits, with_adapter(**batch).logits
    assert torch.allclose(a, b, atol=1e-4)
