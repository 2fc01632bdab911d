"""A GGUF file's metadata scalars, read from its header alone.

gguf-py's `GGUFReader` parses every field and tensor up front (a tokenizer's vocabulary array
is hundreds of thousands of small reads: seconds even for a tiny model). Asking a file for its
type or context length needs none of that: this reads the key/value section in order, skips
arrays without decoding them, and stops as soon as the keys asked for are found.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any, BinaryIO

from mmtune.errors import UserError

_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9


def read_metadata(path: str | Path, keys: set[str] | None = None) -> dict[str, Any]:
    """Scalar and string values of the file's metadata (arrays are skipped), all of them or just `keys`."""
    path = Path(path)
    with open(path, "rb") as f:
        if f.read(4) != b"GGUF":
            raise UserError(f"{path} is not a GGUF file (no GGUF magic at its start)")
        (version,) = struct.unpack("<I", f.read(4))
        order = "<" if version < 1 << 16 else ">"  # a big-endian file reads as a huge version
        if order == ">":
            (version,) = struct.unpack(">I", struct.pack("<I", version))
        if version < 2:
            raise UserError(f"{path} is GGUF version {version}; this reader takes version 2 and later")
        _tensors, count = struct.unpack(order + "QQ", f.read(16))
        out: dict[str, Any] = {}
        for _ in range(count):
            key = _string(f, order)
            (kind,) = struct.unpack(order + "I", f.read(4))
            if kind == _ARRAY:
                _skip_array(f, order)
                continue
            value = _value(f, order, kind)
            if keys is None or key in keys:
                out[key] = value
                if keys is not None and len(out) == len(keys):
                    break
        return out


def _string(f: BinaryIO, order: str) -> str:
    (n,) = struct.unpack(order + "Q", f.read(8))
    return f.read(n).decode("utf-8", errors="replace")


def _value(f: BinaryIO, order: str, kind: int) -> Any:
    if kind == _STRING:
        return _string(f, order)
    fmt = _SCALARS.get(kind)
    if fmt is None:
        raise UserError(f"unknown GGUF value type {kind}: the file is damaged or newer than this reader")
    (value,) = struct.unpack(order + fmt, f.read(struct.calcsize(fmt)))
    return value


def _skip_array(f: BinaryIO, order: str) -> None:
    kind, n = struct.unpack(order + "IQ", f.read(12))
    if kind == _STRING:
        for _ in range(n):
            (size,) = struct.unpack(order + "Q", f.read(8))
            f.seek(size, 1)
    elif kind == _ARRAY:
        for _ in range(n):
            _skip_array(f, order)
    elif kind in _SCALARS:
        f.seek(n * struct.calcsize(_SCALARS[kind]), 1)
    else:
        raise UserError(f"unknown GGUF array type {kind}: the file is damaged or newer than this reader")
