"""The Engine on vision-language models: images reach the model, greedy decoding equals
transformers' own `generate` (M-RoPE positions included), batches equal one by one, adapters."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers.tiny_vlms import TINY_VLM_FAMILIES
from infer.tiny import tiny_base
from infer.tiny_vision import data_url, image_file, image_messages, lively_vlm, vision_adapter

from mmtune.errors import UserError
from mmtune.infer.engine import Engine, to_sample
from mmtune.infer.media import MediaPolicy, check_ref
from mmtune.infer.vision import Prefill, encode

GREEDY = {"temperature": 0, "max_new_tokens": 8}
VIDEO = Path(__file__).resolve().parents[2] / "examples" / "data" / "media" / "moving_circle.mp4"
TEXT = [{"role": "user", "content": "Say something."}]


@pytest.fixture(scope="module", params=["qwen2_vl", "llava"])
def engine(request):
    return Engine(str(lively_vlm(request.param)))


def _tokens(engine, msgs, **gen):
    stream = engine.stream(msgs, **{**GREEDY, **gen})
    for _ in stream:
        pass
    return stream.trackers[0].tokens


def test_image_prompt_greedy_equals_generate(engine):
    """Our decode loop (media in the prefill only, explicit M-RoPE positions) == model.generate."""
    for msgs in (image_messages(str(image_file(0))), TEXT):
        batch = encode([to_sample(msgs)], engine._processors[None])
        ref = engine.model.generate(**batch, max_new_tokens=GREEDY["max_new_tokens"], do_sample=False)
        want = ref[0, batch["input_ids"].shape[1]:].tolist()
        assert _tokens(engine, msgs) == want
    assert engine.is_vision
    msgs = image_messages(str(image_file(0)))
    again = engine.complete(msgs, **GREEDY)
    assert again == engine.complete(msgs, **GREEDY)  # deterministic
    ids = engine.prompt_ids(msgs)
    assert again.prompt_tokens == len(ids) and engine._processors[None].image_token_id in ids


def test_pixels_reach_the_model(engine):
    import torch

    logits = []
    for seed in (0, 1):
        batch = encode([to_sample(image_messages(str(image_file(seed))))], engine._processors[None])
        with torch.inference_mode():
            out = engine.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                               **Prefill(engine.model, batch).model_inputs(engine.model))
        logits.append(out.logits[0, -1])
    assert not torch.allclose(logits[0], logits[1], atol=1e-3)
    a = _tokens(engine, image_messages(str(image_file(0))))
    b = _tokens(engine, image_messages(data_url(image_file(1))))  # a data: URL works too
    assert a != b


def test_batch_with_images_and_text_equals_one_by_one(engine):
    prompts = [image_messages(str(image_file(0))), TEXT, image_messages(str(image_file(1)), "Describe it.")]
    batch = engine.generate_batch(prompts, **GREEDY)
    assert [c.text for c in batch] == [engine.chat(p, **GREEDY) for p in prompts]


def test_sampling_with_seed_repeats(engine):
    msgs = image_messages(str(image_file(0)))
    gen = {"temperature": 1.0, "seed": 7, "max_new_tokens": 8}
    assert engine.chat(msgs, **gen) == engine.chat(msgs, **gen)


def test_media_errors(engine, tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        engine.chat(image_messages(str(tmp_path / "missing.png")), **GREEDY)
    with pytest.raises(UserError, match="--allow-remote-media"):
        engine.chat(image_messages("https://example.com/cat.png"), **GREEDY)
    video = [{"role": "user", "content": [{"type": "video", "video": str(tmp_path / "v.mp4")}]}]
    if not engine.takes_video:
        with pytest.raises(UserError, match="not video"):
            engine.chat(video, **GREEDY)


@pytest.mark.parametrize("family", ["qwen2_vl", "idefics3"])
def test_other_media_paths_equal_generate(family):
    """Qwen2-VL video (3-D positions over frames) and Idefics3's tiled images: our loop == generate."""
    eng = Engine(str(lively_vlm(family)))
    if family == "qwen2_vl":
        msgs = [{"role": "user", "content": [{"type": "video", "video": str(VIDEO)},
                                             {"type": "text", "text": "What moves?"}]}]
    else:
        msgs = image_messages(str(image_file(0)))
    batch = encode([to_sample(msgs)], eng._processors[None])
    assert "pixel_values_videos" in batch or family != "qwen2_vl"
    ref = eng.model.generate(**batch, max_new_tokens=GREEDY["max_new_tokens"], do_sample=False)
    assert _tokens(eng, msgs) == ref[0, batch["input_ids"].shape[1]:].tolist()
    both = eng.generate_batch([msgs, image_messages(str(image_file(1)))], **GREEDY)
    assert [c.text for c in both] == [eng.chat(msgs, **GREEDY), eng.chat(image_messages(str(image_file(1))), **GREEDY)]


