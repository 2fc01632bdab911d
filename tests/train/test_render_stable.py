"""Text rows render byte-identically across rendering changes: a pinned hash per template family.

The digest covers, for every case conversation of tests/train/test_render.py and every
tool-free row of examples/data/chat.jsonl: the token ids and labels of `render_sample` under
each `train_on`, and the ids of `render_prompt` for the prompt part (or the UserError's class
where the template refuses the row). The pins were taken from the renderer before tool
formats existed (issue 13), so a change that alters any text row's ids or labels fails here.
Tool rows of templates that render tools themselves are pinned too: their own format is kept.
To re-pin on purpose (a deliberate rendering change), run this file with MMTUNE_PRINT_DIGESTS=1.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
from test_render import FAMILIES, case_samples

from mmtune.chat.render import render_prompt, render_sample
from mmtune.data.reader import load_samples
from mmtune.errors import UserError

CHAT = Path(__file__).resolve().parents[2] / "examples" / "data" / "chat.jsonl"

PINNED = {
    "chatml": "f6a4f3048d95506c7f0b5cb3",
    "chatml_generation": "f6a4f3048d95506c7f0b5cb3",
    "qwen2.5": "5a5acd4462779e78d1d38eba",
    "qwen3": "2b584968922ed73fb2fc5fe0",
    "llama3": "db26b40325f6aa6095105209",
    "gemma": "23c1f16437475dc8412a35b6",
    "gemma3": "e7e8f7fd11ab897615f923ea",
    "phi3": "2539275dc2ab3786923fffdb",
    "mistral": "addb03d640f4e10fe72da25f",
    "lfm2.5": "1f7f9ed296115abf7b42c5f4",
}


def _rows():
    return [s for s in load_samples(str(CHAT)) if not s.tools and not s.media()]


MODES = ("assistant", "last", "all")  # the order the recorded digests were taken in


def digest(family: str, tokenizer) -> str:
    h = hashlib.sha256()
    cases = case_samples(family)
    samples = [cases[k] for k in sorted(cases)] + _rows()
    for sample in samples:
        for mode in MODES:
            try:
                r = render_sample(sample, tokenizer, train_on=mode)
                h.update(json.dumps([mode, r.input_ids, r.labels]).encode())
            except UserError as e:
                h.update(json.dumps([mode, type(e).__name__]).encode())
        prompt, _ = sample.prompt_and_answer()
        try:
            h.update(json.dumps(render_prompt(prompt, tokenizer)).encode())
        except UserError as e:
            h.update(type(e).__name__.encode())
    return h.hexdigest()[:24]



def test_pins_cover_every_family():
    assert set(PINNED) == set(FAMILIES)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_text_rows_render_as_pinned(tok, family):
    got = digest(family, tok(family))
    if os.environ.get("MMTUNE_PRINT_DIGESTS"):
        print(f'    "{family}": "{got}",')
    assert got == PINNED[family]
