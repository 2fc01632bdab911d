"""Decoding a sample's media for the processor: images with Pillow, videos with PyAV.

Videos are decoded here (not by transformers, whose decoders need torchvision or
torchcodec) into uint8 frames (T, H, W, 3), sampled either to a fixed number of frames
(`frames`, evenly spread) or at a rate (`fps`); every processor then gets the same frames.
"""

from __future__ import annotations

import io

from mmtune.data.media import classify, decode_data_url, local_path
from mmtune.errors import UserError

DEFAULT_VIDEO_FPS = 2.0


def _source(ref: str, media_root: str | None):
    kind = classify(ref)
    if kind == "data":
        return io.BytesIO(decode_data_url(ref))
    if kind == "remote":
        raise UserError(f"media {ref!r} is a remote URL: download it and refer to the local file")
    return local_path(ref, media_root)


def load_image(ref: str, media_root: str | None = None):
    """The image as an RGB PIL image."""
    from PIL import Image

    try:
        with Image.open(_source(ref, media_root)) as im:
            return im.convert("RGB")
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read image {ref!r}: {e}; check the path and `mmtune data check` the file") from None


def sample_indices(n: int, duration_s: float, *, fps: float | None, frames: int | None) -> list[int]:
    """Which of `n` decoded frames to keep: `frames` evenly spread, else one every 1/fps seconds."""
    if n <= 0:
        return []
    if frames is not None:
        if frames < 1:
            raise UserError(f"--video-frames must be at least 1, not {frames}")
        k = min(frames, n)
        return [round(i * (n - 1) / max(k - 1, 1)) for i in range(k)] if k > 1 else [0]
    rate = fps or DEFAULT_VIDEO_FPS
    if rate <= 0:
        raise UserError(f"--video-fps must be positive, not {rate}")
    k = max(1, min(n, round(duration_s * rate)))
    return sorted({min(n - 1, int(i * n / k)) for i in range(k)})


def load_video(ref: str, media_root: str | None = None, *, fps: float | None = None, frames: int | None = None):
    """Sampled frames of the video as a uint8 array (T, H, W, 3)."""
    return load_video_with_metadata(ref, media_root, fps=fps, frames=frames)[0]


def load_video_with_metadata(ref: str, media_root: str | None = None, *, fps: float | None = None,
                             frames: int | None = None):
    """(frames, metadata): the sampled frames (T, H, W, 3) uint8 and where they came from, as
    transformers' video processors take it (`video_metadata`): total_num_frames, fps (of the
    file), duration (s), frames_indices (the sampled ones), width, height."""
    import av
    import numpy as np

    try:
        with av.open(_source(ref, media_root)) as container:
            stream = container.streams.video[0]
            decoded = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
            rate = float(stream.average_rate or 0) or 1.0
    except (OSError, av.error.FFmpegError, IndexError) as e:
        raise UserError(f"cannot decode video {ref!r}: {e}; check the path and `mmtune data check` the file") from None
    keep = sample_indices(len(decoded), len(decoded) / rate, fps=fps, frames=frames)
    if not keep:
        raise UserError(f"video {ref!r} has no frames")
    height, width = decoded[0].shape[:2]
    metadata = {"total_num_frames": len(decoded), "fps": rate, "duration": len(decoded) / rate,
                "frames_indices": list(keep), "width": width, "height": height, "video_backend": "pyav"}
    return np.stack([decoded[i] for i in keep]), metadata
