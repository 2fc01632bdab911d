"""`llava` / ShareGPT: {"conversations": [{"from": "human"|"gpt", "value": "<image>..."}],
"system_prompt"|"system", "image"|"images", "video"|"videos", "tools"}.

Each <image>/<video> tag marks where one media item goes, in order. ShareGPT tool turns
(`function_call`, `observation`) map to assistant tool calls and tool results; `tools` is a
list or a JSON string. Also read:
- MiniCPM-V's fine-tuning format: turns of `role` / `content`, and `image` as one path or as a
  dict `{"<image_00>": path, ...}` whose keys are placeholders in the text;
- LLaMA-Factory's ranking rows: `conversations` (the prompt) + `chosen` + `rejected`, each a
  `{"from", "value"}` turn; and KTO rows: `conversations` + `kto_tag` (true / false).
"""

from __future__ import annotations

import json
import re

from mmtune.data.findings import Collector
from mmtune.data.formats.common import (
    Capabilities,
    Parsed,
    attach_untagged_media,
    calls_from_json,
    check_label,
    check_tag_counts,
    completion_start,
    count_tags,
    flatten_preference,
    join_tags,
    lose,
    lose_extras,
    media_lists,
    normalize,
    parse_tools,
    split_tags,
)
from mmtune.data.schema import Message, Part, Sample

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


KEYS = frozenset({"conversations", "system_prompt", "system", "image", "images", "video", "videos", "tools",
                  "chosen", "rejected", "kto_tag", "id"})
TURN_KEYS = frozenset({"from", "value", "role", "content"})
PLACEHOLDER_RE = re.compile(r"<image_\d+>")


def detect(row: dict) -> bool:
    return "conversations" in row


def kind_of(row: dict) -> str:
    if "chosen" in row or "rejected" in row:
        return "preference"
    return "unpaired-preference" if "kto_tag" in row else "sft"


def parse(row: dict, out: Collector, media_root: str | None) -> Parsed | None:
    conv = row.get("conversations")
    if not isinstance(conv, list):
        out.error("conversations", "wrong-type", "'conversations' must be a list of {from, value} turns")
        return None
    if not conv:
        out.error("conversations", "empty-field", "'conversations' is empty: add a human and a gpt turn")
        return None
    if isinstance(row.get("image"), dict):
        return _parse_placeholders(row, conv, out, media_root)
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
    return _preference(row, out, Parsed(Sample(messages, parse_tools(row, out), media_root), fields))


def _preference(row: dict, out: Collector, parsed: Parsed) -> Parsed:
    """LLaMA-Factory ranking rows (`chosen` / `rejected` turns after the prompt) and KTO rows (`kto_tag`)."""
    sample = parsed.sample
    if "chosen" in row or "rejected" in row:
        for side in ("chosen", "rejected"):
            msgs, fields = _side(row.get(side), side, out)
            setattr(sample, side, msgs)
            parsed.sides[side] = fields
    elif "kto_tag" in row:
        k = completion_start(sample.messages)
        sample.messages, sample.completion = sample.messages[:k], sample.messages[k:]
        parsed.fields, parsed.sides["completion"] = parsed.fields[:k], parsed.fields[k:]
        label = check_label(row["kto_tag"], "kto_tag", out)
        sample.label = label if label is not None else False
    return parsed


def _side(value: object, key: str, out: Collector) -> tuple[list[Message], list[str]]:
    if value is None:
        out.error(key, "missing-field", f"the row has no '{key}' answer: a ranking row needs chosen and rejected")
        return [], []
    turns = value if isinstance(value, list) else [value]
    msgs, fields = [], []
    for i, t in enumerate(turns):
        f = key if not isinstance(value, list) else f"{key}[{i}]"
        if isinstance(t, str):
            t = {"from": "gpt", "value": t}
        msg = _parse_turn(t, f, out, {}, {"image": 0, "video": 0}, {"image": 0, "video": 0})
        if msg is not None:
            msgs.append(msg)
            fields.append(f)
    return msgs, fields


