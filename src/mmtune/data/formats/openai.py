"""`openai`: rows of chat messages — OpenAI's fine-tuning format and the shapes built on it.

    {"messages": [{"role": ..., "content": str | [parts]}], "tools": [...]}

The richest format: it holds everything the canonical Sample holds, so writing to it is never
lossy. It also reads, as the tools that use them document:
- ms-swift / LLaMA-Factory multimodal rows: `<image>` / `<video>` tags in the text and top-level
  `images` / `videos` lists (one item per tag, in order; untagged media go to the first user turn);
- `tools` as a JSON string; OpenAI's legacy `functions` / `function_call` / role `function`;
  `parallel_tool_calls`;
- ms-swift roles `tool_call` (content `{"name", "arguments"}`; consecutive ones are one turn's
  parallel calls) and `tool_response`; per-message `loss` (true / false);
- LLaMA-Factory v1 content parts `{"type": "text" | "image_url" | "video_url" | "reasoning" |
  "tool_call", "value": ...}` and per-message `loss_weight`;
- `reasoning_content` on assistant messages;
- preference rows: ms-swift `rejected_response` / `rejected_messages` / `rejected_images`, KTO
  `label`; LLaMA-Factory v1 `chosen_messages` / `rejected_messages`; OpenAI's preference format
  `{"input": {"messages", "tools"}, "preferred_output": [...], "non_preferred_output": [...]}`.

A row whose only message is one assistant message is plain text for continued pre-training
(ms-swift's pre-training shape). Written back, a preference sample is OpenAI's preference
format, a KTO sample `{"messages", "label"}` (ms-swift's KTO shape) and a text sample that
pre-training shape; media are content parts.
"""

from __future__ import annotations

from mmtune.data.findings import Collector
from mmtune.data.formats.common import (
    PLURAL,
    Capabilities,
    Parsed,
    attach_untagged_media,
    calls_from_json,
    check_label,
    check_tag_counts,
    completion_start,
    count_tags,
    dump_tool_calls,
    media_lists,
    normalize,
    pair_of_conversations,
    parse_tool_calls,
    parse_tools,
    split_tags,
)
from mmtune.data.schema import ROLES, Message, Part, Sample

NAME = "openai"
CAN = Capabilities(tools=True, weights=True, any_order=True, ends_with_user=True, media_tags=False)
KEYS = frozenset({
    "messages", "system", "tools", "functions", "parallel_tool_calls", "images", "videos", "label",
    "rejected_response", "rejected_messages", "rejected_images", "rejected_videos", "chosen_messages",
    "input", "preferred_output", "non_preferred_output", "id",
})
MESSAGE_KEYS = frozenset({"role", "content", "tool_calls", "function_call", "tool_call_id", "name", "weight",
                          "loss", "loss_weight", "reasoning_content"})
ROLE_ALIASES = {"tool_response": "tool", "function": "tool", "observation": "tool"}
PREFERENCE_KEYS = ("preferred_output", "non_preferred_output", "chosen_messages", "rejected_response",
                   "rejected_messages")


def detect(row: dict) -> bool:
    return "messages" in row or "chosen_messages" in row or "preferred_output" in row


def kind_of(row: dict) -> str:
    if any(k in row for k in PREFERENCE_KEYS):
        return "preference"
    if "label" in row:
        return "unpaired-preference"
    return "text" if _is_document(row.get("messages")) else "sft"


def _is_document(msgs: object) -> bool:
    """ms-swift's pre-training shape: the only message is one assistant message."""
    return type(msgs) is list and len(msgs) == 1 and type(msgs[0]) is dict and msgs[0].get("role") == "assistant"


