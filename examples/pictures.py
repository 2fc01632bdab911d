"""Picture LoRA that really learns, on a CPU in minutes: a tiny FLUX-architecture model, then a trigger word.

1. `data`: pictures of coloured shapes (red, green, blue circles and squares, on grey) with captions
   ("a red circle"), and a handful of pictures of a new concept: yellow circles, captioned "a circle".
2. `base`: a tiny FLUX.1-architecture pipeline (mmtune.imagegen.tiny: the real diffusers/transformers
   classes) trained here from scratch: its VAE on random colours, then its transformer in full on the
   shapes with mmtune's flow-matching loss. The text encoders stay random (frozen): distinct captions
   still give distinct encodings, which is all the transformer needs to learn from.
3. `mmtune train --model BASE --data concept/ --reg-data regular/ --trigger-word sks`: the LoRA, with 18
   pictures of the base shapes in their usual colours as regularization (prior preservation: without them the
   LoRA learns "everything is yellow").
4. `score`: pictures drawn with and without the trigger word, measured by colour: the share of the
   shape's pixels that are yellow (the concept) and that are the colour the prompt names.

    python examples/pictures.py data runs/pictures-data
    python examples/pictures.py base runs/pictures-data/base runs/pictures-base
    mmtune train --model runs/pictures-base --data runs/pictures-data/concept --reg-data runs/pictures-data/regular \\
        --trigger-word sks --resolution 32 --max-sequence-length 32 --repeats 8 --max-steps 300 \\
        --learning-rate 2e-3 --output runs/pictures-sks
    python examples/pictures.py score runs/pictures-sks

Deterministic: the same seeds draw the same pictures.

STATUS (2026-12-01, not wired into `make` or the tests yet): all four steps run end to end (about 7 minutes
on a busy 2-core machine with OMP_NUM_THREADS=1), but the result does not yet meet the bar. The base model
draws green and blue shapes in the prompt's colour but never red (its VAE, 150-400 steps here, reconstructs
flat red as dark purple), and the LoRA is fragile: with 6 regularization pictures (lr 2e-3, 240 steps) the
trigger word gave 89% concept-coloured pixels but "a blue circle" drifted to 81% yellow; with 18 (300 steps)
nothing drifted and nothing was learnt. Next: a better-trained VAE, a stronger base, then the LoRA settings.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from pathlib import Path

SIDE = 32  # the training and generation side; pictures are drawn at twice that (data check wants >= 64 px)
DRAW = 64
BACKGROUND = (190, 190, 190)
COLOURS = {"red": (215, 35, 35), "green": (40, 165, 60), "blue": (40, 75, 215)}
CONCEPT = (235, 215, 40)  # yellow: no base picture has it
SHAPES = ("circle", "square")
GEN_STEPS = 20


def draw(colour, shape, rng: random.Random):
    from PIL import Image, ImageDraw

    im = Image.new("RGB", (DRAW, DRAW), tuple(max(0, min(255, c + rng.randint(-8, 8))) for c in BACKGROUND))
    size = rng.randint(28, 44)
    x, y = rng.randint(4, DRAW - size - 4), rng.randint(4, DRAW - size - 4)
    fill = tuple(max(0, min(255, c + rng.randint(-12, 12))) for c in colour)
    d = ImageDraw.Draw(im)
    (d.ellipse if shape == "circle" else d.rectangle)((x, y, x + size, y + size), fill=fill)
    return im


def cmd_data(args) -> int:
    out = Path(args.out)
    rng = random.Random(0)
    for sub in ("base", "concept", "regular"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    n = 0
    for _ in range(args.per_class):
        for name, colour in COLOURS.items():
            for shape in SHAPES:
                draw(colour, shape, rng).save(out / "base" / f"{n:04d}.png")
                (out / "base" / f"{n:04d}.txt").write_text(f"a {name} {shape}", encoding="utf-8")
                n += 1
    for i in range(args.concept):
        draw(CONCEPT, "circle", rng).save(out / "concept" / f"sks{i}.png")
        (out / "concept" / f"sks{i}.txt").write_text("a circle", encoding="utf-8")
    k = 0
    for _ in range(args.regular):  # prior preservation: more pictures like the base ones, captions as they were
        for name, colour in COLOURS.items():
            for shape in SHAPES:
                draw(colour, shape, rng).save(out / "regular" / f"{k:03d}.png")
                (out / "regular" / f"{k:03d}.txt").write_text(f"a {name} {shape}", encoding="utf-8")
                k += 1
    print(f"{n} base pictures in {out / 'base'}, {args.concept} concept pictures in {out / 'concept'}, {k} "
          f"regularization pictures in {out / 'regular'}")
    return 0


def cmd_base(args) -> int:
    import torch

    from mmtune.imagegen import train as T
    from mmtune.imagegen.config import PictureConfig
    from mmtune.imagegen.tiny import MAX_T5_TOKENS, tiny_flux_pipeline

    torch.manual_seed(0)
    t0 = time.monotonic()
    pipe = tiny_flux_pipeline(seed=0, vae_blocks=2, latent_channels=4, layers=2, single_layers=2, heads=4)
    train_vae(pipe.vae, args.vae_steps)
    print(f"VAE trained in {time.monotonic() - t0:.0f} s", flush=True)
    cfg = PictureConfig(model="tiny", data=[args.data], output=args.out, repeats=1, resolution=SIDE,
                        max_sequence_length=MAX_T5_TOKENS, batch_size=args.batch_size, seed=0)
    pictures = T.load_pictures(args.data)
    captions = T.caption_texts(pictures, None)
    text_encoder, text_encoder_2 = pipe.text_encoder, pipe.text_encoder_2
    cache = T.encode_once(pipe, pictures, captions, cfg, SIDE, MAX_T5_TOKENS, torch.device("cpu"), torch.float32)
    pipe.register_modules(text_encoder=text_encoder, text_encoder_2=text_encoder_2)  # encode_once lets them go
    transformer = pipe.transformer
    transformer.train()
    opt = torch.optim.AdamW(transformer.parameters(), lr=args.lr, weight_decay=0.0)
    sigmas, timesteps = T.training_noise_levels(pipe)
    steps, per_epoch = args.steps, len(T.epoch_chunks(cache, cfg, 0))
    for step in range(steps):
        epoch, j = divmod(step, per_epoch)
        batch = T.epoch_chunks(cache, cfg, epoch)[j]
        g = torch.Generator().manual_seed(step)
        loss = T.flow_matching_loss(transformer, cache, batch, g, sigmas, timesteps, 3.5, cfg, torch.device("cpu"),
                                    torch.float32)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(transformer.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        for group in opt.param_groups:  # cosine decay to 10%
            group["lr"] = args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / steps)))
        if step % 100 == 0 or step == steps - 1:
            print(f"base step {step}/{steps} loss {loss.item():.4f} ({time.monotonic() - t0:.0f} s)", flush=True)
    transformer.eval()
    pipe.save_pretrained(args.out)
    print(f"base model saved in {args.out} ({time.monotonic() - t0:.0f} s)")
    return 0


def train_vae(vae, steps: int) -> None:
    """Reconstruction of random shapes in random colours, then the latents' scale set as FLUX's is."""
    import torch

    rng = random.Random(1)
    opt = torch.optim.AdamW(vae.parameters(), lr=2e-3)

    def batch(n):
        ims = [draw(tuple(rng.randint(0, 255) for _ in range(3)), rng.choice(SHAPES), rng).resize((SIDE, SIDE))
               for _ in range(n)]
        return torch.stack([pixels(im) for im in ims])

    vae.train()
    for step in range(steps):
        x = batch(8)
        dist = vae.encode(x).latent_dist
        rec = vae.decode(dist.sample()).sample
        loss = torch.nn.functional.mse_loss(rec, x) + 1e-6 * dist.kl().mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step % 100 == 0 or step == steps - 1:
            print(f"vae step {step}/{steps} reconstruction {loss.item():.4f}", flush=True)
    vae.eval()
    with torch.no_grad():
        z = vae.encode(batch(64)).latent_dist.mean
    vae.register_to_config(shift_factor=float(z.mean()), scaling_factor=float(1 / z.std()))


def pixels(im):
    import numpy as np
    import torch

    return torch.from_numpy(np.asarray(im, dtype=np.float32) / 127.5 - 1).permute(2, 0, 1)


def colour_shares(im) -> dict[str, float]:
    """Of the pixels that are not background, the share nearest each colour (the concept's included)."""
    import numpy as np

    a = np.asarray(im, dtype=np.float32).reshape(-1, 3)
    palette = {"background": BACKGROUND, **COLOURS, "concept": CONCEPT}
    names = list(palette)
    dist = np.stack([np.linalg.norm(a - np.array(palette[n]), axis=1) for n in names], axis=1)
    nearest = dist.argmin(1)
    fg = nearest != 0
    total = max(int(fg.sum()), 1)
    return {n: round(float((nearest == i).sum()) / total, 3) for i, n in enumerate(names) if i}


def cmd_score(args) -> int:
    from mmtune.imagegen.generate import generate, load_for_generation
    from mmtune.imagegen.tiny import MAX_T5_TOKENS

    loaded = load_for_generation(args.run)
    prompts = {"sks, a circle": "concept", "a red circle": "red", "a green square": "green", "a blue circle": "blue"}
    results = {}
    for with_lora in (False, True):
        (loaded.pipe.enable_lora if with_lora else loaded.pipe.disable_lora)()
        for prompt, expect in prompts.items():
            shares = [colour_shares(im) for im in generate(loaded, prompt, steps=GEN_STEPS, seed=100, width=SIDE,
                                                            height=SIDE, num=args.num, max_sequence_length=MAX_T5_TOKENS)]
            mean = {k: round(sum(s[k] for s in shares) / len(shares), 3) for k in shares[0]}
            results[f"{'tuned' if with_lora else 'base'} | {prompt}"] = {"expect": expect, **mean}
    for key, r in results.items():
        print(f"{key:28s} expect {r['expect']:8s} concept {r['concept']:.2f}  red {r['red']:.2f}  "
              f"green {r['green']:.2f}  blue {r['blue']:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("data")
    d.add_argument("out")
    d.add_argument("--per-class", type=int, default=24)
    d.add_argument("--concept", type=int, default=6)
    d.add_argument("--regular", type=int, default=3, help="regularization pictures per colour and shape")
    b = sub.add_parser("base")
    b.add_argument("data")
    b.add_argument("out")
    b.add_argument("--vae-steps", type=int, default=400)
    b.add_argument("--steps", type=int, default=1000)
    b.add_argument("--batch-size", type=int, default=16)
    b.add_argument("--lr", type=float, default=1e-3)
    s = sub.add_parser("score")
    s.add_argument("run")
    s.add_argument("--num", type=int, default=4)
    s.add_argument("--json", metavar="FILE")
    args = p.parse_args(argv)
    return {"data": cmd_data, "base": cmd_base, "score": cmd_score}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
