"""Streaming access to the rows of a data file: JSON Lines or one JSON array.

Both are read in constant memory (one row at a time), and every row knows the 1-based
line it starts on, so findings can point at it. Nothing here knows about formats.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from mmtune.data.findings import ERROR, Finding

CHUNK = 1 << 20  # bytes read at a time from a JSON array file
MAX_ELEMENT = 256 << 20  # a single array element larger than this is reported, not buffered


@dataclass(slots=True)
class RawRow:
    line: int  # 1-based line where the row starts
    index: int  # 0-based position in the file
    value: Any = None  # the parsed JSON value (None when `error` is set)
    error: Finding | None = None  # invalid JSON / not UTF-8
    text: bytes = b""  # the row's raw bytes (JSON Lines only): used for duplicate detection


def container_of(path: str) -> str:
    """'jsonl', 'array' or 'txt' (one plain-text document a line), from the extension and,
    for .json, the first non-blank byte."""
    ext = os.path.splitext(path)[1].lower()
    if ext == ".jsonl":
        return "jsonl"
    if ext == ".txt":
        return "txt"
    with open(path, "rb") as f:
        head = f.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
    if head.startswith(b"["):
        return "array"
    return "jsonl"


def iter_rows(path: str) -> Iterator[RawRow]:
    container = container_of(path)
    if container == "array":
        yield from _iter_array(path)
    elif container == "txt":
        yield from _iter_txt(path)
    else:
        yield from _iter_jsonl(path)


def _iter_txt(path: str) -> Iterator[RawRow]:
    """A .txt file: each non-blank line is one document, read as the row {"text": line}."""
    index = 0
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            if not raw.strip():
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                msg = f"line is not valid UTF-8 (byte {e.start}): save the file as UTF-8"
                yield RawRow(lineno, index, error=Finding(ERROR, lineno, "", "utf8", msg), text=raw)
            else:
                yield RawRow(lineno, index, {"text": text.rstrip("\r\n")}, text=raw)
            index += 1


SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
SURROGATE = re.compile("[\ud800-\udfff]")


def lone_surrogate(value: Any, field: str = "") -> str | None:
    """The field of the first string (or key) holding a lone UTF-16 surrogate such as "\\ud800":
    JSON allows the escape, but the text cannot be encoded as UTF-8, so no tokenizer takes it."""
    if isinstance(value, str):
        return field if SURROGATE.search(value) else None
    if isinstance(value, dict):
        for k, v in value.items():
            f = f"{field}.{k}" if field else str(k)
            if SURROGATE.search(k):
                return f
            hit = lone_surrogate(v, f)
            if hit is not None:
                return hit
    elif isinstance(value, list):
        for i, v in enumerate(value):
            hit = lone_surrogate(v, f"{field}[{i}]")
            if hit is not None:
                return hit
    return None


def _surrogate_row(value: Any, lineno: int, index: int, raw: bytes = b"") -> RawRow | None:
    where = lone_surrogate(value)
    if where is None:
        return None
    msg = ("the text holds a lone surrogate escape (such as \\ud800) that is not a character and cannot be "
           "written as UTF-8: remove it or write the whole character (a surrogate pair)")
    return RawRow(lineno, index, error=Finding(ERROR, lineno, where, "utf8", msg), text=raw)


try:  # 3x faster parsing of JSON Lines; the standard library decides every row orjson refuses
    from orjson import loads as _fast_loads
except ImportError:  # pragma: no cover - orjson is a dependency, but mmtune works without it
    _fast_loads = json.loads


def _iter_jsonl(path: str) -> Iterator[RawRow]:
    index = 0
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            try:
                value = _fast_loads(raw)
            except ValueError:
                if not raw.strip():
                    continue
                yield _slow_row(raw, lineno, index)
            else:
                yield RawRow(lineno, index, value, text=raw)
            index += 1


def _slow_row(raw: bytes, lineno: int, index: int) -> RawRow:
    """A line the fast parser refused: decode it with the standard library for the exact verdict."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        msg = f"line is not valid UTF-8 (byte {e.start}): save the file as UTF-8"
        return RawRow(lineno, index, error=Finding(ERROR, lineno, "", "utf8", msg), text=raw)
    try:
        value = json.loads(text)
    except RecursionError:
        msg = "the JSON is nested too deeply to read: flatten the row"
        return RawRow(lineno, index, error=Finding(ERROR, lineno, "", "invalid-json", msg), text=raw)
    except json.JSONDecodeError as e:
        msg = (
            f"invalid JSON at column {e.colno}: {e.msg}. Each line must be one complete "
            "JSON object (no line breaks inside a row, no trailing commas)"
        )
        return RawRow(lineno, index, error=Finding(ERROR, lineno, "", "invalid-json", msg), text=raw)
    if SURROGATE_ESCAPE.search(text):  # the fast parser refuses lone surrogates: only this path sees them
        bad = _surrogate_row(value, lineno, index, raw)
        if bad is not None:
            return bad
    return RawRow(lineno, index, value, text=raw)


