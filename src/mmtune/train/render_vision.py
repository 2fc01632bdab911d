"""Sample with images/videos -> processor inputs and labels, through the model's own processor.

The text is the processor's chat template applied to messages whose content lists hold
`{"type": "image"}` / `{"type": "video"}` parts where the data put them, so each model's
template writes its own media placeholder. Assistant turns are found on that text with
render.py's machinery (generation markers or prefix differences), as character spans.
The processor then expands each placeholder into the model's media tokens and tokenizes;
it reports where it replaced what (`return_text_replacement_offsets`) and each token's
characters (`return_offsets_mapping`), so the spans are shifted past the expansions and
mapped to tokens exactly, without re-tokenizing pieces. Media tokens are never labelled.

Processors that do not report replacement offsets (Mllama, whose image token is not
expanded; any that override `__call__` without them) take a second path: the template text
is tokenized once by the tokenizer alone, with offsets, and that token sequence is aligned
to the processor's (difflib, exact on token ids); tokens the processor kept carry their
template-text characters, tokens it inserted (media expansions) carry none.
"""

from __future__ import annotations

import difflib
from typing import Any

from mmtune.chat.conversation import Conversation, check_tool_turns, conversation, message_dict
from mmtune.data.schema import Sample
from mmtune.errors import UserError
from mmtune.models.registry import ModelSpec
from mmtune.train.media_io import load_image, load_video_with_metadata
from mmtune.train.render import (
    _GENERATION_TAG,
    IGNORE_INDEX,
    TRAIN_ON,
    _marker_turns,
    _prefix_turns,
    _render,
    _token_mask,
    _where,
)

# processor outputs that are not model inputs (or that the collator rebuilds)
_DROP = ("offset_mapping", "text_replacement_offsets", "attention_mask", "video_metadata")
# one value per token: padded by the collator (Gemma 3 names its media-token types token_type_ids)
TOKEN_KEYS = ("input_ids", "labels", "mm_token_type_ids", "token_type_ids")
# media tensors with a token axis (dim 1): cut by truncation, padded along it by the collator
TOKEN_AXIS_TENSORS = ("cross_attention_mask",)


class TemplateView:
    """A processor seen through the tokenizer interface render.py's span finders use.

    String contents (render.py's end-of-turn probe) become one text part, since vision
    templates iterate over content parts.
    """

    def __init__(self, processor):
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.chat_template = processor.chat_template

    def get_chat_template(self, chat_template=None, tools=None) -> str:
        return self.chat_template

    def apply_chat_template(self, messages, tools=None, tokenize=False, add_generation_prompt=False, **kw):
        messages = [_as_parts(m) for m in messages]
        return self.processor.apply_chat_template(messages, tools=tools, tokenize=False,
                                                  add_generation_prompt=add_generation_prompt, **kw)


def _as_parts(m: dict) -> dict:
    if isinstance(m.get("content"), str):
        return {**m, "content": [{"type": "text", "text": m["content"]}] if m["content"] else []}
    return m


_views: dict[int, TemplateView] = {}


def template_view(processor) -> TemplateView:
    """One view per processor, so render.py's per-tokenizer caches hit."""
    view = _views.get(id(processor))
    if view is None or view.processor is not processor:
        view = _views[id(processor)] = TemplateView(processor)
    return view


def vision_messages(sample: Sample) -> list[dict]:
    """Message dicts with content part lists, media parts in place (what vision templates take)."""
    out = []
    for m in sample.messages:
        if m.media and m.role == "assistant":
            raise UserError(f"{_where(sample)}an assistant turn holds an image or video; media can only be in "
                            "user (or system) turns: move it to the user turn before")
        d = message_dict(m, sample)
        d["content"] = [{"type": p.type} if p.type != "text" else {"type": "text", "text": p.text}
                        for p in m.parts if p.type != "text" or p.text]
        out.append(d)
    return out


def vision_conversation(sample: Sample, view: TemplateView, tool_format: str = "auto", reasoning: str = "keep"
                        ) -> Conversation:
    """`vision_messages` with tools written in the model's tool format and the reasoning as
    `reasoning` says (chat/conversation.py): what both training and inference render."""
    return conversation(sample, view, tool_format, messages=vision_messages(sample), reasoning=reasoning)


