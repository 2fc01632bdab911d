"""Build a LLaVA-style vision-language model from a text model and a fresh, small vision tower.

`compose_llava(text_model, out)` writes an ordinary Hugging Face folder holding a
`LlavaForConditionalGeneration` whose language model is the text model's weights and config,
with a freshly initialised CLIP vision tower and projector, and a `LlavaProcessor`: the text
model's tokenizer plus an `<image>` token, its chat template taught to write image parts, and
a PIL CLIP image processor. `AutoModelForImageTextToText`, `AutoProcessor` (and mmtune's
`load_processor`) load it like any LLaVA checkpoint, so `mmtune train` can then teach the
tower and projector to speak to the (frozen, LoRA'd or fully trained) language model.

The tower is small on purpose (a few layers, small images): it is for tasks whose images a
new tower can learn from your data alone, and for testing vision training end to end.

torch and transformers are imported inside the functions: importing this module is cheap.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from mmtune.errors import UserError

IMAGE_TOKEN = "<image>"
COMPOSE_FILE = "mmtune_compose.json"  # written into the folder: what it was built from

# Jinja that writes a message's content whether it is a string or a list of parts; image parts
# become the image token, which the processor expands into the tower's patch tokens.
_CONTENT_MACRO = (
    "{%- macro mm_content(content) -%}"
    "{%- if content is string -%}{{ content }}"
    "{%- else -%}{%- for part in content -%}"
    "{%- if part['type'] == 'image' -%}{{ '" + IMAGE_TOKEN + "' }}"
    "{%- elif part['type'] == 'text' -%}{{ part['text'] }}"
    "{%- endif -%}{%- endfor -%}{%- endif -%}"
    "{%- endmacro -%}"
)
_CONTENT_REF = re.compile(r"message\[(['\"])content\1\]|message\.content\b")


@dataclass(frozen=True)
class VisionTower:
    """The fresh CLIP vision tower: `image_size`^2 pixels cut into (image_size/patch_size)^2
    patches, each one image token in the text."""

    image_size: int = 32
    patch_size: int = 8
    hidden_size: int = 64
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    intermediate_size: int = 128

    def __post_init__(self):
        if self.image_size % self.patch_size:
            raise UserError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}: "
                            "pick sizes that divide")
        if self.hidden_size % self.num_attention_heads:
            raise UserError(f"vision hidden_size {self.hidden_size} is not a multiple of its "
                            f"{self.num_attention_heads} attention heads")

    @property
    def image_tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2


def multimodal_template(template: str) -> str:
    """The text model's chat template, made to write `{"type": "image"}` / text parts.

    Every `message['content']` becomes a macro call that writes string contents unchanged and
    part lists as their text with the image token where each image is, so text-only
    conversations render exactly as before.
    """
    if not _CONTENT_REF.search(template):
        raise UserError("the text model's chat template never writes message['content'], so image parts cannot "
                        "be placed: pass a chat template that does (compose_llava(chat_template=...))")
    return _CONTENT_MACRO + _CONTENT_REF.sub("mm_content(message['content'])", template)


def compose_llava(text_model: str | Path, out: str | Path, *, tower: VisionTower | None = None,
                  chat_template: str | None = None, seed: int = 0) -> Path:
    """Write a LLaVA folder to `out` (see the module doc) and return its path.

    `text_model` is anything `mmtune train --model` takes (registry name, hub id, folder, .gguf).
    """
    import torch
    from transformers import (
        GenerationConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    from mmtune.models.loader import load_model, load_tokenizer, resolve_model_path

    tower = tower or VisionTower()
    source = resolve_model_path(str(text_model))
    out = Path(out)
    tok = load_tokenizer(str(text_model))  # a pad token guaranteed (models/loader.ensure_pad_token)
    template = chat_template or tok.chat_template
    if not template:
        raise UserError(f"{text_model} has no chat template: use its -Instruct checkpoint, or pass chat_template")
    tok.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    tok.chat_template = multimodal_template(template)

    text = load_model(str(text_model), dtype=torch.float32)
    if text.config.model_type not in _TEXT_TYPES:
        raise UserError(f"{text_model} is a {text.config.model_type!r} model; compose_llava takes decoder-only "
                        f"text models of type {', '.join(sorted(_TEXT_TYPES))}")
    if len(tok) > text.config.vocab_size:  # grow for <image>; never cut a padded vocabulary
        text.resize_token_embeddings(len(tok), mean_resizing=True)
    text_config = text.config.to_dict()
    vision = {"model_type": "clip_vision_model", "image_size": tower.image_size, "patch_size": tower.patch_size,
              "hidden_size": tower.hidden_size, "num_hidden_layers": tower.num_hidden_layers,
              "num_attention_heads": tower.num_attention_heads, "intermediate_size": tower.intermediate_size,
              "projection_dim": tower.hidden_size}
    config = LlavaConfig(vision_config=vision, text_config=text_config,
                         image_token_id=tok.convert_tokens_to_ids(IMAGE_TOKEN),
                         vision_feature_select_strategy="default", vision_feature_layer=-1,
                         tie_word_embeddings=bool(text.config.tie_word_embeddings))
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config)
    missing, unexpected = model.model.language_model.load_state_dict(text.model.state_dict(), strict=False)
    if missing or unexpected:
        raise UserError(f"{text_model}'s weights do not fit a {text.config.model_type} language model "
                        f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    if not config.tie_word_embeddings:
        model.lm_head.load_state_dict(text.lm_head.state_dict())
    model.tie_weights()
    try:
        model.generation_config = GenerationConfig.from_pretrained(source)
    except OSError:
        pass

    # CLIP's normalisation; the tower sees image_size^2 pixels (shorter side resized, centre cropped)
    images = CLIPImageProcessorPil(size={"shortest_edge": tower.image_size},
                                   crop_size={"height": tower.image_size, "width": tower.image_size})
    processor = LlavaProcessor(image_processor=images, tokenizer=tok, patch_size=tower.patch_size,
                               vision_feature_select_strategy="default", num_additional_image_tokens=1,
                               chat_template=tok.chat_template, image_token=IMAGE_TOKEN)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    (out / COMPOSE_FILE).write_text(json.dumps({"text_model": str(text_model), "tower": asdict(tower),
                                                "seed": seed}, indent=2) + "\n", encoding="utf-8")
    return out


_TEXT_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "phi3", "granite", "olmo2"})
