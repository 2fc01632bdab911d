"""Video decoding: the same frames as decoding everything and sampling, with the memory of the samples only."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from mmtune.data.media_io import load_video_with_metadata, sample_indices


def make_video(path, n: int, size=(160, 120), rate: int = 10):
    """An n-frame video whose frame i is filled with grey level i (mod 256), so frames are recognisable."""
    import av

    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4" if path.suffix == ".mp4" else "ffv1", rate=rate)
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        for i in range(n):
            img = np.full((size[1], size[0], 3), (i * 7) % 256, np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def decode_all(path):
    import av

    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(c.streams.video[0])]


@pytest.mark.parametrize("suffix", [".mp4", ".mkv"])  # mkv: the container does not declare a frame count
@pytest.mark.parametrize(("fps", "frames"), [(None, None), (3.0, None), (None, 5), (None, 1), (None, 500)])
def test_sampled_frames_equal_decoding_everything_then_sampling(tmp_path, suffix, fps, frames):
    path = make_video(tmp_path / f"v{suffix}", 40)
    every = decode_all(path)
    got, meta = load_video_with_metadata(str(path), fps=fps, frames=frames)
    keep = sample_indices(len(every), len(every) / 10, fps=fps, frames=frames)
    assert meta["frames_indices"] == keep and meta["total_num_frames"] == len(every) == 40
    assert meta["fps"] == 10 and meta["duration"] == 4.0 and (meta["width"], meta["height"]) == (160, 120)
    np.testing.assert_array_equal(got, np.stack([every[i] for i in keep]))


@pytest.mark.parametrize("declared", [25, 60])
def test_a_wrong_declared_frame_count_is_corrected(tmp_path, monkeypatch, declared):
    """A container that says 25 or 60 frames for a 40-frame video: sampled from the 40 that are there."""
    from mmtune.data import media_io

    path = make_video(tmp_path / "v.mp4", 40)
    every = decode_all(path)
    monkeypatch.setattr(media_io, "_count_frames", lambda source: (declared, 10.0))
    got, meta = load_video_with_metadata(str(path), frames=6)
    keep = sample_indices(40, 4.0, fps=None, frames=6)
    assert meta["total_num_frames"] == 40 and meta["frames_indices"] == keep
    np.testing.assert_array_equal(got, np.stack([every[i] for i in keep]))


def test_a_long_video_costs_the_memory_of_its_samples(tmp_path):
    """400 frames of 640x480 are 369 MB decoded (PyAV's frames live outside Python's allocator, so
    this measures the peak RSS of a fresh process; decoding all of them grew it by about 100 MB); four
    sampled frames are under 4 MB."""
    path = make_video(tmp_path / "long.mp4", 400, size=(640, 480))
    script = ("import resource, sys; from mmtune.data.media_io import load_video_with_metadata as f; "
              "import av, numpy; before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss; "
              "x = f(sys.argv[1], frames=4)[0] if sys.argv[2] == '1' else None; "
              "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)")
    grew = [int(subprocess.run([sys.executable, "-c", script, str(path), load], capture_output=True, text=True,
                               check=True).stdout) for load in ("0", "1")]
    assert grew[1] - grew[0] < 40 * 1024, f"decoding 4 of 400 frames grew the process by {grew[1] // 1024} MiB"


def test_a_file_that_is_not_a_video_names_the_fix(tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video")
    with pytest.raises(Exception, match="mmtune data check"):
        load_video_with_metadata(str(bad))