def is_plain_clean(row: object) -> bool:
    """True only for a plain chat row the full rules would find nothing in: just `messages`,
    each exactly {role, content} with non-empty unpadded string content, [system] then
    user/assistant pairs, answers of 2+ characters, no media tags. Anything else returns False and goes
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
        if "<" in c and ("<image>" in c or "<video>" in c):
            return False
        role = m.get("role")
        if role == want:
            want = "assistant" if want == "user" else "user"
        elif not (role == "system" and i == 0):
            return False
    return want == "user" and len(msgs) > 1


# ----------------------------------------------------------------------------- reading
class MessageReader:
    """Reads message lists of one row, placing the row's media lists by their tags."""

    def __init__(self, row: dict, out: Collector, media_keys: dict[str, str] | None = None):
        self.out = out
        keys = media_keys or PLURAL
        self.keys = keys
        self.tags = any(row.get(k) is not None for k in keys.values())  # tags mark media only with lists
        self.media = media_lists(row, out, {}, keys) if self.tags else {}
        self.used = {"image": 0, "video": 0}
        self.tagged = {"image": 0, "video": 0}

    def finish(self, messages: list[Message]) -> None:
        if self.tags:
            check_tag_counts(self.media, self.tagged, self.out, self.keys)
            attach_untagged_media(messages, self.media, self.used)

    def read(self, value: object, f: str, required: bool = True) -> tuple[list[Message], list[str]] | None:
        out = self.out
        if value is None:
            if required:
                out.error(f, "missing-field", f"the row has no '{f}': add a list of {{role, content}} messages")
            return None
        if not isinstance(value, list):
            out.error(f, "wrong-type", f"'{f}' must be a list of messages, not {type(value).__name__}")
            return None
        if not value:
            out.error(f, "empty-field", f"'{f}' is empty: add at least a user and an assistant message")
            return None
        messages: list[Message] = []
        fields: list[str] = []
        calls_open = False  # the last message is an assistant turn that ms-swift tool_call messages extend
        for i, m in enumerate(value):
            mf = f"{f}[{i}]"
            if isinstance(m, dict) and m.get("role") == "tool_call":
                calls = calls_from_json(m.get("content"), f"{mf}.content", out)
                self._unknown_keys(m, mf)
                if calls_open or (messages and messages[-1].role == "assistant" and not messages[-1].tool_calls):
                    messages[-1].tool_calls.extend(calls)
                else:
                    messages.append(Message("assistant", tool_calls=calls))
                    fields.append(mf)
                calls_open = True
                continue
            calls_open = False
            msg = self._message(m, mf)
            if msg is not None:
                messages.append(msg)
                fields.append(mf)
        return messages, fields

    def _message(self, m: object, f: str) -> Message | None:
        out = self.out
        if not isinstance(m, dict):
            out.error(f, "wrong-type", f"each message must be an object with 'role' and 'content', not {type(m).__name__}")
            return None
        role = m.get("role")
        if role is None:
            out.error(f"{f}.role", "missing-field", "the message has no 'role': use system, user, assistant or tool")
            return None
        role = ROLE_ALIASES.get(role, role)
        if role not in ROLES:
            hint = ' (use "assistant" for the model\'s turns)' if role in ("bot", "gpt", "model", "ai") else ""
            hint = hint or (' (use "user")' if role in ("human", "customer") else "")
            out.error(f"{f}.role", "unknown-role", f"role {role!r} is not one of system, user, assistant, tool{hint}")
            return None
        self._unknown_keys(m, f)
        calls = parse_tool_calls(m.get("tool_calls"), f"{f}.tool_calls", out)
        if m.get("function_call") is not None:  # OpenAI's legacy single call
            calls += calls_from_json(m["function_call"], f"{f}.function_call", out)
        if "content" not in m and not calls:
            out.error(f"{f}.content", "missing-field", f"the {role} message has no 'content'")
            return None
        msg = Message(role, tool_calls=calls)
        msg.parts = self._content(m.get("content"), f"{f}.content", msg)
        msg.weight = _weight(m, role, f, out)
        reasoning = m.get("reasoning_content")
        if reasoning is not None:
            if not isinstance(reasoning, str):
                out.error(f"{f}.reasoning_content", "wrong-type", "'reasoning_content' must be a string")
            elif role != "assistant":
                out.error(f"{f}.reasoning_content", "wrong-type", "'reasoning_content' belongs on assistant messages")
            elif reasoning:
                msg.reasoning = reasoning + (msg.reasoning or "")
        tcid, name = m.get("tool_call_id"), m.get("name")
        msg.tool_call_id = tcid if isinstance(tcid, str) else None
        msg.name = name if isinstance(name, str) else None
        return msg

    def _unknown_keys(self, m: dict, f: str) -> None:
        if len(m) > 2 or not m.keys() <= MESSAGE_KEYS:
            for k in m.keys() - MESSAGE_KEYS:
                self.out.warn_once(f"message:{k}", f"{f}.{k}", "unknown-key",
                                   f"message key {k!r} is not read by mmtune and is ignored: remove or rename it "
                                   f"(messages hold {', '.join(sorted(MESSAGE_KEYS))})")

    def _content(self, content: object, f: str, msg: Message) -> list[Part]:
        if content is None:
            return []
        if isinstance(content, str):
            return normalize(self._text(content))
        if not isinstance(content, list):
            self.out.error(f, "wrong-type", f"'content' must be a string or a list of parts, not {type(content).__name__}")
            return []
        parts: list[Part] = []
        for j, p in enumerate(content):
            parts += self._part(p, f"{f}[{j}]", msg)
        return normalize(parts)

    def _text(self, text: str) -> list[Part]:
        if not self.tags:
            if "<image>" in text or "<video>" in text:
                self.out.warn_once("literal-tag", "", "media-tag-literal", "an <image> or <video> tag in a row with "
                                   "no 'images' / 'videos' list is read as literal text: add the media list, or "
                                   "remove the tag")
            return [Part.of_text(text)] if text else []
        ni, nv = count_tags(text)
        self.tagged["image"] += ni
        self.tagged["video"] += nv
        return split_tags(text, self.media, self.used)

    def _next_media(self, kind: str) -> str:
        """A part with no reference of its own (TRL's `{"type": "image"}`) takes the next listed item."""
        i = self.used[kind]
        self.used[kind] = i + 1
        self.tagged[kind] += 1
        refs = self.media.get(kind, [])
        return refs[i] if i < len(refs) else ""

    def _part(self, p: object, f: str, msg: Message) -> list[Part]:
        out = self.out
        kind = p.get("type") if isinstance(p, dict) else None
        if kind == "text":
            text = p.get("text", p.get("value"))
            if isinstance(text, str):
                return self._text(text)
        elif kind in ("image_url", "image", "video", "video_url"):
            media = "image" if kind.startswith("image") else "video"
            val = p.get(kind, p.get("value", p.get("url")))
            ref = val.get("url") if isinstance(val, dict) else val
            if ref is None and self.tags and set(p) == {"type"}:
                ref = self._next_media(media)
                return [Part(media, ref=ref)]
            if isinstance(ref, str) and ref:
                return [Part(media, ref=ref)]
            out.error(f, "wrong-type", f'a {media} part is {{"type": "{kind}", "{kind}": {{"url": "path or URL"}}}} '
                      f'or {{"type": "{kind}", "value": "path"}}')
            return []
        elif kind in ("reasoning", "thinking"):
            text = p.get("value", p.get("text", p.get(kind)))
            if isinstance(text, str):
                if msg.role != "assistant":
                    out.error(f, "wrong-type", "a reasoning part belongs in an assistant message")
                elif text:
                    msg.reasoning = (msg.reasoning or "") + text
                return []
        elif kind in ("tool_call", "function_call"):
            msg.tool_calls.extend(calls_from_json(p.get("value", p.get(kind)), f, out))
            return []
        elif kind in ("input_audio", "audio", "audio_url"):
            out.error(f, "unsupported-field", "audio parts are not supported by mmtune: remove them")
            return []
        out.error(f, "wrong-type", 'a content part must be {"type": "text", "text" (or "value"): ...}, an image_url / '
                  "video part, a reasoning part or a tool_call part")
        return []


