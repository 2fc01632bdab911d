"""`mmtune train` on tiny random vision-language models: mixed media data end to end, what trains
per part, what the output folder holds (and that it loads back), and the errors before training."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from mmtune.cli import main
from mmtune.config import resolve_config
from mmtune.errors import UserError
from mmtune.models.registry import find_spec
from mmtune.train.setup import part_of
from mmtune.train.sft import run_sft
from tests.helpers.tiny_vlms import tiny_vlm_dir

MEDIA = Path(__file__).resolve().parents[2] / "examples" / "data" / "media"


def _user(*parts) -> dict:
    return {"role": "user", "content": list(parts)}


def _image(name: str) -> dict:
    return {"type": "image_url", "image_url": {"url": str(MEDIA / name)}}


def _text(text: str) -> dict:
    return {"type": "text", "text": text}


def _answer(text: str) -> dict:
    return {"role": "assistant", "content": text}


def rows(*, multi: bool = True, video: bool = False) -> list[dict]:
    """An image row, a multi-image row, a video row (where asked) and a text-only row."""
    out = [{"messages": [_user(_image("red_circle.png"), _text("What is this?")), _answer("A red circle.")]},
           {"messages": [{"role": "user", "content": "Hi"}, _answer("Hello there.")]}]
    if multi:
        out.append({"messages": [_user(_image("red_circle.png"), _image("blue_square.png"), _text("Compare.")),
                                 _answer("A circle and a square.")]})
    if video:
        out.append({"messages": [_user({"type": "video", "video": str(MEDIA / "moving_circle.mp4")},
                                       _text("What moves?")), _answer("A circle.")]})
    return out


def write(path: Path, data: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in data), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def qwen(tmp_path_factory) -> Path:
    """A private copy (run_sft may write nothing into it, but tests must not share state)."""
    return _copy(tiny_vlm_dir("qwen2_vl"), tmp_path_factory.mktemp("qwen"))


@pytest.fixture(scope="module")
def llava(tmp_path_factory) -> Path:
    return _copy(tiny_vlm_dir("llava"), tmp_path_factory.mktemp("llava"))


def _copy(src: Path, dest: Path) -> Path:
    out = dest / src.name
    shutil.copytree(src, out)
    return out


def cfg_for(model: Path, data: Path, out: Path, **kw):
    base = {"model": str(model), "data": [str(data)], "output": str(out), "batch_size": 2, "max_steps": 2,
            "learning_rate": 1e-2, "logging_steps": 1, "save_strategy": "no", "max_length": 256,
            "video_frames": 4}
    return resolve_config({**base, **kw})


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    name = "adapter_model.safetensors" if (folder / "adapter_model.safetensors").exists() else "model.safetensors"
    return load_file(folder / name)


def _parts(names, spec) -> set[str]:
    return {part_of(n.removeprefix("base_model.model.").replace(".modules_to_save.default.", "."), spec)
            for n in names}


def test_qwen2_vl_trains_on_images_video_and_text_through_the_cli(qwen, tmp_path, capsys):
    """Default parts (LoRA language model, projector in full, tower frozen); the adapter folder holds
    the processor and loads back onto the base model."""
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    from mmtune.models.vision import load_processor

    data = write(tmp_path / "mixed.jsonl", rows(video=True))
    out = tmp_path / "out"
    code = main(["train", "--model", str(qwen), "--data", str(data), "--output", str(out), "--max-steps", "2",
                 "--batch-size", "2", "--logging-steps", "1", "--save-strategy", "no", "--video-frames", "4",
                 "--max-pixels", str(28 * 28 * 4)])
    assert code == 0
    err = capsys.readouterr().err
    assert "packing is off for vision-language models" in err
    assert "vision_tower" in err and "projector" in err and "language_model" in err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["data"]["train_rows"] == 4
    assert summary["tokens_per_s"] > 0 and summary["supervised_tokens_per_s"] > 0 and summary["flops_per_s"] > 0
    parts = summary["trainable_by_part"]
    assert parts["vision_tower"]["trainable"] == 0
    assert parts["projector"]["trainable"] == parts["projector"]["total"] > 0
    assert 0 < parts["language_model"]["trainable"] < parts["language_model"]["total"]
    for name in ("adapter_model.safetensors", "adapter_config.json", "processor_config.json", "chat_template.jinja", "tokenizer.json", "config.yaml", "mmtune.json"):
        assert (out / name).is_file(), name
    saved_processor = json.loads((out / "processor_config.json").read_text())  # transformers 5: all parts in one
    assert saved_processor["image_processor"]["size"]["longest_edge"] == 28 * 28 * 4
    meta = json.loads((out / "mmtune.json").read_text())
    assert meta["kind"] == "vision" and meta["train_vision"] == "none" and meta["train_projector"] is True
    config = (out / "config.yaml").read_text()
    assert "train_vision: none" in config and "packing: false" in config

    spec = find_spec(str(qwen))
    saved = _weights(out)
    assert _parts(saved, spec) == {"projector", "language_model"}
    assert not any("visual.blocks" in n for n in saved)
    base = AutoModelForImageTextToText.from_pretrained(qwen)
    merger_before = base.model.visual.merger.mlp[0].weight.detach().clone()
    tuned = PeftModel.from_pretrained(base, out)
    assert not torch.equal(tuned.base_model.model.model.visual.merger.mlp[0].weight, merger_before)
    processor = load_processor(str(out))
    assert processor.image_processor.size["longest_edge"] == 28 * 28 * 4  # --max-pixels travels with the run
    assert processor.chat_template


def test_llava_frozen_language_model_trains_the_projector_only(llava, tmp_path):
    """--method frozen --train-projector: no adapter, the saved full model differs from the base in
    the projector alone, and loads back."""
    from transformers import AutoModelForImageTextToText

    data = write(tmp_path / "images.jsonl", rows())
    out = tmp_path / "out"
    summary = run_sft(cfg_for(llava, data, out, method="frozen", train_projector=True))
    parts = summary["trainable_by_part"]
    assert parts["projector"]["trainable"] == parts["projector"]["total"] > 0
    assert parts["vision_tower"]["trainable"] == parts["language_model"]["trainable"] == 0
    assert not (out / "adapter_config.json").exists() and (out / "processor_config.json").is_file()
    base = AutoModelForImageTextToText.from_pretrained(llava).state_dict()
    tuned = AutoModelForImageTextToText.from_pretrained(out).state_dict()
    spec = find_spec(str(llava))
    changed = {n for n in base if not torch.equal(base[n], tuned[n])}
    assert changed and _parts(changed, spec) == {"projector"}


def test_tower_lora_and_no_projector(qwen, tmp_path):
    """--train-vision lora --no-train-projector: LoRA lands in the tower's blocks (not the merger) and
    in the language model; the projector stays frozen and is not saved."""
    data = write(tmp_path / "d.jsonl", rows())
    out = tmp_path / "out"
    summary = run_sft(cfg_for(qwen, data, out, train_vision="lora", train_projector=False))
    assert summary["trainable_by_part"]["projector"]["trainable"] == 0
    assert summary["trainable_by_part"]["vision_tower"]["trainable"] > 0
    saved = _weights(out)
    assert all("lora_" in n for n in saved)
    spec = find_spec(str(qwen))
    assert _parts(saved, spec) == {"vision_tower", "language_model"}
    assert not any(".merger." in n for n in saved)


def test_frozen_language_model_with_tower_lora_only(llava, tmp_path):
    data = write(tmp_path / "d.jsonl", rows())
    out = tmp_path / "out"
    summary = run_sft(cfg_for(llava, data, out, method="frozen", train_vision="lora", train_projector=False))
    parts = summary["trainable_by_part"]
    assert parts["vision_tower"]["trainable"] > 0
    assert parts["language_model"]["trainable"] == parts["projector"]["trainable"] == 0
    assert _parts(_weights(out), find_spec(str(llava))) == {"vision_tower"}


def test_errors_before_training(llava, qwen, tiny_llama, tmp_path):
    """A video for LLaVA, media for a text model, frozen or vision flags for a text model, nothing
    to train, --max-length through the media: each a clear error before any model is loaded or trained."""
    out = tmp_path / "out"
    video = write(tmp_path / "video.jsonl", rows(video=True))
    with pytest.raises(UserError, match="does not take video"):
        run_sft(cfg_for(llava, video, out))
    images = write(tmp_path / "images.jsonl", rows())
    with pytest.raises(UserError, match="is a text model and this row has media"):
        run_sft(cfg_for(tiny_llama, images, out, max_pixels=None, video_frames=None))
    text = write(tmp_path / "text.jsonl", rows()[1:2])
    with pytest.raises(UserError, match="--method frozen.*vision-language models only"):
        run_sft(cfg_for(tiny_llama, text, out, method="frozen", video_frames=None))
    with pytest.raises(UserError, match="--train-vision.*vision-language models only"):
        run_sft(cfg_for(tiny_llama, text, out, train_vision="lora", video_frames=None))
    with pytest.raises(UserError, match="nothing would train"):
        run_sft(cfg_for(llava, images, out, method="frozen", train_projector=False))
    with pytest.raises(UserError, match="resize by area|resizes to a fixed size"):
        run_sft(cfg_for(llava, images, out, max_pixels=1000))
    with pytest.raises(UserError, match="cut through its media tokens"):
        run_sft(cfg_for(qwen, images, out, max_length=16))
    assert not (out / "summary.json").exists()


def test_rows_keep_no_pixels_and_decode_media_per_item(qwen, tmp_path, monkeypatch):
    """The checked data holds token ids only; an item decodes its media when read; a media file
    that changes after the check stops the run; nothing goes into the token cache."""
    from PIL import Image

    from mmtune.train.dataset import build_datasets
    from mmtune.train.setup import load_vision_processor

    monkeypatch.setenv("MMTUNE_CACHE", str(tmp_path / "cache"))
    image = tmp_path / "red.png"
    shutil.copy(MEDIA / "red_circle.png", image)
    data = write(tmp_path / "d.jsonl", [
        {"messages": [_user({"type": "image_url", "image_url": {"url": str(image)}}, _text("What?")),
                      _answer("Red.")]},
        {"messages": [{"role": "user", "content": "Hi"}, _answer("Hello.")]}])
    cfg = cfg_for(qwen, data, tmp_path / "out")
    assert cfg.data_cache
    processor = load_vision_processor(cfg)
    ds = build_datasets(cfg, processor, spec=find_spec(str(qwen)))
    assert not (tmp_path / "cache").exists()
    held = [v for item in ds.train.items for v in vars(item).values()]
    assert not any(isinstance(v, torch.Tensor) for v in held)
    assert ds.stats.train_rows == 2 and ds.stats.train_tokens == sum(len(r["input_ids"]) for r in ds.train.rows)
    first, text_only = ds.train[0], ds.train[1]
    assert first["pixel_values"].shape[0] > 0 and first["image_grid_thw"].tolist() == [[1, 4, 4]]
    assert "pixel_values" not in text_only and text_only["input_ids"] == ds.train.rows[1]["input_ids"]
    Image.new("RGB", (256, 256), "red").save(image)  # more pixels -> more media tokens than checked
    processor.image_processor.size = {"shortest_edge": 28 * 28, "longest_edge": 28 * 28 * 64}
    with pytest.raises(UserError, match="renders to different tokens"):
        ds.train[0]


@pytest.mark.parametrize("family", ["qwen2_vl", "llava"])
@pytest.mark.parametrize("method, vision, projector, expect", [
    ("lora", "full", False, {"vision_tower": "all", "projector": "none", "language_model": "some"}),
    ("lora", "full", True, {"vision_tower": "all", "projector": "all", "language_model": "some"}),
    ("frozen", "full", True, {"vision_tower": "all", "projector": "all", "language_model": "none"}),
    ("full", "none", False, {"vision_tower": "none", "projector": "none", "language_model": "all"}),
    ("lora", "lora", True, {"vision_tower": "some", "projector": "all", "language_model": "some"}),
])
def test_parts_train_as_the_flags_say(family, method, vision, projector, expect, tmp_path):
    """Every combination sets exactly the parts asked for (Qwen2-VL's projector sits inside its tower,
    LLaVA's beside it)."""
    from mmtune.models.loader import load_model
    from mmtune.train.setup import apply_method, part_summary, resolve_parts

    folder = tiny_vlm_dir(family)
    spec = find_spec(str(folder))
    cfg = resolve_parts(cfg_for(folder, tmp_path / "x.jsonl", tmp_path / "out", method=method, train_vision=vision,
                                train_projector=projector), spec, print)
    model = apply_method(load_model(str(folder), dtype=torch.float32), cfg, spec)
    _, counts, _ = part_summary(model, spec)
    got = {p: "none" if t == 0 else "all" if t == n else "some" for p, (t, n) in counts.items()}
    assert got == expect


def _registry_families() -> list[str]:
    from mmtune.models.registry import REGISTRY
    from tests.helpers.tiny_vlms import TINY_VLM_FAMILIES

    return [f for f in TINY_VLM_FAMILIES if any(s.family == f for s in REGISTRY.values())]


@pytest.mark.parametrize("family", _registry_families())
def test_every_registry_family_trains_through_run_sft(family, tmp_path):
    """One step of `mmtune train` with LoRA in the tower and the language model and the projector in
    full, on every media kind the family takes plus a text-only row; every part gets trainable weights."""
    folder = tiny_vlm_dir(family)
    spec = find_spec(str(folder))
    assert spec is not None and spec.family == family
    multi = spec.max_images is None or spec.max_images > 1
    data = write(tmp_path / "d.jsonl", rows(multi=multi, video=spec.supports_video))
    summary = run_sft(cfg_for(folder, data, tmp_path / "out", train_vision="lora", max_steps=1, batch_size=4))
    assert summary["steps"] == 1 and summary["final_train_loss"] is not None
    assert all(p["trainable"] > 0 for p in summary["trainable_by_part"].values())
    assert (tmp_path / "out" / "adapter_model.safetensors").is_file()


def test_group_by_length_on_vision_data_reads_no_item(qwen, tmp_path, monkeypatch):
    """Lengths come from the checked token ids: the sampler decodes no media."""
    from transformers.trainer_pt_utils import LengthGroupedSampler

    from mmtune.train.dataset import RowDataset, build_datasets
    from mmtune.train.setup import load_vision_processor
    from mmtune.train.sft import build_trainer, load_for_training

    cfg = cfg_for(qwen, write(tmp_path / "d.jsonl", rows() * 4), tmp_path / "out", group_by_length=True)
    processor = load_vision_processor(cfg)
    data = build_datasets(cfg, processor, spec=find_spec(str(qwen)))
    trainer = build_trainer(cfg, load_for_training(cfg, "fp32"), processor.tokenizer, data, "fp32", [])

    def no_read(self, i):
        raise AssertionError("the sampler read an item")

    monkeypatch.setattr(RowDataset, "__getitem__", no_read)
    sampler = trainer._get_train_sampler()
    assert isinstance(sampler, LengthGroupedSampler) and sorted(sampler) == list(range(len(data.train)))
