"""The memory estimate: parameter counts match the declared sizes and the orderings hold."""

from __future__ import annotations

import pytest

from mmtune.models.memory import METHODS, count_params, estimate_memory, lora_params
from mmtune.models.registry import REGISTRY

SPECS = list(REGISTRY.values())


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_parameter_count_from_architecture_matches_declared_size(spec):
    assert count_params(spec) / 1e9 == pytest.approx(spec.params_b, rel=0.02)


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