def _weight(m: dict, role: str, f: str, out: Collector) -> float | None:
    """`weight` (0/1), ms-swift's `loss` (true/false) or LLaMA-Factory's `loss_weight` (0.0/1.0)."""
    for key in ("weight", "loss", "loss_weight"):
        w = m.get(key)
        if w is None:
            continue
        ok = isinstance(w, bool) if key == "loss" else (w in (0, 1) and not isinstance(w, bool))
        if role != "assistant" or not ok:
            allowed = "true or false" if key == "loss" else "0 or 1"
            out.error(f"{f}.{key}", "bad-weight", f"'{key}' is allowed on assistant messages only and must be {allowed}"
                      " (mmtune trains a turn or does not)")
            return None
        return float(w)
    return None


def parse(row: dict, out: Collector, media_root: str | None) -> Parsed | None:
    if "preferred_output" in row or "non_preferred_output" in row:
        return _parse_openai_preference(row, out, media_root)
    if "chosen_messages" in row:
        return _parse_two_conversations(row, out, media_root)
    reader = MessageReader(row, out)
    got = reader.read(row.get("messages"), "messages")
    if got is None:
        return None
    messages, fields = got
    _row_system(row, out, messages, fields)
    reader.finish(messages)
    sample = Sample(messages, parse_tools(row, out), media_root, parallel_tool_calls=_parallel(row, out))
    parsed = Parsed(sample, fields)
    if kind_of(row) == "text" and len(messages) == 1:  # ms-swift pre-training: one assistant text
        m = messages[0]
        if m.tool_calls or m.reasoning or m.weight is not None:
            out.error(fields[0], "wrong-type", "a pre-training row (one assistant message) holds text and media only")
        sample.messages, sample.document = [], m.parts
        parsed.fields = fields
        return parsed
    if "rejected_response" in row or "rejected_messages" in row:
        _swift_rejected(row, out, parsed)
    elif "label" in row:
        k = completion_start(messages)
        sample.messages, sample.completion = messages[:k], messages[k:]
        parsed.fields, parsed.sides["completion"] = fields[:k], fields[k:]
        sample.label = check_label(row["label"], "label", out)
        if sample.label is None:
            sample.label = False  # keeps the row's kind; the row already has an error
    elif "rejected_images" in row or "rejected_videos" in row:
        out.error("rejected_images", "media-one-side", "rejected media without a rejected answer: add "
                  "'rejected_response' or remove 'rejected_images'")
    return parsed


