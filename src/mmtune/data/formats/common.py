"""Pieces the format modules share: media tags in text, part normalisation, capabilities."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from mmtune.data.findings import Collector
from mmtune.data.schema import Message, Part, Sample, ToolCall

TAGS = {"image": "<image>", "video": "<video>"}
TAG_RE = re.compile(r"(<image>|<video>)")


@dataclass(frozen=True)
class Capabilities:
    """What a format can hold; a conversion that needs more is lossy."""

    tools: bool = False  # tool definitions, tool calls, tool results
    weights: bool = False  # per-turn train weight
    any_order: bool = False  # any sequence of roles (else: [system] then user/assistant pairs)
    ends_with_user: bool = False  # a conversation may end without an answer
    media_tags: bool = True  # media are written as <image>/<video> tags in text


@dataclass
class Parsed:
    """A parsed row: the sample and, for each message, the field it came from (`fields` for
    `sample.messages`; `sides["chosen"|"rejected"|"completion"]` for the completions)."""

    sample: Sample
    fields: list[str]
    sides: dict[str, list[str]] = field(default_factory=dict)


def normalize(parts: list[Part]) -> list[Part]:
    """Drop empty text parts and merge adjacent text parts: the canonical form of a message."""
    out: list[Part] = []
    for p in parts:
        if p.type == "text":
            if not p.text:
                continue
            if out and out[-1].type == "text":
                out[-1] = Part.of_text(out[-1].text + p.text)
                continue
        out.append(p)
    return out


def split_tags(text: str, media: dict[str, list[str]], used: dict[str, int]) -> list[Part]:
    """'<image>What is this?' → [image, text]; takes the next media ref of each kind in order.

    Tags beyond the media given are kept as refs '' (the count check reports them)."""
    if "<" not in text:
        return [Part.of_text(text)] if text else []
    parts: list[Part] = []
    for piece in TAG_RE.split(text):
        if piece == "<image>" or piece == "<video>":
            kind = "image" if piece == "<image>" else "video"
            i = used[kind]
            used[kind] = i + 1
            refs = media.get(kind, [])
            parts.append(Part(kind, ref=refs[i] if i < len(refs) else ""))
        elif piece:
            parts.append(Part.of_text(piece))
    return parts


def count_tags(text: str) -> tuple[int, int]:
    if "<" not in text:
        return 0, 0
    return text.count("<image>"), text.count("<video>")


def join_tags(parts: list[Part], media: dict[str, list[str]], lost: list[str]) -> str:
    """The inverse of split_tags: parts → text with tags, collecting media refs in order."""
    out = []
    for p in parts:
        if p.type == "text":
            if "<image>" in p.text or "<video>" in p.text:
                _lose(lost, "text that contains a literal <image> or <video> tag (it would be read back as media)")
            out.append(p.text)
        else:
            media.setdefault(p.type, []).append(p.ref)
            out.append(TAGS[p.type])
    return "".join(out)


def attach_untagged_media(messages: list[Message], media: dict[str, list[str]], used: dict[str, int]) -> None:
    """Media listed but never tagged go to the start of the first user turn (FORMATS.md); with no
    user turn, to the first message (never dropped)."""
    first_user = next((m for m in messages if m.role == "user"), messages[0] if messages else None)
    if first_user is None:
        return
    extra = []
    for kind in ("image", "video"):
        refs = media.get(kind, [])
        if used[kind] == 0 and refs:
            extra += [Part(kind, ref=r) for r in refs]
            used[kind] = len(refs)
    if extra:
        first_user.parts = normalize(extra + first_user.parts)


def media_lists(row: dict, out: Collector, single: dict[str, str], plural: dict[str, str]) -> dict[str, list[str]]:
    """Read media fields (`image`/`images`, `video`/`videos`) into lists of refs, reporting bad types."""
    media: dict[str, list[str]] = {}
    for kind in ("image", "video"):
        refs: list[str] = []
        for key in (single.get(kind), plural.get(kind)):
            if not key or key not in row or row[key] is None:
                continue
            val = row[key]
            if isinstance(val, str):
                val = [val]
            if not isinstance(val, list):
                out.error(key, "wrong-type", f"'{key}' must be a path or a list of paths, not {type(val).__name__}")
                continue
            for i, r in enumerate(val):
                if isinstance(r, str) and r:
                    refs.append(r)
                else:
                    out.error(f"{key}[{i}]", "wrong-type", f"'{key}[{i}]' must be a non-empty path string")
        if refs:
            media[kind] = refs
    return media


def check_tag_counts(media: dict[str, list[str]], tagged: dict[str, int], out: Collector, fields: dict[str, str]) -> None:
    """Each <image>/<video> tag marks one media item: counts must match (no tags at all is allowed)."""
    for kind in ("image", "video"):
        n_media, n_tags = len(media.get(kind, [])), tagged[kind]
        if n_tags and n_tags != n_media:
            out.error(
                fields[kind],
                "media-count-mismatch",
                f"{n_tags} <{kind}> tag(s) in the text but {n_media} {kind}(s) listed: "
                f"give one {kind} per <{kind}> tag, or remove the tags to put all {kind}s in the first user turn",
            )


def parse_tool_calls(value: object, field: str, out: Collector) -> list[ToolCall]:
    if value is None:
        return []
    if not isinstance(value, list):
        out.error(field, "wrong-type", "'tool_calls' must be a list of calls")
        return []
    calls = []
    for i, c in enumerate(value):
        f = f"{field}[{i}]"
        fn = c.get("function") if isinstance(c, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
            out.error(f, "bad-tool-call", 'a tool call needs {"type": "function", "function": {"name": ..., "arguments": "..."}}')
            continue
        args = fn.get("arguments", "{}")
        if isinstance(args, dict):
            args = json.dumps(args, ensure_ascii=False)
        elif not isinstance(args, str):
            out.error(f"{f}.function.arguments", "bad-tool-call", "'arguments' must be a JSON string (or object)")
            continue
        cid = c.get("id")
        calls.append(ToolCall(fn["name"], args, cid if isinstance(cid, str) else None))
    return calls


def dump_tool_calls(calls: list[ToolCall]) -> list[dict]:
    out = []
    for c in calls:
        d: dict = {"type": "function", "function": {"name": c.name, "arguments": c.arguments}}
        if c.id is not None:
            d = {"id": c.id, **d}
        out.append(d)
    return out


def _lose(lost: list[str], what: str) -> None:
    if what not in lost:
        lost.append(what)


def check_pairs(sample: Sample, fmt: str, can: Capabilities, lost: list[str]) -> list[Message]:
    """For pair formats: report what cannot be held; return the messages after the system prompt."""
    msgs = sample.messages
    start = 1 if msgs and msgs[0].role == "system" else 0
    rest = msgs[start:]
    if any(m.role == "system" for m in rest):
        _lose(lost, f"a system message that is not the first message ({fmt} holds one system prompt, first)")
    if not can.tools and (sample.tools or any(m.tool_calls or m.role == "tool" for m in msgs)):
        _lose(lost, f"tools, tool calls or tool results ({fmt} has no place for them)")
    if not can.weights and any(m.weight is not None for m in msgs):
        _lose(lost, f"per-turn train weights ({fmt} has no place for them)")
    if not can.any_order:
        roles = [m.role for m in rest if m.role in ("user", "assistant")]
        paired = len(roles) % 2 == 0 and all(r == ("user" if i % 2 == 0 else "assistant") for i, r in enumerate(roles))
        if not paired or not roles:
            _lose(lost, f"turns that are not user/assistant pairs ({fmt} holds [system] + user/assistant pairs)")
    return rest


lose = _lose


# ----------------------------------------------------------------------------- shared by several formats
PLURAL = {"image": "images", "video": "videos"}
UNSUPPORTED_KEYS = {
    "audios": "audio is not supported by mmtune: remove the audio (and its <audio> tags) or train with a tool "
              "that takes audio",
    "rejected_audios": "audio is not supported by mmtune",
    "objects": "grounding `objects` (<ref-object>/<bbox> substitution) is not supported: write the boxes into "
               "the text as the model expects them",
}


def parse_tools(row: dict, out: Collector, key: str = "tools") -> list[dict] | None:
    """`tools` as a list of definitions or as a JSON string of one (ms-swift, LLaMA-Factory);
    OpenAI's legacy `functions` (a list of bare function definitions) as tools of type function."""
    tools = row.get(key)
    if key == "tools" and tools is None and row.get("functions") is not None:
        funcs = parse_tools(row, out, "functions")
        return [{"type": "function", "function": f} for f in funcs] if funcs else None
    if tools is None:
        return None
    if isinstance(tools, str):
        if not tools.strip():
            return None
        try:
            tools = json.loads(tools)
        except json.JSONDecodeError as e:
            out.error(key, "wrong-type", f"'{key}' is a string that is not JSON ({e.msg}): write a JSON list of "
                      "function definitions")
            return None
    if isinstance(tools, dict):
        tools = [tools]
    if not (isinstance(tools, list) and all(isinstance(t, dict) for t in tools)):
        out.error(key, "wrong-type", f"'{key}' must be a list of function definitions (JSON objects), "
                  "or a JSON string of one")
        return None
    return tools or None


