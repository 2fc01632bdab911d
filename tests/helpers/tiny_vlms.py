"""Tiny random vision-language models, one per vision family, saved as ordinary HF folders.

`tiny_vlm_dir(family)` builds the family's real model class from a tiny config (2 text
layers, hidden 64, a 2-layer vision tower of width 32), with SmolLM2's BPE tokenizer plus
the family's media/control tokens, the family's real chat template (tests/fixtures/
vision_templates, copied from TRL's store of original templates, and llava-hf's for
LLaVA-1.5), and the family's PIL image processor sized so a 64x64 test image becomes a
handful of media tokens. Folders are built once per test session: treat them as read-only.

No torchvision here, so no video processor is saved; mmtune's loader supplies its own
(mmtune.models.vision) when torchvision is missing.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from functools import partial
from pathlib import Path

from .tokenizers import make_tokenizer

TEMPLATES = Path(__file__).resolve().parents[1] / "fixtures" / "vision_templates"
HIDDEN, LAYERS, HEADS, KV_HEADS, INTERMEDIATE = 64, 2, 4, 2, 128
VISION = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2}

_built: dict[str, Path] = {}


def _text_config(model_type: str, vocab: int, tok, **extra) -> dict:
    ids = {k: tok.convert_tokens_to_ids(getattr(tok, f"{k}_token")) if getattr(tok, f"{k}_token") else None
           for k in ("bos", "eos", "pad")}
    return {"model_type": model_type, "vocab_size": vocab, "hidden_size": HIDDEN, "intermediate_size": INTERMEDIATE,
            "num_hidden_layers": LAYERS, "num_attention_heads": HEADS, "num_key_value_heads": KV_HEADS,
            "max_position_embeddings": 2048, "tie_word_embeddings": True, "bos_token_id": ids["bos"],
            "eos_token_id": ids["eos"], "pad_token_id": ids["pad"], **extra}


def _tokenizer(base: str, work: Path, specials: list[str], template: str, **special_map):
    tok = make_tokenizer(base, work)
    tok.add_special_tokens({**special_map, "additional_special_tokens": specials})
    tok.chat_template = (TEMPLATES / template).read_text(encoding="utf-8")
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def _named_tokens(tok, work: Path, names: dict[str, str]):
    """The tokenizer reloaded with named special tokens (tok.image_token ...), as the real checkpoints
    declare them: a dict `extra_special_tokens` in tokenizer_config.json."""
    import json

    from transformers import AutoTokenizer

    folder = work / "named-tokenizer"
    tok.save_pretrained(folder)
    cfg_path = folder / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    cfg["extra_special_tokens"] = names
    cfg_path.write_text(json.dumps(cfg), encoding="utf-8")
    return AutoTokenizer.from_pretrained(folder)


def _vocab(tok) -> int:
    return -(-len(tok) // 64) * 64


def _qwen2_vl(work: Path):
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLProcessor
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    tok = _tokenizer("qwen2.5", work, ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"],
                     "qwen2_vl.jinja")
    ids = {t: tok.convert_tokens_to_ids(t) for t in ("<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
                                                      "<|video_pad|>")}
    text = _text_config("qwen2_vl_text", _vocab(tok), tok,
                        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]})
    vision = {"depth": 2, "embed_dim": 32, "hidden_size": HIDDEN, "num_heads": 2, "mlp_ratio": 2, "patch_size": 14,
              "spatial_merge_size": 2, "temporal_patch_size": 2}
    config = Qwen2VLConfig(text_config=text, vision_config=vision, image_token_id=ids["<|image_pad|>"],
                           video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
                           vision_end_token_id=ids["<|vision_end|>"], tie_word_embeddings=True)
    # 64x64 images -> 56x56 -> a 4x4 patch grid -> 4 media tokens after the 2x2 merge
    images = Qwen2VLImageProcessorPil(min_pixels=28 * 28 * 4, max_pixels=28 * 28 * 4)
    processor = _with_video(Qwen2VLProcessor, images, tok)
    return Qwen2VLForConditionalGeneration(config), processor


def _with_video(cls, images, tok, video_config: dict | None = None, **extra):
    """The processor with the official video processor, or mmtune's stand-in where torchvision is missing."""
    import transformers

    from mmtune.models.vision import _video_shim, _without_video_check, has_torchvision

    name = cls.__name__
    if has_torchvision():  # pragma: no cover - not installed on the CI machine
        official = {"LlavaOnevisionProcessor": "LlavaOnevisionVideoProcessor", "Qwen3VLProcessor": "Qwen3VLVideoProcessor",
                    "LlavaNextVideoProcessor": "LlavaNextVideoVideoProcessor",
                    "MiniCPMV4_6Processor": "MiniCPMV4_6VideoProcessor",
                    "MiniCPMV4_7Processor": "MiniCPMV4_6VideoProcessor"}.get(name, "Qwen2VLVideoProcessor")
        settings = video_config or {"size": dict(images.size), "patch_size": images.patch_size,
                                    "temporal_patch_size": images.temporal_patch_size, "merge_size": images.merge_size}
        video = getattr(transformers, official)(**settings)
    else:
        video = _video_shim(name, Path("/nonexistent"), images, video_config)
        cls = _without_video_check(cls)
    return cls(image_processor=images, tokenizer=tok, video_processor=video, chat_template=tok.chat_template, **extra)


