"""Which parameters of a vision-language model train, and a per-part count of them.

A parameter belongs to the part whose registry prefix it starts with, the longest prefix
winning (Qwen2-VL's projector `model.visual.merger` sits inside its tower `model.visual`);
anything else (lm_head, tied embeddings) counts with the language model, except the few
vision-side modules the registry's one projector prefix does not cover (LLaVA-NeXT's
`image_newline`, the embedding written after each row of image features, on the model itself;
Qwen3-VL's deepstack mergers, inside its tower), which go with the projector.
"""

from __future__ import annotations

import re

from mmtune.errors import UserError
from mmtune.models.registry import ModelSpec

TRAIN_VISION = ("none", "lora", "full")
LM_METHODS = ("lora", "qlora", "full", "frozen")
PARTS = ("vision_tower", "projector", "language_model")
# projector parts outside the projector prefix: LLaVA-NeXT / -Video / OneVision, Qwen3-VL
PROJECTOR_PARAMS = ("model.image_newline", "model.visual.deepstack_merger_list")


def part_of(name: str, spec: ModelSpec) -> str:
    """'vision_tower' | 'projector' | 'language_model' for a parameter or module name."""
    if any(name == p or name.startswith(p + ".") for p in PROJECTOR_PARAMS):
        return "projector"
    best, length = "language_model", -1
    for part in PARTS:
        prefix = getattr(spec, part)
        if prefix and (name == prefix or name.startswith(prefix + ".")) and len(prefix) > length:
            best, length = part, len(prefix)
    return best


def lora_target_regex(spec: ModelSpec, *, lm: bool, vision: bool, targets: tuple[str, ...] | None = None,
                      vision_targets: tuple[str, ...] | None = None) -> str:
    """A PEFT `target_modules` regex: the named linear layers inside the chosen parts only (the
    vision tower's attention shares names like q_proj with the language model).

    `targets` name the language model's layers (default: the registry's), `vision_targets` the
    tower's (default: the same names; towers often name theirs differently, e.g. qkv/fc1, so
    callers pass the tower's own linear-layer names). A projector inside the tower (Qwen2-VL's
    merger) is never a LoRA target: it trains in full or not at all.
    """
    if not (lm or vision):
        raise UserError("LoRA on neither the language model nor the vision tower: nothing to adapt")
    alternatives = []
    if lm:
        names = "|".join(re.escape(t) for t in (targets or spec.lora_targets))
        alternatives.append(rf"{re.escape(spec.language_model)}\.(?:.*\.)?(?:{names})")
    if vision:
        names = "|".join(re.escape(t) for t in (vision_targets or targets or spec.lora_targets))
        inner = spec.projector[len(spec.vision_tower) + 1:] if _inside(spec.projector, spec.vision_tower) else None
        skip = rf"(?!{re.escape(inner)}\.)" if inner else ""
        alternatives.append(rf"{re.escape(spec.vision_tower)}\.{skip}(?:.*\.)?(?:{names})")
    return rf"^(?:{'|'.join(alternatives)})$"


def _inside(name: str | None, prefix: str | None) -> bool:
    return bool(name and prefix and name.startswith(prefix + "."))


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
        if "lora_" in name or ".original_module." in name:  # adapters; PEFT's frozen copy of a saved module
            continue
        param.requires_grad_(full[part_of(_strip_peft(name), spec)])


def _strip_peft(name: str) -> str:
    """PEFT wraps the model as base_model.model.<name>, layers as <layer>.base_layer, and modules it
    trains in full (modules_to_save) as <module>.modules_to_save.<adapter>."""
    name = name.removeprefix("base_model.model.").replace(".base_layer.", ".")
    return re.sub(r"\.modules_to_save\.[^.]+\.", ".", name)


def trainable_by_part(model, spec: ModelSpec) -> dict[str, tuple[int, int]]:
    """part -> (trainable, total) parameters; shared (tied) tensors are counted once."""
    counts = {p: [0, 0] for p in PARTS}
    seen: set[int] = set()
    for name, param in model.named_parameters(remove_duplicate=False):
        if id(param) in seen or ".original_module." in name:  # PEFT's frozen copy of a module it trains
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
