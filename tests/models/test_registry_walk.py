"""Walk the registry: every entry has a tiny model of its family, and one training step runs on it.

Text families: a tiny random model from the family's config, LoRA on the entry's `lora_targets`,
one AdamW step here. Vision families: one step of `mmtune train` per family, in
tests/train/test_sft_vision.py::test_every_registry_family_trains_through_run_sft (every part gets
trainable weights there, which proves the entry's module prefixes); this file checks that every
vision entry's family is one that test walks.
"""

from __future__ import annotations

import pytest
from helpers.tiny_models import TINY_FAMILIES, tiny_config
from helpers.tiny_vlms import TINY_VLM_FAMILIES

from mmtune.models.registry import FAMILIES, REGISTRY, VISION_FAMILIES


def test_every_entry_has_a_tiny_model_of_its_family():
    missing = [s.name for s in REGISTRY.values()
               if s.family not in (TINY_FAMILIES if s.kind == "text" else TINY_VLM_FAMILIES)]
    assert not missing, f"registry entries whose family has no tiny test model (tests/helpers/): {missing}"
    assert set(FAMILIES) <= set(TINY_FAMILIES) and set(VISION_FAMILIES) <= set(TINY_VLM_FAMILIES)


@pytest.mark.parametrize("family", FAMILIES)
def test_one_lora_step_on_every_text_family(family):
    """Every entry's LoRA targets are linear layers of the official class; one step changes every
    adapter and nothing else, and the loss is finite."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_config(family, vocab_size=128), dtype=torch.float32)
    linear = {name.rsplit(".", 1)[-1] for name, mod in model.named_modules() if isinstance(mod, torch.nn.Linear)}
    entries = [s for s in REGISTRY.values() if s.family == family and s.kind == "text"]
    assert entries
    for spec in entries:
        assert set(spec.lora_targets) <= linear, (spec.name, set(spec.lora_targets) - linear)
    targets = list(entries[0].lora_targets)
    assert all(list(s.lora_targets) == targets for s in entries)  # one family, one set of targets
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=targets, lora_dropout=0.0,
                                             init_lora_weights=False))  # B != 0: both factors get gradients
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in trainable} == set(targets)
    ids = torch.randint(0, 128, (2, 12))
    optim = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.0)
    loss = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=ids).loss
    loss.backward()
    optim.step()
    assert torch.isfinite(loss)
    changed = {n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])}
    assert changed == trainable