def _llava(work: Path):
    from transformers import LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    tok = _tokenizer("llama3", work, ["<image>"], "llava.jinja")
    vision = {"model_type": "clip_vision_model", "image_size": 28, "patch_size": 14, "projection_dim": 32, **VISION}
    text = _text_config("llama", _vocab(tok), tok)
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_id=tok.convert_tokens_to_ids("<image>"),
                         tie_word_embeddings=True)
    images = CLIPImageProcessorPil(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28})
    processor = LlavaProcessor(image_processor=images, tokenizer=tok, patch_size=14,
                               vision_feature_select_strategy="default", num_additional_image_tokens=1, chat_template=tok.chat_template)
    return LlavaForConditionalGeneration(config), processor


def _idefics3(work: Path):
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration, Idefics3Processor
    from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil

    rows = [f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)]
    tok = _tokenizer("llama3", work, ["<fake_token_around_image>", "<image>", "<end_of_utterance>", "<global-img>",
                                      *rows], "idefics3.jinja")
    vision = {"image_size": 32, "patch_size": 8, **VISION}
    text = _text_config("llama", _vocab(tok), tok)
    config = Idefics3Config(vision_config=vision, text_config=text, scale_factor=2,
                            image_token_id=tok.convert_tokens_to_ids("<image>"), tie_word_embeddings=True)
    images = Idefics3ImageProcessorPil(size={"longest_edge": 64}, max_image_size={"longest_edge": 32})
    processor = Idefics3Processor(image_processor=images, tokenizer=tok, image_seq_len=4,
                                  chat_template=tok.chat_template)
    return Idefics3ForConditionalGeneration(config), processor


def _qwen2_5_vl(work: Path):
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    # Qwen2.5-VL's chat template is Qwen2-VL's
    tok = _tokenizer("qwen2.5", work, ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"],
                     "qwen2_vl.jinja")
    ids = {t: tok.convert_tokens_to_ids(t) for t in ("<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
                                                      "<|video_pad|>")}
    text = _text_config("qwen2_5_vl_text", _vocab(tok), tok,
                        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]})
    vision = {"depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "out_hidden_size": HIDDEN,
              "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2, "window_size": 56,
              "fullatt_block_indexes": [1]}
    config = Qwen2_5_VLConfig(text_config=text, vision_config=vision, image_token_id=ids["<|image_pad|>"],
                              video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
                              vision_end_token_id=ids["<|vision_end|>"], tie_word_embeddings=True)
    images = Qwen2VLImageProcessorPil(min_pixels=28 * 28 * 4, max_pixels=28 * 28 * 4)
    return Qwen2_5_VLForConditionalGeneration(config), _with_video(Qwen2_5_VLProcessor, images, tok)


