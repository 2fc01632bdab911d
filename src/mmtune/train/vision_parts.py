"""Which parameters of a vision-language model train, and a per-part count of them.

A parameter belongs to the part whose registry prefix it starts with, the longest prefix
winning (Qwen2-VL's projector `model.visual.merger` sits inside its tower `model.visual`);
anything else (lm_head, tied embeddings) counts with the language model, except the few
learned vision-side tensors that sit directly on the model (LLaVA-NeXT's `image_newline`, the
embedding written after each row of image features), which go with the projector.
"""

from __future__ import annotations

import re

from mmtune.errors import UserError
from mmtune.models.registry import ModelSpec

TRAIN_VISION = ("none", "lora", "full")
LM_METHODS = ("lora", "qlora", "full", "frozen")
PARTS = ("vision_tower", "projector", "language_model")
# top-level parameters of the vision side outside every prefix (LLaVA-NeXT / -Video / OneVision)
PROJECTOR_PARAMS = ("model.image_newline",)


def part_of(name: str, spec: ModelSpec) -> str:
    """'vision_tower' | 'projector' | 'language_model' for a parameter or module name."""
    if name in PROJECTOR_PARAMS:
        return "projector"
    best, length = "language_model", -1
    for part in PARTS:
        prefix = getattr(spec, part)
        if prefix and (name == prefix or name.startswith(prefix + ".")) and len(prefix) > length:
            best, length = part, len(prefix)
    return best


def lora_target_regex(spec: ModelSpec, *, lm: bool, vision: bool, targets: tuple[str, ...] | None = None) -> str:
    """A PEFT `target_modules` regex: the named linear layers inside the chosen parts only (the
    vision tower's attention shares names like q_proj with the language model)."""
    names = "|".join(re.escape(t) for t in (targets or spec.lora_targets))
    prefixes = [p for p, on in ((spec.language_model, lm), (spec.vision_tower, vision)) if on and p]
    if not prefixes:
        raise UserError("LoRA on neither the language model nor the vision tower: nothing to adapt")
    scope = "|".join(re.escape(p) for p in prefixes)
    return rf"^(?:{scope})\..*\.(?:{names})$"


def set_trainable(model, spec: ModelSpec, *, train_vision: str = "none", train_projector: bool = True,
                  lm_method: str = "lora") -> None:
    """requires_grad for the fully trained parts: the tower with train_vision='full', the projector
    with train_projector, the language model with lm_method='full'. LoRA adapters (lm lora/qlora,
    train_vision='lora') are added by PEFT afterwards; this freezes their base weights."""
    if train_vision not in TRAIN_VISION:
        raise UserError(f"--train-vision must be one of {', '.join(TRAIN_VISION)}, not {train_vision!r}")
    if lm_method not in LM_METHODS:
        raise UserError(f"the language model method must be one of {', '.join(LM_METHODS)}, not {lm_method!r}")
    full = {"vision_tower": train_vision == "full", "projector": train_projector, "language_model": lm_method == "full"}
    for name, param in model.named_parameters():
        if "lora_" in name:
            continue
        param.requires_grad_(full[part_of(_strip_peft(name), spec)])


def _strip_peft(name: str) -> str:
    """PEFT wraps the model as base_model.model.<name> and layers as <layer>.base_layer."""
    return name.removeprefix("base_model.model.").replace(".base_layer.", ".")


def trainable_by_part(model, spec: ModelSpec) -> dict[str, tuple[int, int]]:
    """part -> (trainable, total) parameters; shared (tied) tensors are counted once."""
    counts = {p: [0, 0] for p in PARTS}
    seen: set[int] = set()
    for name, param in model.named_parameters(remove_duplicate=False):
        if id(param) in seen:
            continue
        seen.add(id(param))
        part = part_of(_strip_peft(name), spec)
        counts[part][1] += param.numel()
        if param.requires_grad:
            counts[part][0] += param.numel()
    return {p: (t, n) for p, (t, n) in counts.items()}


def format_parts(counts: dict[str, tuple[int, int]]) -> str:
    """One line per part: 'vision_tower     0 / 1,234 (0.00%)' — the printed summary."""
    lines = []
    for part, (t, n) in counts.items():
        lines.append(f"{part:<15} {t:>14,} / {n:>14,} trainable ({100 * t / max(n, 1):.2f}%)")
    return "\n".join(lines)
