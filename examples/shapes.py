"""Coloured shapes: a vision fine-tuning task small enough to learn on a laptop CPU.

Images of one circle, square or triangle in one of six colours, on a grey background of any
brightness, at any position and size; chats ask (in varied words) which colour the shape is
and the assistant answers with the colour's name. A fresh vision tower on top of the frozen
SmolLM2 (`mmtune.models.compose`) learns this in a few minutes.

    python examples/shapes.py data runs/shapes-data                # train.jsonl, test.jsonl, images/
    python examples/shapes.py compose runs/shapes-llava            # SmolLM2 + fresh tower + projector
    mmtune train --config examples/configs/vision_shapes.yaml      # tower + projector, LM frozen
    python examples/shapes.py score runs/shapes-llava-tuned runs/shapes-data/test.jsonl

(`make shapes` runs all four.) The same task by preference training alone, on the composed base:

    python examples/shapes.py pairs runs/shapes-data               # train_pairs.jsonl, test_pairs.jsonl
    mmtune train --config examples/configs/vision_shapes_dpo.yaml  # DPO: right colour over a wrong one
    python examples/shapes.py score-pairs runs/shapes-llava-dpo runs/shapes-data/test_pairs.jsonl

(`make shapes-dpo` runs these, scoring the base's pairs first.) Rows are short on purpose: a one-line
system message (SmolLM2's template otherwise adds its longer default) and four image tokens per
picture (`TOWER`) cut the tokens the frozen language model runs per row by 40% (a padded batch of 8:
58 -> 35), and each training step's time by about half.

Everything is deterministic: the same seed draws the same images; the test split uses its own
seed, so its images differ from the training ones.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

COLOURS = {  # name: RGB centre; each image jitters it a little
    "red": (215, 35, 35),
    "green": (40, 165, 60),
    "blue": (40, 75, 215),
    "yellow": (235, 215, 40),
    "purple": (135, 50, 175),
    "orange": (250, 115, 10),
}
SHAPES = ("circle", "square", "triangle")
QUESTIONS = (
    "What colour is the shape?",
    "What color is the shape in this image?",
    "Which colour is the object?",
    "Name the colour of the shape.",
    "What colour is it? Answer in one word.",
    "Tell me the shape's color.",
)
# A short system message: without one, SmolLM2's template adds its default (about three times as long),
# and every training row pays for those tokens in each step.
SYSTEM = "Answer in one word."
IMAGE_SIZE = 64
TRAIN_SEED, TEST_SEED = 1, 2
# The tower's view: 32x32 pixels in four 16x16 patches, so four image tokens per picture. A colour needs no
# finer grid, and each token less shortens every row the frozen language model runs forward and back.
TOWER = {"image_size": 32, "patch_size": 16}


def draw(rng: random.Random, colour: str, shape: str, size: int = IMAGE_SIZE):
    """One image: `shape` filled with (a jittered) `colour` on a grey background, anywhere, any size."""
    from PIL import Image, ImageDraw

    grey = rng.randint(0, 255)
    im = Image.new("RGB", (size, size), (grey, grey, grey))
    fill = tuple(max(0, min(255, c + rng.randint(-20, 20))) for c in COLOURS[colour])
    side = rng.randint(size // 4, size * 3 // 4)
    x, y = rng.randint(0, size - side), rng.randint(0, size - side)
    d = ImageDraw.Draw(im)
    if shape == "circle":
        d.ellipse([x, y, x + side, y + side], fill=fill)
    elif shape == "square":
        d.rectangle([x, y, x + side, y + side], fill=fill)
    else:
        d.polygon([(x + side // 2, y), (x + side, y + side), (x, y + side)], fill=fill)
    return im


def make_split(out: Path, name: str, n: int, seed: int) -> Path:
    """`n` rows in `out/<name>.jsonl` (OpenAI chat format, one image each), images in out/images/."""
    rng = random.Random(seed)
    (out / "images").mkdir(parents=True, exist_ok=True)
    colours = list(COLOURS)
    lines = []
    for i in range(n):
        colour = colours[i % len(colours)]  # balanced classes
        shape = rng.choice(SHAPES)
        ref = f"images/{name}_{i:04d}_{colour}_{shape}.png"
        draw(rng, colour, shape).save(out / ref)
        lines.append(json.dumps({"messages": [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": ref}},
                                         {"type": "text", "text": rng.choice(QUESTIONS)}]},
            {"role": "assistant", "content": colour}]}))
    rng.shuffle(lines)
    path = out / f"{name}.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def make_data(out: str | Path, train: int = 240, test: int = 60) -> tuple[Path, Path]:
    out = Path(out)
    return make_split(out, "train", train, TRAIN_SEED), make_split(out, "test", test, TEST_SEED)


def compose(out: str | Path, text_model: str = "smollm2-135m-instruct", seed: int = 0) -> Path:
    """The base model of this task: `text_model` + a fresh vision tower (`TOWER`) and projector."""
    from mmtune.models.compose import VisionTower, compose_llava

    return compose_llava(text_model, out, tower=VisionTower(**TOWER), seed=seed)


def make_pairs(sft: str | Path, out: str | Path, seed: int = 0) -> Path:
    """Preference pairs from a split's rows (OpenAI's preference format): the same image and question,
    the right colour preferred to a wrong one (drawn with `seed`). Image paths stay relative to the
    images/ folder beside `sft`, so `out` goes in the same folder."""
    rng = random.Random(seed)
    lines = []
    for line in Path(sft).read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        *prompt, answer = row["messages"]
        wrong = rng.choice([c for c in COLOURS if c != answer["content"]])
        lines.append(json.dumps({"input": {"messages": prompt},
                                 "preferred_output": [answer],
                                 "non_preferred_output": [{"role": "assistant", "content": wrong}]}))
    out = Path(out)
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return out


def pair_accuracy(model_dir: str | Path, pairs: str | Path, *, batch_size: int = 8, model=None) -> float:
    """Share of pairs whose preferred answer the model gives the higher log-probability, each side scored
    exactly as preference training renders and scores it (mmtune.train.preference)."""
    import torch

    from mmtune.config import resolve_config
    from mmtune.models.registry import find_spec
    from mmtune.train.preference import PreferenceCollator, build_preference_datasets, completion_logps
    from mmtune.train.setup import load_vision_processor

    cfg = resolve_config({"model": str(model_dir), "data": [str(pairs)], "stage": "dpo", "max_length": 128,
                          "packing": False})
    spec = find_spec(str(model_dir))
    processor = load_vision_processor(cfg)
    rows = build_preference_datasets(cfg, processor, lambda _: None, spec).train
    if model is None:
        from transformers import AutoModelForImageTextToText

        model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32)
    model.eval()
    collate = PreferenceCollator(processor.tokenizer.pad_token_id, pack=False, layout=spec.media_layout)
    right = 0
    for start in range(0, len(rows), batch_size):
        chunk = [rows[i] for i in range(start, min(start + batch_size, len(rows)))]
        with torch.inference_mode():
            logps = completion_logps(model, collate(chunk))[0]
        right += int((logps[:len(chunk)] > logps[len(chunk):]).sum())
    return right / max(len(rows), 1)


def colour_said(text: str) -> str | None:
    """The one colour name an answer says, else None (none, or several)."""
    words = {w.strip(".,!;:'\"()").lower() for w in text.split()}
    said = [c for c in COLOURS if c in words]
    return said[0] if len(said) == 1 else None


def answers(model_dir: str | Path, data: str | Path, *, batch_size: int = 16, max_new_tokens: int = 4,
            model=None, processor=None) -> list[tuple[str, str]]:
    """(expected colour, generated answer) for every row of `data`, greedy, through the model's processor."""
    import torch

    from mmtune.chat.render import vision_messages
    from mmtune.data.media_io import load_image
    from mmtune.data.reader import load_samples
    from mmtune.models.vision import load_processor

    if model is None:
        from transformers import AutoModelForImageTextToText

        model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32)
    processor = processor or load_processor(str(model_dir))
    processor.tokenizer.padding_side = "left"
    model.eval()
    samples = list(load_samples(str(data)))
    out = []
    for start in range(0, len(samples), batch_size):
        chunk = samples[start:start + batch_size]
        prompts, images = [], []
        for s in chunk:
            prompt, _ = s.prompt_and_answer()
            prompts.append(processor.apply_chat_template(vision_messages(prompt), add_generation_prompt=True))
            images.append([load_image(p.ref, s.media_root) for p in s.images])
        batch = processor(text=prompts, images=images, padding=True, return_tensors="pt")
        with torch.inference_mode():
            gen = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False)
        texts = processor.tokenizer.batch_decode(gen[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
        for s, text in zip(chunk, texts, strict=True):
            out.append((s.messages[-1].text.strip(), text.strip()))
    return out


def accuracy(pairs: list[tuple[str, str]]) -> float:
    return sum(colour_said(got) == want for want, got in pairs) / max(len(pairs), 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("data", help="write train.jsonl, test.jsonl and their images into a folder")
    p.add_argument("out")
    p.add_argument("--train", type=int, default=240)
    p.add_argument("--test", type=int, default=60)
    p = sub.add_parser("compose", help="SmolLM2 + a fresh small vision tower and projector, as a LLaVA folder")
    p.add_argument("out")
    p.add_argument("--text-model", default="smollm2-135m-instruct")
    p.add_argument("--seed", type=int, default=0)
    p = sub.add_parser("pairs", help="preference pairs (right colour over a wrong one) from a data folder's splits")
    p.add_argument("out", help="the folder `data` wrote: train_pairs.jsonl and test_pairs.jsonl go beside its splits")
    p = sub.add_parser("score-pairs", help="share of pairs whose right colour the model gives the higher log-prob")
    p.add_argument("model")
    p.add_argument("pairs")
    p = sub.add_parser("score", help="greedy answers on a split: share of answers naming the right colour")
    p.add_argument("model")
    p.add_argument("data")
    p.add_argument("--show", type=int, default=5, help="print this many answers")
    args = parser.parse_args(argv)

    if args.command == "data":
        train, test = make_data(args.out, args.train, args.test)
        print(f"wrote {train} ({args.train} rows) and {test} ({args.test} rows)")
    elif args.command == "pairs":
        for split, seed in (("train", 0), ("test", 1)):
            print(f"wrote {make_pairs(Path(args.out) / f'{split}.jsonl', Path(args.out) / f'{split}_pairs.jsonl', seed)}")
    elif args.command == "score-pairs":
        start = time.perf_counter()
        print(f"prefers the right colour on {pair_accuracy(args.model, args.pairs):.1%} of the pairs "
              f"({time.perf_counter() - start:.0f}s)")
    elif args.command == "compose":
        print(f"wrote {compose(args.out, args.text_model, seed=args.seed)}")
    else:
        start = time.perf_counter()
        pairs = answers(args.model, args.data)
        for want, got in pairs[:args.show]:
            print(f"  expected {want!r:10} answered {got!r}")
        print(f"accuracy {accuracy(pairs):.1%} on {len(pairs)} rows ({time.perf_counter() - start:.0f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
