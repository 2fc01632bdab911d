"""Training and serving see the same media: a conversation rendered through the training path
(chat.render.render_sample over the processor) and through the Engine's prompt path
(infer.vision.encode, under its media policy) gives the same prompt tokens (media tokens, and
Qwen3-VL's frame timestamps, included) and the same pixel values and grids, for the Qwen2-VL
family. Before the one processor call (chat.render.process) the Engine decoded videos without
their metadata and let the processor sample frames again, so Qwen2.5-VL/Qwen3-VL got other
timestamps at serving time than in training."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mmtune.chat.render import MediaSizes, render_sample
from mmtune.data.schema import Message, Part, Sample
from mmtune.infer.vision import encode
from mmtune.models.vision import load_processor
from tests.helpers.tiny_vlms import tiny_vlm_dir

MEDIA = str(Path(__file__).resolve().parents[2] / "examples" / "data" / "media")
SIZES = MediaSizes(video_frames=4)


def _conversation(part: Part) -> Sample:
    return Sample([Message("user", [part, Part.of_text("What is this?")]), Message.simple("assistant", "A circle.")],
                  media_root=MEDIA)


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"])
@pytest.mark.parametrize("part", [Part.video("moving_circle.mp4"), Part.image("red_circle.png")],
                         ids=["video", "image"])
def test_training_and_the_engine_give_the_same_media(family, part):
    processor = load_processor(str(tiny_vlm_dir(family)))
    sample = _conversation(part)
    row = render_sample(sample, processor, sizes=SIZES)
    batch = encode([Sample(sample.messages[:1], media_root=MEDIA)], processor, sizes=SIZES)
    prompt = batch["input_ids"][0][batch["attention_mask"][0].bool()].tolist()
    assert row.input_ids[:len(prompt)] == prompt  # media tokens (and timestamps) alike
    media = {k for k in batch if k not in ("input_ids", "attention_mask", "mm_token_type_ids")}
    assert media and media == set(row.media) - {"mm_token_type_ids"}
    for key in media:
        assert torch.equal(torch.as_tensor(batch[key]), torch.as_tensor(row.media[key])), key
