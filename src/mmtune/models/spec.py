"""The registry's building blocks: the `ModelSpec` dataclass, shared LoRA target names, `_arch`
and the generic `build_registry`.

A module of its own so that both registry.py (text entries, REGISTRY, find_spec) and
vision_registry.py (vision entries, which REGISTRY includes) import them without importing
each other: vision_registry.py must import from here, never from registry.py.
Imports nothing heavy.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Literal

Kind = Literal["text", "vision"]
TOOL_FORMATS = ("auto", "template", "hermes")  # ModelSpec.tool_format; mmtune.chat.tools writes them

# LoRA targets shared by every Llama-shaped decoder (Llama, Qwen, Mistral, Gemma, SmolLM2, MiniCPM).
LLAMA_LIKE_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# Phi-3 fuses q/k/v and gate/up into single projections.
PHI3_TARGETS = ("qkv_proj", "o_proj", "gate_up_proj", "down_proj")
# MiniCPM3 uses multi-head latent attention (low-rank q and kv projections).
MINICPM3_TARGETS = (
    "q_a_proj",
    "q_b_proj",
    "kv_a_proj_with_mqa",
    "kv_b_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
)


@dataclass(frozen=True)
class ModelSpec:
    """Everything mmtune needs to know about one model, as plain data.

    Architecture numbers are those of the model's config.json; they feed the memory
    estimate (models/memory.py), so they must be right, and a test checks them against
    the declared `params_b`.
    """

    name: str  # registry name, what users type: "qwen2.5-7b-instruct"
    family: str  # architecture family; tiny test models are built per family
    model_type: str  # config.json `model_type`
    hf_path: str  # default Hugging Face hub id
    params_b: float  # approximate total parameters, in billions
    hidden_size: int
    num_layers: int
    vocab_size: int
    intermediate_size: int
    num_heads: int
    num_kv_heads: int
    lora_targets: tuple[str, ...]
    description: str
    kind: Kind = "text"
    head_dim: int | None = None  # None: hidden_size // num_heads
    tie_embeddings: bool = False
    trust_remote_code: bool = False  # the hub checkpoint needs its own modeling code
    chat_template_source: str = "tokenizer"  # "tokenizer": the model's tokenizer_config / chat_template.jinja
    # How tool definitions, calls and results enter the prompt (mmtune.chat.tools, docs/tools.md):
    # "auto": the chat template's own where a probe render shows it renders all three, else the
    # Hermes-style fallback; "template": the template's own or an error; "hermes": the fallback always.
    tool_format: str = "auto"
    # Multi-head latent attention (MiniCPM3): q_lora_rank, kv_lora_rank, qk_nope_dim, qk_rope_dim, v_head_dim.
    mla: tuple[int, int, int, int, int] | None = None
    # A local file the model is built from instead of the hub: "package:resource" (a GGUF file).
    embedded: str | None = None
    # Vision-language models (kind == "vision"): how media enter the prompt and which
    # module-name prefixes hold each part (to freeze, or to target with LoRA).
    media_placeholder: str | None = None
    vision_tower: str | None = None
    projector: str | None = None
    language_model: str | None = None
    max_images: int | None = None  # None: no limit; 1: "one image per conversation"
    supports_video: bool = False
    # how a batch joins media tensors for the forward (train/collate.py): "concat" | "per_row" | "packed"
    media_layout: str = "concat"
    # Vision tower + projector parameters, in billions, where known from the checkpoint; None: the
    # memory estimate takes params_b minus what the language-model numbers count.
    vision_params_b: float | None = None
    # What trains by default (family practice; --train-vision / --train-projector override).
    default_train_vision: str = "none"  # none | lora | full
    default_train_projector: bool = True
    aliases: tuple[str, ...] = field(default=())

    @property
    def attn_head_dim(self) -> int:
        return self.head_dim or self.hidden_size // self.num_heads

    def to_dict(self) -> dict:
        """Plain JSON-able dict (for `mmtune models --json` and resolved configs)."""
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out


def _arch(
    *,
    hidden: int,
    layers: int,
    intermediate: int,
    heads: int,
    kv_heads: int,
    vocab: int,
    head_dim: int | None = None,
    tied: bool,
) -> dict:
    """Architecture numbers as config.json names them, mapped onto ModelSpec fields."""
    return {
        "hidden_size": hidden,
        "num_layers": layers,
        "intermediate_size": intermediate,
        "num_heads": heads,
        "num_kv_heads": kv_heads,
        "vocab_size": vocab,
        "head_dim": head_dim,
        "tie_embeddings": tied,
    }


def build_registry(entries: tuple[ModelSpec, ...], check: Callable[[ModelSpec], None]) -> dict[str, ModelSpec]:
    """Name -> spec; each entry passes `check`, and duplicate names (or an alias colliding with a
    name or another alias) raise."""
    registry: dict[str, ModelSpec] = {}
    for spec in entries:
        check(spec)
        if spec.name in registry:
            raise ValueError(f"duplicate model registry name {spec.name!r}")
        registry[spec.name] = spec
    taken = set(registry)
    for spec in entries:
        for alias in spec.aliases:
            if alias in taken:
                raise ValueError(f"model registry alias {alias!r} of {spec.name!r} is already taken")
            taken.add(alias)
    return registry
