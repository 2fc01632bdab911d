"""Vision-language models: ModelSpec entries (kind="vision"), kept apart from REGISTRY for now.

Why apart: the memory estimate (models/memory.py) counts a spec's parameters from its
language-model numbers and its tests hold every REGISTRY entry to `params_b`; a vision
entry's `params_b` includes its vision tower. Once memory.py accounts for the tower, these
entries move into REGISTRY's `_ENTRIES` unchanged.

Module prefixes are the parameter-name prefixes of transformers 5's official classes,
checked against tiny models built from each family's config (tests/train/test_vision.py).
"""

from __future__ import annotations

from mmtune.models.spec import LLAMA_LIKE_TARGETS, ModelSpec, _arch, build_registry

VISION_FAMILIES: tuple[str, ...] = ("qwen2_vl", "llava", "idefics3", "qwen2_5_vl", "llava_next", "gemma3",
                                    "mllama", "qwen3_vl", "llava_onevision", "llava_next_video", "minicpmv4_6")

_QWEN2_VL = {"family": "qwen2_vl", "model_type": "qwen2_vl", "kind": "vision", "media_placeholder": "<|image_pad|>",
             "vision_tower": "model.visual", "projector": "model.visual.merger",
             "language_model": "model.language_model", "supports_video": True, "lora_targets": LLAMA_LIKE_TARGETS}
_LLAVA = {"family": "llava", "model_type": "llava", "kind": "vision", "media_placeholder": "<image>",
          "vision_tower": "model.vision_tower", "projector": "model.multi_modal_projector",
          "language_model": "model.language_model", "lora_targets": LLAMA_LIKE_TARGETS}
_IDEFICS3 = {"family": "idefics3", "model_type": "idefics3", "kind": "vision", "media_placeholder": "<image>",
             "vision_tower": "model.vision_model", "projector": "model.connector",
             "language_model": "model.text_model", "media_layout": "per_row", "lora_targets": LLAMA_LIKE_TARGETS}
_QWEN2_5_VL = {**_QWEN2_VL, "family": "qwen2_5_vl", "model_type": "qwen2_5_vl"}
_LLAVA_NEXT = {**_LLAVA, "family": "llava_next", "model_type": "llava_next"}
# Qwen3-VL: the deepstack mergers (model.visual.deepstack_merger_list) count with the projector too
_QWEN3_VL = {**_QWEN2_VL, "family": "qwen3_vl", "model_type": "qwen3_vl"}
_LLAVA_ONEVISION = {**_LLAVA, "family": "llava_onevision", "model_type": "llava_onevision", "supports_video": True}
_LLAVA_NEXT_VIDEO = {**_LLAVA, "family": "llava_next_video", "model_type": "llava_next_video",
                     "supports_video": True}
# Gemma 3's template writes <start_of_image>; the processor expands it to <image_soft_token> x 256
_GEMMA3 = {"family": "gemma3", "model_type": "gemma3", "kind": "vision", "media_placeholder": "<start_of_image>",
           "vision_tower": "model.vision_tower", "projector": "model.multi_modal_projector",
           "language_model": "model.language_model", "lora_targets": LLAMA_LIKE_TARGETS}
# Llama 3.2 Vision: cross-attention to one image (up to 4 tiles) per conversation, as Meta trained it
_MLLAMA = {"family": "mllama", "model_type": "mllama", "kind": "vision", "media_placeholder": "<|image|>",
           "vision_tower": "model.vision_model", "projector": "model.multi_modal_projector",
           "language_model": "model.language_model", "max_images": 1, "media_layout": "per_row",
           "lora_targets": LLAMA_LIKE_TARGETS}
# MiniCPM-V 4.6: SigLIP2-400M (with a window-attention merger inside the tower) + model.merger + Qwen3.5's hybrid
# decoder, whose Gated-DeltaNet layers (in_proj_qkv/in_proj_z/out_proj) take LoRA next to the attention layers' q/k/v/o.
# OpenBMB's own LoRA recipe (finetune/finetune_lora.sh: --tune_vision true --use_lora true) trains the tower in full.
_MINICPMV4_6 = {"family": "minicpmv4_6", "model_type": "minicpmv4_6", "kind": "vision",
                "media_placeholder": "<|image_pad|>", "vision_tower": "model.vision_tower", "projector": "model.merger",
                "language_model": "model.language_model", "supports_video": True, "default_train_vision": "full",
                "media_layout": "packed", "lora_targets": (*LLAMA_LIKE_TARGETS, "in_proj_qkv", "in_proj_z", "out_proj")}

VISION_ENTRIES: tuple[ModelSpec, ...] = (
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
)


def _check(spec: ModelSpec) -> None:
    if spec.kind != "vision" or spec.family not in VISION_FAMILIES:
        raise ValueError(f"vision registry entry {spec.name!r}: kind must be 'vision' and family in VISION_FAMILIES")
    if not (spec.media_placeholder and spec.language_model and spec.vision_tower):
        raise ValueError(f"vision registry entry {spec.name!r}: needs media_placeholder, vision_tower, language_model")


VISION_REGISTRY: dict[str, ModelSpec] = build_registry(VISION_ENTRIES, check=_check)


def find_vision_spec(model: str, model_type: str | None = None) -> ModelSpec | None:
    """The entry for a registry name / hub id, else the family default for a config `model_type`."""
    key = model.strip()
    for spec in VISION_REGISTRY.values():
        if key in (spec.name, *spec.aliases) or key.lower() == spec.hf_path.lower():
            return spec
    return next((s for s in VISION_REGISTRY.values() if s.model_type == model_type), None) if model_type else None
