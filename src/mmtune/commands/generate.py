"""`mmtune generate`: pictures from an image-generation model, a picture LoRA run or a merged one.

torch and diffusers are imported inside `run`, so `mmtune --help` stays fast.
"""

from __future__ import annotations

import argparse
from pathlib import Path

EPILOG = """\
examples:
  mmtune generate runs/tok --prompt "TOK, a cat on a sofa" --out cat.png
  mmtune generate runs/tok --prompt "TOK, a cat" --num 4 --seed 7 --out cats.png      cats-0.png ... cats-3.png
  mmtune generate runs/tok --prompt "TOK, a cat" --compare-base --num 3 --out grid.png base row + tuned row
  mmtune generate flux.1-schnell --prompt "a lighthouse at dusk" --out base.png
"""


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "generate",
        help="draw pictures with an image-generation model or a picture LoRA run (FLUX)",
        description="Generate pictures from RUN_OR_MODEL: a picture training run (its base model + LoRA), a "
        "merged picture model, or an image-generation model (`mmtune models`, third table).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model", metavar="RUN_OR_MODEL", help="run folder, checkpoint-N/ folder, model folder or name")
    p.add_argument("--prompt", required=True, help="what to draw; include the run's trigger word for the tuned concept")
    p.add_argument("--out", required=True, metavar="PNG", help="picture file; with --num N > 1: OUT-0.png ... "
                   "(with --compare-base: one grid picture)")
    p.add_argument("--steps", type=int, help="denoising steps (default: the model's, 28 dev / 4 schnell)")
    p.add_argument("--guidance", type=float, help="guidance (default: the model's, 3.5 dev / 0 schnell)")
    p.add_argument("--seed", type=int, default=0, help="seed of the first picture; picture i uses seed + i "
                   "(default: %(default)s)")
    p.add_argument("--width", type=int, help="width in pixels (default: a run's training resolution, else the "
                   "model's, 1024)")
    p.add_argument("--height", type=int, help="height in pixels (default: a run's training resolution, else the "
                   "model's, 1024)")
    p.add_argument("--num", type=int, default=1, help="pictures to draw (default: %(default)s)")
    p.add_argument("--max-sequence-length", type=int, help="T5 tokens of the prompt (default: a run's training "
                   "length, else the model's)")
    p.add_argument("--compare-base", action="store_true", help="a run only: one grid, the base model's pictures "
                   "(LoRA off) above the tuned ones, same seeds (default: off)")
    p.add_argument("--precision", default="auto", choices=("auto", "bf16", "fp16", "fp32"),
                   help="auto = bf16 on a GPU that supports it, else fp32 (default: %(default)s)")
    p.set_defaults(func=run, _parser=p)


def run(args: argparse.Namespace) -> int:
    from mmtune.errors import UserError
    from mmtune.imagegen.generate import generate, grid, load_for_generation

    loaded = load_for_generation(args.model, args.precision)
    kw = dict(steps=args.steps, guidance=args.guidance, seed=args.seed, width=args.width, height=args.height,
              num=args.num, max_sequence_length=args.max_sequence_length)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.compare_base:
        if loaded.adapter is None:
            raise UserError("--compare-base needs a picture run (base + LoRA); this is a plain model")
        tuned = generate(loaded, args.prompt, **kw)
        loaded.pipe.disable_lora()
        base = generate(loaded, args.prompt, **kw)
        loaded.pipe.enable_lora()
        grid([base, tuned], ["base", "tuned"]).save(out)
        print(f"grid saved to {out} (top: {loaded.base}, bottom: {loaded.adapter})")
        return 0
    images = generate(loaded, args.prompt, **kw)
    paths = [out] if len(images) == 1 else [out.with_name(f"{out.stem}-{i}{out.suffix}") for i in range(len(images))]
    for image, path in zip(images, paths):
        image.save(path)
    print("saved " + ", ".join(map(str, paths)))
    return 0
