"""Preference training on vision-language models: on every vision family's tiny model a DPO batch holds
exactly SFT's rows for prompt + chosen and prompt + rejected (labels on the completion only, the prompt's
media in each side, laid out by the family's media_layout) and a DPO step trains against the frozen
starting model; then `mmtune train --stage dpo` on images, video and text rows, and the reference
log-probs computed once when the vision parts train in full without adapters (DPO and KTO)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from mmtune.chat.render import (
    IGNORE_INDEX,
    TOKEN_AXIS_TENSORS,
    TOKEN_KEYS,
    ChatTemplate,
    MediaSizes,
    render_sample,
)
from mmtune.cli import main
from mmtune.config import resolve_config
from mmtune.data.reader import load_samples
from mmtune.data.schema import Sample
from mmtune.models.registry import REGISTRY, find_spec
from mmtune.train.collate import PadCollator
from mmtune.train.preference import (
    PreferenceCollator,
    build_preference_datasets,
    completion_logps,
    preference_loss,
    run_preference,
)
from mmtune.train.setup import apply_method, load_vision_processor, resolve_parts
from mmtune.train.sft import load_for_training
from tests.helpers.tiny_vlms import TINY_VLM_FAMILIES, tiny_vlm_dir

MEDIA = Path(__file__).resolve().parents[2] / "examples" / "data" / "media"
FAMILIES = [f for f in TINY_VLM_FAMILIES if any(s.family == f for s in REGISTRY.values())]


def _image(name: str) -> dict:
    return {"type": "image_url", "image_url": {"url": str(MEDIA / name)}}


def pair(content, good: str, bad: str) -> dict:
    """A row in OpenAI's preference format."""
    return {"input": {"messages": [{"role": "user", "content": content}]},
            "preferred_output": [{"role": "assistant", "content": good}],
            "non_preferred_output": [{"role": "assistant", "content": bad}]}


IMAGE_PAIR = pair([_image("red_circle.png"), {"type": "text", "text": "What colour is the shape?"}], "Red.",
                  "It is blue, I think.")
TEXT_PAIR = pair("Say hello.", "Hello there.", "No.")
VIDEO_PAIR = pair([{"type": "video", "video": str(MEDIA / "moving_circle.mp4")}, {"type": "text", "text": "What moves?"}],
                  "A red circle moves to the right.", "Nothing.")


def write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def settings(model: Path, data: Path, out: Path, **kw) -> dict:
    return {"model": str(model), "data": [str(data)], "output": str(out), "stage": "dpo", "batch_size": 2,
            "max_length": 256, "video_frames": 4, "learning_rate": 1e-3, "logging_steps": 1, "save_strategy": "no",
            "lora_dropout": 0.0, "seed": 0, **kw}


