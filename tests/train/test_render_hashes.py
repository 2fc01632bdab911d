"""Rendering makes exactly the tokens, labels and media tensors it made before (tests/fixtures/
render_hashes.json, written by `python -m tests.helpers.render_hashes` before the render path was
refactored): every fixture row, every family, every train_on mode, training and prompt paths."""

from __future__ import annotations

import json

import pytest

from tests.helpers.render_hashes import OUT, text_hashes, vision_hashes
from tests.helpers.tiny_vlms import TINY_VLM_FAMILIES

EXPECTED = json.loads(OUT.read_text(encoding="utf-8"))


def _diff(got: dict, want: dict) -> list[str]:
    keys = sorted(set(got) | set(want))
    return [f"{k}/{m}: {want.get(k, {}).get(m)} -> {got.get(k, {}).get(m)}" for k in keys
            for m in sorted(set(got.get(k, {})) | set(want.get(k, {})))
            if got.get(k, {}).get(m) != want.get(k, {}).get(m)]


def test_text_rendering_is_unchanged(tmp_path):
    changed = _diff(text_hashes(tmp_path), EXPECTED["text"])
    assert not changed, "\n".join(changed[:20])


@pytest.mark.parametrize("family", TINY_VLM_FAMILIES)
def test_vision_rendering_is_unchanged(family):
    want = {k: v for k, v in EXPECTED["vision"].items() if k.split("/", 1)[0] == family}
    assert want, f"no hashes recorded for {family}"
    changed = _diff(vision_hashes((family,)), want)
    assert not changed, "\n".join(changed[:20])
