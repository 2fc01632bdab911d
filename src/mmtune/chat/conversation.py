"""A Sample as the message dicts a chat template takes, in the model's tool format.

Training and inference (chat/render.py, the one renderer both use) build what goes into
`apply_chat_template` here, so a prompt at inference is the prompt training rendered: the
OpenAI-style dicts (`to_template_messages`), the tool format written in (`conversation`,
formats in chat/tools.py), the reasoning written in (chat/reasoning.py), and the checks that
no call, argument or definition is lost on the way (`check_tool_turns`,
`check_tool_definitions`). Imports nothing heavy.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from mmtune.chat import reasoning as reasoningfmt
from mmtune.chat import tools as toolfmt
from mmtune.data.schema import Message, Sample
from mmtune.errors import UserError


def where(sample: Sample) -> str:
    src = sample.source
    return f"{src}: " if src.file else ""


def tool_call_dict(call, sample: Sample) -> dict:
    """OpenAI tool-call shape with `arguments` parsed to a dict: what the templates index into."""
    try:
        args = json.loads(call.arguments) if call.arguments.strip() else {}
    except json.JSONDecodeError as e:
        raise UserError(
            f"{where(sample)}tool call {call.name!r} has arguments that are not valid JSON ({e}); "
            'write them as a JSON object string, e.g. \'{"city": "Paris"}\''
        ) from None
    if not isinstance(args, dict):
        raise UserError(
            f"{where(sample)}tool call {call.name!r} has arguments {call.arguments!r}, not a JSON object; "
            'write them as a JSON object string, e.g. \'{"city": "Paris"}\''
        )
    out: dict[str, Any] = {"type": "function", "function": {"name": call.name, "arguments": args}}
    if call.id:
        out["id"] = call.id
    return out


def message_dict(m: Message, sample: Sample) -> dict:
    d: dict[str, Any] = {"role": m.role, "content": m.text}
    if m.role == "assistant" and m.tool_calls:
        d["tool_calls"] = [tool_call_dict(c, sample) for c in m.tool_calls]
    if m.role == "tool":
        if m.tool_call_id:
            d["tool_call_id"] = m.tool_call_id
        if m.name:
            d["name"] = m.name
    return d


def to_template_messages(sample: Sample) -> tuple[list[dict], list[dict] | None]:
    """The sample as OpenAI-style message dicts for `apply_chat_template`, and its tools.

    Keys are only set when they have a value (some templates test `'tool_calls' in message`);
    `content` is always a string. Media parts are refused: rendering is text-only for now.
    """
    media = sample.media()
    if media:
        kinds = sorted({p.type for p in media})
        raise UserError(
            f"{where(sample)}this sample has {len(media)} {'/'.join(kinds)} part(s), but rendering "
            "here is text-only: the model is treated as a text model. Train a vision-language "
            "model for media, or remove the media from the data."
        )
    messages = [message_dict(m, sample) for m in sample.messages]
    return messages, (sample.tools or None)


@dataclass
class Conversation:
    """What goes into `apply_chat_template` for one sample, in the model's tool format."""

    messages: list[dict]
    tools: list[dict] | None
    index: list[int]  # sample.messages[i] is (or was merged into) messages[index[i]]
    tool_format: str | None  # "template" | "hermes"; None: the row has nothing of tools
    # "template" (under the template's own key) | "fallback" (a <think> block in the text) | "drop";
    # None: the row has no reasoning
    reasoning: str | None = None


def has_reasoning(sample: Sample) -> bool:
    return any(m.reasoning for m in sample.messages if m.role == "assistant")


def reasoning_format(tokenizer, mode: str = "keep") -> str:
    """How a row's reasoning is written for this template under `mode` (chat/reasoning.py)."""
    reasoningfmt.check_mode(mode)
    if mode == "drop":
        return "drop"
    return "template" if reasoningfmt.template_key(tokenizer) else "fallback"


def uses_tools(sample: Sample) -> bool:
    return bool(sample.tools) or any(m.tool_calls or m.role == "tool" for m in sample.messages)


