"""The configuration of a picture (image-generation LoRA) run: one typed dataclass, no torch.

`mmtune train` takes the same command for text and pictures: when `--model` is an
image-generation model (`mmtune models`, third table; or a local FLUX folder) the flags are read
into `PictureConfig` instead of the text `TrainConfig`. Flags both share (learning rate, epochs,
batch size, LoRA rank, seed, checkpoints, --resume ...) mean the same; the picture-only flags
(--trigger-word, --repeats, --resolution, --sample-prompt ...) are added to `mmtune train` by
`add_picture_arguments`; a text-only flag given for a picture model is an error that names it.
Layering, lowest first: defaults < --preset < --config YAML < flags.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from mmtune.config import read_yaml
from mmtune.errors import UserError

# Picture presets: what differs from the text presets is the scale (a handful of pictures seen
# `repeats` times, batch 1 at 1024 px) and the LoRA size practice of FLUX LoRAs (alpha = rank).
PICTURE_PRESETS: dict[str, dict[str, Any]] = {
    "standard": {"learning_rate": 1e-4, "epochs": 1, "batch_size": 1, "lora_rank": 16, "lora_alpha": 16.0},
    "quality": {"learning_rate": 1e-4, "epochs": 2, "batch_size": 1, "lora_rank": 32, "lora_alpha": 32.0},
    "fast": {"learning_rate": 4e-4, "epochs": 1, "batch_size": 1, "lora_rank": 8, "lora_alpha": 8.0},
}
OPTIMIZERS = ("adamw", "adamw8bit")
TIMESTEP_SAMPLING = ("uniform", "logit_normal")
SCHEDULES = ("constant", "linear", "cosine")
_STD = PICTURE_PRESETS["standard"]


def _opt(default: Any, help: str, choices: tuple | None = None) -> Any:
    meta = {"help": help, "choices": choices}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class PictureConfig:
    """Everything a picture LoRA run needs; written to <output>/config.yaml."""

    model: str = _opt("", "image-generation model: flux.1-dev, flux.1-schnell, a hub id or a local diffusers folder")
    data: list[str] = _opt([], "picture data: a folder of images with same-name .txt captions, or a .jsonl of "
                           '{"image", "caption"} rows (one source)')
    output: str = _opt("runs/mmtune", "output folder")
    overwrite: bool = _opt(False, "train into an output folder that already holds a run")
    preset: str = _opt("standard", "hyper-parameter preset", tuple(PICTURE_PRESETS))
    reg_data: str | None = _opt(None, "regularization pictures (prior preservation): a folder or .jsonl like "
                                "--data, trained with their own captions and no trigger word, so that what the "
                                "model draws without the trigger word stays as it was; each is repeated so that, in all, they are seen "
                                "as often as the --data pictures")
    trigger_word: str | None = _opt(None, "word put in front of every caption (`TOK, a cat on a sofa`); the "
                                    "tuned model draws the new subject or style when a prompt has it")
    class_preservation: float = _opt(0.0, "with --trigger-word: weight of a second loss that keeps each caption "
                                     "WITHOUT the trigger word (`a cat on a sofa`) predicting what the base model "
                                     "predicts (LoRA off, the same noisy picture), so the class itself does not turn "
                                     "into the new subject; 0 = off, 1 = as much weight as the pictures' own loss "
                                     "(each step runs one more forward pass of the base and one of the LoRA)")
    repeats: int = _opt(10, "times each picture is seen per epoch")
    resolution: int | None = _opt(None, "training side in pixels (pictures are resized and cropped to a bucket of "
                                  "about resolution² pixels; default: the model's, 1024 for FLUX.1)")
    buckets: bool = _opt(True, "aspect-ratio buckets: each picture trains at the bucket closest to its shape "
                         "(--no-buckets: centre-cropped squares)")
    learning_rate: float = _opt(_STD["learning_rate"], "peak learning rate")
    epochs: int = _opt(_STD["epochs"], "passes over pictures x repeats (ignored when --max-steps is set)")
    max_steps: int | None = _opt(None, "stop after this many optimizer steps")
    batch_size: int = _opt(_STD["batch_size"], "pictures per forward pass (of one bucket)")
    grad_accum: int = _opt(1, "forward passes per optimizer step")
    warmup_steps: int = _opt(0, "optimizer steps of linear warm-up")
    scheduler: str = _opt("constant", "learning-rate schedule after warm-up", SCHEDULES)
    weight_decay: float = _opt(1e-4, "AdamW weight decay")
    optimizer: str = _opt("adamw", "adamw, or adamw8bit (bitsandbytes, CUDA)", OPTIMIZERS)
    lora_rank: int = _opt(_STD["lora_rank"], "LoRA rank")
    lora_alpha: float = _opt(_STD["lora_alpha"], "LoRA alpha (scale alpha / rank)")
    lora_dropout: float = _opt(0.0, "dropout on the LoRA input")
    lora_targets: list[str] | None = _opt(None, "transformer modules LoRA adapts (default: the model's registry "
                                          "targets: attn.to_q/k/v, attn.to_out.0)")
    guidance: float | None = _opt(None, "guidance value fed to a guidance-distilled transformer (FLUX.1-dev) "
                                  "while training (default: 1.0)")
    timestep_sampling: str = _opt("uniform", "how noise levels are drawn for the flow-matching loss",
                                  TIMESTEP_SAMPLING)
    max_sequence_length: int | None = _opt(None, "T5 tokens per caption (default: the model's, 512 dev / 256 "
                                           "schnell)")
    seed: int = _opt(42, "random seed: order, noise, LoRA initialisation")
    precision: str = _opt("auto", "auto = bf16 on a GPU that supports it, else fp32", ("auto", "bf16", "fp16",
                                                                                        "fp32"))
    gradient_checkpointing: bool | None = _opt(None, "recompute activations in the backward pass (default: on "
                                               "when the GPU would not hold the run without it)")
    save_steps: int = _opt(200, "write checkpoint-N/ (LoRA, optimizer, samples) every this many steps")
    save_total_limit: int | None = _opt(2, "keep at most this many checkpoints")
    logging_steps: int = _opt(10, "log loss and speed every this many steps")
    resume: bool = _opt(False, "continue from the last checkpoint-*/ in --output")
    sample_prompt: list[str] = _opt([], "prompts drawn at every checkpoint and at the end (samples/), seed fixed; "
                                    "default: the trigger word alone")
    sample_steps: int | None = _opt(None, "denoising steps of the samples (default: the model's)")
    rules: str = _opt("default", "picture data rule set (strict: the hosted service's limits)", ("default", "strict"))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, folder: str | Path) -> Path:
        path = Path(folder, "config.yaml")
        path.write_text("# mmtune picture LoRA config, resolved (defaults < preset < "
                                               "--config < flags)\n" + yaml.safe_dump(self.to_dict(), sort_keys=False),
                                               encoding="utf-8")
        return path

    def validate(self) -> None:
        checks = [
            (bool(self.model), "model: name an image-generation model with --model"),
            (len(self.data) == 1, "data: give one picture folder or .jsonl with --data"),
            (self.repeats >= 1, f"repeats must be >= 1 (got {self.repeats})"),
            (self.resolution is None or self.resolution >= 16, f"resolution must be >= 16 (got {self.resolution})"),
            (self.learning_rate > 0, f"learning_rate must be > 0 (got {self.learning_rate}); try 1e-4"),
            (self.epochs >= 1, f"epochs must be >= 1 (got {self.epochs})"),
            (self.max_steps is None or self.max_steps >= 1, f"max_steps must be >= 1 (got {self.max_steps})"),
            (self.batch_size >= 1 and self.grad_accum >= 1, "batch_size and grad_accum must be >= 1"),
            (self.lora_rank >= 1 and self.lora_alpha > 0, "lora_rank must be >= 1 and lora_alpha > 0"),
            (0 <= self.lora_dropout < 1, f"lora_dropout must be in [0, 1) (got {self.lora_dropout})"),
            (self.save_steps >= 1 and self.logging_steps >= 1, "save_steps and logging_steps must be >= 1"),
            (self.save_total_limit is None or self.save_total_limit >= 1, "save_total_limit must be >= 1 or none"),
            (not (self.resume and self.overwrite), "resume and overwrite contradict each other: choose one"),
            (self.trigger_word is None or (self.trigger_word.strip() and " " not in self.trigger_word.strip()),
             f"trigger_word must be one word without spaces (got {self.trigger_word!r})"),
            (self.sample_steps is None or self.sample_steps >= 1, "sample_steps must be >= 1"),
            (self.class_preservation >= 0, f"class_preservation must be >= 0 (got {self.class_preservation})"),
            (not self.class_preservation or self.trigger_word, "class_preservation needs --trigger-word: it keeps the "
             "captions without the trigger word as the base draws them"),
        ]
        problems = [msg for ok, msg in checks if not ok]
        if problems:
            raise UserError("invalid picture training config:\n  " + "\n  ".join(problems))


PICTURE_ONLY = ("reg_data", "trigger_word", "class_preservation", "repeats", "resolution", "buckets", "optimizer", "guidance", "timestep_sampling",
                "max_sequence_length", "sample_prompt", "sample_steps", "rules")


def picture_fields() -> list[dataclasses.Field]:
    return list(fields(PictureConfig))


def add_picture_arguments(parser: argparse.ArgumentParser) -> None:
    """The picture-only flags of `mmtune train`, as their own help group (the shared ones are TrainConfig's)."""
    group = parser.add_argument_group("image-generation models (FLUX LoRA; `mmtune models`, third table)")
    kinds = {"repeats": int, "resolution": int, "max_sequence_length": int, "sample_steps": int, "guidance": float,
             "class_preservation": float}
    for f in picture_fields():
        if f.name not in PICTURE_ONLY:
            continue
        flag = "--" + f.name.replace("_", "-")
        kw: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS, "help": _help(f)}
        if f.name == "buckets":
            kw["action"] = argparse.BooleanOptionalAction
        elif f.name == "sample_prompt":
            kw.update(action="append", metavar="TEXT")
        elif f.metadata["choices"]:
            kw["choices"] = f.metadata["choices"]
        else:
            kw["type"] = kinds.get(f.name, str)
        group.add_argument(flag, **kw)


