"""The model set-up of every run: which parameters train, LoRA where asked, a per-part count.

A model is made of parts: a text model has one (the language model); a vision-language
model has a vision tower, a projector and a language model, named by module prefixes in its
registry entry. The method (`--method lora|qlora|full|frozen`) says how the language model
trains, `--train-vision none|lora|full` and `--train-projector` the vision parts. One
`apply_method` freezes and unfreezes the parts, prepares a quantized (QLoRA) base once, and
wraps the chosen parts in LoRA adapters (`resolve_lora_targets`: the config's names, else the
registry's, checked against the model so a typo lists the valid ones); parts trained in full
next to LoRA are PEFT `modules_to_save`. Without LoRA the whole model is saved.

A parameter belongs to the part whose registry prefix it starts with, the longest prefix
winning (Qwen2-VL's projector `model.visual.merger` sits inside its tower `model.visual`);
anything else (lm_head, tied embeddings) counts with the language model, except the few
vision-side modules the registry's one projector prefix does not cover (LLaVA-NeXT's
`image_newline`, the embedding written after each row of image features, on the model itself;
Qwen3-VL's deepstack mergers, inside its tower), which go with the projector.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable

import torch

from mmtune.config import ALL_LINEAR, TrainConfig
from mmtune.errors import UserError
from mmtune.models.registry import ModelSpec, find_spec

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


VISION_ONLY = ("train_vision", "train_projector", "max_pixels", "min_pixels", "video_fps", "video_frames")


def is_vision(spec: ModelSpec | None) -> bool:
    return spec is not None and spec.kind == "vision"


def resolve_parts(cfg: TrainConfig, spec: ModelSpec | None, say: Callable[[str], None]) -> TrainConfig:
    """The config with the family's defaults filled in for a vision model; for a text model, an
    error for every vision-only setting (frozen included). Says when packing is turned off."""
    if not is_vision(spec):
        given = [f"--{k.replace('_', '-')}" for k in VISION_ONLY if getattr(cfg, k) is not None]
        if cfg.method == "frozen":
            given.insert(0, "--method frozen")
        if given:
            raise UserError(f"{', '.join(given)} apply to vision-language models only and {cfg.model} is "
                            f"{'a text model' if spec else 'not a vision model mmtune knows'}: drop them "
                            "(`mmtune models` lists the vision models)")
        return cfg
    cfg = dataclasses.replace(
        cfg,
        train_vision=cfg.train_vision if cfg.train_vision is not None else spec.default_train_vision,
        train_projector=cfg.train_projector if cfg.train_projector is not None else spec.default_train_projector,
    )
    if cfg.method == "frozen" and cfg.train_vision == "none" and not (cfg.train_projector and spec.projector):
        raise UserError("nothing would train: --method frozen with --train-vision none and no projector "
                        "training; pass --train-projector, --train-vision lora|full, or a method for the "
                        "language model (lora, full)")
    if cfg.method == "full" and cfg.train_vision == "lora":
        raise UserError("--train-vision lora with --method full is not supported: use --train-vision full")
    if cfg.packing:
        say("note: packing is off for vision-language models (rows carry media tensors): batches are padded")
        cfg = dataclasses.replace(cfg, packing=False)
    return cfg


def load_vision_processor(cfg: TrainConfig):
    """The model's processor with the run's pixel bounds, and a pad token on its tokenizer."""
    from mmtune.models.vision import load_processor

    return load_processor(cfg.model, max_pixels=cfg.max_pixels, min_pixels=cfg.min_pixels)


def apply_method(model, cfg: TrainConfig, spec: ModelSpec | None = None):
    """Freeze and unfreeze the parts, prepare a quantized base (qlora), and add LoRA adapters where
    asked (see the module docstring). A text model (spec not a vision entry) is one part."""
    vision = is_vision(spec)
    lm_lora, tower_lora = cfg.method in ("lora", "qlora"), vision and cfg.train_vision == "lora"
    if cfg.method == "qlora":
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=cfg.gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False})
    if vision:
        set_trainable(model, spec, train_vision=cfg.train_vision, train_projector=cfg.train_projector,
                      lm_method=cfg.method)
    elif cfg.method == "full":
        for p in model.parameters():
            p.requires_grad_(True)
    if not (lm_lora or tower_lora):
        return _fp32_trainable(model)
    from peft import LoraConfig, get_peft_model

    from mmtune.train.lora_dropout import use_sparse_lora_dropout

    lora = LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=resolve_lora_targets(model, cfg, spec, lm=lm_lora, tower=tower_lora),
                      modules_to_save=(saved_in_full(cfg, spec) or None) if vision else None, use_dora=cfg.use_dora,
                      use_rslora=cfg.use_rslora, bias="none", task_type="CAUSAL_LM")
    model = get_peft_model(model, lora)
    use_sparse_lora_dropout(model)  # same dropout distribution, ~20x fewer random draws (train/lora_dropout.py)
    if vision:
        _set_saved_parts(model, cfg, spec)
    if cfg.gradient_checkpointing:
        model.enable_input_require_grads()
    return _fp32_trainable(model)


def _fp32_trainable(model):
    """Parts trained in full keep fp32 master weights (the frozen rest stays in the training
    precision; autocast runs the matmuls in half precision)."""
    for param in model.parameters():
        if param.requires_grad and param.dtype in (torch.float16, torch.bfloat16):
            param.data = param.data.float()
    return model


def saved_in_full(cfg: TrainConfig, spec: ModelSpec) -> list[str]:
    """Module prefixes trained in full next to LoRA (PEFT modules_to_save)."""
    out = []
    if cfg.train_vision == "full" and spec.vision_tower:
        out.append(spec.vision_tower)
    if cfg.train_projector and spec.projector and not (out and _inside(spec.projector, spec.vision_tower)):
        out.append(spec.projector)
    return out


def _set_saved_parts(model, cfg: TrainConfig, spec: ModelSpec) -> None:
    """Inside the fully trained copies PEFT made, train only what the flags say (a tower saved in
    full holds Qwen2-VL's projector, which --no-train-projector keeps frozen)."""
    want = {"vision_tower": cfg.train_vision == "full", "projector": bool(cfg.train_projector),
            "language_model": False}
    for name, param in model.named_parameters():
        if ".modules_to_save." in name:
            param.requires_grad_(want[part_of(_strip_peft(name), spec)])


def _linear_leaves(model, spec: ModelSpec | None, part: str) -> dict[str, list[str]]:
    """Leaf name -> full names of the linear layers in `part` (a text model, spec None: all of them)."""
    out: dict[str, list[str]] = {}
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear):
            continue
        if spec is None:
            out.setdefault(name.rsplit(".", 1)[-1], []).append(name)
        elif part_of(name, spec) == part:
            prefix = getattr(spec, part)
            if prefix and name.startswith(prefix + "."):
                out.setdefault(name.rsplit(".", 1)[-1], []).append(name)
    return out