def _llava_next(work: Path):
    from transformers import LlavaNextConfig, LlavaNextForConditionalGeneration, LlavaNextProcessor
    from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

    tok = _tokenizer("mistral", work, ["<image>"], "llava_next.jinja")
    vision = {"model_type": "clip_vision_model", "image_size": 28, "patch_size": 14, "projection_dim": 32, **VISION}
    text = _text_config("mistral", _vocab(tok), tok)
    # anyres: a 64x64 image is the 28x28 base view plus one 28x28 tile -> a handful of tokens
    config = LlavaNextConfig(vision_config=vision, text_config=text, image_grid_pinpoints=[[28, 28], [28, 56],
                                                                                           [56, 28]],
                             image_token_id=tok.convert_tokens_to_ids("<image>"), tie_word_embeddings=True)
    images = LlavaNextImageProcessorPil(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28},
                                        image_grid_pinpoints=[[28, 28], [28, 56], [56, 28]])
    processor = LlavaNextProcessor(image_processor=images, tokenizer=tok, patch_size=14,
                                   vision_feature_select_strategy="default", num_additional_image_tokens=1,
                                   chat_template=tok.chat_template)
    return LlavaNextForConditionalGeneration(config), processor


def _gemma3(work: Path):
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, Gemma3Processor
    from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil

    tok = _tokenizer("gemma3", work, ["<start_of_image>", "<end_of_image>", "<image_soft_token>"], "gemma3.jinja")
    tok = _named_tokens(tok, work, {"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>",
                                    "image_token": "<image_soft_token>"})
    ids = {t: tok.convert_tokens_to_ids(t) for t in ("<start_of_image>", "<end_of_image>", "<image_soft_token>")}
    text = _text_config("gemma3_text", _vocab(tok), tok, head_dim=16, sliding_window=64, query_pre_attn_scalar=16)
    vision = {"model_type": "siglip_vision_model", "image_size": 32, "patch_size": 8, **VISION}
    # 32x32 images -> 4x4 patches -> pooled to 2x2 = 4 soft tokens per image
    config = Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=4,
                          boi_token_index=ids["<start_of_image>"], eoi_token_index=ids["<end_of_image>"],
                          image_token_index=ids["<image_soft_token>"], tie_word_embeddings=True)
    images = Gemma3ImageProcessorPil(size={"height": 32, "width": 32})
    processor = Gemma3Processor(image_processor=images, tokenizer=tok, image_seq_length=4,
                                chat_template=tok.chat_template)
    return Gemma3ForConditionalGeneration(config), processor


def _mllama(work: Path):
    from transformers import MllamaConfig, MllamaForConditionalGeneration, MllamaProcessor
    from transformers.models.mllama.image_processing_pil_mllama import MllamaImageProcessorPil

    tok = _tokenizer("llama3", work, ["<|image|>"], "mllama.jinja", pad_token="<|finetune_right_pad_id|>")
    vision = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_global_layers": 1,
              "attention_heads": 2, "image_size": 28, "patch_size": 14, "max_num_tiles": 2,
              "intermediate_layers_indices": [0], "vision_output_dim": 64,
              "supported_aspect_ratios": [[1, 1], [1, 2], [2, 1]]}
    # self-attention layer 0, cross-attention layer 1
    text = _text_config("mllama_text_model", _vocab(tok), tok, cross_attention_layers=[1])
    config = MllamaConfig(vision_config=vision, text_config=text,
                          image_token_index=tok.convert_tokens_to_ids("<|image|>"), tie_word_embeddings=True)
    images = MllamaImageProcessorPil(size={"height": 28, "width": 28}, max_image_tiles=2)
    processor = MllamaProcessor(image_processor=images, tokenizer=tok, chat_template=tok.chat_template)
    return MllamaForConditionalGeneration(config), processor