def _row_system(row: dict, out: Collector, messages: list[Message], fields: list[str]) -> None:
    """A top-level `system` beside `messages` (LLaMA-Factory's system column) is the system message."""
    system = row.get("system")
    if system is None:
        return
    if not isinstance(system, str):
        out.error("system", "wrong-type", "'system' must be a string")
    elif messages and messages[0].role == "system":
        out.error("system", "system-not-first", "the row has a 'system' field and a system message: keep one")
    else:
        messages.insert(0, Message.simple("system", system))
        fields.insert(0, "system")


def _parallel(row: dict, out: Collector) -> bool | None:
    v = row.get("parallel_tool_calls")
    if v is None or isinstance(v, bool):
        return v
    out.error("parallel_tool_calls", "wrong-type", "'parallel_tool_calls' must be true or false")
    return None


def _swift_rejected(row: dict, out: Collector, parsed: Parsed) -> None:
    """ms-swift: `messages` ends with the chosen answer; `rejected_response` is the other answer
    (a string) and `rejected_messages` the whole other conversation (or just its answer)."""
    sample = parsed.sample
    k = completion_start(sample.messages)
    prompt, chosen = sample.messages[:k], sample.messages[k:]
    sample.messages, sample.chosen = prompt, chosen
    parsed.fields, parsed.sides["chosen"] = parsed.fields[:k], parsed.fields[k:]
    key = "rejected_response" if "rejected_response" in row else "rejected_messages"
    value = row[key]
    rej_media = {"image": "rejected_images", "video": "rejected_videos"}
    own_media = any(row.get(v) is not None for v in rej_media.values())
    if isinstance(value, str):
        sample.rejected = [Message.simple("assistant", value)]
        parsed.sides["rejected"] = [key]
    else:
        side = MessageReader(row, out, rej_media if own_media else None)
        got = side.read(value, key)
        if got is None:
            sample.rejected = []
            parsed.sides["rejected"] = []
        else:
            msgs, fields = got
            j = completion_start(msgs)
            if j:
                side.finish(msgs)
                if msgs[:j] != prompt:
                    out.error(key, "prompt-mismatch", f"the conversation in '{key}' has another prompt than "
                              "'messages': both sides of a preference pair answer the same prompt")
            sample.rejected, parsed.sides["rejected"] = msgs[j:], fields[j:]
            own_media = own_media and not j
    if own_media:
        _same_media(row, out, sample)