def calls_from_json(value: object, f: str, out: Collector) -> list[ToolCall]:
    """`{"name", "arguments"}` (or a list of them), as a JSON string or an object: the tool-call
    shape of ShareGPT's function_call turns, ms-swift's tool_call role and LLaMA-Factory's parts."""
    data = value
    if isinstance(value, str):
        try:
            data = json.loads(value)
        except json.JSONDecodeError:
            out.error(f, "bad-tool-call", 'a tool call must be JSON: {"name": ..., "arguments": {...}}')
            return []
    items = data if isinstance(data, list) else [data]
    wrapped = []
    for c in items:
        if isinstance(c, dict) and "function" not in c:
            c = {"type": "function", "function": {k: v for k, v in c.items() if k != "id"}, "id": c.get("id")}
        wrapped.append(c)
    return parse_tool_calls(wrapped, f, out)


def completion_start(messages: list[Message]) -> int:
    """Where the completion begins in a whole conversation: after the last user message."""
    for i in range(len(messages) - 1, -1, -1):
        if messages[i].role == "user":
            return i + 1
    return len(messages)


def pair_of_conversations(chosen: tuple[list[Message], list[str]],
                          rejected: tuple[list[Message], list[str]] | None, tools: list[dict] | None,
                          media_root: str | None, keys: tuple[str, str], out: Collector) -> Parsed:
    """A preference pair from two whole conversations, each repeating the prompt: the shared prompt is what
    comes before the completion (after the last user message), and both sides must agree on it."""
    cm, cf = chosen
    k = completion_start(cm)
    sample = Sample(cm[:k], tools, media_root, chosen=cm[k:], rejected=[])
    parsed = Parsed(sample, cf[:k], {"chosen": cf[k:], "rejected": []})
    if rejected is not None:
        rm, rf = rejected
        j = completion_start(rm)
        if rm[:j] != cm[:k]:
            out.error(keys[1], "prompt-mismatch", f"'{keys[0]}' and '{keys[1]}' start with different prompts: "
                      "both sides of a preference pair answer the same prompt")
        sample.rejected, parsed.sides["rejected"] = rm[j:], rf[j:]
    return parsed


