"""Tiny vision-language models, adapters and images for the inference, export and server tests.

The shared tiny VLMs (helpers/tiny_vlms.py) have near-zero random weights, so every prompt
decodes to one repeated token and "the image changes the answer" would be untestable.
`lively_vlm` copies one with its weights redrawn larger (seeded), so answers depend on
every input token and pixel. Adapters get random LoRA A and B (PEFT starts B at zero).
"""

from __future__ import annotations

import atexit
import json
import shutil
import tempfile
from pathlib import Path

from helpers.tiny_vlms import tiny_vlm_dir

_root = Path(tempfile.mkdtemp(prefix="mmtune-vision-infer-tests-"))
atexit.register(shutil.rmtree, _root, True)
_built: dict[tuple, Path] = {}
# the language model's LoRA targets, by PEFT regex (the vision tower has q_proj etc. too)
LM_TARGETS = r".*language_model.*\.(q_proj|v_proj|up_proj|down_proj)$|.*text_model.*\.(q_proj|v_proj|up_proj|down_proj)$"


def lively_vlm(family: str, std: float = 0.2) -> Path:
    """A copy of the tiny `family` VLM whose weights are redrawn N(0, std) (norms kept at 1)."""
    key = ("base", family)
    if key in _built:
        return _built[key]
    import torch
    from transformers import AutoModelForImageTextToText

    src = tiny_vlm_dir(family)
    model = AutoModelForImageTextToText.from_pretrained(src, dtype=torch.float32)
    gen = torch.Generator().manual_seed(1234)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim >= 2:
                p.copy_(torch.randn(p.shape, generator=gen) * std)
    out = _root / f"lively-{family}"
    shutil.copytree(src, out)
    model.save_pretrained(out)
    _built[key] = out
    return out


def vision_adapter(family: str, seed: int = 1, scale: float = 0.3) -> Path:
    """A LoRA adapter over lively_vlm(family), laid out like a training run's output (processor saved)."""
    key = ("adapter", family, seed)
    if key in _built:
        return _built[key]
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText

    from mmtune.models.vision import load_processor

    base = lively_vlm(family)
    model = AutoModelForImageTextToText.from_pretrained(base, dtype=torch.float32)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=LM_TARGETS))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_A" in name or "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * scale)
    out = _root / f"adapter-{family}-{seed}"
    peft_model.save_pretrained(out)
    load_processor(str(base)).save_pretrained(out)
    meta = {"base_model": str(base), "method": "lora", "adapter": True, "mmtune_version": "test"}
    (out / "mmtune.json").write_text(json.dumps(meta))
    _built[key] = out
    return out


def image_file(seed: int, folder: Path | None = None, size: int = 64) -> Path:
    """A random RGB PNG (distinct per seed)."""
    import numpy as np
    from PIL import Image

    folder = folder or _root
    path = folder / f"img{seed}.png"
    if not path.exists():
        pixels = (np.random.RandomState(seed).rand(size, size, 3) * 255).astype("uint8")
        Image.fromarray(pixels).save(path)
    return path


def data_url(path: Path) -> str:
    import base64

    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def image_messages(ref: str, text: str = "What is in this picture?") -> list[dict]:
    return [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": ref}},
                                         {"type": "text", "text": text}]}]