def check_media_limits(sample: Sample, spec: ModelSpec | None) -> None:
    """The registry's per-model limits, as errors that say what to change."""
    if spec is None:
        return
    n_img, n_vid = len(sample.images), len(sample.videos)
    if spec.kind != "vision" and (n_img or n_vid):
        raise UserError(f"{_where(sample)}{spec.name} is a text model and this row has media: train a vision "
                        "model (`mmtune models` marks them) or remove the media")
    if n_vid and not spec.supports_video:
        raise UserError(f"{_where(sample)}{spec.name} does not take video and this row has {n_vid}: remove the "
                        "video, or pick a model that takes video (e.g. qwen2-vl-2b-instruct)")
    if spec.max_images is not None and n_img > spec.max_images:
        raise UserError(f"{_where(sample)}{spec.name} takes at most {spec.max_images} image(s) per conversation "
                        f"and this row has {n_img}: split the row into several, or drop images")


def _spans(view: TemplateView, sample: Sample, conv: Conversation, train_on: str, full: str) -> list[tuple]:
    messages, tools = conv.messages, conv.tools
    if train_on == "all":
        if conv.tool_format:
            check_tool_turns(sample, conv, full, None)
        return [(0, len(full))]
    if _GENERATION_TAG.search(view.get_chat_template(None, tools)):
        turns = _marker_turns(view, sample, messages, tools, full)
    else:
        turns = _prefix_turns(view, sample, messages, tools, full, conv.index)
    if conv.tool_format:
        check_tool_turns(sample, conv, full, turns)
    if train_on == "last":
        last = max((t.index for t in turns if t.index is not None), default=None)
        turns = [t for t in turns if t.index == last]
    chosen = [(t.start, t.end) for t in turns if t.index is None or sample.messages[t.index].trainable]
    # a trailing space inside the turn (LLaVA's `answer + ' '`) would train the next header's first token
    return [(a, a + len(full[a:b].rstrip()) or b) for a, b in chosen]


def _shift(spans: list[tuple[int, int]], replacements: list[dict], sample: Sample) -> list[tuple[int, int]]:
    """Character spans of the template text moved to the expanded text the processor tokenized."""
    out = []
    for a, b in spans:
        gained = 0
        for r in replacements:
            (s, e), (ns, ne) = r["span"], r["new_span"]
            if e <= a:
                gained += (ne - ns) - (e - s)
            elif s < b:
                raise UserError(f"{_where(sample)}a media placeholder ({r['text']}) falls inside a trained turn; "
                                "put media in user turns only")
        out.append((a + gained, b + gained))
    return out


def media_inputs(sample: Sample, *, video_fps: float | None = None, video_frames: int | None = None):
    """(images, videos, video_metadata) decoded, in the order they appear in the conversation; the
    metadata (source fps, sampled frame indices) gives Qwen2.5-VL/Qwen3-VL their frame timing."""
    images = [load_image(p.ref, sample.media_root) for p in sample.images]
    loaded = [load_video_with_metadata(p.ref, sample.media_root, fps=video_fps, frames=video_frames)
              for p in sample.videos]
    return images, [v for v, _ in loaded], [m for _, m in loaded]