def _iter_array(path: str) -> Iterator[RawRow]:
    """Elements of a top-level JSON array, decoded one at a time with their start lines."""
    rows = _iter_array_utf8(path)
    last = 1
    try:
        for row in rows:
            last = row.line
            yield row
    except UnicodeDecodeError as e:
        msg = f"the file is not valid UTF-8 (after line {last}, byte {e.start} of a chunk): save it as UTF-8"
        yield RawRow(last, 0, error=Finding(ERROR, last, "", "utf8", msg))


def _iter_array_utf8(path: str) -> Iterator[RawRow]:
    decoder = json.JSONDecoder()
    with open(path, "rb") as f:
        reader = _Utf8Reader(f)
        buf = reader.read()
        pos, line = 0, 1
        buf = buf.lstrip("\ufeff")
        # skip to the opening bracket
        while True:
            start = _skip_ws(buf, pos)
            if start < len(buf) or reader.eof:
                break
            buf += reader.read()
        line += buf.count("\n", pos, start)
        pos = start
        if pos >= len(buf) or buf[pos] != "[":
            yield RawRow(line, 0, error=Finding(ERROR, line, "", "invalid-json", "expected a JSON array '[' here"))
            return
        pos += 1
        index = 0
        expect_comma = False
        while True:
            start = _skip_ws(buf, pos)
            while start >= len(buf) and not reader.eof:
                buf = buf[pos:] + reader.read()
                pos = 0
                start = _skip_ws(buf, pos)
            line += buf.count("\n", pos, start)
            pos = start
            if pos >= len(buf):
                msg = "the JSON array is not closed: the file ends before its final ']'"
                yield RawRow(line, index, error=Finding(ERROR, line, "", "invalid-json", msg))
                return
            ch = buf[pos]
            if ch == "]":
                return
            if expect_comma:
                if ch != ",":
                    msg = f"expected ',' or ']' between array elements, found {ch!r}"
                    yield RawRow(line, index, error=Finding(ERROR, line, "", "invalid-json", msg))
                    return
                pos += 1
                expect_comma = False
                continue
            # decode one element, reading more of the file while it is incomplete
            while True:
                try:
                    value, end = decoder.raw_decode(buf, pos)
                    break
                except RecursionError:
                    msg = f"array element {index} is nested too deeply to read: flatten it"
                    yield RawRow(line, index, error=Finding(ERROR, line, "", "invalid-json", msg))
                    return
                except json.JSONDecodeError as e:
                    if reader.eof or len(buf) - pos > MAX_ELEMENT:
                        eline = line + buf.count("\n", pos, e.pos)
                        msg = f"invalid JSON in array element {index} (line {eline}, column {e.colno}): {e.msg}"
                        yield RawRow(line, index, error=Finding(ERROR, line, "", "invalid-json", msg))
                        return
                    buf = buf[pos:] + reader.read()
                    pos = 0
            bad = _surrogate_row(value, line, index) if SURROGATE_ESCAPE.search(buf, pos, end) else None
            yield bad or RawRow(line, index, value)
            line += buf.count("\n", pos, end)
            pos = end
            index += 1
            expect_comma = True
            if pos > CHUNK:  # drop what has been consumed: keeps memory constant
                buf = buf[pos:]
                pos = 0


def _skip_ws(buf: str, pos: int) -> int:
    n = len(buf)
    while pos < n and buf[pos] in " \t\r\n":
        pos += 1
    return pos


class _Utf8Reader:
    """Reads a binary file as text in chunks, never splitting a multi-byte character."""

    def __init__(self, f):
        self.f = f
        self.eof = False
        self.dec = __import__("codecs").getincrementaldecoder("utf-8")(errors="strict")

    def read(self) -> str:
        data = self.f.read(CHUNK)
        if not data:
            self.eof = True
            return self.dec.decode(b"", final=True)
        return self.dec.decode(data)


def write_rows(path: str, rows: Iterator[dict] | list[dict], container: str | None = None) -> int:
    """Write rows as JSON Lines or as a JSON array (chosen by `container` or the extension).

    Written to a temporary file first and renamed, so a failure never leaves half a file
    where the user expects a whole one.
    """
    container = container or ("array" if path.lower().endswith(".json") else "txt" if path.lower().endswith(".txt")
                              else "jsonl")
    tmp = f"{path}.tmp-{os.getpid()}"
    n = 0
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            if container == "array":
                f.write("[\n")
                for row in rows:
                    f.write(",\n" if n else "")
                    f.write(json.dumps(row, ensure_ascii=False, indent=2))
                    n += 1
                f.write("\n]\n")
            elif container == "txt":  # {"text"} rows, one document a line
                for row in rows:
                    f.write(row["text"])
                    f.write("\n")
                    n += 1
            else:
                for row in rows:
                    f.write(json.dumps(row, ensure_ascii=False))
                    f.write("\n")
                    n += 1
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return n
