"""What run_sft does differently for a vision-language model: which parts train, the processor,
LoRA scoped to the chosen parts, the collator, and the per-part summary.

The parts (registry prefixes: vision tower, projector, language model) train as the config
says: the language model by `method` (lora | qlora | full | frozen), the tower by
`train_vision` (none | lora | full), the projector by `train_projector`; unset values take the
model family's defaults from its registry entry. When LoRA is used anywhere the model is a
PEFT model, and the parts that train in full (the projector, a fully trained tower) are PEFT
`modules_to_save`, so the adapter folder holds them too and loads (or merges) like any adapter.
Without LoRA (frozen or full language model, no tower LoRA) the whole model is saved.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch

from mmtune.config import ALL_LINEAR, TrainConfig
from mmtune.errors import UserError
from mmtune.models.registry import ModelSpec
from mmtune.train.vision_parts import (
    _inside,
    _strip_peft,
    format_parts,
    lora_target_regex,
    part_of,
    set_trainable,
    trainable_by_part,
)

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


def apply_vision_method(model, cfg: TrainConfig, spec: ModelSpec):
    """Freeze and unfreeze the parts, and add LoRA adapters where asked (see the module docstring)."""
    lm_lora, tower_lora = cfg.method in ("lora", "qlora"), cfg.train_vision == "lora"
    if cfg.method == "qlora":
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=cfg.gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False})
    set_trainable(model, spec, train_vision=cfg.train_vision, train_projector=cfg.train_projector,
                  lm_method=cfg.method)
    if not (lm_lora or tower_lora):
        return _fp32_trainable(model)
    from peft import LoraConfig, get_peft_model

    from mmtune.train.lora_dropout import use_sparse_lora_dropout

    lora = LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=lora_targets(model, cfg, spec, lm=lm_lora, tower=tower_lora),
                      modules_to_save=saved_in_full(cfg, spec) or None, use_dora=cfg.use_dora,
                      use_rslora=cfg.use_rslora, bias="none", task_type="CAUSAL_LM")
    model = get_peft_model(model, lora)
    use_sparse_lora_dropout(model)  # same dropout distribution, ~20x fewer random draws (train/lora_dropout.py)
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


def _linear_leaves(model, spec: ModelSpec, part: str) -> dict[str, list[str]]:
    """Leaf name -> full names of the linear layers in `part`."""
    out: dict[str, list[str]] = {}
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and part_of(name, spec) == part:
            prefix = getattr(spec, part)
            if prefix and name.startswith(prefix + "."):
                out.setdefault(name.rsplit(".", 1)[-1], []).append(name)
    return out


def lora_targets(model, cfg: TrainConfig, spec: ModelSpec, *, lm: bool, tower: bool) -> str:
    """The PEFT target regex: the language model's named layers (config, else registry; all-linear
    = all of them) and, with --train-vision lora, every linear layer of the tower (not the projector).
    Names are checked against the model, so a typo lists the valid ones."""
    lm_leaves = _linear_leaves(model, spec, "language_model")
    targets = tuple(cfg.lora_targets or spec.lora_targets)
    if targets == (ALL_LINEAR,):
        targets = tuple(sorted(lm_leaves))
    missing = [t for t in targets if t not in lm_leaves]
    if lm and missing:
        raise UserError(f"LoRA target(s) {', '.join(missing)} are not linear layers of {cfg.model}'s language model; "
                        f"its linear layers are: {', '.join(sorted(lm_leaves))}. Set --lora-targets to some of them, "
                        "or all-linear")
    tower_leaves = tuple(sorted(_linear_leaves(model, spec, "vision_tower")))
    if tower and not tower_leaves:
        raise UserError(f"--train-vision lora: {cfg.model}'s vision tower has no linear layers to adapt; use "
                        "--train-vision full")
    return lora_target_regex(spec, lm=lm, vision=tower, targets=targets, vision_targets=tower_leaves)


def part_summary(model, spec: ModelSpec) -> tuple[str, dict[str, tuple[int, int]], tuple[int, int]]:
    """(printable per-part table, part -> (trainable, total), (trainable, total) overall)."""
    counts = trainable_by_part(model, spec)
    trainable = sum(t for t, _ in counts.values())
    total = sum(n for _, n in counts.values())
    return format_parts(counts), counts, (trainable, total)


def vision_collator(processor):
    from mmtune.train.collate_vision import VisionCollator, media_layout

    return VisionCollator(processor.tokenizer.pad_token_id, media_layout(processor))
