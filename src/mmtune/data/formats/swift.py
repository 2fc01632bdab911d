"""`swift`: {"system", "query", "response", "history": [[u, a], ...], "images": [...], "videos": [...]}."""

from __future__ import annotations

from mmtune.data.findings import Collector
from mmtune.data.formats import pairs
from mmtune.data.formats.common import Parsed
from mmtune.data.schema import Sample

NAME = "swift"
CAN = pairs.CAN


def detect(row: dict) -> bool:
    return "query" in row


def parse(row: dict, out: Collector, media_root: str | None) -> Parsed | None:
    system = pairs.text_field(row, "system", out, required=False)
    query = pairs.text_field(row, "query", out, required=True)
    response = pairs.text_field(row, "response", out, required=True)
    turns = pairs.history(row, out)
    if query is not None:
        turns.append((query, response, "query", "response"))
    return pairs.build(row, out, media_root, turns, system)


def dump(sample: Sample, lost: list[str]) -> dict:
    system, turns, media = pairs.dump_pairs(sample, NAME, lost)
    row: dict = {}
    if system is not None:
        row["system"] = system
    query, response = turns[-1] if turns else ("", "")
    row["query"], row["response"] = query, response
    if len(turns) > 1:
        row["history"] = [list(t) for t in turns[:-1]]
    pairs.put_media(row, media)
    return row
