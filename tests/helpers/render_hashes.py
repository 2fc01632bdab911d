"""Hashes of what rendering makes of every fixture row, per family and `train_on` mode.

The proof that a refactor of the render -> Row path changes nothing: for each text family
(tests/helpers/tokenizers.py, the real templates) and each vision family (tests/helpers/
tiny_vlms.py, the real processors), every fixture row is rendered for training in every
`train_on` mode (and cut by a small max_length, and with reasoning dropped) and as an
inference prompt; token ids, labels, truncation facts and media tensors are hashed. A row
the renderer refuses hashes its error message, so refusals are pinned too.

    python -m tests.helpers.render_hashes          # rewrite tests/fixtures/render_hashes.json

tests/train/test_render_hashes.py recomputes and compares.
"""

from __future__ import annotations

import hashlib
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "tests" / "fixtures" / "render_hashes.json"
MEDIA = ROOT / "examples" / "data" / "media"
TEXT_FILES = sorted((ROOT / "tests" / "fixtures" / "peers").glob("*.json*")) + [ROOT / "examples" / "data" / "chat.jsonl"]
VISION_FILES = [ROOT / "examples" / "data" / n for n in ("vision_image.jsonl", "vision_multi_image.jsonl",
                                                         "vision_video.jsonl")]
MODES = ("assistant", "last", "all")
SHORT = 24  # a max_length that cuts most rows


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _tensor(value) -> list:
    import torch

    if isinstance(value, torch.Tensor):
        t = value.detach().cpu().contiguous()
        return [str(t.dtype), list(t.shape), hashlib.sha256(t.numpy().tobytes()).hexdigest()[:16]]
    if isinstance(value, list | tuple):
        return [_tensor(v) for v in value]
    return repr(value)


def _guard(fn, *args, **kwargs) -> str:
    from mmtune.errors import UserError

    try:
        return _digest(fn(*args, **kwargs))
    except UserError as e:
        return "error: " + str(e).replace(str(ROOT), "<root>")[:300]


def _samples(paths: list[Path], per_file: int = 12) -> list:
    from mmtune.data.reader import ReadOptions, load_samples

    out = []
    for path in paths:
        try:
            found = load_samples(str(path), ReadOptions(), skip_bad_rows=True, warn=lambda m: None,
                                 reasoning_rendered=True)
        except Exception:  # another kind of file (preference, plain text): not an SFT fixture
            continue
        out += [(f"{path.name}:{i}", s) for i, s in enumerate(found[:per_file])]
    return out


def vision_rows() -> list:
    """The vision fixture rows: tests/train/test_vision.py's five and the example files'."""
    from mmtune.data.schema import Message, Part, Sample

    a, media = Message.simple, str(MEDIA)
    rows = [
        Sample([Message("user", [Part.image("red_circle.png"), Part.of_text("What is this?")]),
                a("assistant", "A red circle.")], media_root=media),
        Sample([Message("user", [Part.image("red_circle.png"), Part.image("blue_square.png"),
                                 Part.of_text("Compare them.")]),
                a("assistant", "A circle and a square."), a("user", "Sure?"), a("assistant", "Yes.", weight=0),
                a("user", "Colours?"), a("assistant", "Red, blue.")], media_root=media),
        Sample([a("user", "Hi"), a("assistant", "Hello there.")]),
        Sample([Message("user", [Part.video("moving_circle.mp4"), Part.of_text("What moves?")]),
                a("assistant", "A circle.")], media_root=media),
        Sample([Message("user", [Part.image("blue_square.png"), Part.video("moving_circle.mp4"),
                                 Part.of_text("Same colour?")]), a("assistant", "No.")], media_root=media),
    ]
    return [(f"row{i}", s) for i, s in enumerate(rows)] + _samples(VISION_FILES)


def text_hashes(work: Path) -> dict:
    from mmtune.chat.render import render_prompt, render_sample
    from tests.helpers.tokenizers import FAMILIES, make_tokenizer

    def row(*args, **kwargs):
        r = render_sample(*args, **kwargs)
        return [r.input_ids, r.labels, r.truncated, r.reasoning_tokens, r.reasoning_turns, r.reasoning_dropped]

    samples = _samples(TEXT_FILES, per_file=4)
    out: dict = {}
    for family in FAMILIES:
        tok = make_tokenizer(family, work)
        for name, s in samples:
            h = {m: _guard(row, s, tok, train_on=m) for m in MODES}
            h["assistant@short"] = _guard(row, s, tok, max_length=SHORT)
            h["assistant/drop"] = _guard(row, s, tok, reasoning="drop")
            h["prompt"] = _guard(render_prompt, s, tok)
            out[f"{family}/{name}"] = h
    return out


def vision_hashes(families: tuple[str, ...] | None = None) -> dict:
    from mmtune.chat.render import MediaSizes, render_sample
    from mmtune.infer.vision import encode
    from mmtune.models.vision import load_processor
    from tests.helpers.tiny_vlms import TINY_VLM_FAMILIES, tiny_vlm_dir

    def render(*args, **kwargs) -> dict:
        r = render_sample(*args, **kwargs)
        return {**r.features(), "truncated": r.truncated}

    def row(fn, *args, **kwargs):
        return {k: _tensor(v) if not isinstance(v, list | int) else v for k, v in fn(*args, **kwargs).items()}

    rows = vision_rows()
    out: dict = {}
    for family in families or TINY_VLM_FAMILIES:
        processor = load_processor(str(tiny_vlm_dir(family)))
        four = MediaSizes(video_frames=4)
        for name, s in rows:
            h = {m: _guard(row, render, s, processor, train_on=m, sizes=four) for m in MODES}
            h["assistant@short"] = _guard(row, render, s, processor, max_length=SHORT * 4, sizes=four)
            h["prompt"] = _guard(row, encode, [s], processor, sizes=four)
            out[f"{family}/{name}"] = h
    return out


def compute() -> dict:
    import subprocess

    subprocess.run([sys.executable, str(ROOT / "examples" / "make_media.py")], check=True, capture_output=True)
    with tempfile.TemporaryDirectory() as work:
        return {"text": text_hashes(Path(work)), "vision": vision_hashes()}


if __name__ == "__main__":
    hashes = compute()
    OUT.write_text(json.dumps(hashes, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    n = sum(len(v) for part in hashes.values() for v in part.values())
    print(f"wrote {OUT} ({n} hashes)")