def _parse_placeholders(row: dict, conv: list, out: Collector, media_root: str | None) -> Parsed | None:
    """MiniCPM-V: `image` is {"<image_00>": path, ...}; each key appears in the text where its image goes."""
    images = row["image"]
    bad = [k for k, v in images.items() if not (isinstance(v, str) and v)]
    for k in bad:
        out.error(f"image.{k}", "wrong-type", f"image {k!r} must be a non-empty path string")
    used: set[str] = set()
    messages, fields = [], []
    system = row.get("system_prompt", row.get("system"))
    if isinstance(system, str):
        messages.append(Message.simple("system", system))
        fields.append("system_prompt" if "system_prompt" in row else "system")
    for i, turn in enumerate(conv):
        f = f"conversations[{i}]"
        msg = _parse_turn(turn, f, out, {}, {"image": 0, "video": 0}, {"image": 0, "video": 0})
        if msg is None:
            continue
        parts: list[Part] = []
        for p in msg.parts:
            if p.type != "text" or "<image_" not in p.text:
                parts.append(p)
                continue
            last = 0
            for m in PLACEHOLDER_RE.finditer(p.text):
                key = m.group(0)
                if key not in images:
                    continue  # literal text; reported below if it names no image
                parts.append(Part.of_text(p.text[last:m.start()]))
                parts.append(Part.image(images[key] if key not in bad else ""))
                if key in used:
                    out.error(f, "media-count-mismatch", f"{key} appears twice: each image goes in one place")
                used.add(key)
                last = m.end()
            parts.append(Part.of_text(p.text[last:]))
            for key in set(PLACEHOLDER_RE.findall(p.text)) - set(images):
                out.error(f, "media-count-mismatch", f"{key} in the text names no image in 'image': add it there")
        msg.parts = normalize(parts)
        messages.append(msg)
        fields.append(f)
    for key in images:
        if key not in used:
            out.error("image", "media-count-mismatch", f"image {key!r} is never placed: write {key} in the text "
                      "where it goes")
    return _preference(row, out, Parsed(Sample(messages, parse_tools(row, out), media_root), fields))


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
    for k in turn.keys() - TURN_KEYS:
        out.warn_once(f"turn:{k}", f"{f}.{k}", "unknown-key", f"turn key {k!r} is not read by mmtune and is ignored: "
                      "a turn is {\"from\", \"value\"} (or {\"role\", \"content\"})")
    if who == "function_call":
        return Message("assistant", tool_calls=calls_from_json(value, f"{f}.value", out))
    ni, nv = count_tags(value)
    tagged["image"] += ni
    tagged["video"] += nv
    return Message(ROLE_OF[who], normalize(split_tags(value, media, used)))


def dump(sample: Sample, lost: list[str]) -> dict:
    kind = sample.kind
    msgs = sample.messages if kind in ("preference", "unpaired-preference") else flatten_preference(sample, NAME, lost)
    if kind == "unpaired-preference":
        msgs = msgs + (sample.completion or [])
    lose_extras(sample, NAME, lost)
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
    if kind == "preference":
        for side in ("chosen", "rejected"):
            turns = getattr(sample, side) or []
            if len(turns) != 1 or turns[0].role != "assistant" or turns[0].tool_calls or turns[0].media:
                lose(lost, "a preference answer that is not one text assistant message (llava's chosen/rejected "
                     "hold one text turn)")
            if turns:
                if turns[0].weight is not None:
                    lose(lost, "per-turn train weights (llava has no place for them)")
                row[side] = {"from": "gpt", "value": turns[0].text}
    elif kind == "unpaired-preference":
        row["kto_tag"] = sample.label
    for media_kind, key in PLURAL.items():
        refs = media.get(media_kind, [])
        if len(refs) == 1:
            row[SINGLE[media_kind]] = refs[0]
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
