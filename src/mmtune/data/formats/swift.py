"""`swift`: ms-swift's query / response rows and its ShareGPT variant.

    {"system", "query", "response", "history": [[u, a], ...], "images": [...], "videos": [...]}
    {"system", "conversation": [{"human": u, "assistant": a}, ...]}

Preference: `rejected_response` (the other answer to the final query); KTO: `label` (true / false)
on the final response.
"""

from __future__ import annotations

from mmtune.data.findings import Collector
from mmtune.data.formats import pairs
from mmtune.data.formats.common import Parsed
from mmtune.data.schema import Sample

NAME = "swift"
CAN = pairs.CAN
KEYS = frozenset({"system", "query", "response", "history", "conversation", "images", "videos", "image", "video",
                  "rejected_response", "label", "id"})
PREF = {"chosen": None, "rejected": "rejected_response", "label": "label"}


def detect(row: dict) -> bool:
    return "query" in row or "conversation" in row


def kind_of(row: dict) -> str:
    if "rejected_response" in row:
        return "preference"
    return "unpaired-preference" if "label" in row else "sft"


def parse(row: dict, out: Collector, media_root: str | None) -> Parsed | None:
    system = pairs.text_field(row, "system", out, required=False)
    if "conversation" in row and "query" not in row:
        turns = _conversation(row, out)
    else:
        query = pairs.text_field(row, "query", out, required=True)
        response = pairs.text_field(row, "response", out, required=True)
        turns = pairs.history(row, out)
        if query is not None:
            turns.append((query, response, "query", "response"))
    return pairs.preference(row, out, pairs.build(row, out, media_root, turns, system), **PREF)


def _conversation(row: dict, out: Collector) -> list[tuple[str, str, str, str]]:
    conv = row.get("conversation")
    if not isinstance(conv, list) or not conv:
        out.error("conversation", "wrong-type" if conv else "empty-field",
                  "'conversation' must be a non-empty list of {\"human\": ..., \"assistant\": ...} pairs")
        return []
    turns = []
    for i, t in enumerate(conv):
        f = f"conversation[{i}]"
        if not (isinstance(t, dict) and isinstance(t.get("human"), str) and isinstance(t.get("assistant"), str)):
            out.error(f, "wrong-type", 'each entry of \'conversation\' must be {"human": "...", "assistant": "..."}')
            continue
        for k in t.keys() - {"human", "assistant"}:
            out.warn_once(f"conversation:{k}", f"{f}.{k}", "unknown-key", f"key {k!r} of a conversation pair is not "
                          "read by mmtune and is ignored")
        turns.append((t["human"], t["assistant"], f"{f}.human", f"{f}.assistant"))
    return turns


def dump(sample: Sample, lost: list[str]) -> dict:
    row: dict = {}
    flat = pairs.dump_preference(sample, NAME, lost, extra := {}, **PREF)
    system, turns, media = pairs.dump_pairs(flat, NAME, lost)
    if system is not None:
        row["system"] = system
    query, response = turns[-1] if turns else ("", "")
    row["query"], row["response"] = query, response
    if len(turns) > 1:
        row["history"] = [list(t) for t in turns[:-1]]
    row.update(extra)
    pairs.put_media(row, media)
    return row