def conversation(sample: Sample, tokenizer, tool_format: str = "auto", messages: list[dict] | None = None,
                 reasoning: str = "keep") -> Conversation:
    """The sample's template messages, with tools written in the format `tool_format` resolves to
    for this template ("auto": the template's own if it renders tools, else the fallback), and
    the assistant turns' reasoning as `reasoning` ("keep" | "drop") says (chat/reasoning.py).
    `messages`: the sample's message dicts where the caller builds them (vision templates take
    content as part lists); default `to_template_messages(sample)`. A row without reasoning
    (or tools) gets no probe and no change."""
    if messages is None:
        messages, tools = to_template_messages(sample)
    else:
        tools = sample.tools or None
    conv = Conversation(messages, tools, list(range(len(messages))), None)
    if uses_tools(sample):
        conv.tool_format = toolfmt.resolve_format(tokenizer, tool_format)
        if conv.tool_format == "hermes":
            conv.messages, conv.index = toolfmt.hermes_messages(messages, tools, toolfmt.template_support(tokenizer))
            conv.tools = None
    if has_reasoning(sample):  # after the tools: the fallback's <think> block goes before the answer and its calls
        conv.reasoning = reasoning_format(tokenizer, reasoning)
        key = reasoningfmt.template_key(tokenizer) if conv.reasoning == "template" else None
        held: list[str | None] = [None] * len(conv.messages)
        for i, m in enumerate(sample.messages):
            if m.role == "assistant":  # never merged with another message
                held[conv.index[i]] = m.reasoning
        conv.messages = reasoningfmt.with_reasoning(conv.messages, held, reasoning, key)
    return conv


# ----------------------------------------------------------------------------- tool checks


def check_tool_turns(sample: Sample, conv: Conversation, full: str, turns: list | None) -> None:
    """Each trainable call is inside its turn's trained span; each definition outside every span.

    turns: the assistant turns located in `full` (objects with `index`, `start`, `end`: the turn's
    position in sample.messages, or None where a marker block is tied to no one turn, and its
    character span); None: everything is trained (train_on="all"), so the calls need only be in
    the text.
    """
    spans = [(t.start, t.end) for t in turns] if turns is not None else []
    by_index = {t.index: full[t.start : t.end] for t in turns or [] if t.index is not None}
    anywhere = "".join(full[a:b] for a, b in spans) if turns is not None else full
    for i, m in enumerate(sample.messages):
        if m.role != "assistant" or not m.tool_calls or not m.trainable:
            continue
        text = by_index.get(i, anywhere)
        said = m.text.split("</think>")[-1].strip()  # templates drop reasoning from earlier turns
        if said and said not in text:
            raise UserError(
                f"{where(sample)}assistant turn {i}: the chat template drops this turn's text when the "
                f"turn also calls a tool (tool format {conv.tool_format!r}), so it would not be trained. "
                "Move the text into an assistant turn of its own before the call, or use a model folder "
                "whose chat_template.jinja renders both; docs/tools.md lists the formats"
            )
        for call in m.tool_calls:
            args = tool_call_dict(call, sample)["function"]["arguments"]
            missing = toolfmt.missing_from(text, call.name, args)
            if missing:
                raise UserError(
                    f"{where(sample)}assistant turn {i}: {', '.join(missing)} of the tool call "
                    f"{call.name!r} are not in the text this turn trains on, as the chat template "
                    f"renders it (tool format {conv.tool_format!r}), so the model would learn to answer "
                    "without the call. Fix the row to fit the template (e.g. one call per turn, "
                    "text in a turn of its own), or use a model folder whose chat_template.jinja renders "
                    "tool calls; docs/tools.md lists the formats"
                )
    check_tool_definitions(sample, conv, _outside(full, spans))


def _outside(text: str, spans: list[tuple[int, int]]) -> str:
    out, pos = [], 0
    for a, b in sorted(spans):
        out.append(text[pos:a])
        pos = max(pos, b)
    out.append(text[pos:])
    return "".join(out)


def check_tool_definitions(sample: Sample, conv: Conversation, prompt: str) -> None:
    for tool in sample.tools or []:
        fn = tool.get("function", tool) if isinstance(tool, dict) else {}
        name = fn.get("name") if isinstance(fn, dict) else None
        if isinstance(name, str) and name not in prompt:
            raise UserError(
                f"{where(sample)}the tool definition {name!r} is not in the prompt as the chat template "
                f"renders it (tool format {conv.tool_format!r}), so the model would be trained to call "
                "tools it was never shown. Use a model folder whose chat_template.jinja renders the "
                "`tools` it is given, or remove the definition the row does not use; docs/tools.md "
                "lists the formats"
            )
