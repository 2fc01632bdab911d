"""Aspect-ratio buckets: each picture trains at the size of about resolution² pixels whose shape is
closest to its own, so a portrait is not cropped into a square. Pure arithmetic and Pillow."""

from __future__ import annotations

import math
from pathlib import Path

# width:height shapes offered (kohya / ai-toolkit offer similar sets)
ASPECTS = (1.0, 4 / 3, 3 / 4, 3 / 2, 2 / 3, 16 / 9, 9 / 16)


def make_buckets(resolution: int, multiple: int, enabled: bool = True) -> list[tuple[int, int]]:
    """(width, height) buckets of about resolution² pixels, sides multiples of `multiple`."""
    if not enabled:
        side = max(multiple, round(resolution / multiple) * multiple)
        return [(side, side)]
    out = []
    for aspect in ASPECTS:
        w = max(multiple, round(resolution * math.sqrt(aspect) / multiple) * multiple)
        h = max(multiple, round(resolution / math.sqrt(aspect) / multiple) * multiple)
        if (w, h) not in out:
            out.append((w, h))
    return out


def nearest_bucket(width: int, height: int, buckets: list[tuple[int, int]]) -> tuple[int, int]:
    """The bucket whose aspect ratio is closest (in log space) to width:height."""
    r = math.log(width / height)
    return min(buckets, key=lambda b: abs(math.log(b[0] / b[1]) - r))


def load_picture(path: str | Path, size: tuple[int, int]):
    """The picture as RGB at `size` (width, height): EXIF orientation applied, transparency flattened onto
    white (what `data check` says), scaled to cover the bucket and centre-cropped."""
    from PIL import Image, ImageOps

    with Image.open(path) as im:
        im = ImageOps.exif_transpose(im)
        if im.mode in ("RGBA", "LA") or (im.mode == "P" and "transparency" in im.info):
            rgba = im.convert("RGBA")
            bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            im = Image.alpha_composite(bg, rgba)
        im = im.convert("RGB")
    bw, bh = size
    scale = max(bw / im.width, bh / im.height)
    rw, rh = max(bw, round(im.width * scale)), max(bh, round(im.height * scale))
    im = im.resize((rw, rh), Image.Resampling.LANCZOS)
    left, top = (rw - bw) // 2, (rh - bh) // 2
    return im.crop((left, top, left + bw, top + bh))
