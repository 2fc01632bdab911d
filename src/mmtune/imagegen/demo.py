"""A picture LoRA that really learns, on a CPU in minutes: a tiny FLUX-architecture model trained here from
scratch on coloured shapes, then taught a new concept behind a trigger word.

1. `make_base_data`: 16-pixel pictures (drawn at 64 px: `data check` wants that much) of red, green and blue
   circles and squares on grey, captioned "a red circle", and as often with no colour named ("a circle").
2. `build_base`: `tiny_flux_pipeline` (the real diffusers / transformers classes) with its VAE trained
   on shapes in random colours, then its transformer trained in full on those pictures with mmtune's own
   flow-matching loss (`imagegen.train.flow_matching_loss`). The text encoders stay random, frozen and in
   eval mode: distinct captions still give distinct encodings, which is all the transformer needs.
   `cached_base()` builds it once per machine under ~/.cache/mmtune (a file lock, temp folder + rename).
3. `make_lora_data`: six pictures of the new concept, yellow circles, captioned "a circle", and
   regularization pictures like the base's; then `mmtune train --model BASE --data concept/ --reg-data
   regular/` with `LORA_FLAGS` (trigger word zkx).
4. `score`: pictures drawn for the same prompts by the base (LoRA off) and the tuned model, the same seeds,
   measured by colour: of the pixels that are not background, the share nearest yellow (the concept) and
   nearest the colour the prompt names. `verdict` says what must hold.

What the numbers show (tests/imagegen/test_learning.py asserts it): with the trigger word the tuned model draws
yellow circles; without it, the bare "a circle" (the concept's own caption) included, next to no yellow; prompts
that name a colour keep it, and the base never draws yellow. Over 12 pictures (seeds 100-111), training seeds
42 / 1 / 2: "zkx, a circle" 1.00 / 0.97 / 1.00 yellow, "a circle" 0.001 / 0.000 / 0.000 (measured 2026-12-01).

Why the bare prompt drifted before (0.32-0.58 yellow, the trigger 0.65, with regularization pictures alone):
not the encoders: "zkx, a circle" and "a circle" encode less alike than "a red circle" and "a circle", which kept
its colour (CLIP pooled cosine 0.89 against 0.96, T5 sequence 0.76 against 0.82). The regularization pictures
pin "a circle" only at their own (red, green, blue) noisy latents, never near the yellow pictures where the
LoRA moves it (six more of them made it worse: 0.56). `--class-preservation 1` pins it there: the caption
without the trigger word must predict what the base predicts (LoRA off) at the concept's own noisy latents.
Alone it cut the drift to 0.003 but left the trigger at 0.34; the LoRA then has to tell the captions apart, and
does so through the trigger tokens once the text-stream projections are adapted too (LORA_TARGETS) and the
learning rate is 5e-3: the numbers above.
Deterministic: fixed seeds throughout.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

SIDE = 16  # training and generation side, pixels
DRAW = 64  # pictures are drawn at this size (the data checks' minimum) and trained at SIDE
BACKGROUND = (190, 190, 190)
COLOURS = {"red": (215, 35, 35), "green": (40, 165, 60), "blue": (40, 75, 215)}
CONCEPT = (235, 215, 40)  # yellow: no base picture has it
SHAPES = ("circle", "square")
TRIGGER = "zkx"  # letters no base caption has (the tiny tokenizers are character-level)
GEN_STEPS = 12
VERSION = 1  # bump when the base recipe changes: a new cache folder
BASE_ARCH = dict(vae_blocks=1, vae_channels=32, latent_channels=4, layers=2, single_layers=2, heads=4)
# the text stream's projections too: class preservation makes the LoRA tell "zkx, a circle" from "a circle",
# which it learns through the trigger tokens (attention-only targets: 0.75 yellow with the trigger word, these 1.00)
LORA_TARGETS = ["attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "attn.add_q_proj", "attn.add_k_proj",
                "attn.add_v_proj", "attn.to_add_out"]
# The LoRA run, measured on the 2-core CPU (tests/imagegen/test_learning.py): 250 steps of 4 pictures; the
# concept's 6 pictures twice an epoch, the 24 regularization pictures once (DreamBooth's balance gives 1 each:
# more weight on the prior than on the concept is what kept the other prompts' colours).
LORA_FLAGS = ["--trigger-word", TRIGGER, "--resolution", str(SIDE), "--max-sequence-length", "32",
              "--repeats", "2", "--batch-size", "4", "--max-steps", "250", "--learning-rate", "5e-3",
              "--scheduler", "cosine", "--warmup-steps", "10", "--lora-rank", "8", "--lora-alpha", "8",
              "--class-preservation", "1", "--lora-targets", *LORA_TARGETS,
              "--save-steps", "1000", "--logging-steps", "25", "--sample-steps", str(GEN_STEPS),
              "--sample-prompt", f"{TRIGGER}, a circle", "--sample-prompt", "a circle"]


def draw(colour: tuple[int, int, int], shape: str, rng: random.Random):
    from PIL import Image, ImageDraw

    im = Image.new("RGB", (DRAW, DRAW), tuple(max(0, min(255, c + rng.randint(-6, 6))) for c in BACKGROUND))
    size = rng.randint(30, 44)
    x, y = rng.randint(4, DRAW - size - 4), rng.randint(4, DRAW - size - 4)
    fill = tuple(max(0, min(255, c + rng.randint(-10, 10))) for c in colour)
    d = ImageDraw.Draw(im)
    (d.ellipse if shape == "circle" else d.rectangle)((x, y, x + size, y + size), fill=fill)
    return im


def _write(folder: Path, name: str, image, caption: str) -> None:
    image.save(folder / f"{name}.png")
    (folder / f"{name}.txt").write_text(caption + "\n", encoding="utf-8")


def make_base_data(out: str | Path, per_class: int = 12) -> Path:
    """The base model's pictures: per colour and shape, `per_class` captioned with the colour and as many
    without ("a circle")."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    n = 0
    for _ in range(per_class):
        for name, colour in COLOURS.items():
            for shape in SHAPES:
                _write(out, f"{n:04d}", draw(colour, shape, rng), f"a {name} {shape}")
                _write(out, f"{n + 1:04d}", draw(colour, shape, rng), f"a {shape}")
                n += 2
    return out


