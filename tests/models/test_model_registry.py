"""The registry is complete and its numbers match the real architectures (built tiny)."""

from __future__ import annotations

import dataclasses
import json

import pytest
from helpers.tiny_models import tiny_model_dir

from mmtune.models.memory import layer_linear_shapes
from mmtune.models.registry import (
    DEFAULT_MODEL,
    FAMILIES,
    MEDIA_LAYOUTS,
    REGISTRY,
    VISION_FAMILIES,
    ModelSpec,
    build_registry,
    find_spec,
)


def test_names_unique_and_every_family_present():
    assert len(REGISTRY) == len({s.name for s in REGISTRY.values()})
    assert {s.family for s in REGISTRY.values() if s.kind == "text"} == set(FAMILIES)
    assert {s.family for s in REGISTRY.values() if s.kind == "vision"} == set(VISION_FAMILIES)
    hub_paths = [s.hf_path.lower() for s in REGISTRY.values()]
    assert len(hub_paths) == len(set(hub_paths))
    assert REGISTRY[DEFAULT_MODEL].embedded


def test_requested_series_are_covered():
    names = " ".join(REGISTRY)
    for series in (
        "qwen2-",
        "qwen2.5-",
        "qwen3-",
        "llama3.1-",
        "llama3.2-",
        "minicpm-",
        "minicpm3-",
        "smollm2-",
        "mistral-",
        "gemma2-",
        "gemma3-",
        "phi3-",
        "phi3.5-",
        "phi4-",
    ):
        assert series in names, series
    assert REGISTRY["minicpm-2b-sft"].trust_remote_code


def test_duplicate_name_raises():
    spec = REGISTRY["qwen3-0.6b"]
    with pytest.raises(ValueError, match="duplicate"):
        build_registry((spec, spec))


def test_alias_colliding_with_a_name_raises():
    spec = dataclasses.replace(REGISTRY["qwen3-1.7b"], aliases=("qwen3-0.6b",))
    with pytest.raises(ValueError, match="alias"):
        build_registry((REGISTRY["qwen3-0.6b"], spec))


@pytest.mark.parametrize(
    "change, message",
    [
        ({"hf_path": ""}, "empty"),
        ({"family": "nope"}, "FAMILIES"),
        ({"lora_targets": ()}, "lora_targets"),
        ({"num_kv_heads": 5}, "architecture"),
        ({"kind": "vision"}, "media_placeholder"),
    ],
)
def test_incomplete_entry_raises(change, message):
    with pytest.raises(ValueError, match=message):
        build_registry((dataclasses.replace(REGISTRY["qwen3-0.6b"], **change),))


@pytest.mark.parametrize(
    "change, message",
    [
        ({"vision_tower": None}, "vision_tower"),
        ({"family": "qwen2"}, "VISION_FAMILIES"),
        ({"default_train_vision": "some"}, "default_train_vision"),
        ({"vision_params_b": 9.0}, "vision_params_b"),
        ({"media_layout": "none"}, "media_layout"),
        ({"media_layout": "stacked"}, "media_layout"),
    ],
)
def test_incomplete_vision_entry_raises(change, message):
    with pytest.raises(ValueError, match=message):
        build_registry((dataclasses.replace(REGISTRY["qwen2-vl-2b-instruct"], **change),))


def test_vision_entries_are_in_the_registry_and_found_by_folder(tmp_path):
    assert {s.media_layout for s in REGISTRY.values() if s.kind == "vision"} == set(MEDIA_LAYOUTS) - {"none"}
    assert {s.media_layout for s in REGISTRY.values() if s.kind == "text"} == {"none"}
    assert find_spec("Qwen/Qwen2-VL-7B-Instruct").name == "qwen2-vl-7b-instruct"
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llava", "text_config": {"hidden_size": 64}}))
    spec = find_spec(str(tmp_path))
    assert spec.kind == "vision" and spec.family == "llava" and spec.vision_tower


def test_to_dict_is_json():
    data = json.loads(json.dumps(REGISTRY["minicpm3-4b"].to_dict()))
    assert data["mla"] == [768, 256, 64, 32, 64] and data["lora_targets"][0] == "q_a_proj"


def test_find_spec_by_name_alias_and_hub_path():
    assert find_spec("qwen2.5-7b-instruct").hf_path == "Qwen/Qwen2.5-7B-Instruct"
    assert find_spec("smollm2").name == DEFAULT_MODEL
    assert find_spec("qwen/qwen2.5-7b-instruct").name == "qwen2.5-7b-instruct"
    assert find_spec("nobody/nothing") is None


def test_find_spec_local_folder_by_model_type(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "phi3", "hidden_size": 8}))
    assert find_spec(str(tmp_path)).family == "phi3"  # no size match: the family default
    size = REGISTRY["qwen2.5-3b-instruct"]
    (tmp_path / "config.json").write_text(
        json.dumps(
            {
                "model_type": "qwen2",
                "hidden_size": size.hidden_size,
                "num_hidden_layers": size.num_layers,
                "vocab_size": size.vocab_size,
            }
        )
    )
    assert find_spec(str(tmp_path)).name == "qwen2.5-3b-instruct"
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    assert find_spec(str(tmp_path)) is None


def _family_spec(family: str) -> ModelSpec:
    return next(s for s in REGISTRY.values() if s.family == family)


@pytest.mark.parametrize("family", FAMILIES)
def test_lora_targets_are_the_linear_layers_of_the_real_architecture(family, tiny_root):
    """Every decoder projection of the family is a target, and every target exists, with
    the in/out shapes the memory estimate assumes."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    folder = tiny_model_dir(family, tiny_root)
    config = AutoConfig.from_pretrained(folder)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    layer0 = {
        name.rsplit(".", 1)[-1]: mod
        for name, mod in model.named_modules()
        if isinstance(mod, torch.nn.Linear) and ".layers.0." in name
    }
    specs = [s for s in REGISTRY.values() if s.family == family and s.kind == "text"]
    for spec in specs:
        assert set(spec.lora_targets) == set(layer0), spec.name
    spec = _family_spec(family)
    tiny = dataclasses.replace(
        spec,
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_heads=config.num_attention_heads,
        num_kv_heads=config.num_key_value_heads,
        head_dim=getattr(config, "head_dim", None) if not spec.mla else None,
        mla=(
            config.q_lora_rank,
            config.kv_lora_rank,
            config.qk_nope_head_dim,
            config.qk_rope_head_dim,
            config.v_head_dim,
        )
        if spec.mla
        else None,
    )
    real = {name: (mod.in_features, mod.out_features) for name, mod in layer0.items()}
    assert layer_linear_shapes(tiny) == real
