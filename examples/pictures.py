"""Picture LoRA that really learns, on a CPU in minutes (`make picture-demo`): a tiny FLUX-architecture model
trained here from scratch on coloured shapes, then taught a new concept (yellow circles) behind a trigger word.

    python examples/pictures.py [--out runs/picture-demo]

1. the base (mmtune.imagegen.demo.cached_base): pictures of red, green and blue circles and squares, a
   tiny FLUX.1 pipeline (the real diffusers / transformers classes) with its VAE and transformer trained on
   them. Built once per machine under ~/.cache/mmtune (a few minutes), then reused.
2. `mmtune train --model BASE --data concept/ --reg-data regular/ --trigger-word zkx ...`: the LoRA on six
   pictures of yellow circles captioned "a circle", with regularization pictures of the base shapes
   (prior preservation) and class preservation ("a circle" kept as the base draws it).
3. the measure: pictures drawn for the same prompts by the base and by the tuned model, the same seeds; of
   the pixels that are not background, the share nearest yellow (the concept) and nearest each base colour.
   `grid.png` shows them (rows: base, tuned; columns: the prompts).

With the trigger word the tuned model draws yellow circles; without it (the bare "a circle" included) no yellow,
and prompts that name a colour keep it (`--class-preservation 1`: see mmtune/imagegen/demo.py). The same check
runs as a test (tests/imagegen/test_learning.py).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/picture-demo", help="the LoRA run's folder (replaced)")
    args = p.parse_args(argv)
    from mmtune.cli import main as mmtune
    from mmtune.imagegen import demo as D

    t0 = time.monotonic()
    base = D.cached_base()
    print(f"base model: {base} ({time.monotonic() - t0:.0f} s)")
    out = Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    data = D.make_lora_data(out.with_name(out.name + "-data"))
    train = ["train", "--model", str(base), "--data", str(data["concept"]), "--reg-data", str(data["regular"]),
             "--output", str(out), *D.LORA_FLAGS]
    print("mmtune " + " ".join(train), flush=True)
    if mmtune(train) != 0:
        return 1
    results = D.score(out)
    D.save_results(results, out / "scores.json")
    D.grid_picture(out).save(out / "grid.png")
    print(D.report(results))
    ok, lines = D.verdict(results)
    print("\n".join(lines))
    print(f"{out / 'grid.png'}, {out / 'scores.json'} ({time.monotonic() - t0:.0f} s in all)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
