"""FLUX LoRA on the tiny random pipeline (tests/helpers/tiny_flux.py): training, saving in diffusers' layout,
loading with diffusers' own `load_lora_weights`, generating, fusing, and resuming after SIGKILL."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from mmtune.errors import UserError
from mmtune.imagegen import train as T
from mmtune.imagegen.config import PictureConfig
from mmtune.imagegen.pipeline import ADAPTER_FILE, latent_image_ids, pack_latents, unpack_latents
from tests.helpers.tiny_flux import MAX_T5_TOKENS, save_tiny_flux

ROOT = Path(__file__).resolve().parents[2]
COLOURS = [(220, 40, 40), (40, 200, 40), (40, 40, 220)]


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return save_tiny_flux(tmp_path_factory.mktemp("flux") / "tiny-flux")


@pytest.fixture(scope="module")
def pictures(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("pics") / "pictures"
    d.mkdir()
    for i, colour in enumerate(COLOURS):
        Image.new("RGB", (96 if i == 2 else 64, 64), colour).save(d / f"p{i}.png")
        (d / f"p{i}.txt").write_text(f"a flat colour number {i}", encoding="utf-8")
    return d


def _cfg(base, pictures, output, **kw) -> PictureConfig:
    values = dict(model=str(base), data=[str(pictures)], output=str(output), trigger_word="sks", repeats=2,
                  resolution=32, max_steps=4, save_steps=2, logging_steps=1, sample_steps=2,
                  max_sequence_length=MAX_T5_TOKENS, learning_rate=1e-2, lora_rank=4, lora_alpha=8.0)
    cfg = PictureConfig(**{**values, **kw})
    cfg.validate()
    return cfg


@pytest.fixture(scope="module")
def run(base, pictures, tmp_path_factory):
    """One 4-step run (checkpoint at step 2), with the trained transformer kept for the weight checks."""
    out = tmp_path_factory.mktemp("runs") / "run"
    kept = {}
    original = T.save_adapter

    def keep(transformer, folder):
        kept["transformer"] = transformer
        return original(transformer, folder)

    T.save_adapter = keep
    try:
        summary = T.train_pictures(_cfg(base, pictures, out))
    finally:
        T.save_adapter = original
    return out, summary, kept["transformer"]


def test_latent_layout_matches_flux_pipeline():
    from diffusers import FluxPipeline

    x = torch.randn(2, 4, 6, 10)
    packed = pack_latents(x)
    assert torch.equal(packed, FluxPipeline._pack_latents(x, 2, 4, 6, 10))
    assert torch.equal(unpack_latents(packed, 6, 10), x)
    ids = FluxPipeline._prepare_latent_image_ids(2, 3, 5, "cpu", torch.float32)
    assert torch.equal(latent_image_ids(6, 10, torch.device("cpu"), torch.float32), ids)


def test_run_output_and_summary(run):
    out, summary, _ = run
    assert {p.name for p in out.iterdir()} == {ADAPTER_FILE, "config.yaml", "metrics.jsonl", "loss.png",
                                               "summary.json", "mmtune.json", "samples", "checkpoint-2"}
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert all(np.isfinite(r["loss"]) and r["pictures_per_s"] > 0 for r in records)
    assert summary["steps"] == 4 and summary["pictures"] == 3 and summary["trigger_word"] == "sks"
    assert summary["buckets"] == {"32x32": 2, "40x26": 1}  # the 96x64 picture trains at its 3:2 bucket
    assert json.loads((out / "mmtune.json").read_text())["kind"] == "image-generation"
    assert (out / "samples" / "sample-0.txt").read_text().strip() == "sks"
    assert Image.open(out / "samples" / "sample-0.png").size == (32, 32)
    assert (out / "checkpoint-2" / "samples" / "sample-0.png").is_file()


def test_lora_changes_and_base_does_not(run, base):
    out, _, transformer = run
    saved = load_file(out / ADAPTER_FILE)
    assert saved and all(k.startswith("transformer.") and ".lora_" in k for k in saved)
    first = load_file(out / "checkpoint-2" / ADAPTER_FILE)
    b_keys = [k for k in saved if "lora_B" in k]
    assert all(saved[k].abs().sum() > 0 for k in b_keys)  # B starts at zero: every adapter trained
    assert any(not torch.equal(saved[k], first[k]) for k in saved)  # and went on changing after step 2
    reference = load_file(base / "transformer" / "diffusion_pytorch_model.safetensors")
    current = {k.replace(".base_layer", ""): v for k, v in transformer.state_dict().items() if "lora_" not in k}
    assert set(current) == set(reference)
    assert all(torch.equal(current[k].float(), reference[k].float()) for k in reference)


def _pixels(pipe, prompt="sks, a flat colour", seed=3):
    return pipe(prompt, height=32, width=32, num_inference_steps=3, guidance_scale=3.5, output_type="np",
                generator=torch.Generator().manual_seed(seed), max_sequence_length=MAX_T5_TOKENS).images[0]


def test_saved_adapter_loads_in_diffusers_and_changes_pictures(run, base):
    from diffusers import FluxPipeline

    from mmtune.imagegen.generate import load_for_generation

    out, _, _ = run
    plain = FluxPipeline.from_pretrained(base)
    before = _pixels(plain)
    plain.load_lora_weights(str(out))  # diffusers alone, default file name: the real consumer
    tuned = _pixels(plain)
    assert np.abs(tuned - before).max() > 1e-3
    ours = load_for_generation(str(out))
    assert np.allclose(_pixels(ours.pipe), tuned, atol=1e-6)
    ours.pipe.disable_lora()
    assert np.allclose(_pixels(ours.pipe), before, atol=1e-6)


def test_fused_equals_unfused(run, tmp_path):
    from diffusers import FluxPipeline

    from mmtune.imagegen.generate import load_for_generation, merge_picture_run

    out, _, _ = run
    merged = merge_picture_run(str(out), str(tmp_path / "merged"))
    fused = FluxPipeline.from_pretrained(merged)
    assert not any("lora" in k for k in fused.transformer.state_dict())
    unfused = load_for_generation(str(out)).pipe
    assert np.abs(_pixels(fused) - _pixels(unfused)).max() < 1e-4


def test_resume_after_sigkill_matches(run, base, pictures, tmp_path):
    """A real process killed (SIGKILL) right after checkpoint-2, then --resume: same adapter, same losses."""
    out_ref = run[0]
    out = tmp_path / "killed"
    cfg = _cfg(base, pictures, out)
    script = textwrap.dedent(f"""
        import os, signal
        from mmtune.imagegen import train as T
        from mmtune.imagegen.config import PictureConfig
        original = T.save_checkpoint
        def save_then_die(out, step, *a, **kw):
            original(out, step, *a, **kw)
            os.kill(os.getpid(), signal.SIGKILL)
        T.save_checkpoint = save_then_die
        T.train_pictures(PictureConfig(**{cfg.to_dict()!r}))
    """)
    env = {"PYTHONPATH": f"{ROOT / 'src'}:{ROOT}", "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert (out / "checkpoint-2" / "state.json").is_file() and not (out / ADAPTER_FILE).exists()
    with pytest.raises(UserError, match="--resume"):
        T.train_pictures(cfg)  # not over a killed run without --resume
    summary = T.train_pictures(_cfg(base, pictures, out, resume=True))
    assert summary["resumed_from"] == "checkpoint-2"
    ref, got = load_file(out_ref / ADAPTER_FILE), load_file(out / ADAPTER_FILE)
    assert all(torch.allclose(ref[k], got[k], atol=1e-6) for k in ref)
    losses = [json.loads(x)["loss"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    ref_losses = [json.loads(x)["loss"] for x in (out_ref / "metrics.jsonl").read_text().splitlines()]
    assert losses == pytest.approx(ref_losses, abs=1e-5)


def test_captions_get_the_trigger_word(pictures):
    from mmtune.data.pictures import read_pictures

    ps = read_pictures(str(pictures))
    ps.pictures[1].caption = None
    ps.pictures[2].caption = "sks already here"
    assert T.caption_texts(ps, "sks") == ["sks, a flat colour number 0", "sks", "sks already here"]
    with pytest.raises(UserError, match="no caption"):
        T.caption_texts(ps, None)


def test_bad_pictures_refuse_training(base, pictures, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.png").write_bytes(b"not a png")
    with pytest.raises(UserError, match="undecodable-image"):
        T.train_pictures(_cfg(base, bad, tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_train_command_routes_and_refuses_text_flags(base, pictures, tmp_path, capsys):
    from mmtune.cli import main

    argv = ["train", "--model", str(base), "--data", str(pictures), "--output", str(tmp_path / "o"), "--packing"]
    assert main(argv) == 2
    assert "--packing: not used when training an image-generation model" in capsys.readouterr().err
    cfg_file = tmp_path / "pic.yaml"
    cfg_file.write_text(f"model: {base}\ndata: {pictures}\nlearning_rate: 1e-3\ntrigger_word: sks\n")
    assert main(["train", "--config", str(cfg_file), "--repeats", "3", "--print-config"]) == 0
    printed = capsys.readouterr().out
    assert "repeats: 3" in printed and "learning_rate: 0.001" in printed and "lora_rank: 16" in printed


def test_generate_and_merge_commands(run, tmp_path, capsys):
    from mmtune.cli import main

    out = run[0]
    common = ["--steps", "2", "--width", "32", "--height", "32", "--max-sequence-length", str(MAX_T5_TOKENS)]
    assert main(["generate", str(out), "--prompt", "sks, a flat colour", "--out", str(tmp_path / "g.png"),
                 "--num", "2", *common]) == 0
    a, b = (np.asarray(Image.open(tmp_path / f"g-{i}.png")) for i in (0, 1))
    assert a.shape == (32, 32, 3) and not np.array_equal(a, b)  # seeds 0 and 1
    assert main(["generate", str(out), "--prompt", "sks", "--out", str(tmp_path / "grid.png"), "--num", "2",
                 "--compare-base", *common]) == 0
    grid = Image.open(tmp_path / "grid.png")
    assert grid.height == 64 and grid.width > 64
    assert main(["generate", str(out), "--prompt", "x", "--out", str(tmp_path / "x.png"), "--width", "33"]) == 2
    assert "--width 33: must be a multiple of 2" in capsys.readouterr().err
    assert main(["merge", "--adapter", str(out), "--out", str(tmp_path / "merged")]) == 0
    assert (tmp_path / "merged" / "model_index.json").is_file()
    assert json.loads((tmp_path / "merged" / "mmtune.json").read_text())["adapter"] is False


def test_regularization_pictures_keep_their_captions(base, pictures, tmp_path, monkeypatch):
    reg = tmp_path / "reg"
    reg.mkdir()
    Image.new("RGB", (64, 64), (90, 90, 90)).save(reg / "r.png")
    (reg / "r.txt").write_text("a grey square", encoding="utf-8")
    seen = {}

    def stop(pipe, ps, captions, *a):
        seen["captions"], seen["n"] = captions, len(ps.pictures)
        raise RuntimeError("stop here")

    monkeypatch.setattr(T, "encode_once", stop)
    with pytest.raises(RuntimeError, match="stop here"):
        T.train_pictures(_cfg(base, pictures, tmp_path / "out", reg_data=str(reg)))
    assert seen["n"] == 4
    assert seen["captions"] == [f"sks, a flat colour number {i}" for i in range(3)] + ["a grey square"]
    (reg / "r.txt").unlink()
    with pytest.raises(UserError, match="regularization picture has no caption"):
        T.train_pictures(_cfg(base, pictures, tmp_path / "out", reg_data=str(reg)))


def test_resume_keeps_the_logging_window(base, pictures, tmp_path):
    """Checkpoint at step 2, log every 3 steps: the resumed run's step-3 line averages steps 1-3 like the
    uninterrupted run's."""
    import shutil

    full = T.train_pictures(_cfg(base, pictures, tmp_path / "full", logging_steps=3))
    assert full["steps"] == 4
    shutil.copytree(tmp_path / "full" / "checkpoint-2", tmp_path / "again" / "checkpoint-2")
    T.train_pictures(_cfg(base, pictures, tmp_path / "again", logging_steps=3, resume=True))
    lines = [(tmp_path / name / "metrics.jsonl").read_text().splitlines() for name in ("full", "again")]
    assert [json.loads(x)["step"] for x in lines[0]] == [3, 4]
    assert [json.loads(x)["loss"] for x in lines[1]] == pytest.approx([json.loads(x)["loss"] for x in lines[0]],
                                                                     abs=1e-6)


