"""Sample -> Row (token ids, labels, media inputs), through the model's own chat template: the one
renderer training (train/) and inference (infer/) share.

`ChatTemplate(tokenizer or processor)` is the interface: `render(sample, train_on, max_length)`
gives a training `Row`, `prompt(sample)` an inference one, `end_of_turn()` the token that closes
an assistant turn, `parse(text)` the assistant Message back from generated text. The functions
below it (`render_sample`, `prompt_text`, `render_prompt`, `process`) are the same path for
callers that hold no ChatTemplate. Text is the zero-media case: a tokenizer's rows take the fast
offset path described here; a processor's rows (vision-language models, text-only rows
included) go through the processor (the "media" section below), and a row without media simply
has no media keys.

Why this shape: the tuned model must see at training time exactly the tokens it sees at
inference, so the text always comes from `tokenizer.apply_chat_template` (never a format
written here), and the whole conversation is tokenized once. Which tokens are trained on is
decided on the rendered *text* (character spans) and mapped to tokens through the fast
tokenizer's offsets; pieces are never tokenized apart and glued together, since tokens merge
across boundaries (e.g. `assistant\\n` + `  Hi` gives the token `\\n `).

Where a turn is in the text:
- Templates with `{% generation %}` markers say it themselves: the marked spans are used as
  they are (the same spans `return_assistant_tokens_mask=True` gives).
- Otherwise, prefix differences: turn i starts where `render(messages[:i],
  add_generation_prompt=True)` ends (so the generation header is not trained) and ends with
  the template's end-of-turn token (`<|im_end|>`, `<|eot_id|>`, `<end_of_turn>`, `</s>`...),
  found by rendering a probe conversation. What the template adds after that token (a
  newline, a final EOS) is not trained. Templates that re-render earlier turns once later
  turns exist (Qwen3 drops `<think>` from earlier answers, Mistral moves the system prompt
  into the last user turn, Phi-3 ends the text with EOS) are detected, because a prefix render
  is then not a prefix of the full text, and the turn is located in the full text instead;
  where that cannot be done safely a UserError names the problem.

Tools: a row with tool definitions, calls or results is written in the model's tool format
(mmtune.chat.tools, docs/tools.md): the template's own where it renders all three, else the
Hermes-style fallback written into the messages before the template runs. Either way each
trained call's name and arguments must be inside its turn's trained span and each tool
definition in the prompt, or a UserError names the row: a call is never trained as an empty
turn. Rows without tools render exactly as before (no probe, no change).

Reasoning (an assistant turn's `reasoning`, mmtune.chat.reasoning, docs/reasoning.md): with
`reasoning="keep"` it is given to a template that renders it under its own key (Qwen3's
`reasoning_content`, LFM2.5's `thinking`), else written into the answer's text as a
`<think>...</think>` block; either way it is part of the assistant turn, so trained with it.
Templates that show reasoning only after the last user message drop it from earlier turns, as
at inference: those turns train their answer alone, and `Rendered` counts them. With "drop"
the answers train alone. Rows without reasoning render exactly as before.

Labels follow the Hugging Face convention: `labels[j] = input_ids[j]` where trained and -100
elsewhere, unshifted (the model shifts them). A sample left without any trained token (no
trainable assistant turn, or all of it cut by `max_length`) is returned as it is, all -100:
counting and reporting such samples is the caller's job.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from mmtune.chat.conversation import (
    Conversation,
    check_tool_definitions,
    check_tool_turns,
    conversation,
    message_dict,
    where,
)
from mmtune.chat.reasoning import THINK_CLOSE, THINK_OPEN, rendered_form
from mmtune.chat.tools import parse as parse_tools
from mmtune.config import TRAIN_ON, media_size_problems
from mmtune.data.schema import Message, Part, Sample
from mmtune.errors import UserError

IGNORE_INDEX = -100  # labels never trained (the Hugging Face convention): the one definition
_GENERATION_TAG = re.compile(r"\{%-?\s*generation\s*-?%\}")
_PROBE = "mmtune probe answer 7c1e"


@dataclass
class Row:
    """One rendered conversation: token ids and labels (same length; -100 = not trained), what was
    cut, the reasoning counts, and, for a processor's row, `media`: the other per-token inputs
    (mm_token_type_ids, ...) and the media tensors (pixel_values, image_grid_thw, ...). A row
    without media has none: text is the zero-media case."""

    input_ids: list[int]
    labels: list[int]
    truncated: int = 0  # tokens cut by max_length (0 if none)
    reasoning_tokens: int = 0  # trained tokens of reasoning text (inside `<think>`, tags excluded)
    reasoning_turns: int = 0  # trained assistant turns whose reasoning is trained with them
    reasoning_dropped: int = 0  # trained assistant turns whose reasoning is not (template or "drop")
    media: dict[str, Any] = field(default_factory=dict)

    @property
    def n_supervised(self) -> int:
        return sum(1 for x in self.labels if x != IGNORE_INDEX)

    def features(self) -> dict[str, Any]:
        """What the collator takes: input_ids, labels and the media inputs."""
        return {"input_ids": self.input_ids, "labels": self.labels, **self.media}

    def __len__(self) -> int:
        return len(self.input_ids)


@dataclass(frozen=True)
class MediaSizes:
    """How large a prompt's media get before the model sees them (the same settings as training's).

    max_pixels/min_pixels bound the resized image (and video frame) area on processors that resize
    by area (the Qwen2-VL family): a 12-megapixel photo is otherwise thousands of media tokens.
    video_fps/video_frames choose which frames of a video are decoded and shown (default 2 a second).
    """

    max_pixels: int | None = None
    min_pixels: int | None = None
    video_fps: float | None = None
    video_frames: int | None = None

    def __post_init__(self):
        problems = media_size_problems(self.max_pixels, self.min_pixels, self.video_fps, self.video_frames)
        if problems:
            raise UserError("; ".join(p.replace("max_pixels", "--max-pixels").replace("min_pixels", "--min-pixels")
                                      .replace("video_fps", "--video-fps").replace("video_frames", "--video-frames")
                                      for p in problems))

    @property
    def is_set(self) -> bool:
        return any(v is not None for v in (self.max_pixels, self.min_pixels, self.video_fps, self.video_frames))

    def apply(self, processor, *, strict: bool = True):
        """Set the pixel bounds on `processor` (returned). A processor that resizes to a fixed size
        is a UserError when `strict` (the user named one model), else left as it is (a server's
        other models)."""
        if self.max_pixels is None and self.min_pixels is None:
            return processor
        from mmtune.models.vision import resizes_by_area, set_pixel_bounds

        if strict or resizes_by_area(processor):
            set_pixel_bounds(processor, max_pixels=self.max_pixels, min_pixels=self.min_pixels)
        return processor


NO_LIMITS = MediaSizes()


# ----------------------------------------------------------------------------- template access


def _text_tokenizer(tokenizer):
    """The text tokenizer inside a processor, or the tokenizer itself."""
    return getattr(tokenizer, "tokenizer", tokenizer)


def _template_of(tokenizer) -> str | None:
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):  # named templates: the default one is what training uses
        template = template.get("default") or next(iter(template.values()), None)
    return template or None


def _require_template(tokenizer) -> str:
    template = _template_of(tokenizer)
    if not template:
        raise UserError(
            "the tokenizer has no chat template, so mmtune cannot render conversations the way the "
            "model expects: pass a model whose tokenizer has one (an -Instruct/-Chat checkpoint), "
            "or set `chat_template` in the config (a Jinja file or a template string)"
        )
    return template


def _render(tokenizer, messages: list[dict], tools, *, gen: bool, sample: Sample | None = None) -> str:
    import jinja2

    try:
        return tokenizer.apply_chat_template(messages, tools=tools, tokenize=False, add_generation_prompt=gen)
    except jinja2.TemplateError as e:
        at = where(sample) if sample is not None else ""
        raise UserError(
            f"{at}the model's chat template rejected this conversation: {e}. Fix the data to fit "
            "the template (e.g. some templates allow no system message or need strict user/assistant "
            "alternation), or set `chat_template` in the config to one that accepts it"
        ) from None


def _special_tokens(tokenizer) -> list[str]:
    tok = _text_tokenizer(tokenizer)
    specials = {t.content for t in getattr(tok, "added_tokens_decoder", {}).values() if t.special}
    specials.update(t for t in getattr(tok, "all_special_tokens", []) if t)
    return sorted(specials, key=len, reverse=True)


def _first_special(text: str, specials: list[str]) -> str | None:
    best: tuple[int, int, str] | None = None
    for s in specials:
        pos = text.find(s)
        if pos >= 0 and (best is None or (pos, -len(s)) < (best[0], best[1])):
            best = (pos, -len(s), s)
    return best[2] if best else None


def end_of_turn(tokenizer) -> str | None:
    """The special token the template closes an assistant turn with, from a probe render (None:
    no template, or one that shows none).

    A middle turn is probed (user, assistant, user) so that what a template appends only
    after the last turn (Phi-3's final EOS) is not mistaken for the end-of-turn token.
    """
    template = _template_of(tokenizer)
    return _end_of_turn_cached(template, tuple(_special_tokens(tokenizer)), tokenizer) if template else None


@lru_cache(maxsize=64)
def _end_of_turn_cached(template: str, specials: tuple[str, ...], tokenizer) -> str | None:
    probe = [
        {"role": "user", "content": "mmtune probe question"},
        {"role": "assistant", "content": _PROBE},
        {"role": "user", "content": "mmtune probe question 2"},
    ]
    try:
        text = tokenizer.apply_chat_template(probe, tokenize=False)
    except Exception:  # a template that refuses the probe: fall back to prefix ends only
        return None
    pos = text.find(_PROBE)
    if pos < 0:
        return None
    after = text[pos + len(_PROBE) :]
    nxt = after.find("mmtune probe question 2")
    return _first_special(after[: nxt if nxt >= 0 else len(after)], list(specials))


# ----------------------------------------------------------------------------- spans


@dataclass
class _Turn:
    index: int | None  # position in sample.messages (None: a marker block not tied to one turn)
    start: int  # character span in the full text
    end: int


def _generation_spans(tokenizer, messages, tools) -> list[tuple[int, int]]:
    """Character spans of `{% generation %}` blocks: what return_assistant_tokens_mask uses."""
    from transformers.utils.chat_template_utils import render_jinja_template

    tok = _text_tokenizer(tokenizer)
    _, indices = render_jinja_template(
        conversations=[messages],
        tools=tools,
        chat_template=tokenizer.get_chat_template(None, tools),
        return_assistant_tokens_mask=True,
        add_generation_prompt=False,
        **tok.special_tokens_map,
    )
    return [tuple(s) for s in indices[0] if s[1] > s[0]]


def _marker_turns(tokenizer, sample, messages, tools, full: str) -> list[_Turn]:
    spans = _generation_spans(tokenizer, messages, tools)
    assistants = [i for i, m in enumerate(sample.messages) if m.role == "assistant"]
    if len(spans) == len(assistants):
        return [_Turn(i, s, e) for i, (s, e) in zip(assistants, spans)]
    if all(sample.messages[i].trainable for i in assistants):
        return [_Turn(None, s, e) for s, e in spans]
    raise UserError(
        f"{where(sample)}the chat template marks {len(spans)} generation block(s) for "
        f"{len(assistants)} assistant turn(s), so per-turn weights cannot be applied; remove the "
        "`weight` fields, or set `chat_template` in the config to a template without "
        "{% generation %} markers"
    )


def _anchor_start(prefix: str, full: str, cursor: int) -> int | None:
    """Where `prefix` (a render of the turns before this one) ends inside `full`, at or after `cursor`.

    Used when the template rendered earlier turns differently without the later ones: the
    longest tail of `prefix` found in `full` marks the end of the generation header.
    Binary search works because a tail that is found has all its shorter tails found too.
    """
    lo, hi = 0, len(prefix)  # lo: a tail length known to be found
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if full.find(prefix[len(prefix) - mid :], cursor) >= 0:
            lo = mid
        else:
            hi = mid - 1
    if lo == 0:
        return None
    return full.find(prefix[len(prefix) - lo :], cursor) + lo


def _template_turn_error(sample: Sample, i: int, why: str) -> UserError:
    return UserError(
        f"{where(sample)}cannot locate assistant turn {i} in the rendered conversation: the chat "
        f"template {why}. Set `chat_template` in the config to a template whose turns render the "
        "same whatever follows them, or one with {% generation %} markers"
    )


def _check_content_inside(sample: Sample, i: int, span_text: str) -> None:
    """A located turn must hold the end of its own answer (guards the fallback search).

    Only the text after a reasoning block counts: templates drop `<think>...</think>` from
    earlier turns (Qwen3, DeepSeek-R1, LFM2.5).
    """
    tail = sample.messages[i].text.split("</think>")[-1].strip()[-16:]
    if tail and tail not in span_text:
        raise _template_turn_error(sample, i, "renders this turn's text differently in context")


def _trim_after_special(text: str, start: int, end: int, specials: list[str]) -> int:
    """Drop whitespace the template puts after an end-of-turn token."""
    stripped = text[start:end].rstrip()
    if len(stripped) < end - start and any(stripped.endswith(s) for s in specials):
        return start + len(stripped)
    return end


def _prefix_turns(tokenizer, sample, messages, tools, full: str, index: list[int] | None = None) -> list[_Turn]:
    """Assistant-turn spans by prefix differences (see the module docstring). `index` maps a
    sample message to its template message where they differ (Conversation.index)."""
    index = index or list(range(len(messages)))
    specials = _special_tokens(tokenizer)
    eot = end_of_turn(tokenizer)
    turns: list[_Turn] = []
    cursor = 0
    for i, m in enumerate(sample.messages):
        if m.role != "assistant":
            continue
        if i == 0:
            raise UserError(
                f"{where(sample)}the conversation starts with an assistant turn; add the user "
                "turn it answers before it"
            )
        before = _render(tokenizer, messages[: index[i]], tools, gen=True, sample=sample)
        if full.startswith(before) and len(before) >= cursor:
            start, exact = len(before), True
        else:
            found = _anchor_start(before, full, cursor)
            if found is None:
                raise _template_turn_error(
                    sample, i, "renders earlier turns differently once later turns exist"
                )
            start, exact = found, False
        upto = _render(tokenizer, messages[: index[i] + 1], tools, gen=False, sample=sample)
        exact = exact and full.startswith(upto) and len(upto) > start
        end = len(upto) if exact else None
        pos = full.find(eot, start, end if exact else len(full)) if eot else -1
        if pos >= 0:
            end = pos + len(eot)
        elif exact:
            end = _trim_after_special(full, start, len(upto), specials)
        else:
            raise _template_turn_error(sample, i, "re-renders this turn once later turns exist")
        if not exact:
            _check_content_inside(sample, i, full[start:end])
        turns.append(_Turn(i, start, end))
        cursor = end
    return turns


def assistant_turn_spans(sample: Sample, tokenizer, tool_format: str = "auto", reasoning: str = "keep",
                         conv: Conversation | None = None) -> tuple[str, list[_Turn]]:
    """The full rendered text and, per assistant turn, its trained character span."""
    _require_template(tokenizer)
    conv = conv or conversation(sample, tokenizer, tool_format, reasoning=reasoning)
    messages, tools = conv.messages, conv.tools
    full = _render(tokenizer, messages, tools, gen=False, sample=sample)
    if _GENERATION_TAG.search(tokenizer.get_chat_template(None, tools)):
        turns = _marker_turns(tokenizer, sample, messages, tools, full)
    else:
        turns = _prefix_turns(tokenizer, sample, messages, tools, full, conv.index)
    if conv.tool_format:
        check_tool_turns(sample, conv, full, turns)
    return full, turns


# ----------------------------------------------------------------------------- tokens


def _encode(tokenizer, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    """Token ids exactly as apply_chat_template(tokenize=True) makes them, with char offsets."""
    tok = _text_tokenizer(tokenizer)
    if not getattr(tok, "is_fast", False):
        raise UserError(
            "mmtune needs a fast (Rust `tokenizers`) tokenizer to map the chat template's text to "
            "tokens; load the model's tokenizer with use_fast=True, or convert it with "
            "`tokenizers` (a tokenizer.json next to the model)"
        )
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    return list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]


def _token_mask(offsets: list[tuple[int, int]], spans: list[tuple[int, int]]) -> list[bool]:
    """True for each token that overlaps a span (a token straddling a span edge is trained,
    as return_assistant_tokens_mask does)."""
    import numpy as np

    if not offsets:
        return []
    off = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
    starts, ends = off[:, 0], np.maximum(off[:, 1], off[:, 0] + 1)
    mask = np.zeros(len(off), dtype=bool)
    for a, b in spans:
        mask |= (starts < b) & (ends > a)
    return mask.tolist()


def _reasoning_spans(sample: Sample, conv: Conversation, full: str, turns: list[_Turn] | None
                     ) -> tuple[list[tuple[int, int]], int]:
    """Character spans of the reasoning text inside the trained `turns` (None: everything is
    trained), and how many of those turns carry reasoning that is not in their span."""
    if conv.reasoning is None:
        return [], 0
    if turns is None:
        selected = [(i, 0, len(full)) for i, m in enumerate(sample.messages) if m.role == "assistant"]
    else:
        selected = [(t.index, t.start, t.end) for t in turns if t.index is not None]
        if any(t.index is None for t in turns):  # marker blocks tied to no one turn: look in all of them
            tied = {t.index for t in turns}
            selected += [(i, min(t.start for t in turns), max(t.end for t in turns))
                         for i, m in enumerate(sample.messages) if m.role == "assistant" and i not in tied]
    spans, dropped, cursor = [], 0, 0
    for i, start, end in sorted(selected, key=lambda x: x[1]):
        text = sample.messages[i].reasoning
        if not text:
            continue
        body = rendered_form(text)
        pos = full.find(body, max(start, cursor), end) if conv.reasoning != "drop" and body else -1
        if pos < 0:
            dropped += 1
            continue
        spans.append((pos, pos + len(body)))
        cursor = pos + len(body)
    return spans, dropped


def _trained_turns(sample: Sample, src, conv: Conversation, train_on: str, full: str) -> list[_Turn] | None:
    """The assistant turns whose tokens train (None: train_on="all", every token), their tool
    calls checked to be inside them."""
    if train_on == "all":  # no turn boundaries needed: every template works
        if conv.tool_format:
            check_tool_turns(sample, conv, full, None)
        return None
    if _GENERATION_TAG.search(src.get_chat_template(None, conv.tools)):
        turns = _marker_turns(src, sample, conv.messages, conv.tools, full)
    else:
        turns = _prefix_turns(src, sample, conv.messages, conv.tools, full, conv.index)
    if conv.tool_format:
        check_tool_turns(sample, conv, full, turns)
    if train_on == "last":
        if any(t.index is None for t in turns):
            raise UserError(
                f"{where(sample)}train_on='last' needs one {{% generation %}} block per assistant "
                "turn, and this chat template marks them differently; use train_on='assistant'"
            )
        last = max((t.index for t in turns), default=None)
        turns = [t for t in turns if t.index == last]
    return [t for t in turns if t.index is None or sample.messages[t.index].trainable]


def render_sample(
    sample: Sample,
    tokenizer,
    *,
    train_on: str = "assistant",
    max_length: int | None = None,
    tool_format: str = "auto",
    reasoning: str = "keep",
    sizes: MediaSizes | None = None,
    spec=None,
) -> Row:
    """Token ids and labels for one conversation (see the module docstring), through a tokenizer
    or, for a vision-language model, its processor (media decoded and expanded, see
    `_render_media`; a text-only row goes the same way and simply has no media).

    train_on: "assistant" — every assistant turn except those with weight 0 (content, tool
    calls and end-of-turn token); "last" — only the last assistant turn (none if its weight
    is 0); "all" — every token except the first (which no token predicts).
    max_length: cut longer renderings on the right; `Row.truncated` says how many tokens.
    tool_format: how tools are written (mmtune.chat.tools: "auto", "template", "hermes").
    reasoning: "keep" — each assistant turn's reasoning is rendered and trained with it, where
    the template shows it (see the module docstring); "drop" — left out.
    sizes: which video frames are decoded and the pixel bounds passed to the processor.
    spec: the model's registry entry, whose media limits are checked (models/registry.py).
    """
    if train_on not in TRAIN_ON:
        raise UserError(f"train_on must be one of {', '.join(TRAIN_ON)}, not {train_on!r}")
    check_media_limits(sample, spec)
    if is_processor(tokenizer):
        return _render_media(sample, tokenizer, train_on, max_length, tool_format, reasoning, sizes or NO_LIMITS)
    _require_template(tokenizer)
    conv = conversation(sample, tokenizer, tool_format, reasoning=reasoning)
    full = _render(tokenizer, conv.messages, conv.tools, gen=False, sample=sample)
    trained = _trained_turns(sample, tokenizer, conv, train_on, full)
    ids, offsets = _encode(tokenizer, full)
    if trained is None:
        mask = [j > 0 for j in range(len(ids))]
    else:
        mask = _token_mask(offsets, [(t.start, t.end) for t in trained])
    thought, dropped = _reasoning_spans(sample, conv, full, trained)
    labels = [i if m else IGNORE_INDEX for i, m in zip(ids, mask)]
    row = _truncate(Row(ids, labels), max_length, set(), sample)
    in_thought = _token_mask(offsets, thought) if thought else []
    row.reasoning_tokens = sum(1 for x, t in zip(row.labels, in_thought) if t and x != IGNORE_INDEX)
    row.reasoning_turns, row.reasoning_dropped = len(thought), dropped
    return row


def prompt_text(sample: Sample, tokenizer, *, add_generation_prompt: bool = True, tool_format: str = "auto",
                reasoning: str = "keep") -> str:
    """The prompt as the template writes it for inference (a processor's: with its media
    placeholders), tools and reasoning written as training writes them."""
    src, messages = (template_view(tokenizer), vision_messages(sample)) if is_processor(tokenizer) else (tokenizer, None)
    _require_template(src)
    conv = conversation(sample, src, tool_format, messages=messages, reasoning=reasoning)
    text = _render(src, conv.messages, conv.tools, gen=add_generation_prompt, sample=sample)
    if conv.tool_format:
        check_tool_definitions(sample, conv, text)
    return text


def render_prompt(
    sample: Sample, tokenizer, *, add_generation_prompt: bool = True, tool_format: str = "auto",
    reasoning: str = "keep",
) -> list[int]:
    """Token ids for inference: the same template, tool format, reasoning and tokenization as training."""
    text = prompt_text(sample, tokenizer, add_generation_prompt=add_generation_prompt, tool_format=tool_format,
                       reasoning=reasoning)
    return _encode(tokenizer, text)[0]


def _truncate(row: Row, max_length: int | None, media_ids: set[int], sample: Sample) -> Row:
    """Cut the row (its per-token inputs and token-axis tensors too) to max_length on the right;
    a cut through media tokens is an error that says what to change."""
    n = len(row.input_ids)
    if max_length is None or n <= max_length:
        return row
    last_media = max((j for j, t in enumerate(row.input_ids) if t in media_ids), default=-1) if media_ids else -1
    if last_media >= max_length:
        raise UserError(f"{where(sample)}this row is {n} tokens and max_length {max_length} would cut through "
                        "its media tokens: raise --max-length, or lower --max-pixels / --video-frames")
    row.input_ids, row.labels = row.input_ids[:max_length], row.labels[:max_length]
    for key in TOKEN_KEYS[2:]:
        if key in row.media:
            row.media[key] = row.media[key][:max_length]
    for key in TOKEN_AXIS_TENSORS:
        if key in row.media:
            row.media[key] = row.media[key][:, :max_length]
    row.truncated = n - max_length
    return row


# ----------------------------------------------------------------------------- media (processors)
#
# A sample with images/videos renders through the model's processor. The text is the
# processor's chat template applied to messages whose content lists hold `{"type": "image"}` /
# `{"type": "video"}` parts where the data put them, so each model's template writes its own
# media placeholder; assistant turns are found on that text with the machinery above (generation
# markers or prefix differences), as character spans. The processor then expands each
# placeholder into the model's media tokens and tokenizes; it reports where it replaced what
# (`return_text_replacement_offsets`) and each token's characters (`return_offsets_mapping`), so
# the spans are shifted past the expansions and mapped to tokens exactly, without re-tokenizing
# pieces. Media tokens are never labelled.
#
# Processors that do not report replacement offsets (Mllama, whose image token is not expanded;
# any that override `__call__` without them) take a second path: the template text is tokenized
# once by the tokenizer alone, with offsets, and that token sequence is aligned to the
# processor's (difflib, exact on token ids); tokens the processor kept carry their template-text
# characters, tokens it inserted (media expansions) carry none.

# processor outputs that are not model inputs (or that the collator rebuilds)
_DROP = ("offset_mapping", "text_replacement_offsets", "attention_mask", "video_metadata")
# one value per token: padded by the collator (Gemma 3 names its media-token types token_type_ids)
TOKEN_KEYS = ("input_ids", "labels", "mm_token_type_ids", "token_type_ids")
# media tensors with a token axis (dim 1): cut by truncation, padded along it by the collator
TOKEN_AXIS_TENSORS = ("cross_attention_mask",)


def is_processor(owner) -> bool:
    """A processor (tokenizer + image/video processors), not a tokenizer."""
    return getattr(owner, "tokenizer", None) is not None and hasattr(owner, "image_processor")


class TemplateView:
    """A processor seen through the tokenizer interface the span finders use.

    String contents (the end-of-turn probe) become one text part, since vision templates
    iterate over content parts.
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
    """One view per processor, so the per-tokenizer caches hit."""
    view = _views.get(id(processor))
    if view is None or view.processor is not processor:
        view = _views[id(processor)] = TemplateView(processor)
    return view


def vision_messages(sample: Sample) -> list[dict]:
    """Message dicts with content part lists, media parts in place (what vision templates take)."""
    out = []
    for m in sample.messages:
        if m.media and m.role == "assistant":
            raise UserError(f"{where(sample)}an assistant turn holds an image or video; media can only be in "
                            "user (or system) turns: move it to the user turn before")
        d = message_dict(m, sample)
        d["content"] = [{"type": p.type} if p.type != "text" else {"type": "text", "text": p.text}
                        for p in m.parts if p.type != "text" or p.text]
        out.append(d)
    return out


def check_media_limits(sample: Sample, spec) -> None:
    """The registry's per-model limits (models/registry.py), as errors that say what to change."""
    if spec is None:
        return
    n_img, n_vid = len(sample.images), len(sample.videos)
    if spec.kind != "vision" and (n_img or n_vid):
        raise UserError(f"{where(sample)}{spec.name} is a text model and this row has media: train a vision "
                        "model (`mmtune models` marks them) or remove the media")
    if n_vid and not spec.supports_video:
        raise UserError(f"{where(sample)}{spec.name} does not take video and this row has {n_vid}: remove the "
                        "video, or pick a model that takes video (e.g. qwen2-vl-2b-instruct)")
    if spec.max_images is not None and n_img > spec.max_images:
        raise UserError(f"{where(sample)}{spec.name} takes at most {spec.max_images} image(s) per conversation "
                        f"and this row has {n_img}: split the row into several, or drop images")


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
                raise UserError(f"{where(sample)}a media placeholder ({r['text']}) falls inside a trained turn; "
                                "put media in user turns only")
        out.append((a + gained, b + gained))
    return out


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
            raise UserError(f"{where(sample)}the processor changed the text inside a trained turn ({text!r}); "
                            "media placeholders belong in user turns only")
    return offsets


def media_token_ids(processor) -> set[int]:
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


def process(processor, texts: list[str], images: list, videos: list, metadata: list[dict], sizes: MediaSizes,
            **kw):
    """The processor call training and inference share: videos come decoded with their metadata
    (data/media_io.py), so the processor samples no frames of its own and gives the same frames and
    timestamps at both; the pixel bounds of `sizes` are passed where set."""
    media_kw = {"video_metadata": metadata, "do_sample_frames": False} if videos else {}
    return processor(text=texts, images=images or None, videos=videos or None, add_special_tokens=False,
                     return_tensors="pt", **media_kw, **_size_kwargs(processor, sizes.max_pixels, sizes.min_pixels),
                     **kw)


def _render_media(sample: Sample, processor, train_on: str, max_length: int | None, tool_format: str,
                  reasoning: str, sizes: MediaSizes) -> Row:
    """render_sample through a processor (see the section comment above)."""
    from mmtune.data.media_io import media_inputs

    view = template_view(processor)
    if not view.chat_template:
        raise UserError("the processor has no chat template: use the model's -Instruct checkpoint, or set "
                        "`chat_template` in the config")
    conv = conversation(sample, view, tool_format, messages=vision_messages(sample), reasoning=reasoning)
    full = _render(view, conv.messages, conv.tools, gen=False, sample=sample)
    trained = _trained_turns(sample, view, conv, train_on, full)
    # a trailing space inside the turn (LLaVA's `answer + ' '`) would train the next header's first token
    spans = [(t.start, t.start + len(full[t.start:t.end].rstrip()) or t.end) for t in trained or []]
    images, videos, metadata = media_inputs(sample, video_fps=sizes.video_fps, video_frames=sizes.video_frames)
    out = process(processor, [full], images, videos, metadata, sizes, return_offsets_mapping=True,
                  return_text_replacement_offsets=True)
    ids = out["input_ids"][0].tolist()
    if trained is None:  # every token but the first; media tokens are unlabelled below
        mask = [j > 0 for j in range(len(ids))]
    elif "text_replacement_offsets" in out and "offset_mapping" in out:
        offsets = [tuple(o) for o in out["offset_mapping"][0].tolist()]
        replacements = out["text_replacement_offsets"][0] if (images or videos) else []
        mask = _token_mask(offsets, _shift(spans, replacements, sample))
    else:
        mask = _token_mask(_aligned_offsets(processor, full, ids, sample, spans), spans)
    media_ids = media_token_ids(processor)
    labels = [i if m and i not in media_ids else IGNORE_INDEX for i, m in zip(ids, mask, strict=True)]
    media: dict[str, Any] = {key: out[key][0].tolist() for key in TOKEN_KEYS[2:] if key in out}
    for key, value in out.items():
        if key not in _DROP and key not in media and key not in TOKEN_KEYS[:2]:
            media[key] = value
    return _truncate(Row(ids, labels, media=media), max_length, media_ids, sample)


def assistant_mask_reference(messages: list[dict], tokenizer, tools: list[dict] | None = None) -> list[int]:
    """Hugging Face's own assistant mask (1 = assistant token) for a template with
    `{% generation %}` markers: the reference the tests hold render_sample to."""
    template = tokenizer.get_chat_template(None, tools)
    if not _GENERATION_TAG.search(template):
        raise ValueError("assistant_mask_reference needs a chat template with {% generation %} markers")
    out = tokenizer.apply_chat_template(
        messages, tools=tools, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    return list(out["assistant_masks"])


def end_of_turn_id(owner) -> int | None:
    """end_of_turn's token id, for a tokenizer or a processor (None: no template, or none found)."""
    source = template_view(owner) if is_processor(owner) else owner
    token = end_of_turn(source)
    return _text_tokenizer(owner).convert_tokens_to_ids(token) if token else None


def parse(text: str) -> Message:
    """The inverse of rendering one assistant turn: generated text -> an assistant Message, its
    leading `<think>...</think>` block as `reasoning` (chat/reasoning.py) and Hermes-style
    `<tool_call>` blocks as tool calls (chat/tools.py)."""
    reasoning = None
    head = text.lstrip()
    if head.startswith(THINK_OPEN) and THINK_CLOSE in head:
        inner, _, text = head[len(THINK_OPEN):].partition(THINK_CLOSE)
        reasoning, text = inner.strip("\n") or None, text.lstrip("\n")
    reply = parse_tools(text)
    return Message("assistant", [Part.of_text(reply.content)] if reply.content else [], tool_calls=reply.tool_calls,
                   reasoning=reasoning)


class ChatTemplate:
    """One model's chat template over its tokenizer, or its processor (vision-language models):
    the one renderer training and inference share. `render` makes a training Row, `prompt` an
    inference Row (a processor's: with its media tensors), `parse` turns generated text back into
    a Message."""

    def __init__(self, owner, *, tool_format: str = "auto", reasoning: str = "keep", sizes: MediaSizes | None = None,
                 spec=None):
        self.owner, self.tool_format, self.reasoning = owner, tool_format, reasoning
        self.sizes, self.spec = sizes or NO_LIMITS, spec
        self.tokenizer = _text_tokenizer(owner)

    @property
    def has_media(self) -> bool:
        return is_processor(self.owner)

    def render(self, sample: Sample, train_on: str = "assistant", max_length: int | None = None) -> Row:
        return render_sample(sample, self.owner, train_on=train_on, max_length=max_length,
                             tool_format=self.tool_format, reasoning=self.reasoning, sizes=self.sizes, spec=self.spec)

    def prompt_text(self, sample: Sample) -> str:
        return prompt_text(sample, self.owner, tool_format=self.tool_format, reasoning=self.reasoning)

    def prompt(self, sample: Sample) -> Row:
        """The prompt's token ids (labels all -100) and, through a processor, its media inputs, decoded
        from the sample's own files (the Engine decodes under its media policy: infer/vision.py)."""
        if not self.has_media:
            ids = render_prompt(sample, self.owner, tool_format=self.tool_format, reasoning=self.reasoning)
            return Row(ids, [IGNORE_INDEX] * len(ids))
        from mmtune.data.media_io import media_inputs

        images, videos, metadata = media_inputs(sample, video_fps=self.sizes.video_fps,
                                                video_frames=self.sizes.video_frames)
        out = process(self.owner, [self.prompt_text(sample)], images, videos, metadata, self.sizes)
        ids = out["input_ids"][0].tolist()
        media = {k: v for k, v in out.items() if k not in _DROP and k not in TOKEN_KEYS[:2]}
        return Row(ids, [IGNORE_INDEX] * len(ids), media=media)

    def end_of_turn(self) -> str | None:
        return end_of_turn(template_view(self.owner) if self.has_media else self.owner)

    def end_of_turn_id(self) -> int | None:
        return end_of_turn_id(self.owner)

    parse = staticmethod(parse)
