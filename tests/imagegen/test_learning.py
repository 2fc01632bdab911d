"""Real learning on a CPU: a tiny FLUX-architecture model trained here from scratch on coloured shapes
(mmtune.imagegen.demo, built once per machine under ~/.cache/mmtune), then a LoRA through `mmtune train` on six
pictures of yellow circles behind the trigger word `zkx`. Measured by colour: with the trigger word the tuned
model draws the concept; without it (the bare "a circle", the concept's own caption, included) next to no yellow;
prompts naming a colour keep their colour, and the base never draws yellow (mmtune.imagegen.demo.verdict)."""

from __future__ import annotations

import numpy as np
import pytest

from mmtune.cli import main
from mmtune.imagegen import demo as D
from mmtune.imagegen.generate import generate, load_for_generation


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
    # the score's batched pictures are the ones `mmtune generate` draws one at a time
    loaded = load_for_generation(str(out))
    one = generate(loaded, "a circle", steps=D.GEN_STEPS, seed=101, width=D.SIDE, height=D.SIDE, max_sequence_length=32)
    batched = D.draw_pictures(loaded, "a circle", 100, 2)[1]
    assert np.abs(np.asarray(one[0], dtype=int) - np.asarray(batched, dtype=int)).max() <= 2