def _help(f: dataclasses.Field) -> str:
    default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
    text = f.metadata["help"].replace("%", "%%")
    return text if "default:" in text else f"{text} (default: {default})"


def picture_model(args: argparse.Namespace) -> str | None:
    """The --model of a `mmtune train` call (flag, else the --config YAML), when it is an image-generation model."""
    from mmtune.models.imagegen_registry import is_image_model

    model = getattr(args, "model", None)
    if model is None and getattr(args, "config", None):
        model = read_yaml(args.config).get("model")
    return str(model) if is_image_model(model) else None


GENERAL_ARGS = ("func", "command", "config", "print_config", "debug")  # not training settings: never "alien"


def picture_config_from_args(args: argparse.Namespace) -> PictureConfig:
    """defaults < preset < --config YAML < flags; a flag or key that means nothing for pictures is an error."""
    names = {f.name for f in picture_fields()}
    given = {k: v for k, v in vars(args).items() if not k.startswith("_") and k not in GENERAL_ARGS}
    from_file = read_yaml(args.config) if getattr(args, "config", None) else {}
    alien = sorted((set(given) | set(from_file)) - names)
    if alien:
        flags = ", ".join("--" + a.replace("_", "-") for a in alien)
        raise UserError(f"{flags}: not used when training an image-generation model (they are text-model settings): "
                        "remove them; `mmtune train --help` lists the picture flags in their own group")
    preset = given.get("preset") or from_file.get("preset") or "standard"
    if preset not in PICTURE_PRESETS:
        raise UserError(f"preset must be one of {', '.join(PICTURE_PRESETS)}, not {preset!r}")
    values = {**PICTURE_PRESETS[preset], **from_file, **given, "preset": preset}
    if isinstance(values.get("data"), str):
        values["data"] = [values["data"]]
    if isinstance(values.get("sample_prompt"), str):
        values["sample_prompt"] = [values["sample_prompt"]]
    for name in ("learning_rate", "lora_alpha", "lora_dropout", "weight_decay", "guidance", "class_preservation"):
        if isinstance(values.get(name), str):  # YAML reads 1e-4 as a string
            try:
                values[name] = float(values[name])
            except ValueError:
                raise UserError(f"{name} must be a number, not {values[name]!r}") from None
    for f in picture_fields():
        choices = f.metadata["choices"]
        if choices and f.name in values and values[f.name] not in choices:
            raise UserError(f"{f.name} must be one of {', '.join(map(str, choices))}, not {values[f.name]!r}")
    try:
        cfg = PictureConfig(**values)
    except TypeError as e:
        raise UserError(f"invalid picture training config: {e}") from None
    cfg.validate()
    return cfg


def run_train_command(args: argparse.Namespace) -> int:
    """`mmtune train` for an image-generation model."""
    cfg = picture_config_from_args(args)
    if getattr(args, "print_config", False):
        print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
        return 0
    from mmtune.imagegen.train import train_pictures

    train_pictures(cfg)
    return 0
