"""Vision-language models in the Engine: detection, loading, prompts, and positions.

A model is a vision-language model when its registry entry's `kind` is "vision"; it loads through
models/loader.py (the one loading path) with its processor (mmtune.models.vision.load_processor,
which also works without torchvision).

A prompt is rendered exactly as training renders it (chat/render.py: the processor's chat
template over messages whose content lists hold the media parts in place), then the
processor expands each placeholder into the model's media tokens and makes the media
tensors, called as training calls it (`chat.render.process`: videos decoded here with their
metadata, so the frames and timestamps are training's). A batch goes through the processor
at once, left-padded.

The decode loop (infer/decode.py) hands media tensors to the prefill forward only; later
steps read the KV cache. Qwen2-VL and its successors use 3-D rotary positions (M-RoPE) for
media tokens: `Prefill.positions` computes them with the model's own `get_rope_index`
and passes them explicitly (text positions first, as `generate` does), then continues
each row from its own offset. Nothing is kept on the model between requests, so
concurrent generations cannot disturb each other (generate keeps `rope_deltas` on the
model).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mmtune.data.schema import Sample
from mmtune.errors import UserError
from mmtune.infer.media import LOCAL, NO_LIMITS, MediaPolicy, MediaSizes, load_media

PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json")
# prefill inputs that are not per-token tensors the decode loop pads/extends itself
_TOKEN_KEYS = ("input_ids", "attention_mask")
# per-token inputs that every decode step needs too, for its new token: the prompt's last row
# (Mllama's cross-attention mask: which images and tiles a text token may attend to)
_EVERY_STEP = ("cross_attention_mask",)


def adapter_processor(path: str):
    """The processor saved beside a vision adapter (a training run's output), if any."""
    folder = Path(path).expanduser()
    if not any((folder / name).is_file() for name in PROCESSOR_FILES):
        return None
    from mmtune.models.vision import load_processor

    return load_processor(str(folder))


def takes_video(processor) -> bool:
    return getattr(processor, "video_processor", None) is not None


def check_media_fits(sample: Sample, model_name: str, processor) -> None:
    """Media on a text model, or video on an images-only model: a UserError that says what to do."""
    n_img, n_vid = len(sample.images), len(sample.videos)
    if processor is None and (n_img or n_vid):
        raise UserError(
            f"{model_name} is a text model and this conversation has {n_img + n_vid} image/video part(s): "
            "use a vision-language model (`mmtune models` lists them), or send text only"
        )
    if processor is not None and n_vid and not takes_video(processor):
        raise UserError(
            f"{model_name} takes images but not video, and this conversation has {n_vid} video(s): send frames "
            "as images, or use a model that takes video (e.g. the Qwen2-VL family)"
        )


def encode(samples: list[Sample], processor, policy: MediaPolicy = LOCAL, sizes: MediaSizes = NO_LIMITS,
           tool_format: str = "auto") -> dict[str, Any]:
    """The processor's left-padded batch for `samples`: input_ids, attention_mask, media tensors
    (videos sampled as `sizes` says; the processor carries the pixel bounds)."""
    from mmtune.chat.render import process, prompt_text
    from mmtune.infer.media import check_refs

    for sample in samples:  # every refusal before any download or decoding
        check_refs(sample, policy)
    texts, images, videos, metadata = [], [], [], []
    for sample in samples:
        texts.append(prompt_text(sample, processor, tool_format=tool_format))
        imgs, vids, meta = load_media(sample, policy, video_fps=sizes.video_fps, video_frames=sizes.video_frames)
        images.append(imgs)  # per prompt: processors that batch by sample (Gemma 3, Mllama) need it
        videos += vids
        metadata += meta
    try:
        out = process(processor, texts, images if any(images) else [], videos, metadata, NO_LIMITS, padding=True,
                      padding_side="left")
    except (ValueError, TypeError) as e:
        raise UserError(f"the model's processor refused this prompt: {e}") from None
    return dict(out)


class Prefill:
    """What the decode loop needs beyond token ids: media tensors for the first forward, and
    the model's own positions where it has 3-D (M-RoPE) ones."""

    def __init__(self, model, batch: dict[str, Any]):
        self.inputs = {k: v for k, v in batch.items() if k not in _TOKEN_KEYS}
        self.positions: Callable | None = _mrope(model, batch)

    def model_inputs(self, model) -> dict[str, Any]:
        """The media tensors on the model's device, pixels in its dtype."""
        core = _core(model)
        device, dtype = next(core.parameters()).device, core.dtype
        out = {}
        for key, value in self.inputs.items():
            if hasattr(value, "to"):
                value = value.to(device, dtype) if value.is_floating_point() else value.to(device)
            out[key] = value
        return out

    @staticmethod
    def step_inputs(prefill_inputs: dict[str, Any]) -> dict[str, Any]:
        """What a decode step passes besides its token (as `generate` does): the last prompt row of
        the per-token inputs in _EVERY_STEP."""
        return {k: prefill_inputs[k][:, -1:] for k in _EVERY_STEP if prefill_inputs.get(k) is not None}


def _core(model):
    """The transformers model under a PEFT wrapper."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def _mrope(model, batch: dict[str, Any]) -> Callable | None:
    """positions(text_positions, first) for M-RoPE models when the batch holds media, else None."""
    inner = getattr(_core(model), "model", None)
    rope_index = getattr(inner, "get_rope_index", None)
    if rope_index is None or batch.get("mm_token_type_ids") is None:
        return None
    if not batch["mm_token_type_ids"].any():
        return None  # text only: 1-D positions, which the model spreads over its three axes
    import torch

    accepted = set(inspect.signature(rope_index).parameters)
    kwargs = {k: v for k, v in batch.items() if k in accepted and k not in ("input_ids", "attention_mask")}
    with torch.inference_mode():
        media_pos, deltas = rope_index(batch["input_ids"], attention_mask=batch["attention_mask"], **kwargs)

    def positions(text_pos, first: bool):
        if first:
            three = media_pos.to(text_pos.device)
        else:
            three = (text_pos + deltas.to(text_pos.device))[None].expand(3, -1, -1)
        return torch.cat([text_pos[None], three])  # row 0: text positions (the attention mask's)

    return positions
