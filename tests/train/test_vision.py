"""Vision-language fine-tuning on tiny random models of each vision family (no torchvision here)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from mmtune.chat.render import IGNORE_INDEX, MediaSizes, render_sample
from mmtune.data.schema import Message, Part, Sample
from mmtune.errors import UserError
from mmtune.models.registry import REGISTRY, find_spec
from mmtune.models.vision import load_processor
from mmtune.train.collate import PadCollator
from mmtune.train.setup import (
    PROJECTOR_PARAMS,
    lora_target_regex,
    part_of,
    set_trainable,
    trainable_by_part,
)
from tests.helpers.tiny_vlms import TINY_VLM_FAMILIES, tiny_vlm_dir

MEDIA = str(Path(__file__).resolve().parents[2] / "examples" / "data" / "media")
# how each family's template writes one trained assistant turn (the independent reference)
TURN = {"qwen2_vl": "{}<|im_end|>", "llava": " {}", "idefics3": " {}<end_of_utterance>",
        "qwen2_5_vl": "{}<|im_end|>", "llava_next": " {}</s>", "gemma3": "{}<end_of_turn>", "mllama": "{}<|eot_id|>",
        "qwen3_vl": "{}<|im_end|>", "llava_onevision": "\n{}", "llava_next_video": " {}",
        "minicpmv4_6": "{}<|im_end|>", "minicpmv4_7": "{}<|im_end|>"}
# families mmtune handles that have no registry entry yet (the real checkpoint's config numbers could not be
# checked here): the parts as the official class names them, on a copy of MiniCPM-V 4.6's entry
UNLISTED = {"minicpmv4_7": {"name": "minicpm-v-4.7-parts"}}


@pytest.fixture(scope="module", params=TINY_VLM_FAMILIES)
def family(request):
    """Each vision family in turn (tests/conftest.py has made the example media)."""
    return request.param


def _user(*parts: Part) -> Message:
    return Message("user", list(parts))


def _spec(family: str):
    from transformers import AutoConfig

    model_type = AutoConfig.from_pretrained(tiny_vlm_dir(family)).model_type
    if family in UNLISTED:  # matched as the family it is the same as
        assert find_spec(str(tiny_vlm_dir(family))) is REGISTRY["minicpm-v-4.6"]
        return dataclasses.replace(REGISTRY["minicpm-v-4.6"], family=family, model_type=model_type,
                                   **UNLISTED[family])
    spec = find_spec(str(tiny_vlm_dir(family)))  # a folder: its model_type's family default
    assert spec is not None and spec.family == family
    return spec


def _rows(video: bool, multi_image: bool = True) -> list[tuple[Sample, list[str]]]:
    """(sample, its trained answers): an image row, a multi-image multi-turn row, a text-only row, a video row,
    and a row with an image and a video together."""
    a = Message.simple
    rows = [
        (Sample([_user(Part.image("red_circle.png"), Part.of_text("What is this?")), a("assistant", "A red circle.")],
                media_root=MEDIA), ["A red circle."]),
        (Sample([_user(Part.image("red_circle.png"), Part.image("blue_square.png"), Part.of_text("Compare them.")),
                 a("assistant", "A circle and a square."), a("user", "Sure?"), a("assistant", "Yes.", weight=0),
                 a("user", "Colours?"), a("assistant", "Red, blue.")], media_root=MEDIA),
         ["A circle and a square.", "Red, blue."]),
        (Sample([a("user", "Hi"), a("assistant", "Hello there.")]), ["Hello there."]),
    ]
    if video:
        rows.append((Sample([_user(Part.video("moving_circle.mp4"), Part.of_text("What moves?")),
                             a("assistant", "A circle.")], media_root=MEDIA), ["A circle."]))
        rows.append((Sample([_user(Part.image("blue_square.png"), Part.video("moving_circle.mp4"),
                                   Part.of_text("Same colour?")), a("assistant", "No.")], media_root=MEDIA), ["No."]))
    if not multi_image:
        rows.pop(1)
    return rows


def _features(sample: Sample, processor, *, video_frames=None, max_pixels=None, min_pixels=None, **kw) -> dict:
    """One training row as the collator takes it (chat.render over the processor)."""
    sizes = MediaSizes(max_pixels=max_pixels, min_pixels=min_pixels, video_frames=video_frames)
    return render_sample(sample, processor, sizes=sizes, **kw).features()


def _runs(labels: list[int]) -> list[list[int]]:
    runs, cur = [], []
    for t in labels:
        if t == IGNORE_INDEX:
            if cur:
                runs.append(cur)
            cur = []
        else:
            cur.append(t)
    return runs + ([cur] if cur else [])


def test_registry_prefixes_are_the_parts_of_the_real_classes(family):
    import torch
    from transformers import AutoConfig, AutoModelForImageTextToText

    spec = _spec(family)
    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(AutoConfig.from_pretrained(tiny_vlm_dir(family)))
    names = [n for n, _ in model.named_parameters()]
    for prefix in (spec.vision_tower, spec.projector, spec.language_model):
        assert any(n.startswith(prefix + ".") for n in names), prefix
    outside = {n for n in names if not any(n.startswith(getattr(spec, p) + ".")
                                           for p in ("vision_tower", "projector", "language_model"))}
    assert outside <= {"lm_head.weight", *PROJECTOR_PARAMS}
    assert {part_of(n, spec) for n in names} == {"vision_tower", "projector", "language_model"}


def test_labels_are_exactly_the_assistant_answers_and_one_step_trains(family):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText

    folder = tiny_vlm_dir(family)
    spec = _spec(family)
    processor = load_processor(str(folder))
    tok = processor.tokenizer
    rows = _rows(video=spec.supports_video, multi_image=spec.max_images is None)
    feats = [_features(s, processor, video_frames=4, spec=spec) for s, _ in rows]
    media_ids = {getattr(o, a, None) for o in (processor, tok) for a in ("image_token_id", "video_token_id")} - {None}
    for f, (sample, answers) in zip(feats, rows, strict=True):
        assert len(f["labels"]) == len(f["input_ids"])
        assert all(lab in (IGNORE_INDEX, i) for lab, i in zip(f["labels"], f["input_ids"], strict=True))
        assert not media_ids & set(f["labels"])
        assert [tok.decode(r) for r in _runs(f["labels"])] == [TURN[family].format(a) for a in answers]
        n_media = sum(f["input_ids"].count(i) for i in media_ids)
        assert (n_media > 0) == bool(sample.media())

    batch = PadCollator(tok.pad_token_id, layout=spec.media_layout)(feats)
    assert batch["input_ids"].shape[0] == len(rows)
    torch.manual_seed(0)
    model = AutoModelForImageTextToText.from_pretrained(folder)
    set_trainable(model, spec, train_vision="none", train_projector=True, lm_method="lora")
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=lora_target_regex(spec, lm=True,
                                                                                                 vision=False)))
    set_trainable(model, spec, train_vision="none", train_projector=True, lm_method="lora")
    counts = trainable_by_part(model, spec)
    assert counts["vision_tower"][0] == 0 and counts["projector"][0] == counts["projector"][1] > 0
    assert 0 < counts["language_model"][0] < counts["language_model"][1]
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    loss = model(**batch).loss
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)
    changed = {part_of(n.removeprefix("base_model.model.").replace(".base_layer.", "."), spec)
               for n, p in model.named_parameters() if not torch.equal(before[n], p)}
    assert changed == {"projector", "language_model"}

    one = PadCollator(tok.pad_token_id, layout=spec.media_layout)([feats[0]])
    one.pop("labels")
    out = model.generate(**one, max_new_tokens=3, do_sample=False)
    assert out.shape[1] == one["input_ids"].shape[1] + 3


def test_limits_are_enforced_with_a_clear_error():
    processor = load_processor(str(tiny_vlm_dir("qwen2_vl")))
    two_images = _rows(video=False)[1][0]
    one_image_spec = dataclasses.replace(REGISTRY["qwen2-vl-2b-instruct"], max_images=1)
    with pytest.raises(UserError, match="at most 1 image"):
        _features(two_images, processor, spec=one_image_spec)
    video_row = _rows(video=True)[3][0]
    with pytest.raises(UserError, match="does not take video"):
        _features(video_row, processor, spec=REGISTRY["llava-1.5-7b"])


def test_max_pixels_and_video_frames_change_the_media_tokens():
    processor = load_processor(str(tiny_vlm_dir("qwen2_vl")))
    image_row, video_row = _rows(video=True)[0][0], _rows(video=True)[3][0]
    small = _features(image_row, processor)
    big = _features(image_row, processor, max_pixels=28 * 28 * 16, min_pixels=28 * 28 * 16)
    assert small["image_grid_thw"].tolist() == [[1, 4, 4]] and big["image_grid_thw"].tolist() == [[1, 8, 8]]
    assert len(big["input_ids"]) - len(small["input_ids"]) == 16 - 4
    assert _features(video_row, processor, video_frames=4)["video_grid_thw"].tolist() == [[2, 4, 4]]
    assert _features(video_row, processor, video_frames=8)["video_grid_thw"].tolist() == [[4, 4, 4]]
    with pytest.raises(UserError, match="resize by area"):
        _features(image_row, load_processor(str(tiny_vlm_dir("llava"))), max_pixels=1000)


@pytest.mark.parametrize("name", ["llava_onevision", "llava_next_video"])
def test_plain_video_processor_frames_are_the_image_processors_base_view(name):
    """LLaVA-OneVision / -NeXT-Video stand-ins: each frame of a still video is the image processor's
    first (whole-image) view, resized and normalised the same way."""
    from PIL import Image

    processor = load_processor(str(tiny_vlm_dir(name)))
    assert type(processor.video_processor).__name__ == "PlainFramesVideoProcessor"
    frame = np.asarray(Image.open(Path(MEDIA, "green_triangle.png")).convert("RGB"))
    video = processor.video_processor([np.stack([frame, frame])], return_tensors="np")["pixel_values_videos"]
    image = processor.image_processor([Image.fromarray(frame)], return_tensors="np")["pixel_values"]
    assert video.shape[:2] == (1, 2) and video.shape[2:] == image.shape[2:]
    np.testing.assert_allclose(video[0, 1], image[0, 0], atol=1e-5)


@pytest.mark.parametrize("name", ["qwen2_vl", "qwen3_vl"])
def test_frames_video_processor_matches_the_image_processor_on_a_still_video(name):
    """A video of one repeated frame gives the image processor's patches (which copy the image
    over the temporal patch): the shim cuts patches in the official order."""
    from PIL import Image

    processor = load_processor(str(tiny_vlm_dir(name)))
    frame = np.asarray(Image.open(Path(MEDIA, "green_triangle.png")).convert("RGB"))
    shim = processor.video_processor
    assert type(shim).__name__ == "FramesVideoProcessor"
    video = shim([np.stack([frame, frame])], return_tensors="np")
    image = processor.image_processor([Image.fromarray(frame)], return_tensors="np")
    assert video["video_grid_thw"].tolist() == image["image_grid_thw"].tolist()
    np.testing.assert_allclose(video["pixel_values_videos"], image["pixel_values"], atol=2e-2)


@pytest.mark.parametrize("name", ["qwen2_vl", "idefics3"])
def test_alignment_fallback_gives_the_same_labels_as_reported_offsets(name, monkeypatch):
    """Processors that report no replacement offsets (Mllama) are labelled by aligning the processor's
    tokens to the template text's: on processors that do report them, both paths agree."""
    processor = load_processor(str(tiny_vlm_dir(name)))
    spec = _spec(name)
    rows = [s for s, _ in _rows(video=spec.supports_video)]
    reported = [_features(s, processor, video_frames=4) for s in rows]
    call = type(processor).__call__

    def without_offsets(self, *args, **kwargs):
        out = call(self, *args, **kwargs)
        out.pop("text_replacement_offsets", None)
        return out

    monkeypatch.setattr(type(processor), "__call__", without_offsets)
    aligned = [_features(s, processor, video_frames=4) for s in rows]
    for r, a in zip(reported, aligned, strict=True):
        assert a["input_ids"] == r["input_ids"] and a["labels"] == r["labels"]
        assert any(lab != IGNORE_INDEX for lab in a["labels"])


