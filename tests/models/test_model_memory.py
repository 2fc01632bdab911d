"""The memory estimate: parameter counts match the declared sizes and the orderings hold."""

from __future__ import annotations

import pytest

from mmtune.models.memory import (
    METHODS,
    count_params,
    estimate_memory,
    language_model_params,
    lora_params,
    vision_params,
)
from mmtune.models.registry import REGISTRY

SPECS = list(REGISTRY.values())
TEXT_SPECS = [s for s in SPECS if s.kind == "text"]
VISION_SPECS = [s for s in SPECS if s.kind == "vision"]
# Published vision tower + projector sizes (independent of the registry's numbers), in billions:
# Qwen2-VL's 675M ViT (+ merger), CLIP ViT-L/336 + LLaVA's 2-layer MLP, SigLIP-B/16-512 + SmolVLM's connector.
KNOWN_VISION_B = {"qwen2-vl-2b-instruct": 0.675, "qwen2-vl-7b-instruct": 0.675, "llava-1.5-7b": 0.3245,
                  "smolvlm-256m-instruct": 0.0935}


@pytest.mark.parametrize("spec", TEXT_SPECS, ids=lambda s: s.name)
def test_parameter_count_from_architecture_matches_declared_size(spec):
    assert count_params(spec) / 1e9 == pytest.approx(spec.params_b, rel=0.02)
    assert vision_params(spec) == 0


@pytest.mark.parametrize("spec", VISION_SPECS, ids=lambda s: s.name)
def test_vision_model_language_part_and_tower_add_up(spec):
    """The language-model numbers leave a plausible vision tower (under half the model) and,
    where the entry declares its tower, add up to the declared total."""
    lm, tower = language_model_params(spec), vision_params(spec)
    assert 0 < tower < 0.5 * spec.params_b * 1e9
    assert lm < spec.params_b * 1e9
    assert count_params(spec) / 1e9 == pytest.approx(spec.params_b, rel=0.02)
    if spec.name in KNOWN_VISION_B:
        assert tower / 1e9 == pytest.approx(KNOWN_VISION_B[spec.name], rel=0.03)


def test_vision_tower_frozen_under_lora_trained_under_full():
    spec = REGISTRY["qwen2-vl-2b-instruct"]
    full, lora, qlora = (estimate_memory(spec, m, 2048, 1) for m in METHODS)
    tower_gib = vision_params(spec) / 1024**3
    assert full["gradients"] > 2 * tower_gib > lora["gradients"]
    assert qlora["weights"] > 2 * tower_gib  # the tower is never quantised


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_full_needs_more_than_lora_needs_more_than_qlora(spec):
    full, lora, qlora = (estimate_memory(spec, m, 2048, 1) for m in METHODS)
    assert full["total"] > lora["total"] > qlora["total"] > 0
    assert qlora["weights"] < full["weights"] <= lora["weights"]  # lora adds fp32 adapters
    assert lora["activations"] == full["activations"] == qlora["activations"]
    for parts in (full, lora, qlora):
        assert parts["total"] == pytest.approx(sum(v for k, v in parts.items() if k != "total"), abs=0.01)


def test_grows_with_sequence_length_batch_and_rank():
    spec = REGISTRY["qwen2.5-7b-instruct"]
    for method in METHODS:
        totals = [estimate_memory(spec, method, s, 1)["total"] for s in (512, 1024, 2048, 4096)]
        assert totals == sorted(totals) and len(set(totals)) == 4
        assert (
            estimate_memory(spec, method, 1024, 4)["total"] > estimate_memory(spec, method, 1024, 2)["total"]
        )
    assert lora_params(spec, 64) == 4 * lora_params(spec, 16)
    assert (
        estimate_memory(spec, "lora", lora_rank=64)["optimizer"] > estimate_memory(spec, "lora")["optimizer"]
    )


def test_gradient_checkpointing_saves_activation_memory():
    spec = REGISTRY["llama3.1-8b-instruct"]
    with_ckpt = estimate_memory(spec, "lora", 4096, 1)["activations"]
    without = estimate_memory(spec, "lora", 4096, 1, gradient_checkpointing=False)["activations"]
    assert without > 3 * with_ckpt


def test_known_magnitudes():
    """7-8B models: full bf16 AdamW is tens of GiB, QLoRA fits a 16 GiB card at 2k tokens."""
    spec = REGISTRY["qwen2.5-7b-instruct"]
    full, qlora = estimate_memory(spec, "full")["total"], estimate_memory(spec, "qlora")["total"]
    assert 50 < full < 80 and 5 < qlora < 16
    # LoRA r=16 on all linear layers of Llama-3.1-8B: about 42M trainable parameters
    assert lora_params(REGISTRY["llama3.1-8b-instruct"], 16) == pytest.approx(41.9e6, rel=0.01)


def test_unknown_method_raises():
    with pytest.raises(ValueError, match="method"):
        estimate_memory(REGISTRY["qwen3-0.6b"], "dora")