def make_lora_data(out: str | Path, concept: int = 6, regular: int = 2) -> dict[str, Path]:
    """concept/: yellow circles captioned "a circle" (`mmtune train --trigger-word` makes it "zkx, a circle");
    regular/: pictures like the base's, with their captions (prior preservation)."""
    out = Path(out)
    rng = random.Random(1)
    folders = {sub: out / sub for sub in ("concept", "regular")}
    for f in folders.values():
        f.mkdir(parents=True, exist_ok=True)
    for i in range(concept):
        _write(folders["concept"], f"c{i}", draw(CONCEPT, "circle", rng), "a circle")
    k = 0
    for _ in range(regular):
        for name, colour in COLOURS.items():
            for shape in SHAPES:
                _write(folders["regular"], f"r{k:03d}", draw(colour, shape, rng), f"a {name} {shape}")
                _write(folders["regular"], f"r{k + 1:03d}", draw(colour, shape, rng), f"a {shape}")
                k += 2
    return folders


def _pixels(im):
    import numpy as np
    import torch

    return torch.from_numpy(np.asarray(im, dtype=np.float32) / 127.5 - 1).permute(2, 0, 1)


def train_vae(vae, steps: int, log=print) -> None:
    """Reconstruction of shapes in random colours at SIDE, then the latents' shift and scale set as FLUX's
    are (zero mean, unit variance)."""
    import torch

    rng = random.Random(1)
    opt = torch.optim.AdamW(vae.parameters(), lr=3e-3, weight_decay=0.0)

    def batch(n):
        colours = [tuple(rng.randint(0, 255) for _ in range(3)) for _ in range(n // 2)]
        colours += [rng.choice([*COLOURS.values(), CONCEPT, BACKGROUND]) for _ in range(n - n // 2)]
        ims = [draw(c, rng.choice(SHAPES), rng).resize((SIDE, SIDE)) for c in colours]
        return torch.stack([_pixels(im) for im in ims])

    vae.train()
    for step in range(steps):
        x = batch(16)
        dist = vae.encode(x).latent_dist
        rec = vae.decode(dist.sample()).sample
        loss = torch.nn.functional.mse_loss(rec, x) + 1e-6 * dist.kl().mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        for group in opt.param_groups:
            group["lr"] = 3e-3 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / steps)))
        if step % 100 == 0 or step == steps - 1:
            log(f"vae step {step}/{steps} reconstruction {loss.item():.4f}")
    vae.eval()
    with torch.no_grad():
        z = vae.encode(batch(64)).latent_dist.mean
    vae.register_to_config(shift_factor=float(z.mean()), scaling_factor=float(1 / z.std()))


def build_base(data: str | Path, out: str | Path, vae_steps: int = 300, steps: int = 600, batch_size: int = 16,
               lr: float = 2e-3, log=print) -> Path:
    """The tiny FLUX base: VAE, then the whole transformer, trained on `data` (make_data's base/)."""
    import torch

    from mmtune.data.pictures import load_pictures
    from mmtune.imagegen import train as T
    from mmtune.imagegen.config import PictureConfig
    from mmtune.imagegen.tiny import MAX_T5_TOKENS, tiny_flux_pipeline

    t0 = time.monotonic()
    torch.manual_seed(0)
    pipe = tiny_flux_pipeline(seed=0, **BASE_ARCH)
    pipe.text_encoder.eval()  # frozen, and without T5's dropout: captions encode as they will at generation
    pipe.text_encoder_2.eval()
    train_vae(pipe.vae, vae_steps, log)
    log(f"VAE trained in {time.monotonic() - t0:.0f} s")
    cfg = PictureConfig(model="tiny", data=[str(data)], output=str(out), repeats=1, resolution=SIDE,
                        max_sequence_length=MAX_T5_TOKENS, batch_size=batch_size, seed=0, buckets=False)
    pictures = load_pictures(str(data))
    captions = T.caption_texts(pictures, None)
    encoders = pipe.text_encoder, pipe.text_encoder_2
    cpu = torch.device("cpu")
    cache = T.encode_once(pipe, pictures, captions, cfg, SIDE, MAX_T5_TOKENS, cpu, torch.float32)
    pipe.register_modules(text_encoder=encoders[0], text_encoder_2=encoders[1])  # encode_once lets them go
    transformer = pipe.transformer
    transformer.train()
    opt = torch.optim.AdamW(transformer.parameters(), lr=lr, weight_decay=0.0)
    sigmas, timesteps = T.training_noise_levels(pipe)
    per_epoch = len(T.epoch_chunks(cache, cfg, 0))
    for step in range(steps):
        epoch, j = divmod(step, per_epoch)
        batch = T.epoch_chunks(cache, cfg, epoch)[j]
        g = torch.Generator().manual_seed(step)
        loss = T.flow_matching_loss(transformer, cache, batch, g, sigmas, timesteps, 3.5, cfg, cpu, torch.float32)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(transformer.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        for group in opt.param_groups:  # warm-up, then cosine decay to 10%
            warm = min(1.0, (step + 1) / 50)
            group["lr"] = lr * warm * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / steps)))
        if step % 200 == 0 or step == steps - 1:
            log(f"base step {step}/{steps} loss {loss.item():.4f} ({time.monotonic() - t0:.0f} s)")
    transformer.eval()
    pipe.save_pretrained(out)
    log(f"base model saved in {out} ({time.monotonic() - t0:.0f} s)")
    return Path(out)


