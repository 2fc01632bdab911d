"""`alpaca`: {"instruction", "input", "output", "system", "history": [[u, a], ...], "images": [...]}.

`instruction` and `input` are joined with a newline into the user turn (as LLaMA-Factory does).
"""

from __future__ import annotations

from mmtune.data.findings import Collector
from mmtune.data.formats import pairs
from mmtune.data.formats.common import Parsed
from mmtune.data.schema import Sample

NAME = "alpaca"
CAN = pairs.CAN


def detect(row: dict) -> bool:
    return "instruction" in row or ("output" in row and "input" in row)


def parse(row: dict, out: Collector, media_root: str | None) -> Parsed | None:
    system = pairs.text_field(row, "system", out, required=False)
    instruction = pairs.text_field(row, "instruction", out, required=True)
    extra = pairs.text_field(row, "input", out, required=False)
    output = pairs.text_field(row, "output", out, required=True)
    turns = pairs.history(row, out)
    if instruction is not None:
        user = f"{instruction}\n{extra}" if extra else instruction
        turns.append((user, output, "instruction", "output"))
    return pairs.build(row, out, media_root, turns, system)


def dump(sample: Sample, lost: list[str]) -> dict:
    system, turns, media = pairs.dump_pairs(sample, NAME, lost)
    instruction, output = turns[-1] if turns else ("", "")
    row: dict = {"instruction": instruction, "input": "", "output": output}
    if system is not None:
        row["system"] = system
    if len(turns) > 1:
        row["history"] = [list(t) for t in turns[:-1]]
    pairs.put_media(row, media)
    return row
