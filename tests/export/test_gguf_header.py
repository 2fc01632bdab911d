"""export/gguf_header.py reads a GGUF file's metadata scalars from the header alone: the same values
gguf-py's full reader finds, for the embedded SmolLM2 file and files mmtune writes, in a fraction of the time."""

from __future__ import annotations

import time

import pytest
from helpers.tokenizers import GGUF_NAME, gguf_folder

from mmtune.errors import UserError
from mmtune.export.gguf_header import read_metadata

gguf = pytest.importorskip("gguf")


def full_reader_scalars(path) -> dict:
    reader = gguf.GGUFReader(path)
    out = {}
    for name, field in reader.fields.items():
        if name.startswith("GGUF.") or field.types[0] == gguf.GGUFValueType.ARRAY:
            continue
        out[name] = field.contents()
    return out


def test_every_scalar_equals_gguf_py_on_the_embedded_model():
    path = gguf_folder() / GGUF_NAME
    t = time.perf_counter()
    ours = read_metadata(path)
    ours_s = time.perf_counter() - t
    t = time.perf_counter()
    theirs = full_reader_scalars(path)
    theirs_s = time.perf_counter() - t
    assert ours == pytest.approx(theirs)
    assert {"general.architecture", "general.file_type", "llama.context_length"} <= set(ours)
    assert ours_s < theirs_s / 5, (ours_s, theirs_s)  # (the point of it: ~100x on this file)


def test_asked_keys_only_and_stops_early():
    path = gguf_folder() / GGUF_NAME
    assert read_metadata(path, {"general.architecture"}) == {"general.architecture": "llama"}
    assert read_metadata(path, {"no.such.key"}) == {}


def test_a_file_that_is_not_gguf_is_a_user_error(tmp_path):
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"PK\x03\x04 not a gguf")
    with pytest.raises(UserError, match="not a GGUF file"):
        read_metadata(bad)