def cache_root() -> Path:
    return Path(os.environ.get("MMTUNE_CACHE", Path.home() / ".cache" / "mmtune"))


def cached_base(log=print) -> Path:
    """The base model folder, built once per machine under the mmtune cache: it appears whole (built aside,
    renamed into place, under a lock), so concurrent callers wait and then share it."""
    root = cache_root() / f"picture-demo-v{VERSION}"
    from mmtune.models.loader import file_lock

    with file_lock(cache_root() / f"picture-demo-v{VERSION}.lock"):
        if not (root / "base" / "model_index.json").is_file():
            root.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=".picture-demo-", dir=root.parent))
            try:
                build_base(make_base_data(tmp / "data"), tmp / "base", log=log)
                shutil.rmtree(root, ignore_errors=True)
                os.rename(tmp, root)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    return root / "base"


def colour_shares(im) -> dict[str, float]:
    """Of the pixels that are not background, the share nearest each colour (the concept's included)."""
    import numpy as np

    a = np.asarray(im.convert("RGB"), dtype=np.float32).reshape(-1, 3)
    palette = {"background": BACKGROUND, **COLOURS, "concept": CONCEPT}
    names = list(palette)
    dist = np.stack([np.linalg.norm(a - np.array(palette[n]), axis=1) for n in names], axis=1)
    nearest = dist.argmin(1)
    fg = nearest != 0
    total = max(int(fg.sum()), 1)
    return {"foreground": round(float(fg.mean()), 3),
            **{n: round(float((nearest == i).sum()) / total, 3) for i, n in enumerate(names) if i}}


