"""Decoding a sample's media for the processor: images with Pillow, videos with PyAV (no torch).

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
    file), duration (s), frames_indices (the sampled ones), width, height.

    Only the sampled frames are converted to arrays and held: the frames are counted first (from the
    container, or by reading its packets when it does not say), then decoded in one pass that keeps
    the chosen ones, so a long or large video costs the memory of its samples, not of every frame."""
    import av

    source = _source(ref, media_root)
    try:
        total, rate = _count_frames(source)
        keep = sample_indices(total, total / rate, fps=fps, frames=frames)
        picked, seen = _decode_frames(source, set(keep))
        if seen != total:  # the container's count was wrong: sample from the frames that are there
            total = seen
            keep = sample_indices(total, total / rate, fps=fps, frames=frames)
            picked, _ = _decode_frames(source, set(keep))
    except (OSError, av.error.FFmpegError, IndexError) as e:
        raise UserError(f"cannot decode video {ref!r}: {e}; check the path and `mmtune data check` the file") from None
    if not keep:
        raise UserError(f"video {ref!r} has no frames")
    import numpy as np

    height, width = picked[0].shape[:2]
    metadata = {"total_num_frames": total, "fps": rate, "duration": total / rate,
                "frames_indices": list(keep), "width": width, "height": height, "video_backend": "pyav"}
    return np.stack(picked), metadata


def _open(source):
    import av

    if hasattr(source, "seek"):
        source.seek(0)
    return av.open(source)


def _count_frames(source) -> tuple[int, float]:
    """(frames, frames per second) of the first video stream."""
    with _open(source) as container:
        stream = container.streams.video[0]
        rate = float(stream.average_rate or 0) or 1.0
        if stream.frames > 0:
            return stream.frames, rate
        return sum(1 for packet in container.demux(stream) if packet.size), rate


def _decode_frames(source, keep: set[int]) -> tuple[list, int]:
    """(the frames whose index is in `keep`, as RGB arrays in order; how many frames were decoded)."""
    picked, seen = [], 0
    with _open(source) as container:
        for seen, frame in enumerate(container.decode(container.streams.video[0]), start=1):
            if seen - 1 in keep:
                picked.append(frame.to_ndarray(format="rgb24"))
    return picked, seen


def media_inputs(sample, *, video_fps: float | None = None, video_frames: int | None = None):
    """(images, videos, video_metadata) of a training sample, decoded in the order they appear in the
    conversation; the metadata (source fps, sampled frame indices) gives Qwen2.5-VL/Qwen3-VL their
    frame timing."""
    images = [load_image(p.ref, sample.media_root) for p in sample.images]
    loaded = [load_video_with_metadata(p.ref, sample.media_root, fps=video_fps, frames=video_frames)
              for p in sample.videos]
    return images, [v for v, _ in loaded], [m for _, m in loaded]
