"""The data formats mmtune reads and writes. Each is a small module with the same shape:

    NAME: str
    CAN: Capabilities  — what the format can hold (used to refuse lossy conversions)
    KEYS: frozenset    — the row keys it reads (any other key is a finding)
    detect(row: dict) -> bool
    kind_of(row: dict) -> str                                       (sft | preference | unpaired-preference | text)
    parse(row: dict, out: Collector, media_root) -> Parsed | None   (structure errors go to `out`)
    dump(sample: Sample, lost: list[str]) -> dict                   (what cannot be held goes to `lost`)

The registry below is plain data; `FORMATS[name]` is the module.
"""

from __future__ import annotations

from mmtune.data.formats import alpaca, llava, openai, swift, text, trl

FORMATS = {m.NAME: m for m in (openai, swift, llava, alpaca, trl, text)}

# Detection order matters only for rows that carry keys of several formats.
DETECT_ORDER = ("openai", "llava", "swift", "alpaca", "trl", "text")
ALL_KEYS = frozenset().union(*(m.KEYS for m in FORMATS.values()))


def detect_row(row: object) -> str | None:
    if not isinstance(row, dict):
        return None
    for name in DETECT_ORDER:
        if FORMATS[name].detect(row):
            return name
    return None