def _qwen3_vl(work: Path):
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration, Qwen3VLProcessor
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    tok = _tokenizer("qwen3", work, ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"],
                     "qwen3_vl.jinja")
    ids = {t: tok.convert_tokens_to_ids(t) for t in ("<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
                                                      "<|video_pad|>")}
    text = _text_config("qwen3_vl_text", _vocab(tok), tok, head_dim=16,
                        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3],
                                         "mrope_interleaved": True})
    vision = {"depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "out_hidden_size": HIDDEN,
              "patch_size": 16, "spatial_merge_size": 2, "temporal_patch_size": 2, "num_position_embeddings": 16,
              "deepstack_visual_indexes": [0]}
    config = Qwen3VLConfig(text_config=text, vision_config=vision, image_token_id=ids["<|image_pad|>"],
                           video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
                           vision_end_token_id=ids["<|vision_end|>"], tie_word_embeddings=True)
    # 64x64 images -> a 4x4 grid of 16px patches -> 4 media tokens after the 2x2 merge
    images = Qwen2VLImageProcessorPil(patch_size=16, merge_size=2, min_pixels=32 * 32 * 4, max_pixels=32 * 32 * 4,
                                      image_mean=[0.5] * 3, image_std=[0.5] * 3)
    # a 4-frame 64x64 clip stays 64x64: 2 temporal patches x 4 tokens
    video = {"size": {"shortest_edge": 32 * 32 * 4, "longest_edge": 4 * 64 * 64}, "patch_size": 16,
             "temporal_patch_size": 2, "merge_size": 2, "image_mean": [0.5] * 3, "image_std": [0.5] * 3}
    return Qwen3VLForConditionalGeneration(config), _with_video(Qwen3VLProcessor, images, tok, video)


def _llava_onevision(work: Path):
    from transformers import (
        LlavaOnevisionConfig,
        LlavaOnevisionForConditionalGeneration,
        LlavaOnevisionProcessor,
    )
    from transformers.models.llava_onevision.image_processing_pil_llava_onevision import (
        LlavaOnevisionImageProcessorPil,
    )

    tok = _tokenizer("qwen2.5", work, ["<image>", "<video>"], "llava_onevision.jinja")
    vision = {"model_type": "siglip_vision_model", "image_size": 28, "patch_size": 14, **VISION}
    text = _text_config("qwen2", _vocab(tok), tok)
    pinpoints = [[28, 28], [28, 56], [56, 28], [56, 56]]
    config = LlavaOnevisionConfig(vision_config=vision, text_config=text, image_grid_pinpoints=pinpoints,
                                  image_token_id=tok.convert_tokens_to_ids("<image>"),
                                  video_token_id=tok.convert_tokens_to_ids("<video>"), tie_word_embeddings=True)
    images = LlavaOnevisionImageProcessorPil(size={"height": 28, "width": 28}, image_grid_pinpoints=pinpoints,
                                             image_mean=[0.5] * 3, image_std=[0.5] * 3)
    video = {"size": {"height": 28, "width": 28}, "do_center_crop": False, "image_mean": [0.5] * 3,
             "image_std": [0.5] * 3}
    # 28x28 frames -> 2x2 patches -> 4 image tokens; a video frame pools to 1 token (+1 newline per video)
    processor = _with_video(LlavaOnevisionProcessor, images, tok, video, num_image_tokens=4,
                            vision_feature_select_strategy="full")
    return LlavaOnevisionForConditionalGeneration(config), processor


def _llava_next_video(work: Path):
    from transformers import (
        LlavaNextVideoConfig,
        LlavaNextVideoForConditionalGeneration,
        LlavaNextVideoProcessor,
    )
    from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

    tok = _tokenizer("llama3", work, ["<image>", "<video>"], "llava_next_video.jinja")
    vision = {"model_type": "clip_vision_model", "image_size": 28, "patch_size": 14, "projection_dim": 32, **VISION}
    text = _text_config("llama", _vocab(tok), tok)
    pinpoints = [[28, 28], [28, 56], [56, 28]]
    config = LlavaNextVideoConfig(vision_config=vision, text_config=text, image_grid_pinpoints=pinpoints,
                                  image_token_id=tok.convert_tokens_to_ids("<image>"),
                                  video_token_id=tok.convert_tokens_to_ids("<video>"), tie_word_embeddings=True)
    images = LlavaNextImageProcessorPil(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28},
                                        image_grid_pinpoints=pinpoints)
    video = {"size": {"shortest_edge": 28}, "crop_size": {"height": 28, "width": 28}, "do_center_crop": True}
    processor = _with_video(LlavaNextVideoProcessor, images, tok, video, patch_size=14,
                            vision_feature_select_strategy="default", num_additional_image_tokens=1)
    return LlavaNextVideoForConditionalGeneration(config), processor


