"""Tiny models and LoRA adapters for the inference, export and server tests (no hub access).

Adapters get random LoRA B matrices (PEFT initialises B to zero, which would make an
adapter a no-op and every "adapter changes the output" test pass vacuously).
"""

from __future__ import annotations

import atexit
import json
import shutil
import tempfile
from pathlib import Path

from helpers.tiny_models import tiny_model_dir

_adapters: dict[tuple[str, int], Path] = {}
_root = Path(tempfile.mkdtemp(prefix="mmtune-infer-tests-"))
atexit.register(shutil.rmtree, _root, True)


def tiny_base(family: str = "qwen2") -> Path:
    """A tiny random model folder of `family` (shared, read-only)."""
    return tiny_model_dir(family, _root)


def tiny_adapter(family: str = "qwen2", seed: int = 1, scale: float = 0.5) -> Path:
    """An adapter folder over tiny_base(family), laid out like a training run's output."""
    key = (family, seed)
    if key in _adapters:
        return _adapters[key]
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = tiny_base(family)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "up_proj", "down_proj"])
    peft_model = get_peft_model(model, config)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name or "lora_A" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * scale)
    out = _root / f"adapter-{family}-{seed}"
    peft_model.save_pretrained(out)
    AutoTokenizer.from_pretrained(base).save_pretrained(out)
    meta = {"base_model": str(base), "method": "lora", "adapter": True, "mmtune_version": "test"}
    (out / "mmtune.json").write_text(json.dumps(meta))
    _adapters[key] = out
    return out


def messages(text: str = "Hello there, how are you?") -> list[dict]:
    return [{"role": "system", "content": "Be brief."}, {"role": "user", "content": text}]
