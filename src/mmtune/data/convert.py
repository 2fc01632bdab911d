"""`mmtune data convert`: any format → any format, through the canonical Sample.

A conversion that would lose information is refused (listing the rows and what they would
lose) unless the user says `lossy=True`. Relative media paths are rewritten so that they
still point at the same files from the output file's folder.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from mmtune.data.findings import ERROR
from mmtune.data.formats import FORMATS
from mmtune.data.media import classify, local_path
from mmtune.data.rawio import write_rows
from mmtune.data.reader import FileReader, ReadOptions
from mmtune.data.schema import Part, Sample
from mmtune.errors import UserError

SHOW = 10  # rows listed in an error message


@dataclass
class ConvertReport:
    rows: int = 0
    source_format: str = ""
    lossy_rows: int = 0
    losses: dict[str, int] = field(default_factory=dict)  # what was lost → rows


def convert_file(src: str, dst: str, to: str, *, fmt: str | None = None, media_root: str | None = None,
                 lossy: bool = False) -> ConvertReport:
    if to not in FORMATS:
        raise UserError(f"unknown target format {to!r}: choose one of {', '.join(FORMATS)}")
    if os.path.abspath(src) == os.path.abspath(dst):
        raise UserError("the output would overwrite the input: choose another output path")
    lines = dst.lower().endswith(".txt")
    if lines and to != "text":
        raise UserError(f"a .txt output holds plain text, one document a line: use --to text, or write {to} "
                        "rows to a .jsonl or .json file")
    reader = FileReader(src, ReadOptions(fmt=fmt, media_root=media_root, check_media=False))
    report = ConvertReport()
    out_dir = os.path.dirname(os.path.abspath(dst))
    bad: list[str] = []
    lost_rows: list[str] = []

    def rows():
        for r in reader:
            errors = [f for f in r.findings if f.severity == ERROR]
            if errors or r.sample is None:
                if errors:
                    bad.append(f"  {src}:{errors[0].line} [{errors[0].rule}] {errors[0].message}")
                continue
            lost: list[str] = []
            row = FORMATS[to].dump(_rebase(r.sample, reader.media_root, out_dir), lost)
            if r.sample.id is not None:
                if lines:
                    lost.append("row ids (a .txt file holds only the text)")
                else:
                    row = {"id": r.sample.id, **row}
            if lines and ("\n" in row["text"] or "\r" in row["text"] or not row["text"].strip()):
                lost.append("a document with line breaks (they become spaces) or no text (a .txt file holds one "
                            "document a line): write .jsonl instead")
                row = {"text": " ".join(row["text"].splitlines())}
            if lost:
                report.lossy_rows += 1
                for what in lost:
                    report.losses[what] = report.losses.get(what, 0) + 1
                lost_rows.append(f"  {src}:{r.line} would lose: {'; '.join(lost)}")
            report.rows += 1
            if bad or (lost_rows and not lossy):
                continue  # keep reading to list every problem; the output will not be written
            yield row

    tmp = f"{dst}.partial"
    try:
        container = "txt" if lines else "array" if dst.lower().endswith(".json") else "jsonl"
        write_rows(tmp, rows(), container)
        report.source_format = reader.format
        if bad:
            raise UserError(f"{src} has {len(bad)} row(s) with errors; nothing was written:\n"
                            + "\n".join(bad[:SHOW]) + f"\nFix them first (`mmtune data check {src}` lists every one).")
        if lost_rows and not lossy:
            raise UserError(
                f"converting to {to} would lose information in {len(lost_rows)} of {report.rows} row(s); "
                "nothing was written:\n" + "\n".join(lost_rows[:SHOW])
                + ("\n  ..." if len(lost_rows) > SHOW else "")
                + "\nConvert to a format that holds it (openai holds everything), or pass --lossy to drop it."
            )
        os.replace(tmp, dst)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return report


def _rebase(sample: Sample, media_root: str, out_dir: str) -> Sample:
    """Relative media paths → relative to the output folder (same files, new anchor)."""
    if os.path.realpath(media_root) == os.path.realpath(out_dir):
        return sample
    for m in sample.messages:
        for i, p in enumerate(m.parts):
            if p.type != "text" and classify(p.ref) == "path" and not _absolute(p.ref):
                new = os.path.relpath(local_path(p.ref, media_root), out_dir)
                m.parts[i] = Part(p.type, ref=new)
    return sample


def _absolute(ref: str) -> bool:
    return ref.startswith("file://") or os.path.isabs(os.path.expanduser(ref))
