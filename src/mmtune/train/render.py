"""Sample -> token ids and labels, through the model's own chat template.

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

import re
from dataclasses import dataclass
from functools import lru_cache

from mmtune.chat.conversation import (  # noqa: F401  (to_template_messages: re-exported for callers)
    Conversation,
    check_tool_definitions,
    check_tool_turns,
    conversation,
    to_template_messages,
)
from mmtune.chat.conversation import where as _where
from mmtune.chat.reasoning import rendered_form
from mmtune.data.schema import Sample
from mmtune.errors import UserError

IGNORE_INDEX = -100
TRAIN_ON = ("assistant", "last", "all")
_GENERATION_TAG = re.compile(r"\{%-?\s*generation\s*-?%\}")
_PROBE = "mmtune probe answer 7c1e"


@dataclass
class Rendered:
    """One training sample as token ids and labels (same length; -100 = not trained)."""

    input_ids: list[int]
    labels: list[int]
    truncated: int = 0  # tokens cut by max_length (0 if none)
    reasoning_tokens: int = 0  # trained tokens of reasoning text (inside `<think>`, tags excluded)
    reasoning_turns: int = 0  # trained assistant turns whose reasoning is trained with them
    reasoning_dropped: int = 0  # trained assistant turns whose reasoning is not (template or "drop")

    @property
    def n_supervised(self) -> int:
        return sum(1 for x in self.labels if x != IGNORE_INDEX)

    def __len__(self) -> int:
        return len(self.input_ids)


# ----------------------------------------------------------------------------- template access


def _text_tokenizer(tokenizer):
    """The text tokenizer inside a processor, or the tokenizer itself."""
    return getattr(tokenizer, "tokenizer", tokenizer)


def _require_template(tokenizer) -> str:
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):  # named templates: the default one is what training uses
        template = template.get("default") or next(iter(template.values()), None)
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
        where = _where(sample) if sample is not None else ""
        raise UserError(
            f"{where}the model's chat template rejected this conversation: {e}. Fix the data to fit "
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


def _end_of_turn(tokenizer) -> str | None:
    """The special token the template closes an assistant turn with, from a probe render.

    A middle turn is probed (user, assistant, user) so that what a template appends only
    after the last turn (Phi-3's final EOS) is not mistaken for the end-of-turn token.
    """
    return _end_of_turn_cached(_require_template(tokenizer), tuple(_special_tokens(tokenizer)), tokenizer)


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
        f"{_where(sample)}the chat template marks {len(spans)} generation block(s) for "
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
        f"{_where(sample)}cannot locate assistant turn {i} in the rendered conversation: the chat "
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
    eot = _end_of_turn(tokenizer)
    turns: list[_Turn] = []
    cursor = 0
    for i, m in enumerate(sample.messages):
        if m.role != "assistant":
            continue
        if i == 0:
            raise UserError(
                f"{_where(sample)}the conversation starts with an assistant turn; add the user "
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


def render_sample(
    sample: Sample,
    tokenizer,
    *,
    train_on: str = "assistant",
    max_length: int | None = None,
    tool_format: str = "auto",
    reasoning: str = "keep",
) -> Rendered:
    """Token ids and labels for one conversation (see the module docstring).

    train_on: "assistant" — every assistant turn except those with weight 0 (content, tool
    calls and end-of-turn token); "last" — only the last assistant turn (none if its weight
    is 0); "all" — every token except the first (which no token predicts).
    max_length: cut longer renderings on the right; `Rendered.truncated` says how many tokens.
    tool_format: how tools are written (mmtune.chat.tools: "auto", "template", "hermes").
    reasoning: "keep" — each assistant turn's reasoning is rendered and trained with it, where
    the template shows it (see the module docstring); "drop" — left out.
    """
    if train_on not in TRAIN_ON:
        raise UserError(f"train_on must be one of {', '.join(TRAIN_ON)}, not {train_on!r}")
    _require_template(tokenizer)
    conv = conversation(sample, tokenizer, tool_format, reasoning=reasoning)
    if train_on == "all":  # no turn boundaries needed: every template works
        full = _render(tokenizer, conv.messages, conv.tools, gen=False, sample=sample)
        if conv.tool_format:
            check_tool_turns(sample, conv, full, None)
        ids, offsets = _encode(tokenizer, full)
        mask = [j > 0 for j in range(len(ids))]
        thought, dropped = _reasoning_spans(sample, conv, full, None)
    else:
        full, turns = assistant_turn_spans(sample, tokenizer, tool_format, conv=conv)
        ids, offsets = _encode(tokenizer, full)
        if train_on == "last":
            if any(t.index is None for t in turns):
                raise UserError(
                    f"{_where(sample)}train_on='last' needs one {{% generation %}} block per assistant "
                    "turn, and this chat template marks them differently; use train_on='assistant'"
                )
            last = max((t.index for t in turns), default=None)
            turns = [t for t in turns if t.index == last]
        trained = [t for t in turns if t.index is None or sample.messages[t.index].trainable]
        mask = _token_mask(offsets, [(t.start, t.end) for t in trained])
        thought, dropped = _reasoning_spans(sample, conv, full, trained)
    labels = [i if m else IGNORE_INDEX for i, m in zip(ids, mask)]
    truncated = 0
    if max_length is not None and len(ids) > max_length:
        truncated = len(ids) - max_length
        ids, labels = ids[:max_length], labels[:max_length]
    in_thought = _token_mask(offsets, thought) if thought else []
    n_thought = sum(1 for x, t in zip(labels, in_thought) if t and x != IGNORE_INDEX)
    return Rendered(ids, labels, truncated, n_thought, len(thought), dropped)


def render_prompt(
    sample: Sample, tokenizer, *, add_generation_prompt: bool = True, tool_format: str = "auto",
    reasoning: str = "keep",
) -> list[int]:
    """Token ids for inference: the same template, tool format, reasoning and tokenization as training."""
    _require_template(tokenizer)
    conv = conversation(sample, tokenizer, tool_format, reasoning=reasoning)
    text = _render(tokenizer, conv.messages, conv.tools, gen=add_generation_prompt, sample=sample)
    if conv.tool_format:
        check_tool_definitions(sample, conv, text)
    return _encode(tokenizer, text)[0]


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