def test_output_folder_with_the_users_files_or_a_system_folder_is_refused(base, pictures, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "README.md").write_text("my notes")
    (mine / "loss.png").write_bytes(b"my plot")  # a name a run writes, but the folder is not a run's
    (mine / "holiday.jpg").write_bytes(b"jpeg")
    for overwrite in (False, True):
        with pytest.raises(UserError, match="holiday.jpg") as e:
            T.train_pictures(_cfg(base, pictures, mine, overwrite=overwrite))
        assert "README.md" in str(e.value)
    assert sorted(p.name for p in mine.iterdir()) == ["README.md", "holiday.jpg", "loss.png"]
    assert (mine / "README.md").read_text() == "my notes" and (mine / "loss.png").read_bytes() == b"my plot"
    with pytest.raises(UserError, match="system folder"):
        T.train_pictures(_cfg(base, pictures, "/etc/mmtune-run"))


def test_export_kohya_command(run, tmp_path, capsys):
    """`mmtune export RUN --format kohya`: the run's LoRA under kohya's fused names, each fused update the exact
    concatenation of the run's (diffusers' converter reads the layout back: tests/imagegen/test_kohya.py)."""
    from mmtune.cli import main

    out = run[0]
    target = tmp_path / "tok-kohya.safetensors"
    assert main(["export", str(out), "--format", "kohya", "--out", str(target)]) == 0
    kohya, ours = load_file(target), load_file(out / ADAPTER_FILE)
    assert {k.split(".")[0] for k in kohya} == {
        "lora_unet_double_blocks_0_img_attn_qkv", "lora_unet_double_blocks_0_img_attn_proj",
        "lora_unet_single_blocks_0_linear1"}
    qkv = kohya["lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight"] @ kohya[
        "lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight"]
    scale = float(kohya["lora_unet_double_blocks_0_img_attn_qkv.alpha"]) / 12  # rank 4 x 3 pieces
    k = "transformer.transformer_blocks.0.attn.to_k"
    assert torch.allclose(qkv[32:64] * scale, ours[f"{k}.lora_B.weight"] @ ours[f"{k}.lora_A.weight"] * 2.0)
    assert main(["export", str(out), "--format", "kohya", "--out", str(tmp_path / "x.gguf")]) == 2
    assert "is a .safetensors file" in capsys.readouterr().err


