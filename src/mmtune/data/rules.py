"""The checking rules (FORMATS.md, "What check means"). Rule ids are stable: tests, `--json`
output and the jobs API name them. `docs/data.md` lists them all with examples.

- `check_parsed`: the default rules, on a parsed row of any format and kind (sft: `check_sample`;
  preference pairs, KTO rows and plain text: their own rules below).
- `check_strict_row`: the hosted-service rule set, exactly, on a raw chat row.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from mmtune.data.findings import Collector
from mmtune.data.media import MediaChecker
from mmtune.data.schema import Message, Sample

if TYPE_CHECKING:
    from mmtune.data.formats.common import Parsed

SHORT_ANSWER = 2  # an assistant answer with fewer characters than this gets a warning


# ----------------------------------------------------------------------------- default rules
def check_sample(sample: Sample, fields: list[str], out: Collector, media: MediaChecker | None,
                 partial: bool = False) -> None:
    """`partial`: the parse dropped broken messages, so skip rules about the whole sequence."""
    msgs = sample.messages
    for m, f in zip(msgs, fields):
        _check_message(m, f, out)
    _check_tools(msgs, fields, out)
    if media is not None:
        _check_media(sample, fields, out, media)
    if partial or not msgs:
        return
    _check_order(msgs, fields, out)
    if not any(m.role == "assistant" for m in msgs):
        out.error("", "no-assistant", "the row has no assistant message, so there is nothing to learn: add the answer")
    elif not any(m.trainable for m in msgs):
        out.error("", "no-assistant", "every assistant turn has weight 0, so there is nothing to learn: set weight 1 on one")
    if msgs[-1].role in ("user", "tool") and any(m.role == "assistant" for m in msgs):
        out.warn(fields[-1], "trailing-user", "the last message has no answer after it and will not be trained on")


def check_parsed(parsed: Parsed, out: Collector, media: MediaChecker | None, partial: bool = False) -> None:
    s = parsed.sample
    kind = s.kind
    if s.parallel_tool_calls is False:
        for m, f in zip(s.all_messages(), parsed.fields + [f for fs in parsed.sides.values() for f in fs]):
            if len(m.tool_calls) > 1:
                out.error(f"{f}.tool_calls", "bad-tool-call", f"{len(m.tool_calls)} calls in one turn but the row sets "
                          "parallel_tool_calls false: make one call per turn, or allow parallel calls")
    if kind == "sft":
        check_sample(s, parsed.fields, out, media, partial)
    elif kind == "text":
        where = parsed.fields[0] if parsed.fields else "text"
        if media is not None:
            _check_parts_media(s.document or [], where, s, out, media)
        if not any(p.type != "text" or p.text.strip() for p in s.document or []):
            out.error(where, "empty-field", "the text is empty: write the document or remove the row")
    else:
        check_preference(parsed, out, media, partial)


def check_preference(parsed: Parsed, out: Collector, media: MediaChecker | None, partial: bool = False) -> None:
    """Preference pairs (prompt + chosen + rejected) and KTO rows (prompt + completion + label)."""
    s = parsed.sample
    prompt, pf = s.messages, parsed.fields
    names = ("chosen", "rejected") if s.kind == "preference" else ("completion",)
    sides = [(n, getattr(s, n) or [], parsed.sides.get(n, [])) for n in names]
    for m, f in zip(prompt, pf):
        _check_message(m, f, out)
    for _, msgs, fs in sides:
        for m, f in zip(msgs, fs):
            _check_message(m, f, out)
        _check_tools(prompt + msgs, pf + fs, out)
    if media is not None:
        for m, f in zip(s.all_messages(), pf + [f for _, _, fs in sides for f in fs]):
            _check_parts_media(m.parts, f, s, out, media)
    if partial:
        return
    if not prompt:
        out.error(pf[0] if pf else "", "empty-field", "the prompt is empty: a preference row needs the question "
                  "both answers reply to")
        return
    if prompt[-1].role == "assistant":
        out.error(pf[-1], "not-alternating", "the prompt ends with an assistant message: it must end with the user "
                  "turn (or tool result) the answers reply to")
    for i, (name, msgs, fs) in enumerate(sides):
        where = fs[0] if fs else name
        if not any(m.text.strip() or m.tool_calls or m.media for m in msgs):
            out.error(where, "empty-side", f"the {name} answer is empty: a preference row needs both answers "
                      "(a KTO row its completion)")
        elif msgs[0].role != "assistant" or any(m.role in ("user", "system") for m in msgs):
            out.error(where, "bad-completion", f"the {name} answer must be assistant messages (with tool results "
                      "between tool calls), not a new user or system turn")
        else:
            _check_order(prompt + msgs, pf + fs, out, start=0 if i == 0 else len(prompt))
    if s.kind == "preference" and s.chosen and s.rejected:
        if s.chosen == s.rejected:
            out.error(sides[1][2][0] if sides[1][2] else "rejected", "identical-sides", "the chosen and the rejected "
                      "answers are the same: there is nothing to prefer (fix the pair or remove it)")
        elif bool([p for m in s.chosen for p in m.media]) != bool([p for m in s.rejected for p in m.media]):
            out.warn(sides[1][2][0] if sides[1][2] else "rejected", "media-one-side", "one answer has media and "
                     "the other has none: check both answers are complete")


def _check_parts_media(parts, f: str, sample: Sample, out: Collector, media: MediaChecker) -> None:
    for p in parts:
        if p.type == "text":
            continue
        problem = media.check(p.type, p.ref, sample.media_root)
        if problem is None:
            continue
        rule, message = problem
        if rule == "media-remote":
            out.warn(f, rule, message)
        else:
            out.error(f, rule, message)


def _check_order(msgs: list[Message], fields: list[str], out: Collector, start: int = 0) -> None:
    """Order rules; with `start`, only the messages from there on are judged (those before are context)."""
    prev = None
    for i, (m, f) in enumerate(zip(msgs, fields)):
        if i < start:
            prev = m if m.role != "system" else prev
            continue
        if m.role == "system":
            if i != 0:
                out.error(f"{f}.role", "system-not-first", "a system message must be the first message: move it to the top")
            continue
        if prev is None:
            if m.role != "user":
                out.error(f"{f}.role", "first-not-user", f"the conversation must start with a user message, not {m.role}")
        elif not _follows(prev, m):
            out.error(f"{f}.role", "not-alternating", _order_message(prev, m))
        prev = m


def _follows(prev: Message, m: Message) -> bool:
    if prev.role == "user":
        return m.role == "assistant"
    if prev.role == "assistant":
        return m.role == "user" or (m.role == "tool" and bool(prev.tool_calls))
    return m.role in ("tool", "assistant")  # after a tool result: more results, or the assistant


def _order_message(prev: Message, m: Message) -> str:
    if m.role == "tool":
        return "a tool result must follow an assistant message that has tool_calls"
    if prev.role == m.role:
        return f"two {m.role} messages in a row: merge them, or put the other side's turn between them"
    return f"a {m.role} message cannot follow a {prev.role} message"


def _check_message(m: Message, f: str, out: Collector) -> None:
    text = m.text
    if m.role == "system":
        if not text.strip():
            out.warn(f, "empty-system", "the system prompt is empty: remove it or write one")
        return
    if not text.strip() and not m.media and not m.tool_calls:
        out.error(f, "empty-field", f"the {m.role} message is empty: write its text or remove the turn")
        return
    if m.role != "tool" and _outer_whitespace(m):
        out.warn(f, "whitespace", f"the {m.role} text starts or ends with whitespace, which the model will learn as-is")
    if m.role == "assistant" and not m.tool_calls and 0 < len(text.strip()) < SHORT_ANSWER:
        out.warn(f, "short-answer", f"very short answer ({text.strip()!r}): check the row is complete")


def _outer_whitespace(m: Message) -> bool:
    """Leading/trailing whitespace of the message itself (not the space beside a media tag)."""
    if not m.parts:
        return False
    first, last = m.parts[0], m.parts[-1]
    return (first.type == "text" and first.text[:1].isspace()) or (last.type == "text" and last.text[-1:].isspace())


def _check_tools(msgs: list[Message], fields: list[str], out: Collector) -> None:
    ids: set[str] = set()
    for m, f in zip(msgs, fields):
        for j, c in enumerate(m.tool_calls):
            try:
                json.loads(c.arguments)
            except json.JSONDecodeError:
                out.error(f"{f}.tool_calls[{j}].function.arguments", "bad-tool-call", "'arguments' is not valid JSON")
            if c.id:
                ids.add(c.id)
        if m.role == "tool" and m.tool_call_id is not None and ids and m.tool_call_id not in ids:
            out.error(f"{f}.tool_call_id", "bad-tool-call", f"tool_call_id {m.tool_call_id!r} answers no earlier tool call")


def _check_media(sample: Sample, fields: list[str], out: Collector, media: MediaChecker) -> None:
    for m, f in zip(sample.messages, fields):
        _check_parts_media(m.parts, f, sample, out, media)


# ----------------------------------------------------------------------------- strict rules
STRICT_ROLES = ("system", "user", "assistant")


def check_strict_row(row: object, out: Collector) -> None:
    """Rules 2–7 of the hosted-service rule set (rule 1 is about the file and its lines)."""
    if not isinstance(row, dict):
        out.error("", "not-object", "each line must be one JSON object (strict rule 1)")
        return
    msgs = row.get("messages")
    if msgs is None:
        out.error("messages", "messages-missing", "the object has no key 'messages' (strict rule 2)")
        return
    if not isinstance(msgs, list):
        out.error("messages", "messages-not-array", "'messages' must be an array (strict rule 2)")
        return
    if not msgs:
        out.error("messages", "messages-empty", "'messages' is an empty array (strict rule 2)")
        return
    roles = []
    for i, m in enumerate(msgs):
        f = f"messages[{i}]"
        if not isinstance(m, dict):
            out.error(f, "message-not-object", "each element of 'messages' must be an object with role and content (strict rule 3)")
            roles.append(None)
            continue
        if "role" not in m:
            out.error(f"{f}.role", "message-missing-role", "the message has no 'role' (strict rule 3)")
        if "content" not in m:
            out.error(f"{f}.content", "message-missing-content", "the message has no 'content' (strict rule 3)")
        role = m.get("role")
        if "role" in m and role not in STRICT_ROLES:
            out.error(f"{f}.role", "role-not-allowed", f"role {role!r} is not allowed: only system, user or assistant (strict rule 4)")
        roles.append(role if role in STRICT_ROLES else None)
    _strict_order(roles, out)


def _strict_order(roles: list[str | None], out: Collector) -> None:
    for i, r in enumerate(roles):
        if r == "system" and i != 0:
            out.error(f"messages[{i}].role", "system-not-first", "a system message must be the first element (strict rule 5)")
    start = 1 if roles and roles[0] == "system" else 0
    convo = [(i, r) for i, r in enumerate(roles) if i >= start and r != "system"]
    if not convo:
        out.error("messages", "no-pair", "there must be at least one user message followed by an assistant message (strict rule 7)")
        return
    i0, r0 = convo[0]
    if r0 is not None and r0 != "user":
        out.error(f"messages[{i0}].role", "first-not-user", f"the first non-system message must be 'user', not {r0!r} (strict rule 6)")
    for k, (i, r) in enumerate(convo):
        want = "user" if k % 2 == 0 else "assistant"
        if r is not None and r != want and not (k == 0 and r0 != "user"):
            out.error(f"messages[{i}].role", "not-alternating", f"expected {want!r} here: user and assistant must alternate (strict rule 7)")
            return
    if len(convo) % 2 == 1:
        i, _ = convo[-1]
        out.error(f"messages[{i}]", "unpaired", "the last user message has no assistant answer: messages must come in user/assistant pairs (strict rule 7)")
