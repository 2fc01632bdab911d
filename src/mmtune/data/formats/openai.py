"""`openai`: {"messages": [{"role": ..., "content": str | [parts]}], "tools": [...]} — chat messages.

The richest format: it holds everything the canonical Sample holds, so writing to it is never lossy.
"""

from __future__ import annotations

from mmtune.data.findings import Collector
from mmtune.data.formats.common import Capabilities, Parsed, dump_tool_calls, normalize, parse_tool_calls
from mmtune.data.schema import ROLES, Message, Part, Sample

NAME = "openai"
CAN = Capabilities(tools=True, weights=True, any_order=True, ends_with_user=True, media_tags=False)


def detect(row: dict) -> bool:
    return "messages" in row


def is_plain_clean(row: object) -> bool:
    """True only for a plain chat row the full rules would find nothing in: just `messages`,
    each exactly {role, content} with non-empty unpadded string content, [system] then
    user/assistant pairs, answers of 2+ characters. Anything else returns False and goes
    through the full parse and rules (this is a speed path for `data check`, never a
    different verdict: tests/data/test_fast_path.py holds it to that)."""
    if type(row) is not dict:
        return False
    msgs = row.get("messages")
    if type(msgs) is not list or len(row) != 1 or not msgs:
        return False
    want = "user"
    for i, m in enumerate(msgs):
        if type(m) is not dict or len(m) != 2:
            return False
        c = m.get("content")
        if type(c) is not str or len(c) < 2 or c[0].isspace() or c[-1].isspace():
            return False
        role = m.get("role")
        if role == want:
            want = "assistant" if want == "user" else "user"
        elif not (role == "system" and i == 0):
            return False
    return want == "user" and len(msgs) > 1


def parse(row: dict, out: Collector, media_root: str | None) -> Parsed | None:
    msgs = row.get("messages")
    if msgs is None:
        out.error("messages", "missing-field", "the row has no 'messages': add a list of {role, content} messages")
        return None
    if not isinstance(msgs, list):
        out.error("messages", "wrong-type", f"'messages' must be a list, not {type(msgs).__name__}")
        return None
    if not msgs:
        out.error("messages", "empty-field", "'messages' is empty: add at least a user and an assistant message")
        return None
    messages, fields = [], []
    for i, m in enumerate(msgs):
        f = f"messages[{i}]"
        msg = _parse_message(m, f, out)
        if msg is not None:
            messages.append(msg)
            fields.append(f)
    tools = row.get("tools")
    if tools is not None and not (isinstance(tools, list) and all(isinstance(t, dict) for t in tools)):
        out.error("tools", "wrong-type", "'tools' must be a list of function definitions (JSON objects)")
        tools = None
    return Parsed(Sample(messages, tools or None, media_root), fields)


def _parse_message(m: object, f: str, out: Collector) -> Message | None:
    if not isinstance(m, dict):
        out.error(f, "wrong-type", f"each message must be an object with 'role' and 'content', not {type(m).__name__}")
        return None
    role = m.get("role")
    if role is None:
        out.error(f"{f}.role", "missing-field", "the message has no 'role': use system, user, assistant or tool")
        return None
    if role not in ROLES:
        hint = ' (use "assistant" for the model\'s turns)' if role in ("bot", "gpt", "model", "ai") else ""
        hint = hint or (' (use "user")' if role in ("human", "customer") else "")
        out.error(f"{f}.role", "unknown-role", f"role {role!r} is not one of system, user, assistant, tool{hint}")
        return None
    calls = parse_tool_calls(m.get("tool_calls"), f"{f}.tool_calls", out)
    if "content" not in m and not calls:
        out.error(f"{f}.content", "missing-field", f"the {role} message has no 'content'")
        return None
    parts = _parse_content(m.get("content"), f"{f}.content", out)
    weight = m.get("weight")
    if weight is not None:
        if role != "assistant" or weight not in (0, 1) or isinstance(weight, bool):
            out.error(f"{f}.weight", "bad-weight", "'weight' is allowed on assistant messages only and must be 0 or 1")
            weight = None
        else:
            weight = float(weight)
    tcid, name = m.get("tool_call_id"), m.get("name")
    return Message(
        role,
        parts,
        tool_calls=calls,
        tool_call_id=tcid if isinstance(tcid, str) else None,
        name=name if isinstance(name, str) else None,
        weight=weight,
    )


def _parse_content(content: object, f: str, out: Collector) -> list[Part]:
    if content is None:
        return []
    if isinstance(content, str):
        return [Part.of_text(content)] if content else []
    if not isinstance(content, list):
        out.error(f, "wrong-type", f"'content' must be a string or a list of parts, not {type(content).__name__}")
        return []
    parts = []
    for j, p in enumerate(content):
        pf = f"{f}[{j}]"
        part = _parse_part(p, pf, out)
        if part is not None:
            parts.append(part)
    return normalize(parts)


def _parse_part(p: object, f: str, out: Collector) -> Part | None:
    kind = p.get("type") if isinstance(p, dict) else None
    if kind == "text" and isinstance(p.get("text"), str):
        return Part.of_text(p["text"])
    if kind in ("image_url", "image"):
        val = p.get(kind)
        ref = val.get("url") if isinstance(val, dict) else val
        if isinstance(ref, str) and ref:
            return Part.image(ref)
        out.error(f, "wrong-type", 'an image part is {"type": "image_url", "image_url": {"url": "path or data: URL"}}')
        return None
    if kind in ("video", "video_url"):
        val = p.get(kind)
        ref = val.get("url") if isinstance(val, dict) else val
        if isinstance(ref, str) and ref:
            return Part.video(ref)
        out.error(f, "wrong-type", 'a video part is {"type": "video", "video": "path"}')
        return None
    out.error(f, "wrong-type", 'a content part must be {"type": "text", "text": ...}, an image_url part or a video part')
    return None


def dump(sample: Sample, lost: list[str]) -> dict:
    row: dict = {"messages": [_dump_message(m) for m in sample.messages]}
    if sample.tools:
        row["tools"] = sample.tools
    return row


def _dump_message(m: Message) -> dict:
    d: dict = {"role": m.role, "content": _dump_content(m)}
    if m.tool_calls:
        d["tool_calls"] = dump_tool_calls(m.tool_calls)
    if m.tool_call_id is not None:
        d["tool_call_id"] = m.tool_call_id
    if m.name is not None:
        d["name"] = m.name
    if m.weight is not None:
        d["weight"] = int(m.weight) if m.weight in (0, 1) else m.weight
    return d


def _dump_content(m: Message) -> str | list | None:
    if not m.parts:
        return None if m.tool_calls else ""
    if len(m.parts) == 1 and m.parts[0].type == "text":
        return m.parts[0].text
    out = []
    for p in m.parts:
        if p.type == "text":
            out.append({"type": "text", "text": p.text})
        elif p.type == "image":
            out.append({"type": "image_url", "image_url": {"url": p.ref}})
        else:
            out.append({"type": "video", "video": p.ref})
    return out
