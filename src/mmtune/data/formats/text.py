"""`text`: plain text for continued pre-training — `{"text": "..."}` rows (LLaMA-Factory, TRL's
language-modeling type) or a `.txt` file, one document a line (LLaMA-Factory, ms-swift)."""

from __future__ import annotations

from mmtune.data.findings import Collector
from mmtune.data.formats.common import Capabilities, Parsed, lose
from mmtune.data.schema import Part, Sample

NAME = "text"
CAN = Capabilities(media_tags=False)
KEYS = frozenset({"text", "id"})


def detect(row: dict) -> bool:
    return "text" in row


def kind_of(row: dict) -> str:
    return "text"


def parse(row: dict, out: Collector, media_root: str | None) -> Parsed | None:
    text = row.get("text")
    if not isinstance(text, str):
        rule = "missing-field" if text is None else "wrong-type"
        out.error("text", rule, "'text' must be a string: the document to train on")
        return None
    return Parsed(Sample([], None, media_root, document=[Part.of_text(text)] if text else []), ["text"])


def dump(sample: Sample, lost: list[str]) -> dict:
    if sample.kind != "text":
        lose(lost, f"the {sample.kind} conversation (text holds plain documents: its turns and roles would be "
             "flattened into one text)")
        return {"text": "\n\n".join(m.text for m in sample.all_messages())}
    if any(p.type != "text" for p in sample.document or []):
        lose(lost, "media in the document (text holds plain text)")
    return {"text": "".join(p.text for p in sample.document or [] if p.type == "text")}
