"""Generates the tiny images and the short video the example data files refer to.

Run by `make demo` and `make test` (and by the tests themselves); it only writes files that
are missing, and the same files every time (no randomness).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

MEDIA = Path(__file__).resolve().parent / "data" / "media"

SHAPES = {  # name: (shape, fill colour, background)
    "red_circle": ("circle", (220, 40, 40), (245, 245, 245)),
    "blue_square": ("square", (40, 80, 220), (245, 245, 245)),
    "green_triangle": ("triangle", (40, 170, 70), (245, 245, 245)),
    "yellow_circle": ("circle", (230, 200, 30), (60, 60, 60)),
}


def draw(shape: str, fill, bg, size: int = 64, offset: int = 0):
    from PIL import Image, ImageDraw

    im = Image.new("RGB", (size, size), bg)
    d = ImageDraw.Draw(im)
    lo, hi = 12 + offset, size - 12 + offset
    if shape == "circle":
        d.ellipse([lo, lo, hi, hi], fill=fill)
    elif shape == "square":
        d.rectangle([lo, lo, hi, hi], fill=fill)
    else:
        d.polygon([(size // 2 + offset, lo), (hi, hi), (lo, hi)], fill=fill)
    return im


def make_images() -> list[Path]:
    out = []
    for name, (shape, fill, bg) in SHAPES.items():
        p = MEDIA / f"{name}.png"
        if not p.exists():
            draw(shape, fill, bg).save(p)
        out.append(p)
    return out


def make_video(path: Path, frames: int = 12, fps: int = 6) -> Path:
    """A 2-second clip of a red circle moving right, encoded with PyAV (MPEG-4 part 2)."""
    import av
    import numpy as np

    if path.exists():
        return path
    tmp = path.with_suffix(".partial.mp4")
    with av.open(str(tmp), mode="w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        for i in range(frames):
            im = draw("circle", (220, 40, 40), (245, 245, 245), offset=i * 2 - 12)
            frame = av.VideoFrame.from_ndarray(np.asarray(im), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    os.replace(tmp, path)
    return path


def main() -> int:
    MEDIA.mkdir(parents=True, exist_ok=True)
    images = make_images()
    video = make_video(MEDIA / "moving_circle.mp4")
    print(f"example media ready: {len(images)} images and {video.name} in {MEDIA}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
