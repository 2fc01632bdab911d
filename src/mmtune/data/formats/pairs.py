"""Shared reading and writing for the pair formats (`swift`, `alpaca`): a system prompt, a
history of [user, assistant] pairs, a final user/assistant pair, and media lists whose
items are placed by <image>/<video> tags (or, untagged, at the start of the first user turn)."""

from __future__ import annotations

from mmtune.data.findings import Collector
from mmtune.data.formats.common import (
    Capabilities,
    Parsed,
    attach_untagged_media,
    check_label,
    check_pairs,
    check_tag_counts,
    count_tags,
    flatten_preference,
    join_tags,
    lose,
    lose_extras,
    media_lists,
    normalize,
    split_tags,
)
from mmtune.data.schema import Message, Sample

CAN = Capabilities()
SINGLE = {"image": "image", "video": "video"}
PLURAL = {"image": "images", "video": "videos"}


def text_field(row: dict, key: str, out: Collector, required: bool) -> str | None:
    val = row.get(key)
    if val is None:
        if required:
            out.error(key, "missing-field", f"the row has no '{key}'")
        return None
    if not isinstance(val, str):
        out.error(key, "wrong-type", f"'{key}' must be a string, not {type(val).__name__}")
        return None
    return val


def history(row: dict, out: Collector) -> list[tuple[str, str, str, str]]:
    """[(user, assistant, user_field, assistant_field), ...] from `history`, reporting bad entries."""
    hist = row.get("history")
    if hist is None:
        return []
    if not isinstance(hist, list):
        out.error("history", "wrong-type", "'history' must be a list of [user, assistant] pairs")
        return []
    pairs = []
    for i, h in enumerate(hist):
        if not (isinstance(h, list | tuple) and len(h) == 2 and all(isinstance(x, str) for x in h)):
            out.error(f"history[{i}]", "wrong-type", 'each history entry must be a pair of strings ["user text", "assistant text"]')
            continue
        pairs.append((h[0], h[1], f"history[{i}][0]", f"history[{i}][1]"))
    return pairs


def build(
    row: dict,
    out: Collector,
    media_root: str | None,
    turns: list[tuple[str, str, str, str]],
    system: str | None,
) -> Parsed:
    """Messages from (user, assistant) turns, with media placed by tags."""
    media = media_lists(row, out, SINGLE, PLURAL)
    used = {"image": 0, "video": 0}
    tagged = {"image": 0, "video": 0}
    messages, fields = [], []
    if system is not None:
        messages.append(Message.simple("system", system))
        fields.append("system")
    for user, assistant, uf, af in turns:
        for role, text, f in (("user", user, uf), ("assistant", assistant, af)):
            if text is None:
                continue
            ni, nv = count_tags(text)
            tagged["image"] += ni
            tagged["video"] += nv
            messages.append(Message(role, normalize(split_tags(text, media, used))))
            fields.append(f)
    check_tag_counts(media, tagged, out, PLURAL)
    attach_untagged_media(messages, media, used)
    return Parsed(Sample(messages, None, media_root), fields)


def preference(row: dict, out: Collector, parsed: Parsed, *, chosen: str | None, rejected: str,
               label: str) -> Parsed:
    """Preference keys of a pair format: the final answer is the chosen one (`chosen` names its key
    when the format has one, else the last assistant turn is it) and `rejected` the other; or a
    KTO `label` on the final answer."""
    sample = parsed.sample
    if rejected in row or (chosen is not None and chosen in row):
        if chosen is not None:
            text = text_field(row, chosen, out, required=True)
            sample.chosen = [Message.simple("assistant", text or "")]
            parsed.sides["chosen"] = [chosen]
        else:
            last = sample.messages.pop() if sample.messages and sample.messages[-1].role == "assistant" else None
            sample.chosen = [last] if last is not None else []
            parsed.sides["chosen"] = [parsed.fields.pop()] if last is not None else []
        text = text_field(row, rejected, out, required=True)
        sample.rejected = [Message.simple("assistant", text or "")]
        parsed.sides["rejected"] = [rejected]
    elif label in row:
        last = sample.messages.pop() if sample.messages and sample.messages[-1].role == "assistant" else None
        sample.completion = [last] if last is not None else []
        parsed.sides["completion"] = [parsed.fields.pop()] if last is not None else []
        value = check_label(row[label], label, out)
        sample.label = value if value is not None else False
    return parsed


def dump_preference(sample: Sample, fmt: str, lost: list[str], row: dict, *, chosen: str | None,
                    rejected: str, label: str) -> Sample:
    """The sft-shaped sample a pair format writes, with the preference keys put into `row`."""
    lose_extras(sample, fmt, lost)
    kind = sample.kind
    if kind not in ("preference", "unpaired-preference"):
        return Sample(flatten_preference(sample, fmt, lost), sample.tools, sample.media_root)
    sides = [("chosen", sample.chosen), ("rejected", sample.rejected)] if kind == "preference" \
        else [("completion", sample.completion)]
    answers = {}
    for name, msgs in sides:
        msgs = msgs or []
        if len(msgs) != 1 or msgs[0].role != "assistant" or msgs[0].tool_calls or msgs[0].media:
            lose(lost, f"a preference answer that is not one text assistant message ({fmt} holds one answer string)")
        answers[name] = msgs[0] if msgs else Message("assistant")
    if kind == "unpaired-preference":
        row[label] = sample.label
        return Sample(sample.messages + [answers["completion"]], sample.tools, sample.media_root)
    row[rejected] = answers["rejected"].text
    if chosen is not None:
        row[chosen] = answers["chosen"].text
        return Sample(sample.messages + [Message("assistant")], sample.tools, sample.media_root)
    return Sample(sample.messages + [answers["chosen"]], sample.tools, sample.media_root)


def dump_pairs(sample: Sample, fmt: str, lost: list[str]) -> tuple[str | None, list[tuple[str, str]], dict]:
    """(system, [(user, assistant), ...], media) for a pair format; what does not fit goes to `lost`."""
    rest = check_pairs(sample, fmt, CAN, lost)
    media: dict[str, list[str]] = {}
    system = None
    if sample.messages and sample.messages[0].role == "system":
        system = join_tags(sample.messages[0].parts, media, lost)
        if media:
            lost.append(f"media in the system prompt ({fmt} has no place for them)")
    pairs = []
    i = 0
    while i < len(rest):
        if rest[i].role == "user" and i + 1 < len(rest) and rest[i + 1].role == "assistant":
            u = join_tags(rest[i].parts, media, lost)
            a = join_tags(rest[i + 1].parts, media, lost)
            pairs.append((u, a))
            i += 2
        else:
            i += 1
    return system, pairs, media


def put_media(row: dict, media: dict[str, list[str]]) -> None:
    for kind, key in PLURAL.items():
        if media.get(kind):
            row[key] = media[kind]