def _same_media(row: dict, out: Collector, sample: Sample) -> None:
    """ms-swift's `rejected_images` / `rejected_videos` beside a rejected answer: the same media as the
    prompt's are fine; other media would need a second prompt, which a preference pair does not have."""
    for kind, key in (("image", "rejected_images"), ("video", "rejected_videos")):
        if row.get(key) is None:
            continue
        theirs = media_lists(row, Collector(0), {}, {kind: key}).get(kind, [])
        mine = media_lists(row, Collector(0), {}, {kind: PLURAL[kind]}).get(kind, [])
        if not mine:
            out.error(key, "media-one-side", f"'{key}' is given but the prompt has no {kind}s: "
                      f"give both sides the same '{PLURAL[kind]}' (one prompt, two answers)")
        elif theirs != mine:
            out.error(key, "prompt-mismatch", f"'{key}' differ from '{PLURAL[kind]}': both answers of a preference "
                      "pair must see the same prompt and media (split the row into two pairs if they differ)")


def _parse_two_conversations(row: dict, out: Collector, media_root: str | None) -> Parsed | None:
    """LLaMA-Factory v1: `chosen_messages` and `rejected_messages`, each a whole conversation."""
    sides = []
    for key in ("chosen_messages", "rejected_messages"):
        reader = MessageReader(row, out)  # each conversation places the row's media by its own tags
        got = reader.read(row.get(key), key)
        if got is not None:
            reader.finish(got[0])
        sides.append(got)
    chosen, rejected = sides
    if chosen is None:
        return None
    return pair_of_conversations(chosen, rejected, parse_tools(row, out), media_root,
                                 ("chosen_messages", "rejected_messages"), out)


def _parse_openai_preference(row: dict, out: Collector, media_root: str | None) -> Parsed | None:
    """OpenAI's preference format: {"input": {"messages", "tools"}, "preferred_output": [...],
    "non_preferred_output": [...]}."""
    inp = row.get("input")
    if not isinstance(inp, dict):
        rule = "missing-field" if inp is None else "wrong-type"
        out.error("input", rule, "'input' must be an object {\"messages\": [...], \"tools\": [...]}")
        return None
    reader = MessageReader(inp, out)
    got = reader.read(inp.get("messages"), "input.messages")
    if got is None:
        return None
    for k in inp.keys() - {"messages", "tools", "parallel_tool_calls", "functions"}:
        out.warn_once(f"input:{k}", f"input.{k}", "unknown-key", f"key {k!r} of 'input' is not read by mmtune and "
                      "is ignored")
    messages, fields = got
    sample = Sample(messages, parse_tools(inp, out), media_root, parallel_tool_calls=_parallel(inp, out))
    parsed = Parsed(sample, fields)
    for side, key in (("chosen", "preferred_output"), ("rejected", "non_preferred_output")):
        got = reader.read(row.get(key), key)
        msgs, fs = got if got is not None else ([], [])
        setattr(sample, side, msgs)
        parsed.sides[side] = fs
    return parsed


# ----------------------------------------------------------------------------- writing
def dump(sample: Sample, lost: list[str]) -> dict:
    kind = sample.kind
    if kind == "preference":
        inp: dict = {"messages": [dump_message(m) for m in sample.messages]}
        _put_tools(inp, sample)
        return {"input": inp, "preferred_output": [dump_message(m) for m in sample.chosen or []],
                "non_preferred_output": [dump_message(m) for m in sample.rejected or []]}
    if kind == "text":  # ms-swift's pre-training shape
        return {"messages": [dump_message(Message("assistant", list(sample.document or [])))]}
    msgs = sample.messages + (sample.completion or [])
    row: dict = {"messages": [dump_message(m) for m in msgs]}
    _put_tools(row, sample)
    if kind == "unpaired-preference":
        row["label"] = sample.label
    return row


def _put_tools(row: dict, sample: Sample) -> None:
    if sample.tools:
        row["tools"] = sample.tools
    if sample.parallel_tool_calls is not None:
        row["parallel_tool_calls"] = sample.parallel_tool_calls


def dump_message(m: Message) -> dict:
    d: dict = {"role": m.role, "content": _dump_content(m)}
    if m.reasoning is not None:
        d["reasoning_content"] = m.reasoning
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