@pytest.mark.parametrize("family", [f for f in TINY_VLM_FAMILIES if f not in ("qwen2_vl", "llava", "idefics3")])
def test_every_family_greedy_equals_generate(family):
    """Every tiny family (Gemma 3's bidirectional image mask, Mllama's cross-attention mask on every
    step, Qwen2.5/3-VL's M-RoPE, MiniCPM-V ...): image, text and a mixed batch, == generate."""
    eng = Engine(str(lively_vlm(family)))
    prompts = [image_messages(str(image_file(0))), TEXT]
    for msgs in prompts:
        batch = encode([to_sample(msgs)], eng._processors[None])
        ref = eng.model.generate(**batch, max_new_tokens=GREEDY["max_new_tokens"], do_sample=False)
        assert _tokens(eng, msgs) == ref[0, batch["input_ids"].shape[1]:].tolist()
    assert [c.text for c in eng.generate_batch(prompts, **GREEDY)] == [eng.chat(p, **GREEDY) for p in prompts]


def test_text_model_refuses_media():
    text_engine = Engine(str(tiny_base("qwen2")))
    with pytest.raises(UserError, match="text model"):
        text_engine.chat(image_messages(str(image_file(0))), **GREEDY)


def test_vision_adapter_loads_like_a_text_adapter():
    adapter = vision_adapter("qwen2_vl", 1)
    eng = Engine(str(adapter))
    base_name = eng.name
    msgs = image_messages(str(image_file(0)))
    tuned = eng.chat(msgs, **GREEDY)
    assert eng.default_model == "adapter-qwen2_vl-1" and eng.is_vision
    assert eng.chat(msgs, model=base_name, **GREEDY) != tuned  # the adapter changes the answer
    assert eng.chat(msgs, **GREEDY) == tuned  # and switching back restores it


def test_server_media_policy(tmp_path):
    root = tmp_path / "media"
    root.mkdir()
    inside = image_file(3, root)
    (tmp_path / "secret.png").write_bytes(inside.read_bytes())
    os.symlink(tmp_path / "secret.png", root / "link.png")
    closed, open_ = MediaPolicy.server(None), MediaPolicy.server(str(root), allow_remote=True)
    url = data_url(inside)
    assert check_ref(url, "image", closed) == url
    with pytest.raises(UserError, match="--media-root"):
        check_ref(str(inside), "image", closed)
    with pytest.raises(UserError, match="--allow-remote-media"):
        check_ref("http://example.com/a.png", "image", closed)
    assert check_ref("img3.png", "image", open_) == str(inside)  # relative: inside the root
    assert check_ref(f"file://{inside}", "image", open_) == str(inside)
    for ref in ("../secret.png", str(tmp_path / "secret.png"), "link.png"):
        with pytest.raises(UserError, match="outside the media root"):
            check_ref(ref, "image", open_)
    assert check_ref("https://example.com/a.png", "image", open_) == "https://example.com/a.png"


def test_half_precision_casts_the_pixels():
    """bf16 weights with the processor's float32 pixels: the prefill casts them (as on a GPU)."""
    eng = Engine(str(lively_vlm("llava")), dtype="bf16")
    done = eng.complete(image_messages(str(image_file(0))), **GREEDY)
    assert eng.model.dtype.is_floating_point and str(eng.model.dtype) == "torch.bfloat16"
    assert done.completion_tokens == GREEDY["max_new_tokens"] or done.finish_reason == "stop"
