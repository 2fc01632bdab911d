"""How an assistant turn's reasoning (`Message.reasoning`) is written into a prompt.

A chat template either renders reasoning itself, from a message key (Qwen3 and DeepSeek-R1's
`reasoning_content`, LFM2.5's `thinking`, each as `<think>...</think>` before the answer), or
it has no place for it (SmolLM2's ChatML). Which one is found by rendering a probe
conversation through the template (`template_key`), never by the model's name. (transformers
5 fills `thinking` from `reasoning_content` itself, so the probe finds `reasoning_content` for
both there; `thinking` is tried for versions that do not.)

Modes (`TrainConfig.reasoning`, `--reasoning`):
- "keep" (the default): the reasoning is rendered and trained with the answer it belongs to.
  A template that renders it gets it under its own key; for one that does not, the fallback
  writes it into the assistant text before the answer as `<think>\\n...\\n</think>\\n\\n`
  (Qwen3's layout: the reasoning's leading and trailing newlines are not doubled). Templates
  that show reasoning only after the last user message (Qwen3, LFM2.5) drop it from earlier
  turns, as they do at inference: those turns train their answer only (chat/render.py counts
  them, the training says so).
- "drop": the reasoning is left out and the answers train alone (the training says so, in one
  line counting the rows).

docs/reasoning.md describes this for users. Imports nothing heavy.
"""

from __future__ import annotations

import json
from functools import lru_cache

from mmtune.errors import UserError

REASONING_MODES = ("keep", "drop")
TEMPLATE_KEYS = ("reasoning_content", "thinking")  # the message keys templates read reasoning from
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
_P_REASONING = "mmtune probe reasoning 7c1e"


def check_mode(mode: str) -> None:
    if mode not in REASONING_MODES:
        raise UserError(f"reasoning must be one of {', '.join(REASONING_MODES)}, not {mode!r}")


def think_text(reasoning: str, answer: str) -> str:
    """The fallback: the reasoning in a `<think>` block, then the answer."""
    return f"{THINK_OPEN}\n{reasoning.strip(chr(10))}\n{THINK_CLOSE}\n\n{answer.lstrip(chr(10))}"


def rendered_form(reasoning: str) -> str:
    """The part of `reasoning` every format writes verbatim (what is looked for in a render)."""
    return reasoning.strip("\n")


def template_key(tokenizer) -> str | None:
    """The message key `tokenizer`'s chat template renders reasoning from (a tokenizer or a
    processor: anything with `apply_chat_template` and `chat_template`), None if it renders none.
    Cached per template text."""
    template = getattr(tokenizer, "chat_template", None)
    key = json.dumps(template, sort_keys=True) if isinstance(template, dict) else str(template)
    return _key_cached(key, tokenizer)


@lru_cache(maxsize=64)
def _key_cached(template: str, tokenizer) -> str | None:
    for key in TEMPLATE_KEYS:
        probe = [
            {"role": "user", "content": "mmtune probe question"},
            {"role": "assistant", "content": "mmtune probe answer", key: _P_REASONING},
        ]
        try:
            text = tokenizer.apply_chat_template(probe, tokenize=False)
        except Exception:  # a template that refuses the probe renders none of it
            continue
        if _P_REASONING in text:
            return key
    return None


def with_reasoning(messages: list[dict], reasonings: list[str | None], mode: str, key: str | None) -> list[dict]:
    """`messages` (one dict per sample message, `content` a string or a list of parts) with each
    assistant turn's reasoning written in: under the template's `key`, or by the fallback into
    the content (before the text; a part list gets it in its first text part). "drop": unchanged."""
    check_mode(mode)
    if mode == "drop":
        return messages
    out = []
    for m, reasoning in zip(messages, reasonings, strict=True):
        if not reasoning or m["role"] != "assistant":
            out.append(m)
            continue
        new = dict(m)
        if key is not None:
            new[key] = reasoning
        elif isinstance(m["content"], str):
            new["content"] = think_text(reasoning, m["content"])
        else:
            parts = list(m["content"])
            first = next((j for j, p in enumerate(parts) if p.get("type") == "text"), None)
            if first is None:
                parts.insert(0, {"type": "text", "text": think_text(reasoning, "")})
            else:
                parts[first] = {**parts[first], "text": think_text(reasoning, parts[first].get("text", ""))}
            new["content"] = parts
        out.append(new)
    return out
