"""--max-pixels/--min-pixels/--video-fps/--video-frames at inference (chat, infer, serve), as in training."""

from __future__ import annotations

from pathlib import Path

import pytest
from infer.tiny import tiny_base
from infer.tiny_vision import image_file, image_messages, lively_vlm

from mmtune.errors import UserError
from mmtune.infer.engine import Engine
from mmtune.infer.media import MediaSizes
from mmtune.serve.pool import build_pool

VIDEO = Path(__file__).resolve().parents[2] / "examples" / "data" / "media" / "moving_circle.mp4"
GREEDY = {"temperature": 0, "max_new_tokens": 4}


def _count(engine, msgs, token_id) -> int:
    return engine.prompt_ids(msgs).count(token_id)


def test_pixel_bounds_set_the_media_tokens_of_an_image(tmp_path):
    """The tiny Qwen2-VL's processor caps images at 4 media tokens (28 x 28 pixels a token); a 448x448
    image is 256 tokens under --max-pixels 200704 and 16 under --max-pixels = --min-pixels 12544."""
    msgs = image_messages(str(image_file(0, tmp_path, size=448)))
    counts = {}
    for label, sizes in [("processor", MediaSizes()), ("256", MediaSizes(max_pixels=256 * 28 * 28)),
                         ("16", MediaSizes(max_pixels=16 * 28 * 28, min_pixels=16 * 28 * 28))]:
        eng = Engine(str(lively_vlm("qwen2_vl")), sizes=sizes)
        counts[label] = _count(eng, msgs, eng._processors[None].image_token_id)
        assert isinstance(eng.chat(msgs, **GREEDY), str)
    assert counts == {"processor": 4, "256": 256, "16": 16}
    with pytest.raises(UserError, match="--min-pixels 50176 is larger than --max-pixels 3136"):
        Engine(str(lively_vlm("qwen2_vl")), sizes=MediaSizes(min_pixels=64 * 28 * 28))  # above the processor's max


def test_video_frames_choose_how_many_frames_the_model_sees():
    """Qwen2-VL groups 2 frames a temporal patch: 2 frames are half the video tokens of 4."""
    msgs = [{"role": "user", "content": [{"type": "video", "video": str(VIDEO)}, {"type": "text", "text": "?"}]}]
    counts = []
    for frames in (2, 4):
        eng = Engine(str(lively_vlm("qwen2_vl")), sizes=MediaSizes(video_frames=frames))
        counts.append(_count(eng, msgs, eng._processors[None].video_token_id))
    assert counts[0] > 0 and counts[1] == 2 * counts[0]


def test_pixel_bounds_on_a_fixed_size_model_name_the_fix_unless_a_server_serves_it():
    with pytest.raises(UserError, match="resizes to a fixed size: drop these settings"):
        Engine(str(lively_vlm("llava")), sizes=MediaSizes(max_pixels=50000))
    pool = build_pool([f"q={lively_vlm('qwen2_vl')}", f"l={lively_vlm('llava')}"],
                      sizes=MediaSizes(max_pixels=16 * 28 * 28))
    qwen = pool.engine_for("q")
    assert qwen._processors[None].image_processor.size["longest_edge"] == 16 * 28 * 28
    assert isinstance(pool.engine_for("l").chat(image_messages(str(image_file(0))), **GREEDY), str)


def test_sizes_on_a_text_model_are_an_error():
    with pytest.raises(UserError, match="text model: drop them"):
        Engine(str(tiny_base("qwen2")), sizes=MediaSizes(video_fps=1.0))


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"max_pixels": 0}, "--max-pixels must be >= 1"),
    ({"min_pixels": 900, "max_pixels": 800}, "--min-pixels 900 is larger than --max-pixels 800"),
    ({"video_fps": 0.0}, "--video-fps must be > 0"),
    ({"video_fps": 1.0, "video_frames": 4}, "set --video-fps or --video-frames, not both"),
])
def test_bad_sizes_are_refused_before_any_model_loads(kwargs, message):
    with pytest.raises(UserError, match=message):
        MediaSizes(**kwargs)


def test_chat_and_infer_take_the_flags(tmp_path, capsys):
    """The CLI refuses a bad value before loading anything, and infer runs with the flags."""
    import json

    from mmtune.cli import main

    assert main(["chat", str(lively_vlm("qwen2_vl")), "--video-fps", "-1"]) == 2
    assert "--video-fps must be > 0" in capsys.readouterr().err
    data = tmp_path / "d.jsonl"
    row = {"messages": image_messages(str(image_file(0, tmp_path, size=448))) + [{"role": "assistant", "content": "x"}]}
    data.write_text(json.dumps(row) + "\n")
    out = tmp_path / "p.jsonl"
    assert main(["infer", str(lively_vlm("qwen2_vl")), "--data", str(data), "--out", str(out), "--max-pixels",
                 "12544", "--temperature", "0", "--max-new-tokens", "2"]) == 0
    assert len(out.read_text().splitlines()) == 1


def test_an_adapters_own_processor_gets_the_bounds_too(tmp_path):
    from infer.tiny_vision import vision_adapter

    eng = Engine(str(vision_adapter("qwen2_vl", 1)), sizes=MediaSizes(max_pixels=256 * 28 * 28))
    msgs = image_messages(str(image_file(0, tmp_path, size=448)))
    token = eng._processors[None].image_token_id
    assert eng.default_model != eng.name  # answering with the adapter, through its own saved processor
    assert eng._processors[eng._key(None)] is not eng._processors[None]
    assert _count(eng, msgs, token) == 256
    assert eng.prompt_ids(msgs, model=eng.name).count(token) == 256