def check_label(value: object, key: str, out: Collector) -> bool | None:
    """A KTO label: true (desirable) or false (undesirable). Strings "true"/"false" are read too."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    out.error(key, "bad-label", f"'{key}' must be true (a desirable answer) or false (an undesirable one), "
              f"not {value!r}: mmtune reads it as a KTO label (classification labels are not supported)")
    return None


def flatten_preference(sample: Sample, fmt: str, lost: list[str]) -> list[Message]:
    """The messages a format without preference data would hold: the prompt plus the chosen
    answer (or the one completion); what is dropped goes to `lost`."""
    if sample.kind == "preference":
        _lose(lost, f"the rejected answer ({fmt} cannot hold preference pairs)")
        return sample.messages + (sample.chosen or [])
    if sample.kind == "unpaired-preference":
        _lose(lost, f"the desirable/undesirable label ({fmt} cannot hold KTO data)")
        return sample.messages + (sample.completion or [])
    if sample.kind == "text":
        _lose(lost, f"the plain-text document ({fmt} holds conversations; it would become one assistant turn)")
        return [Message("assistant", list(sample.document or []))]
    return sample.messages


def lose_extras(sample: Sample, fmt: str, lost: list[str]) -> None:
    """What only openai holds: reasoning on assistant turns, the parallel_tool_calls flag."""
    if any(m.reasoning for m in sample.all_messages()):
        _lose(lost, f"reasoning (reasoning_content) on assistant turns ({fmt} has no place for it)")
    if sample.parallel_tool_calls is not None:
        _lose(lost, f"the parallel_tool_calls flag ({fmt} has no place for it)")
