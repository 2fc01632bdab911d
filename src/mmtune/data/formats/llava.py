"""`llava` / ShareGPT: {"conversations": [{"from": "human"|"gpt", "value": "<image>..."}],
"system_prompt"|"system", "image"|"images", "video"|"videos", "tools"}.

Each <image>/<video> tag marks where one media item goes, in order. ShareGPT tool turns
(`function_call`, `observation`) map to assistant tool calls and tool results.
"""

from __future__ import annotations

import json

from mmtune.data.findings import Collector
from mmtune.data.formats.common import (
    Capabilities,
    Parsed,
    attach_untagged_media,
    check_tag_counts,
    count_tags,
    join_tags,
    lose,
    media_lists,
    normalize,
    parse_tool_calls,
    split_tags,
)
from mmtune.data.schema import Message, Sample

NAME = "llava"
CAN = Capabilities(tools=True, any_order=True, ends_with_user=True)
SINGLE = {"image": "image", "video": "video"}
PLURAL = {"image": "images", "video": "videos"}
ROLE_OF = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "system": "system",
    "function_call": "assistant",
    "observation": "tool",
    "tool": "tool",
}


def detect(row: dict) -> bool:
    return "conversations" in row


def parse(row: dict, out: Collector, media_root: str | None) -> Parsed | None:
    conv = row.get("conversations")
    if not isinstance(conv, list):
        out.error("conversations", "wrong-type", "'conversations' must be a list of {from, value} turns")
        return None
    if not conv:
        out.error("conversations", "empty-field", "'conversations' is empty: add a human and a gpt turn")
        return None
    media = media_lists(row, out, SINGLE, PLURAL)
    used, tagged = {"image": 0, "video": 0}, {"image": 0, "video": 0}
    messages, fields = [], []
    system_key = "system_prompt" if "system_prompt" in row else "system"
    system = row.get(system_key)
    if system is not None:
        if isinstance(system, str):
            messages.append(Message.simple("system", system))
            fields.append(system_key)
        else:
            out.error(system_key, "wrong-type", f"'{system_key}' must be a string")
    for i, turn in enumerate(conv):
        msg = _parse_turn(turn, f"conversations[{i}]", out, media, used, tagged)
        if msg is not None:
            messages.append(msg)
            fields.append(f"conversations[{i}]")
    check_tag_counts(media, tagged, out, PLURAL)
    attach_untagged_media(messages, media, used)
    return Parsed(Sample(messages, _tools(row, out), media_root), fields)


def _parse_turn(turn, f, out, media, used, tagged) -> Message | None:
    if not isinstance(turn, dict):
        out.error(f, "wrong-type", 'each turn must be an object {"from": "human"|"gpt", "value": "..."}')
        return None
    who = turn.get("from", turn.get("role"))
    value = turn.get("value", turn.get("content"))
    if who is None:
        out.error(f"{f}.from", "missing-field", "the turn has no 'from': use human or gpt")
        return None
    if who not in ROLE_OF:
        out.error(f"{f}.from", "unknown-role", f"'from' {who!r} is not one of human, gpt, system, function_call, observation")
        return None
    if not isinstance(value, str):
        rule = "missing-field" if value is None else "wrong-type"
        out.error(f"{f}.value", rule, "the turn's 'value' must be a string")
        return None
    if who == "function_call":
        return Message("assistant", tool_calls=_calls(value, f"{f}.value", out))
    ni, nv = count_tags(value)
    tagged["image"] += ni
    tagged["video"] += nv
    return Message(ROLE_OF[who], normalize(split_tags(value, media, used)))


def _calls(value: str, f: str, out: Collector):
    try:
        data = json.loads(value)
    except json.JSONDecodeError:
        out.error(f, "bad-tool-call", 'a function_call value must be JSON: {"name": ..., "arguments": {...}}')
        return []
    items = data if isinstance(data, list) else [data]
    wrapped = [{"type": "function", "function": c} if isinstance(c, dict) else c for c in items]
    return parse_tool_calls(wrapped, f, out)


def _tools(row: dict, out: Collector) -> list[dict] | None:
    tools = row.get("tools")
    if tools is None:
        return None
    if isinstance(tools, str):
        try:
            tools = json.loads(tools)
        except json.JSONDecodeError:
            out.error("tools", "wrong-type", "'tools' must be a JSON list of function definitions")
            return None
    if not (isinstance(tools, list) and all(isinstance(t, dict) for t in tools)):
        out.error("tools", "wrong-type", "'tools' must be a list of function definitions")
        return None
    return tools or None


def dump(sample: Sample, lost: list[str]) -> dict:
    msgs = sample.messages
    media: dict[str, list[str]] = {}
    row: dict = {}
    if msgs and msgs[0].role == "system":
        row["system"] = join_tags(msgs[0].parts, media, lost)
        if media:
            lose(lost, "media in the system prompt (llava has no place for them)")
        msgs = msgs[1:]
    conv = []
    for m in msgs:
        if m.role == "system":
            lose(lost, "a system message that is not the first message (llava holds one system prompt, first)")
            continue
        if m.weight is not None:
            lose(lost, "per-turn train weights (llava has no place for them)")
        if m.tool_calls:
            conv.append({"from": "function_call", "value": _dump_calls(m, lost)})
            continue
        if m.role == "tool" and (m.tool_call_id is not None or m.name is not None):
            lose(lost, "tool result ids and names (llava's observation holds only the text)")
        who = {"user": "human", "assistant": "gpt", "tool": "observation"}[m.role]
        conv.append({"from": who, "value": join_tags(m.parts, media, lost)})
    row["conversations"] = conv
    for kind, key in PLURAL.items():
        refs = media.get(kind, [])
        if len(refs) == 1:
            row[SINGLE[kind]] = refs[0]
        elif refs:
            row[key] = refs
    if sample.tools:
        row["tools"] = json.dumps(sample.tools, ensure_ascii=False)
    return row


def _dump_calls(m: Message, lost: list[str]) -> str:
    if m.parts:
        lose(lost, "assistant text beside tool calls in the same turn (llava's function_call holds only the call)")
    if any(c.id is not None for c in m.tool_calls):
        lose(lost, "tool call ids (llava has no place for them)")
    calls = [{"name": c.name, "arguments": c.arguments} for c in m.tool_calls]
    return json.dumps(calls[0] if len(calls) == 1 else calls, ensure_ascii=False)
