"""`trl`: the dataset types of Hugging Face TRL, plain (strings) or conversational (message lists).

    {"prompt": ..., "completion": ...}                    prompt-completion (SFT)
    {"prompt": ..., "chosen": ..., "rejected": ...}       preference
    {"chosen": [...], "rejected": [...]}                  preference with the prompt inside both
    {"prompt": ..., "completion": ..., "label": bool}     unpaired preference (KTO)

A plain prompt is one user turn and a plain answer one assistant turn. TRL trains a
prompt-completion row on the completion only, so assistant turns inside a prompt are read with
weight 0 (not trained), as TRL would treat them. Written back, rows are conversational.
"""

from __future__ import annotations

from mmtune.data.findings import Collector
from mmtune.data.formats.common import (
    Capabilities,
    Parsed,
    check_label,
    completion_start,
    flatten_preference,
    lose,
    pair_of_conversations,
    parse_tools,
)
from mmtune.data.formats.openai import MessageReader, dump_message
from mmtune.data.schema import Message, Sample

NAME = "trl"
CAN = Capabilities(tools=True, weights=True, any_order=True, ends_with_user=False, media_tags=False)
KEYS = frozenset({"prompt", "completion", "chosen", "rejected", "label", "tools", "images", "videos", "id"})


def detect(row: dict) -> bool:
    return "prompt" in row or "completion" in row or ("chosen" in row and "rejected" in row)


def kind_of(row: dict) -> str:
    if "chosen" in row or "rejected" in row:
        return "preference"
    return "unpaired-preference" if "label" in row else "sft"


def parse(row: dict, out: Collector, media_root: str | None) -> Parsed | None:
    reader = MessageReader(row, out)
    tools = parse_tools(row, out)
    if "prompt" not in row:  # implicit prompt: both sides are whole conversations
        return _implicit(row, out, reader, tools, media_root)
    got = _turns(reader, row.get("prompt"), "prompt", "user")
    if got is None:
        return None
    prompt, pf = got
    sample = Sample(prompt, tools, media_root)
    parsed = Parsed(sample, pf)
    sides = ("chosen", "rejected") if ("chosen" in row or "rejected" in row) else ("completion",)
    for side in sides:
        got = _turns(reader, row.get(side), side, "assistant")
        msgs, fs = got if got is not None else ([], [])
        setattr(sample, side, msgs)
        parsed.sides[side] = fs
    if sides == ("completion",):
        if "label" in row:
            label = check_label(row["label"], "label", out)
            sample.label = label if label is not None else False
        else:  # prompt-completion SFT: one conversation, of which TRL trains the completion only
            for m in prompt:
                if m.role == "assistant" and m.weight is None:
                    m.weight = 0.0
            sample.messages, sample.completion = prompt + sample.completion, None
            parsed.fields, parsed.sides = pf + parsed.sides.pop("completion"), {}
    elif "label" in row:
        out.error("label", "unknown-key", "'label' beside 'chosen' and 'rejected': a row is a pair or a KTO row, "
                  "not both")
    reader.finish(sample.messages)
    return parsed


def _turns(reader: MessageReader, value: object, key: str, role: str) -> tuple[list[Message], list[str]] | None:
    if isinstance(value, str):
        return [Message.simple(role, value)], [key]
    return reader.read(value, key)


def _implicit(row, out, reader, tools, media_root) -> Parsed | None:
    chosen, rejected = row.get("chosen"), row.get("rejected")
    if isinstance(chosen, str) or isinstance(rejected, str):
        out.error("prompt", "missing-field", "plain-text 'chosen' and 'rejected' need a 'prompt' column "
                  "(the prompt cannot be told apart from the answer in plain text)")
        return None
    got_c = reader.read(chosen, "chosen")
    got_r = MessageReader(row, out).read(rejected, "rejected")
    if got_c is None:
        return None
    reader.finish(got_c[0])
    return pair_of_conversations(got_c, got_r, tools, media_root, ("chosen", "rejected"), out)


def dump(sample: Sample, lost: list[str]) -> dict:
    kind = sample.kind
    if kind == "text":
        msgs = flatten_preference(sample, NAME, lost)
        return {"prompt": [], "completion": [dump_message(m) for m in msgs]}
    if sample.parallel_tool_calls is not None:
        lose(lost, "the parallel_tool_calls flag (trl has no place for it)")
    row: dict = {}
    if kind == "sft":
        k = completion_start(sample.messages)
        if k == len(sample.messages) or k == 0:
            lose(lost, "a conversation that does not end with an answer to a user turn (trl's prompt-completion "
                 "splits at the last user turn)")
        prompt, completion = sample.messages[:k], sample.messages[k:]
        if any(m.trainable for m in prompt):
            lose(lost, "training on assistant turns before the last user turn (trl trains the completion only)")
        row["prompt"] = [dump_message(_untrained(m)) for m in prompt]
        row["completion"] = [dump_message(m) for m in completion]
    else:
        row["prompt"] = [dump_message(_untrained(m)) for m in sample.messages]
        for side in (("chosen", "rejected") if kind == "preference" else ("completion",)):
            row[side] = [dump_message(m) for m in getattr(sample, side) or []]
        if kind == "unpaired-preference":
            row["label"] = sample.label
    if sample.tools:
        row["tools"] = sample.tools
    return row


def _untrained(m: Message) -> Message:
    """A prompt's assistant turns are read back with weight 0: write them without it."""
    if m.role == "assistant" and m.weight == 0:
        return Message(m.role, m.parts, m.tool_calls, m.tool_call_id, m.name, None, m.reasoning)
    return m
