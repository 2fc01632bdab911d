"""Reading a data file into canonical Samples, checking every row on the way.

`read_samples` streams: one row in memory at a time (plus a bounded duplicate index and a
bounded media cache), so a 1 GB file is read and checked in constant memory. Every row
yields a ReadResult, good or bad: rows are never dropped silently.
"""

from __future__ import annotations

import itertools
import os
from array import array
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from mmtune.data import rules
from mmtune.data.findings import ERROR, WARNING, Collector, Finding
from mmtune.data.formats import ALL_KEYS, FORMATS, detect_row, openai
from mmtune.data.formats.common import UNSUPPORTED_KEYS
from mmtune.data.media import MediaChecker
from mmtune.data.rawio import container_of, iter_rows
from mmtune.data.schema import Sample, Source
from mmtune.errors import UserError

DETECT_ROWS = 50  # rows looked at to detect a file's format
DEDUPE_LIMIT = 4_000_000  # rows remembered for duplicate detection: at most ~100 MB, whatever the file size


@dataclass
class ReadOptions:
    fmt: str | None = None  # force a format; None = detect from the rows
    rules: str = "default"  # "default" | "strict"
    media_root: str | None = None  # None = the data file's folder
    enforce_root: bool = False  # media must stay inside the root (set when the user names one)
    check_media: bool = True  # check media files exist and decode
    max_length: int | None = None  # with count_tokens: warn about rows longer than this
    count_tokens: Callable[[Sample], int] | None = None
    samples: bool = True  # build Samples; `data check` only needs findings and sets False (faster)

    def __post_init__(self):
        if self.fmt is not None and self.fmt not in FORMATS:
            raise UserError(f"unknown format {self.fmt!r}: choose one of {', '.join(FORMATS)}")
        if self.rules not in ("default", "strict"):
            raise UserError(f"unknown rule set {self.rules!r}: choose default or strict")


@dataclass
class ReadResult:
    line: int
    index: int
    raw: Any = None
    sample: Sample | None = None
    findings: list[Finding] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.sample is not None and not any(f.severity == ERROR for f in self.findings)