PROMPTS = {f"{TRIGGER}, a circle": "concept", "a circle": None, "a red circle": "red", "a green square": "green",
           "a blue circle": "blue"}


def score(run: str | Path, num: int = 4, seed: int = 100) -> dict[str, dict[str, Any]]:
    """Mean colour shares of `num` pictures per prompt, base (LoRA off) and tuned, the same seeds."""
    from mmtune.imagegen.generate import load_for_generation

    loaded = load_for_generation(str(run))
    results: dict[str, dict[str, Any]] = {}
    for tuned in (False, True):
        (loaded.pipe.enable_lora if tuned else loaded.pipe.disable_lora)()
        for prompt, expect in PROMPTS.items():
            shares = [colour_shares(im) for im in draw_pictures(loaded, prompt, seed, num)]
            mean = {k: round(sum(s[k] for s in shares) / len(shares), 3) for k in shares[0]}
            results[f"{'tuned' if tuned else 'base'} | {prompt}"] = {"expect": expect, **mean}
    return results


def draw_pictures(loaded, prompt: str, seed: int, num: int) -> list:
    """`num` pictures at SIDE in one pipeline call, picture i from seed + i: the pictures `generate` draws one
    at a time (the same latents), in a fraction of the time at this size."""
    import torch

    from mmtune.imagegen.tiny import MAX_T5_TOKENS

    loaded.pipe.set_progress_bar_config(disable=True)
    return loaded.pipe(prompt, num_inference_steps=GEN_STEPS, guidance_scale=loaded.spec.default_guidance,
                       width=SIDE, height=SIDE, num_images_per_prompt=num, max_sequence_length=MAX_T5_TOKENS,
                       generator=[torch.Generator().manual_seed(seed + i) for i in range(num)]).images


def report(results: dict[str, dict[str, Any]]) -> str:
    lines = [f"{'model | prompt':26s} {'expect':8s} concept   red  green  blue"]
    for key, r in results.items():
        lines.append(f"{key:26s} {r['expect'] or '-':8s} {r['concept']:7.2f} {r['red']:5.2f} {r['green']:6.2f} "
                     f"{r['blue']:5.2f}")
    return "\n".join(lines)


def save_results(results: dict[str, dict[str, Any]], path: str | Path) -> None:
    Path(path).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")


# What "learnt" means, checked by the test and the example alike.
CONCEPT_MIN = 0.8  # with the trigger word: at least this share of the shape is yellow
OTHER_MAX = 0.2  # without it (and in the base): at most this share is yellow
NAMED_MIN = 0.4  # a prompt that names a colour keeps at least this share of it (blue drifts: 0.5 measured)


def verdict(results: dict[str, dict[str, Any]]) -> tuple[bool, list[str]]:
    """(passed, one line per check) for `score`'s results: the trigger prompt draws the concept; every other
    prompt, tuned or base, the bare "a circle" (the concept's class) included, draws next to none of it; the
    prompts that name a colour keep it."""
    checks = [(f"tuned | {TRIGGER}, a circle: concept >= {CONCEPT_MIN}",
               results[f"tuned | {TRIGGER}, a circle"]["concept"] >= CONCEPT_MIN)]
    for key, r in results.items():
        if key != f"tuned | {TRIGGER}, a circle":
            checks.append((f"{key}: concept <= {OTHER_MAX}", r["concept"] <= OTHER_MAX))
        if r["expect"] in COLOURS:
            checks.append((f"{key}: {r['expect']} >= {NAMED_MIN}", r[r["expect"]] >= NAMED_MIN))
    lines = [f"{'ok  ' if ok else 'FAIL'} {text}" for text, ok in checks]
    return all(ok for _, ok in checks), lines


def grid_picture(run: str | Path, seed: int = 100, scale: int = 4):
    """Rows base / tuned, one column per prompt (the first seed), each picture enlarged `scale` times."""
    from PIL import Image

    from mmtune.imagegen.generate import generate, grid, load_for_generation
    from mmtune.imagegen.tiny import MAX_T5_TOKENS

    loaded = load_for_generation(str(run))
    rows = []
    for tuned in (False, True):
        (loaded.pipe.enable_lora if tuned else loaded.pipe.disable_lora)()
        rows.append([generate(loaded, prompt, steps=GEN_STEPS, seed=seed, width=SIDE, height=SIDE,
                              max_sequence_length=MAX_T5_TOKENS)[0].resize((SIDE * scale,) * 2, Image.NEAREST)
                     for prompt in PROMPTS])
    return grid(rows, ["base", "tuned"])