def _aligned_offsets(processor, full: str, ids: list[int], sample: Sample,
                     spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Each processor token's characters in `full` (the template text), for processors that do not
    report their replacements: tokens the processor inserted or changed get (-1, -1), which no span
    overlaps."""
    ref = processor.tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    ref_ids, ref_off = list(ref["input_ids"]), [tuple(o) for o in ref["offset_mapping"]]
    offsets: list[tuple[int, int]] = [(-1, -1)] * len(ids)
    matcher = difflib.SequenceMatcher(a=ref_ids, b=ids, autojunk=False)
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag == "equal":
            offsets[j1:j2] = ref_off[i1:i2]
            continue
        # the template characters the processor replaced (or the point it inserted at)
        start = ref_off[i1][0] if i1 < len(ref_off) else len(full)
        end = ref_off[i2 - 1][1] if i2 > i1 else start
        if any(a < end and start < b if end > start else a < start < b for a, b in spans):
            text = full[start:end] or processor.tokenizer.decode(ids[j1:j2])[:40]
            raise UserError(f"{_where(sample)}the processor changed the text inside a trained turn ({text!r}); "
                            "media placeholders belong in user turns only")
    return offsets


def _media_token_ids(processor) -> set[int]:
    """Token ids of media placeholders and their expansions (never labelled)."""
    ids = set()
    tok = getattr(processor, "tokenizer", None)
    for owner, attr in ((processor, "image_token_id"), (processor, "video_token_id"), (tok, "image_token_id"),
                        (tok, "video_token_id")):
        value = getattr(owner, attr, None)
        if isinstance(value, int):
            ids.add(value)
    return ids


def _size_kwargs(processor, max_pixels: int | None, min_pixels: int | None) -> dict:
    if max_pixels is None and min_pixels is None:
        return {}
    size = getattr(processor.image_processor, "size", None)
    keys = dict(size) if size is not None else {}
    if "longest_edge" not in keys or not hasattr(processor.image_processor, "merge_size"):
        raise UserError(f"--max-pixels/--min-pixels apply to models that resize by area (the Qwen2-VL family), "
                        f"not to {type(processor).__name__}: drop these settings")
    if max_pixels is not None:
        keys["longest_edge"] = int(max_pixels)
    if min_pixels is not None:
        keys["shortest_edge"] = int(min_pixels)
    return {"size": keys}


def render_vision_sample(
    sample: Sample,
    processor,
    *,
    train_on: str = "assistant",
    max_length: int | None = None,
    max_pixels: int | None = None,
    min_pixels: int | None = None,
    video_frames: int | None = None,
    video_fps: float | None = None,
    spec: ModelSpec | None = None,
    reasoning: str = "keep",
) -> dict[str, Any]:
    """One training row: input_ids and labels (lists), mm_token_type_ids where the processor makes
    them, the processor's media tensors (pixel_values, image_grid_thw, ...), and `truncated`
    (tokens cut by max_length). Text-only samples go through the same path (no media keys).
    """
    if train_on not in TRAIN_ON:
        raise UserError(f"train_on must be one of {', '.join(TRAIN_ON)}, not {train_on!r}")
    check_media_limits(sample, spec)
    view = template_view(processor)
    if not view.chat_template:
        raise UserError("the processor has no chat template: use the model's -Instruct checkpoint, or set "
                        "`chat_template` in the config")
    conv = vision_conversation(sample, view, spec.tool_format if spec else "auto", reasoning)
    full = _render(view, conv.messages, conv.tools, gen=False, sample=sample)
    spans = _spans(view, sample, conv, train_on, full)
    images, videos, metadata = media_inputs(sample, video_fps=video_fps, video_frames=video_frames)
    media_kw = {"video_metadata": metadata, "do_sample_frames": False} if videos else {}
    out = processor(text=[full], images=images or None, videos=videos or None, add_special_tokens=False, **media_kw,
                    return_offsets_mapping=True, return_text_replacement_offsets=True, return_tensors="pt",
                    **_size_kwargs(processor, max_pixels, min_pixels))
    ids = out["input_ids"][0].tolist()
    if "text_replacement_offsets" in out and "offset_mapping" in out:
        offsets = [tuple(o) for o in out["offset_mapping"][0].tolist()]
        replacements = out["text_replacement_offsets"][0] if (images or videos) else []
        mask = _token_mask(offsets, _shift(spans, replacements, sample))
    else:
        mask = _token_mask(_aligned_offsets(processor, full, ids, sample, spans), spans)
    if train_on == "all":
        mask[0] = False
    media_ids = _media_token_ids(processor)
    labels = [i if m and i not in media_ids else IGNORE_INDEX for i, m in zip(ids, mask, strict=True)]
    row: dict[str, Any] = {"input_ids": ids, "labels": labels}
    for key in TOKEN_KEYS[2:]:
        if key in out:
            row[key] = out[key][0].tolist()
    for key, value in out.items():
        if key not in _DROP and key not in row:
            row[key] = value
    return _truncate(row, max_length, media_ids, sample)


def _truncate(row: dict[str, Any], max_length: int | None, media_ids: set[int], sample: Sample) -> dict[str, Any]:
    n = len(row["input_ids"])
    row["truncated"] = 0
    if max_length is None or n <= max_length:
        return row
    last_media = max((j for j, t in enumerate(row["input_ids"]) if t in media_ids), default=-1)
    if last_media >= max_length:
        raise UserError(f"{_where(sample)}this row is {n} tokens and max_length {max_length} would cut through "
                        "its media tokens: raise --max-length, or lower --max-pixels / --video-frames")
    for key in TOKEN_KEYS:
        if key in row:
            row[key] = row[key][:max_length]
    for key in TOKEN_AXIS_TENSORS:
        if key in row:
            row[key] = row[key][:, :max_length]
    row["truncated"] = n - max_length
    return row