def _minicpmv4_6(work: Path, version: str = "4_6"):
    """MiniCPM-V 4.6 / 4.7 (SigLIP-style tower with a window-attention merger, Qwen3.5 hybrid decoder;
    4.7 adds canvas M-RoPE, which needs the marker token ids). The real checkpoints' chat template and
    image/video token names are not available offline: the template here is plain ChatML writing the
    tokenizer's image/video token once per media part, the placeholder the official processor expands;
    the <image>/<slice> markers are the ones transformers' MiniCPM-V 4.7 config documents."""
    import transformers
    from transformers.models.minicpmv4_6.image_processing_pil_minicpmv4_6 import MiniCPMV4_6ImageProcessorPil

    config_cls, model_cls, processor_cls = (getattr(transformers, f"MiniCPMV{version}{suffix}")
                                            for suffix in ("Config", "ForConditionalGeneration", "Processor"))

    names = {"image_token": "<|image_pad|>", "video_token": "<|video_pad|>", "image_start_token": "<image>",
             "image_end_token": "</image>", "slice_start_token": "<slice>", "slice_end_token": "</slice>",
             "image_id_start_token": "<image_id>", "image_id_end_token": "</image_id>"}
    tok = _named_tokens(_tokenizer("qwen3", work, list(names.values()), "minicpmv4_6.jinja"), work, names)
    # one Gated-DeltaNet (linear attention) layer, one full-attention layer, as Qwen3.5 interleaves them
    text = _text_config("qwen3_5_text", _vocab(tok), tok, head_dim=16, linear_key_head_dim=16,
                        linear_value_head_dim=16, linear_num_key_heads=2, linear_num_value_heads=4,
                        layer_types=["linear_attention", "full_attention"])
    vision = {"image_size": 56, "patch_size": 14, "insert_layer_id": 0, **VISION}
    markers = {}
    if version == "4_7":
        markers = {f"{k}_id": tok.convert_tokens_to_ids(names[f"{k}_token"])
                   for k in ("image_start", "image_end", "slice_start", "slice_end")}
        markers["newline_id"] = tok.encode("\n", add_special_tokens=False)[0]
    config = config_cls(text_config=text, vision_config=vision, insert_layer_id=0, image_size=56,
                        image_token_id=tok.image_token_id, video_token_id=tok.video_token_id,
                        tie_word_embeddings=True, **markers)
    # 64x64 images -> a 56x56 source view (+ slices): 16x downsampling leaves a token or so per view
    settings = {"scale_resolution": 56, "patch_size": 14, "max_slice_nums": 2}
    images = MiniCPMV4_6ImageProcessorPil(**settings)
    processor = _with_video(processor_cls, images, tok, {**settings, "max_slice_nums": 1})
    return model_cls(config), processor


BUILDERS: dict[str, Callable] = {"minicpmv4_6": _minicpmv4_6, "minicpmv4_7": partial(_minicpmv4_6, version="4_7"),
                                 "qwen3_vl": _qwen3_vl, "llava_onevision": _llava_onevision,
                                 "llava_next_video": _llava_next_video, "qwen2_vl": _qwen2_vl, "llava": _llava, "idefics3": _idefics3,
                                 "qwen2_5_vl": _qwen2_5_vl, "llava_next": _llava_next, "gemma3": _gemma3,
                                 "mllama": _mllama}
TINY_VLM_FAMILIES: tuple[str, ...] = tuple(BUILDERS)


def tiny_vlm_dir(family: str) -> Path:
    """Folder with a tiny random `family` VLM + processor (built once per session, read-only)."""
    if family not in BUILDERS:
        raise KeyError(f"no tiny VLM for family {family!r}; known: {', '.join(TINY_VLM_FAMILIES)}")
    if family in _built and (_built[family] / "config.json").exists():
        return _built[family]
    import torch

    work = Path(tempfile.mkdtemp(prefix="mmtune-tiny-vlm-"))
    out = work / f"tiny-{family}"
    torch.manual_seed(0)
    model, processor = BUILDERS[family](work)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    _built[family] = out
    return out