class FileReader:
    """Reads one file; after iteration, `format`, `kind`, `rows`, `errors`, `warnings` describe it."""

    def __init__(self, path: str, options: ReadOptions | None = None):
        self.path = path
        self.opts = options or ReadOptions()
        self.format = self.opts.fmt or ""
        self.kind = ""  # sft | preference | unpaired-preference | text, decided from the first rows
        self._once: set = set()
        self.rows = self.errors = self.warnings = 0
        root = self.opts.media_root or os.path.dirname(os.path.abspath(path))
        self.media_root = root
        self.media = MediaChecker(root, self.opts.enforce_root) if self.opts.check_media else None
        self._seen = SeenRows(DEDUPE_LIMIT)
        self._plain = None
        self._fast = False

    def __iter__(self) -> Iterator[ReadResult]:
        for result in self._results():
            self.rows += 1 if result.index >= 0 else 0
            for f in result.findings:
                if f.severity == ERROR:
                    self.errors += 1
                else:
                    self.warnings += 1
            yield result

    def _results(self) -> Iterator[ReadResult]:
        if not os.path.isfile(self.path):
            raise UserError(f"{self.path}: no such file")
        head = self._file_findings()
        if head:
            yield ReadResult(0, -1, findings=head)
        rows = iter_rows(self.path)
        first = list(itertools.islice(rows, DETECT_ROWS))
        if not first and not head:
            yield ReadResult(0, -1, findings=[Finding(ERROR, 0, "", "empty-file", "the file has no rows")])
            return
        if not self.format:
            self.format = self._detect(first)
        self.kind = self._detect_kind(first)
        if self.opts.rules == "strict" and self.kind != "sft":
            msg = (f"this is a {self.kind} file: the strict rule set is the hosted services' rules for chat SFT "
                   "files; check it with the default rules")
            yield ReadResult(0, -1, findings=[Finding(ERROR, 0, "", "strict-sft-only", msg)])
        plain = getattr(FORMATS.get(self.format), "is_plain_clean", None)
        self._plain = plain if self.opts.count_tokens is None else None
        self._fast = not self.opts.samples and self._plain is not None and self.kind == "sft"
        for raw in itertools.chain(first, rows):
            yield self._read_row(raw)

    def _file_findings(self) -> list[Finding]:
        if self.opts.rules != "strict":
            return []
        out = []
        if not self.path.endswith(".jsonl") or container_of(self.path) != "jsonl":
            msg = "the file must be a .jsonl file with one JSON object per line (strict rule 1)"
            out.append(Finding(ERROR, 0, "", "jsonl-file", msg))
        return out

    def _detect(self, first) -> str:
        if self.opts.rules == "strict":
            return "openai"
        votes: dict[str, int] = {}
        for raw in first:
            name = detect_row(raw.value) if raw.error is None else None
            if name:
                votes[name] = votes.get(name, 0) + 1
        return max(votes, key=votes.get) if votes else "unknown"

    def _detect_kind(self, first) -> str:
        module = FORMATS.get(self.format)
        if module is None:
            return "sft"
        votes: dict[str, int] = {}
        for raw in first:
            if raw.error is None and isinstance(raw.value, dict) and module.detect(raw.value):
                k = module.kind_of(raw.value)
                votes[k] = votes.get(k, 0) + 1
        return max(votes, key=votes.get) if votes else "sft"

    def _read_row(self, raw) -> ReadResult:
        out = Collector(raw.line, self._once)
        result = ReadResult(raw.line, raw.index, raw.value, findings=out.findings)
        if raw.error is not None:
            out.findings.append(raw.error)
            return result
        if self.opts.rules == "strict":  # exactly the hosted-service rule set, nothing more
            if not self.opts.samples and self._plain is openai.is_plain_clean and self._plain(raw.value):
                return result  # a plain clean chat row obeys every strict rule
            rules.check_strict_row(raw.value, out)
            if out.has_errors:
                return result
        else:
            self._dedupe(raw, out)
            if self._fast and self._plain(raw.value):
                return result  # provably clean (and so openai, sft), no sample wanted: skip building one
        if not isinstance(raw.value, dict):
            out.error("", "not-object", f"each row must be a JSON object, not {type(raw.value).__name__}")
            return result
        if self.format == "unknown":
            out.error("", "unknown-format", UNKNOWN)
            return result
        row_fmt = detect_row(raw.value)
        if row_fmt and row_fmt != self.format:
            out.error("", "format-mismatch", f"this row is in {row_fmt} shape but the file is {self.format}: "
                      "convert it (mmtune data convert) or keep one format per file")
            return result
        if self.opts.rules == "strict":
            if not self.opts.samples:
                return result
            # strict reports exactly the hosted rule set (checked above); the parse only builds the sample
            parsed = FORMATS[self.format].parse(raw.value, quiet := Collector(raw.line), self.media_root)
            if parsed is not None and not quiet.has_errors:
                parsed.sample.source = Source(self.path, raw.line, raw.index)
                result.sample = parsed.sample
            return result
        module = FORMATS[self.format]
        if not raw.value.keys() <= module.KEYS:
            self._unknown_keys(raw.value, module, out)
        parsed = module.parse(raw.value, out, self.media_root)
        if parsed is None:
            return result
        parsed.sample.source = Source(self.path, raw.line, raw.index)
        row_id = raw.value.get("id")
        if row_id is not None:
            if isinstance(row_id, str | int) and not isinstance(row_id, bool):
                parsed.sample.id = row_id
            else:
                out.error("id", "wrong-type", "'id' must be a string or an integer")
        result.sample = parsed.sample
        if parsed.sample.kind != self.kind:
            hint = (" (a row whose only message is an assistant message is pre-training text: add the user turn)"
                    if parsed.sample.kind == "text" and self.format == "openai" else "")
            out.error("", "kind-mismatch", f"this row is {parsed.sample.kind} data but the file is {self.kind} data"
                      f"{hint}: keep one kind per file (SFT, preference pairs, KTO rows and plain text train "
                      "differently)")
        # a row whose parse already failed somewhere is missing messages: skip the rules that
        # would only repeat that (order, "no assistant"), keep the independent ones (media)
        rules.check_parsed(parsed, out, self.media, partial=out.has_errors)
        self._length(parsed.sample, out)
        return result

    def _unknown_keys(self, row: dict, module, out: Collector) -> None:
        """A key the reader does not understand is never ignored silently: an error where it would
        change what trains (media mmtune cannot train, another format's fields), else a warning."""
        for key in row.keys() - module.KEYS:
            if key in UNSUPPORTED_KEYS:
                out.error(key, "unsupported-field", UNSUPPORTED_KEYS[key])
            elif key in ALL_KEYS:
                out.error(key, "unknown-key", f"'{key}' is not a field of {self.format} rows (it belongs to another "
                          f"format): keep one shape per row, or rename the field ({self.format} reads "
                          f"{', '.join(sorted(module.KEYS))})")
            else:
                out.warn_once(key, key, "unknown-key", f"'{key}' is not read by mmtune and is ignored "
                              f"({self.format} reads {', '.join(sorted(module.KEYS))})")

    def _dedupe(self, raw, out: Collector) -> None:
        key = hash(raw.text.strip()) if raw.text else hash(repr(raw.value))
        first = self._seen.add(key, raw.line)
        if first is not None:
            out.warn("", "duplicate-row", f"same row as line {first}: remove one copy, or keep it on purpose")

    def _length(self, sample: Sample, out: Collector) -> None:
        o = self.opts
        if o.count_tokens is None or o.max_length is None:
            return
        n = o.count_tokens(sample)
        if n > o.max_length:
            out.warn("", "too-long", f"{n} tokens, over max length {o.max_length}: {n - o.max_length} tokens "
                     "will be cut (raise --max-length, shorten the row, or drop long rows)")