def test_without_trigger_gives_the_class_caption():
    assert T.without_trigger("sks, a cat on a sofa", "sks") == "a cat on a sofa"
    assert T.without_trigger("a sks cat", "sks") == "a cat"
    assert T.without_trigger("a cat", "sks") == "a cat"
    assert T.without_trigger("sks", "sks") is None
    with pytest.raises(UserError, match="class_preservation needs --trigger-word"):
        PictureConfig(model="m", data=["d"], class_preservation=1.0).validate()


def test_class_preservation_pulls_the_plain_caption_to_the_base(base, pictures, tmp_path):
    """The extra term is the tuned model's prediction for the caption without the trigger word against the
    base's (adapters off) at the same noisy latents: zero while the LoRA is still zero, positive and with a
    gradient into the LoRA once it is not, and the adapters are on again afterwards."""
    from mmtune.data.pictures import load_pictures
    from mmtune.imagegen.pipeline import load_pipeline, model_source

    cpu, f32 = torch.device("cpu"), torch.float32
    cfg = _cfg(base, pictures, tmp_path / "o", class_preservation=2.0)
    pipe = load_pipeline(str(base))
    ps = load_pictures(str(pictures))
    captions = T.caption_texts(ps, "sks")
    plain = [T.without_trigger(c, "sks") for c in captions]
    cache = T.encode_once(pipe, ps, captions, cfg, 32, MAX_T5_TOKENS, cpu, f32, plain)
    assert [cache.caption[i] != cache.plain[i] for i in range(3)] == [True] * 3
    transformer = pipe.transformer
    T.add_lora(transformer, cfg, model_source(str(base))[1])
    sigmas, timesteps = T.training_noise_levels(pipe)
    batch = [i for i in range(3) if cache.bucket[i] == cache.bucket[0]]

    def loss(weight):
        cfg.class_preservation = weight
        return T.flow_matching_loss(transformer, cache, batch, torch.Generator().manual_seed(0), sigmas, timesteps,
                                    1.0, cfg, cpu, f32)

    assert loss(2.0).item() == pytest.approx(loss(0.0).item(), abs=1e-7)  # LoRA B = 0: tuned = base
    with torch.no_grad():
        for name, p in transformer.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.3)
    extra = loss(2.0) - loss(0.0)
    assert extra.item() > 0
    extra.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for n, p in transformer.named_parameters()
               if "lora_" in n)
    assert loss(0.0).item() != pytest.approx(_base_loss(transformer, cache, batch, sigmas, timesteps, cfg))


def _base_loss(transformer, cache, batch, sigmas, timesteps, cfg):
    transformer.disable_adapters()
    try:
        with torch.no_grad():
            return T.flow_matching_loss(transformer, cache, batch, torch.Generator().manual_seed(0), sigmas,
                                        timesteps, 1.0, cfg, torch.device("cpu"), torch.float32).item()
    finally:
        transformer.enable_adapters()