def records(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


# ---------------------------------------------------------------------------- every family


def sft_row(processor, spec, prompt: Sample, answer: list, max_length: int = 256):
    """What SFT trains on for the conversation prompt + answer: the renderer's own Row."""
    return render_sample(Sample(prompt.messages + answer, media_root=prompt.media_root), processor, train_on="last",
                         max_length=max_length, sizes=MediaSizes(video_frames=4), spec=spec)


@pytest.mark.parametrize("family", FAMILIES)
def test_every_vision_family_takes_a_dpo_step_on_exact_rows(family, tmp_path):
    """A batch of an image pair and a text-only pair is [chosen..., rejected...], equal key for key
    (ids, labels, masks, pixels, grids) to SFT's collation of those four conversations; each side's labels
    are its completion exactly (after the inference prompt, which is a prefix, up to the end-of-turn token)
    and each side's media are the prompt's own. Policy == reference at the start (loss log 2); after one
    step the policy has moved and the reference (adapters off, fully trained projector back to its original)
    has not."""
    folder = tiny_vlm_dir(family)
    spec = find_spec(str(folder))
    data = write(tmp_path / "pairs.jsonl", [IMAGE_PAIR, TEXT_PAIR])
    cfg = resolve_parts(resolve_config(settings(folder, data, tmp_path / "out")), spec, print)
    processor = load_vision_processor(cfg)
    rows = build_preference_datasets(cfg, processor, print, spec).train
    assert len(rows) == 2
    batch = PreferenceCollator(processor.tokenizer.pad_token_id, pack=False, layout=spec.media_layout)(
        [rows[0], rows[1]])

    samples = load_samples(str(data), kind="preference")
    template = ChatTemplate(processor, sizes=MediaSizes(video_frames=4), spec=spec)
    eot = template.end_of_turn()
    sft = [sft_row(processor, spec, s, s.chosen) for s in samples] + [sft_row(processor, spec, s, s.rejected)
                                                                      for s in samples]
    expected = PadCollator(processor.tokenizer.pad_token_id, layout=spec.media_layout)([r.features() for r in sft])
    assert set(batch) - {"seq_ids", "n_pairs"} == set(expected)
    for key, value in expected.items():
        assert torch.equal(batch[key], value), key
    assert batch["n_pairs"] == 2 and "pixel_values" in batch

    for i, s in enumerate(samples):
        chosen, rejected = sft[i], sft[i + len(samples)]
        prompt = template.prompt(s)
        for row, answer in ((chosen, s.chosen), (rejected, s.rejected)):
            trained = [j for j, x in enumerate(row.labels) if x != IGNORE_INDEX]
            assert trained == list(range(trained[0], trained[-1] + 1))  # one run of tokens: the completion
            text = processor.tokenizer.decode([row.labels[j] for j in trained]).strip()
            assert text in (answer[0].text, answer[0].text + (eot or "")), (text, eot)
            for key, value in prompt.media.items():  # each side holds the prompt's media, as inference processes them
                if key not in TOKEN_KEYS and key not in TOKEN_AXIS_TENSORS:
                    assert torch.equal(torch.as_tensor(row.media[key]), torch.as_tensor(value)), key
        first = next(j for j, x in enumerate(chosen.labels) if x != IGNORE_INDEX)
        assert rejected.labels[:first] == [IGNORE_INDEX] * first and rejected.labels[first] != IGNORE_INDEX
        assert chosen.input_ids[:first] == rejected.input_ids[:first]  # the one prompt, media tokens included
        assert len(prompt.input_ids) in (first, first - 1)  # ... is the inference prompt (a boundary token aside)

    model = apply_method(load_for_training(cfg, "fp32"), cfg, spec)
    assert hasattr(model, "disable_adapter")

    def reference(b):
        with torch.no_grad(), model.disable_adapter():
            return completion_logps(model, b)

    start = reference(batch)[0]
    loss, metrics = preference_loss(model, batch, cfg, lambda b: (start, None))
    assert loss.item() == pytest.approx(math.log(2), abs=1e-5) and metrics["reward_margin"].abs() < 1e-5
    loss.backward()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    optimizer.step()
    optimizer.zero_grad()
    still = reference(batch)[0]
    assert torch.allclose(still, start, atol=1e-5)  # the reference is still the starting model
    with torch.no_grad():
        after, _ = preference_loss(model, batch, cfg, lambda b: (still, None))
    assert after.item() < loss.item()  # the policy moved, towards the chosen answers


# ---------------------------------------------------------------------------- runs


def test_dpo_from_the_cli_on_images_video_and_text(tmp_path, capsys):
    """`mmtune train --stage dpo` on Qwen2-VL: pairs with an image, a video, text only, and ms-swift's
    `rejected_images` (the prompt's own images); family parts (LoRA language model, projector in full),
    reference = adapters off; the folder holds the adapter, the processor, the rewards."""
    folder = tiny_vlm_dir("qwen2_vl")
    swift = {"messages": [{"role": "user", "content": "<image>Which shape is it?"},
                          {"role": "assistant", "content": "A circle."}],
             "images": [str(MEDIA / "red_circle.png")], "rejected_response": "A square.",
             "rejected_images": [str(MEDIA / "red_circle.png")]}
    data = write(tmp_path / "pairs.jsonl", [IMAGE_PAIR, VIDEO_PAIR, TEXT_PAIR, swift, pair(
        [_image("blue_square.png"), {"type": "text", "text": "What colour?"}], "Blue.", "Green."),
        {**swift, "rejected_response": "A triangle."}])
    out = tmp_path / "out"
    args = ["train", "--stage", "dpo", "--model", str(folder), "--data", str(data), "--output",
            str(out), "--max-steps", "3", "--batch-size", "2", "--logging-steps", "1", "--save-strategy", "no",
            "--video-frames", "4", "--learning-rate", "1e-3", "--group-by-length", "--lora-dropout", "0"]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "packing is off for vision-language models" in err
    assert "reference: the starting model (adapters switched off, parts trained in full as their frozen originals)" in err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stage"] == "dpo" and summary["steps"] == 3 and summary["data"]["train_rows"] == 6
    parts = summary["trainable_by_part"]
    assert parts["vision_tower"]["trainable"] == 0
    assert parts["projector"]["trainable"] == parts["projector"]["total"] > 0
    assert 0 < parts["language_model"]["trainable"] < parts["language_model"]["total"]
    train = [r for r in records(out) if "loss" in r]
    assert [r["step"] for r in train] == [1, 2, 3] and all("reward_accuracy" in r for r in train)
    assert train[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)  # the policy starts as its reference
    for name in ("adapter_model.safetensors", "processor_config.json", "chat_template.jinja", "rewards.png",
                 "loss.png", "mmtune.json"):
        assert (out / name).is_file(), name
    meta = json.loads((out / "mmtune.json").read_text())
    assert meta["kind"] == "vision" and meta["train_projector"] is True


@pytest.mark.parametrize("stage", ["dpo", "kto"])
def test_vision_parts_trained_in_full_have_a_precomputed_reference(stage, tmp_path, capsys):
    """--method frozen with the tower and projector in full: no adapters to switch off, so the reference
    log-probs of every row come from the starting model once, before training. At the first step the
    policy is that model: DPO's loss is log 2 with zero margin, KTO's 0.5 (each row's reference matched
    to its own sequences); then the parts move and the loss with them."""
    folder = tiny_vlm_dir("llava")
    rows = [IMAGE_PAIR, pair([_image("blue_square.png"), {"type": "text", "text": "What colour?"}], "Blue.", "Red.")]
    if stage == "kto":
        rows = [{"messages": r["input"]["messages"] + r[side], "label": side == "preferred_output"}
                for r in rows for side in ("preferred_output", "non_preferred_output")]
    data = write(tmp_path / "d.jsonl", rows * 2)
    out = tmp_path / "out"
    summary = run_preference(resolve_config(settings(folder, data, out, stage=stage, method="frozen",
                                                     train_vision="full", train_projector=True, max_steps=3,
                                                     learning_rate=1e-2, video_frames=None)))
    assert "reference: the starting model, log-probs computed once before training" in capsys.readouterr().err
    parts = summary["trainable_by_part"]
    assert parts["language_model"]["trainable"] == 0
    assert parts["vision_tower"]["trainable"] == parts["vision_tower"]["total"] > 0
    train = [r for r in records(out) if "loss" in r]
    assert train[0]["loss"] == pytest.approx(math.log(2) if stage == "dpo" else 0.5, abs=1e-5)
    if stage == "dpo":
        assert abs(train[0]["reward_margin"]) < 1e-5
    assert train[-1]["loss"] != pytest.approx(train[0]["loss"], abs=1e-6)
    assert (out / "model.safetensors").is_file() and (out / "processor_config.json").is_file()