class SeenRows:
    """Row hashes → first line, in a compact open-addressing table (12 bytes a slot, half full).

    A dict would cost ~100 bytes a row; this keeps duplicate detection affordable on files of
    millions of rows and bounded (`limit` rows) beyond that."""

    def __init__(self, limit: int):
        self.limit, self.n = limit, 0
        self._alloc(1 << 12)

    def _alloc(self, size: int) -> None:
        self.mask = size - 1
        self.keys = array("Q", bytes(8 * size))
        self.lines = array("L", bytes(array("L").itemsize * size))

    def add(self, h: int, line: int) -> int | None:
        """The first line with this hash, or None (and remember this one)."""
        h = (h & 0xFFFFFFFFFFFFFFFF) or 1  # 0 marks an empty slot
        keys, mask = self.keys, self.mask
        i = h & mask
        while keys[i]:
            if keys[i] == h:
                return self.lines[i]
            i = (i + 1) & mask
        if self.n >= self.limit:
            return None
        keys[i], self.lines[i] = h, line
        self.n += 1
        if 2 * self.n > mask:
            self._grow()
        return None

    def _grow(self) -> None:
        old = [(k, v) for k, v in zip(self.keys, self.lines) if k]
        self._alloc(2 * (self.mask + 1))
        for k, v in old:
            i = k & self.mask
            while self.keys[i]:
                i = (i + 1) & self.mask
            self.keys[i], self.lines[i] = k, v


UNKNOWN = ("the row matches no known format: use openai {\"messages\"}, swift {\"query\", \"response\"}, "
           "llava {\"conversations\"}, alpaca {\"instruction\", \"output\"}, trl {\"prompt\", \"completion\"} or "
           "text {\"text\"} (see docs/data.md), or pass --format")


def read_samples(path: str, options: ReadOptions | None = None) -> Iterator[ReadResult]:
    return iter(FileReader(path, options))


# the training stage each kind of data is for (`mmtune train --stage`), and the kind each stage trains on
STAGE_OF_KIND = {"sft": "sft", "preference": "dpo", "unpaired-preference": "kto", "text": "pt"}
KIND_WORDS = {"sft": "conversations (SFT data)", "preference": "preference pairs (chosen and rejected answers)",
              "unpaired-preference": "KTO rows (answers labelled desirable or undesirable)",
              "text": "plain text for continued pre-training"}