def test_one_image_models_refuse_a_second_image():
    processor = load_processor(str(tiny_vlm_dir("mllama")))
    with pytest.raises(UserError, match="llama-3.2-11b-vision-instruct takes at most 1 image"):
        _features(_rows(video=False)[1][0], processor, spec=_spec("mllama"))


def test_cross_attention_mask_is_cut_with_the_tokens_and_padded_to_the_batch():
    """Mllama's per-token cross_attention_mask (1, tokens, images, tiles) follows truncation, and the
    collator pads it to the longest row (zeros: a text-only row attends to no image)."""
    import torch

    processor = load_processor(str(tiny_vlm_dir("mllama")))
    image_row, _, text_row = (s for s, _ in _rows(video=False))
    cut_row = render_sample(image_row, processor, max_length=12)
    cut = cut_row.features()
    assert cut_row.truncated > 0 and len(cut["input_ids"]) == 12 and cut["cross_attention_mask"].shape[1] == 12
    long_text = dataclasses.replace(text_row, messages=[Message.simple("user", "hi " * 20), *text_row.messages[1:]])
    rows = [cut, _features(long_text, processor)]
    batch = PadCollator(processor.tokenizer.pad_token_id, layout=_spec("mllama").media_layout)(rows)
    longest = batch["input_ids"].shape[1]
    assert longest > 12 and batch["cross_attention_mask"].shape == (2, longest, 1, 2)
    assert torch.equal(batch["cross_attention_mask"][0, :12], torch.as_tensor(cut["cross_attention_mask"][0]))
    assert batch["cross_attention_mask"][0, 12:].sum() == 0 and batch["cross_attention_mask"][1].sum() == 0
    assert batch["pixel_values"].shape[:2] == (2, 1) and batch["pixel_values"][1].abs().sum() == 0


@pytest.mark.parametrize("name", ["qwen2_vl", "mllama"])
def test_train_on_all_trains_every_text_token_of_a_media_row(name):
    """train_on='all' on a row with an image: every token but the first and the media tokens is a
    target (it once stopped at the placeholder, as if media were inside a trained turn)."""
    processor = load_processor(str(tiny_vlm_dir(name)))
    image_row = _rows(video=False)[0][0]
    row = render_sample(image_row, processor, train_on="all")
    media_ids = {getattr(o, a, None) for o in (processor, processor.tokenizer)
                 for a in ("image_token_id", "video_token_id")} - {None}
    assert media_ids & set(row.input_ids)
    want = [IGNORE_INDEX if j == 0 or t in media_ids else t for j, t in enumerate(row.input_ids)]
    assert row.labels == want