def resolve_lora_targets(model, cfg: TrainConfig, spec: ModelSpec | None = None, *, lm: bool = True,
                         tower: bool = False) -> list[str] | str:
    """What LoRA wraps: the language model's named linear layers (the config's names, else the
    registry's, else all-linear) and, with --train-vision lora, every linear layer of the vision
    tower (not the projector). A text model's names are PEFT's `target_modules` as they are
    (all-linear: PEFT's, which skips the output layer); a vision model's become a regex scoped to
    the parts (their towers share names like q_proj). Names are checked against the model, so a
    typo lists the valid ones instead of PEFT's "target modules not found"."""
    spec = spec if spec is not None else find_spec(cfg.model)
    vision = is_vision(spec)
    targets = cfg.lora_targets or (list(spec.lora_targets) if spec and spec.lora_targets else [ALL_LINEAR])
    if not vision and targets == [ALL_LINEAR]:
        return ALL_LINEAR
    if vision:
        leaves, where = _linear_leaves(model, spec, "language_model"), f"{cfg.model}'s language model"
    else:
        leaves, where = _linear_leaves(model, None, "language_model"), cfg.model
    if list(targets) == [ALL_LINEAR]:
        targets = sorted(leaves)
    names = [n for full in leaves.values() for n in full]
    missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]
    if lm and missing:
        raise UserError(f"LoRA target(s) {', '.join(missing)} are not linear layers of {where}; its linear "
                        f"layers are: {', '.join(sorted(leaves))}. Set --lora-targets to some of them, or all-linear")
    if not vision:
        return list(targets)
    tower_leaves = tuple(sorted(_linear_leaves(model, spec, "vision_tower")))
    if tower and not tower_leaves:
        raise UserError(f"--train-vision lora: {cfg.model}'s vision tower has no linear layers to adapt; use "
                        "--train-vision full")
    return lora_target_regex(spec, lm=lm, vision=tower, targets=tuple(targets), vision_targets=tower_leaves)


def count_params(model) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())


def part_summary(model, spec: ModelSpec) -> tuple[str, dict[str, tuple[int, int]], tuple[int, int]]:
    """(printable per-part table, part -> (trainable, total), (trainable, total) overall) of a
    vision-language model."""
    counts = trainable_by_part(model, spec)
    trainable = sum(t for t, _ in counts.values())
    total = sum(n for _, n in counts.values())
    return format_parts(counts), counts, (trainable, total)
