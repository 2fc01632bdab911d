"""Real learning on a CPU: a tiny FLUX-architecture model trained here from scratch on coloured shapes
(mmtune.imagegen.demo, built once per machine under ~/.cache/mmtune), then a LoRA through `mmtune train` on six
pictures of yellow circles behind the trigger word `zkx`. Measured by colour: with the trigger word the tuned
model draws the concept; prompts naming a colour (no trigger word) keep their colour with no yellow, and the
base never draws yellow (mmtune.imagegen.demo.verdict; the bare "a circle" is reported, not asserted)."""

from __future__ import annotations

import pytest

from mmtune.cli import main
from mmtune.imagegen import demo as D


@pytest.mark.slow
def test_trigger_word_teaches_a_new_concept(tmp_path):
    base = D.cached_base(log=lambda *_: None)
    data = D.make_lora_data(tmp_path / "data")
    out = tmp_path / "zkx"
    assert main(["train", "--model", str(base), "--data", str(data["concept"]), "--reg-data", str(data["regular"]),
                 "--output", str(out), *D.LORA_FLAGS]) == 0
    results = D.score(out)
    ok, lines = D.verdict(results)
    assert ok, D.report(results) + "\n" + "\n".join(lines)
    # the measure itself can fail: the base never draws the concept, whatever the prompt
    assert all(r["concept"] == 0 for k, r in results.items() if k.startswith("base"))