KIND_OF_STAGE = {**{stage: kind for kind, stage in STAGE_OF_KIND.items()}, "simpo": "preference",
                 "orpo": "preference"}
_STAGES_OF_KIND = {"preference": "dpo`, `--stage simpo` or `--stage orpo"}


def file_kind(path: str, options: ReadOptions | None = None) -> tuple[str, str]:
    """(format, kind) of a file, from its first rows (cheap: nothing is parsed or checked)."""
    reader = FileReader(path, options)
    if not os.path.isfile(path):
        raise UserError(f"{path}: no such file")
    first = list(itertools.islice(iter_rows(path), DETECT_ROWS))
    fmt = reader.format or reader._detect(first)
    reader.format = fmt
    return fmt, reader._detect_kind(first)


def require_kind(paths: list[str], stage: str = "sft", options: ReadOptions | None = None) -> None:
    """Refuse, before any model loads, a data file whose kind is not the stage's: preference or KTO
    data is never trained as SFT (nor a conversation as plain text)."""
    for path in paths:
        _, kind = file_kind(path, options)
        if kind != KIND_OF_STAGE[stage]:
            want = _STAGES_OF_KIND.get(kind, STAGE_OF_KIND[kind])
            raise UserError(
                f"{path} holds {KIND_WORDS[kind]}, which `--stage {want}` trains, not this {stage.upper()} run; "
                f"or give it a file of {KIND_WORDS[KIND_OF_STAGE[stage]]}."
            )


def load_samples(path: str, options: ReadOptions | None = None, *, skip_bad_rows: bool = False,
                 warn: Callable[[str], None] = print, kind: str | None = "sft",
                 reasoning_rendered: bool = False) -> list[Sample]:
    """All good samples of a file, for training. A file with errors is refused, listing them,
    unless `skip_bad_rows`: then the bad rows are skipped and counted, with where they were.
    A file of another `kind` (None: any) is refused whatever `skip_bad_rows` says. Rows that carry
    reasoning are counted in a warning unless the caller renders it (`reasoning_rendered`)."""
    reader = FileReader(path, options)
    samples, bad = [], []
    for r in reader:
        if kind is not None and reader.kind and reader.kind != kind:
            raise UserError(f"{path} holds {KIND_WORDS[reader.kind]}, not {KIND_WORDS[kind]}: train it with "
                            f"`--stage {_STAGES_OF_KIND.get(reader.kind, STAGE_OF_KIND[reader.kind])}`")
        if r.ok:
            samples.append(r.sample)
        elif r.index >= 0 or any(f.is_error for f in r.findings):
            bad.append(r)
    errors = [f for r in bad for f in r.findings if f.severity == ERROR]
    if errors and not skip_bad_rows:
        listed = "\n".join(f"  {path}:{f.line} {f.field or '-'} [{f.rule}] {f.message}" for f in errors[:20])
        more = f"\n  ... and {len(errors) - 20} more" if len(errors) > 20 else ""
        raise UserError(
            f"{path} has {len(errors)} error(s) in {len(bad)} row(s):\n{listed}{more}\n"
            f"Fix them (`mmtune data check {path}` lists all), or pass --skip-bad-rows to train without those rows."
        )
    if bad:
        lines = ", ".join(str(r.line) for r in bad[:20]) + (" ..." if len(bad) > 20 else "")
        warn(f"warning: skipped {len(bad)} bad row(s) of {path} (lines {lines}); {len(samples)} rows remain")
    if not samples:
        raise UserError(f"{path}: no usable rows to train on")
    thinking = [s for s in samples if any(m.reasoning for m in s.all_messages())]
    if thinking and not reasoning_rendered:
        warn(f"warning: {len(thinking)} row(s) of {path} carry reasoning (reasoning_content or reasoning parts; "
             f"first at line {thinking[0].source.line}) that this training does not render: the answers are trained, "
             "the reasoning is not")
    return samples


__all__ = ["ReadOptions", "ReadResult", "FileReader", "read_samples", "load_samples", "file_kind", "require_kind",
           "STAGE_OF_KIND", "KIND_OF_STAGE", "WARNING", "ERROR"]
