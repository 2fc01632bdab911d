"""`alpaca`: {"instruction", "input", "output", "system", "history": [[u, a], ...], "images": [...]}.

`instruction` and `input` are joined with a newline into the user turn (as LLaMA-Factory does).
Preference (LLaMA-Factory): `chosen` and `rejected` in place of `output`; KTO: `kto_tag`.
"""

from __future__ import annotations

from mmtune.data.findings import Collector
from mmtune.data.formats import pairs
from mmtune.data.formats.common import Parsed
from mmtune.data.schema import Sample

NAME = "alpaca"
CAN = pairs.CAN
KEYS = frozenset({"instruction", "input", "output", "system", "history", "images", "videos", "image", "video",
                  "chosen", "rejected", "kto_tag", "id"})
PREF = {"chosen": "chosen", "rejected": "rejected", "label": "kto_tag"}


def detect(row: dict) -> bool:
    return "instruction" in row or ("output" in row and "input" in row)


def kind_of(row: dict) -> str:
    if "chosen" in row or "rejected" in row:
        return "preference"
    return "unpaired-preference" if "kto_tag" in row else "sft"


def parse(row: dict, out: Collector, media_root: str | None) -> Parsed | None:
    system = pairs.text_field(row, "system", out, required=False)
    instruction = pairs.text_field(row, "instruction", out, required=True)
    extra = pairs.text_field(row, "input", out, required=False)
    ranked = "chosen" in row or "rejected" in row
    output = None if ranked else pairs.text_field(row, "output", out, required=True)
    turns = pairs.history(row, out)
    if instruction is not None:
        user = f"{instruction}\n{extra}" if extra else instruction
        turns.append((user, output, "instruction", "output"))
    return pairs.preference(row, out, pairs.build(row, out, media_root, turns, system), **PREF)


def dump(sample: Sample, lost: list[str]) -> dict:
    flat = pairs.dump_preference(sample, NAME, lost, extra := {}, **PREF)
    system, turns, media = pairs.dump_pairs(flat, NAME, lost)
    instruction, output = turns[-1] if turns else ("", "")
    row: dict = {"instruction": instruction, "input": ""}
    if "chosen" not in extra:
        row["output"] = output
    if system is not None:
        row["system"] = system
    if len(turns) > 1:
        row["history"] = [list(t) for t in turns[:-1]]
    row.update(extra)
    pairs.put_media(row, media)
    return row
