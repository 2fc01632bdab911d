"""LoRA on a FLUX transformer from the user's pictures: `train_pictures(cfg)` reads top to bottom.

setup   pictures checked (data/pictures.py), captions = trigger word + caption, buckets chosen;
        captions encoded (CLIP + T5) and latents computed (VAE) once, then the text encoders and
        the VAE leave the GPU; LoRA (PEFT) added to the transformer.
train   the flow-matching objective of diffusers' `train_dreambooth_lora_flux.py`: a noise level
        sigma, x_t = (1 - sigma) x_0 + sigma * noise, the transformer predicts noise - x_0 (MSE).
        With --class-preservation W, plus W x the MSE between the LoRA'd prediction for the caption
        without the trigger word and the base's own (adapters off) at the same x_t: the class stays
        as the base draws it (regularization pictures only say so through noisy picture targets).
        Every random draw comes from a generator seeded by (seed, step), and the order of each
        epoch from (seed, epoch), so a run resumed from a checkpoint after SIGKILL goes on exactly
        as if it had never stopped.
save    `pytorch_lora_weights.safetensors` in the layout `FluxPipeline.load_lora_weights` loads
        (with its LoRA config as metadata), checkpoint-N/ (adapter, optimizer, schedule, samples),
        config.yaml, metrics.jsonl, loss.png, summary.json, mmtune.json, samples/.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mmtune import __version__
from mmtune.data.pictures import PictureSet, load_pictures
from mmtune.errors import UserError
from mmtune.imagegen.buckets import load_picture, make_buckets, nearest_bucket
from mmtune.imagegen.config import PictureConfig
from mmtune.imagegen.pipeline import (
    ADAPTER_FILE,
    DTYPES,
    device,
    latent_image_ids,
    load_pipeline,
    model_source,
    pack_latents,
    resolve_precision,
    unpack_latents,
    vae_scale,
)
from mmtune.imagegen.progress import METRICS_FILE, PLOT_FILE, Progress, plot_loss
from mmtune.imagegen.run import META_FILE
from mmtune.models.imagegen_registry import IMAGE_KIND, ImageGenSpec, image_memory_gib

SUMMARY_FILE = "summary.json"
STATE_FILE = "state.json"
SAMPLES = "samples"
MAX_GRAD_NORM = 1.0  # the reference script's default


@dataclass
class Cache:
    """What the transformer trains on, computed once: per picture its latent distribution (mean, std) at its
    bucket; per caption its T5 sequence, CLIP pooled vector and text ids; the sample prompts likewise."""

    latent_mean: list[torch.Tensor] = field(default_factory=list)
    latent_std: list[torch.Tensor] = field(default_factory=list)
    bucket: list[tuple[int, int]] = field(default_factory=list)  # (width, height) in pixels
    caption: list[int] = field(default_factory=list)  # picture -> index into the caption encodings
    repeats: list[int] = field(default_factory=list)  # times each picture is seen per epoch
    plain: list[int | None] = field(default_factory=list)  # picture -> its caption without the trigger word
    prompt_embeds: list[torch.Tensor] = field(default_factory=list)
    pooled: list[torch.Tensor] = field(default_factory=list)
    text_ids: torch.Tensor | None = None
    samples: list[tuple[str, torch.Tensor, torch.Tensor]] = field(default_factory=list)
    resolution: int = 1024
    shift: float = 0.0  # the VAE's latent normalisation: x_0 = (z - shift) * scale
    scale: float = 1.0


def train_pictures(cfg: PictureConfig) -> dict[str, Any]:
    """Train a LoRA on `cfg.data`; returns the summary (also saved as summary.json)."""
    out = Path(cfg.output)
    resume_from = prepare_output(cfg)
    source, spec = model_source(cfg.model)
    precision = resolve_precision(cfg.precision)
    dev, dtype = device(), DTYPES[precision]
    # ---- data
    pictures = load_pictures(cfg.data[0], cfg.rules)
    captions = caption_texts(pictures, cfg.trigger_word)
    regular = 0
    if cfg.reg_data:  # prior preservation: their own captions, no trigger word
        reg = load_pictures(cfg.reg_data, cfg.rules)
        captions += caption_texts(reg, None, what="regularization picture")
        pictures = PictureSet(pictures.path, pictures.format, pictures.pictures + reg.pictures, pictures.report)
        regular = len(reg.pictures)
    plain = None  # class preservation: each picture's caption without the trigger word (none for the regular ones)
    if cfg.class_preservation:
        plain = [without_trigger(c, cfg.trigger_word) for c in captions[:len(captions) - regular]] + [None] * regular
    # ---- model and cache
    torch.manual_seed(cfg.seed)
    pipe = load_pipeline(cfg.model, dtype)
    resolution = cfg.resolution or spec.default_resolution
    max_seq = cfg.max_sequence_length or spec.max_sequence_length
    cache = encode_once(pipe, pictures, captions, cfg, resolution, max_seq, dev, dtype, plain)
    if regular:  # DreamBooth's balance: the regularization pictures are seen as often in all as the others
        reg_repeats = max(1, round(cfg.repeats * (len(pictures.pictures) - regular) / regular))
        cache.repeats[-regular:] = [reg_repeats] * regular
    transformer = pipe.transformer.to(dev)
    add_lora(transformer, cfg, spec)
    checkpointing = use_checkpointing(cfg, spec, transformer, resolution)
    if checkpointing:
        transformer.enable_gradient_checkpointing()
    params = [p for p in transformer.parameters() if p.requires_grad]
    optimizer = make_optimizer(cfg, params)
    chunks = epoch_chunks(cache, cfg, 0)
    steps_per_epoch = math.ceil(len(chunks) / cfg.grad_accum)
    total_steps = cfg.max_steps or cfg.epochs * steps_per_epoch
    schedule = make_schedule(optimizer, cfg, total_steps)
    history: list[dict[str, Any]] = []
    window: list[float] = []  # losses since the last log line
    start = 0
    if resume_from is not None:
        start, history, window = load_checkpoint(resume_from, transformer, optimizer, schedule)
    out.mkdir(parents=True, exist_ok=True)
    cfg.save(out)
    (out / METRICS_FILE).write_text("".join(json.dumps(r) + "\n" for r in history), encoding="utf-8")
    trainable = sum(p.numel() for p in params)
    total = sum(p.numel() for p in transformer.parameters())
    print(f"LoRA on {cfg.model}: {len(pictures.pictures) - regular} pictures"
          + (f" + {regular} regularization pictures" if regular else "") + f" x {cfg.repeats} repeats, "
          f"{len(set(cache.bucket))} bucket(s) {sorted(set(cache.bucket))}, {total_steps} steps; training "
          f"{trainable:,} of {total:,} parameters, {precision} on {dev.type}"
          + (", gradient checkpointing" if checkpointing else "")
          + (f"; resuming from {resume_from.name}" if resume_from else ""), flush=True)
    # ---- train
    guidance = cfg.guidance if cfg.guidance is not None else (spec.default_guidance or 1.0)
    sigmas, timesteps = training_noise_levels(pipe)
    transformer.train()
    progress = Progress(total_steps, start)
    started, pictures_done = time.monotonic(), 0
    for step in range(start, total_steps):
        loss, seen = train_step(transformer, cache, cfg, step, sigmas, timesteps, guidance, dev, dtype)
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, MAX_GRAD_NORM))
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        window.append(loss)
        pictures_done += seen
        done = step + 1
        if done % cfg.logging_steps == 0 or done == total_steps:
            rec = {"step": done, "epoch": round(done / steps_per_epoch, 4), "loss": round(sum(window) / len(window), 6),
                   "lr": schedule.get_last_lr()[0], "grad_norm": round(grad_norm, 6),
                   "pictures_per_s": round(pictures_done / max(time.monotonic() - started, 1e-9), 3)}
            window = []
            history.append(rec)
            with open(out / METRICS_FILE, "a", encoding="utf-8") as f:
                f.write(json.dumps(rec) + "\n")
            progress.log(rec)
        progress.advance(done)
        if done % cfg.save_steps == 0 and done < total_steps:
            save_checkpoint(out, done, pipe, cache, cfg, optimizer, schedule, history, dev, dtype, window)
    progress.close()
    runtime = time.monotonic() - started
    # ---- save
    transformer.eval()
    save_adapter(transformer, out)
    write_samples(out / SAMPLES, pipe, cache, cfg, dev, dtype)
    write_meta(out, cfg, source, resolution, max_seq)
    plot_loss(history, out / PLOT_FILE)
    summary = {
        "kind": IMAGE_KIND, "model": cfg.model, "method": "lora", "output": str(out),
        "steps": total_steps, "epochs": round(total_steps / steps_per_epoch, 4),
        "pictures": len(pictures.pictures) - regular, "regularization_pictures": regular,
        "regularization_repeats": cache.repeats[-1] if regular else None,
        "class_preservation": cfg.class_preservation,
        "repeats": cfg.repeats, "trigger_word": cfg.trigger_word, "resolution": resolution,
        "buckets": {f"{w}x{h}": cache.bucket.count((w, h)) for w, h in sorted(set(cache.bucket))},
        "train_runtime_s": round(runtime, 2), "pictures_per_s": round(pictures_done / max(runtime, 1e-9), 3),
        "first_train_loss": history[0]["loss"] if history else None,
        "final_train_loss": history[-1]["loss"] if history else None,
        "trainable_params": trainable, "total_params": total, "precision": precision,
        "gradient_checkpointing": checkpointing, "resumed_from": resume_from.name if resume_from else None,
        "adapter": ADAPTER_FILE, "samples": sorted(p.name for p in (out / SAMPLES).glob("*.png")),
    }
    (out / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    print(f"done: {total_steps} steps in {runtime:.1f} s, final loss {summary['final_train_loss']}; adapter "
          f"{out / ADAPTER_FILE}\ntry it: mmtune generate {out} --prompt \"{cfg.trigger_word or 'a picture'} ...\" "
          f"--out pic.png", flush=True)
    return summary


# ---------------------------------------------------------------------------- setup
def prepare_output(cfg: PictureConfig) -> Path | None:
    """The checkpoint to resume from (--resume), after making sure no finished run or checkpoint is clobbered."""
    from mmtune.train.output import check_location  # light: the text runs' rules for where output may go

    out = Path(cfg.output)
    check_location(out, "--output")  # never /, home, or a system folder
    foreign = sorted(p.name for p in out.iterdir() if not is_run_entry(p.name)) if out.is_dir() else []
    if foreign:  # the user's own files: never written over, not even with --overwrite
        raise UserError(f"--output {out} holds files a picture run does not write: {', '.join(foreign[:10])}"
                        f"{' and more' if len(foreign) > 10 else ''}. They are never replaced: move them out, or "
                        "choose another --output (a new or empty folder)")
    checkpoints = sorted(checkpoint_dirs(out), key=lambda p: int(p.name.split("-")[1]))
    finished = (out / META_FILE).is_file()
    if cfg.resume:
        if not checkpoints:
            if finished:
                raise UserError(f"{out} holds a finished run and no checkpoint to resume: it is complete")
            return None  # killed before its first checkpoint: start again
        return checkpoints[-1]
    if (checkpoints or finished) and not cfg.overwrite:
        raise UserError(f"{out} already holds a run: pass --resume to continue it, --overwrite to replace it, or "
                        "another --output")
    if cfg.overwrite:
        for p in checkpoints:
            shutil.rmtree(p)
        shutil.rmtree(out / SAMPLES, ignore_errors=True)
        for name in RUN_FILES - {SAMPLES}:
            (out / name).unlink(missing_ok=True)
    return None


RUN_FILES = frozenset({ADAPTER_FILE, META_FILE, SUMMARY_FILE, METRICS_FILE, PLOT_FILE, "config.yaml", SAMPLES})


def is_run_entry(name: str) -> bool:
    """What a picture run writes into its folder (files, samples/, checkpoint-N/ and their temporaries)."""
    if name in RUN_FILES:
        return True
    stem = name.removeprefix(".").removesuffix(".tmp")
    return stem.startswith("checkpoint-") and stem.split("-", 1)[1].isdigit()


def checkpoint_dirs(out: Path) -> list[Path]:
    """Complete checkpoints only: one is renamed into place after all its files are written."""
    if not out.is_dir():
        return []
    return [p for p in out.glob("checkpoint-*") if p.name.split("-")[1].isdigit() and (p / STATE_FILE).is_file()]


def caption_texts(pictures: PictureSet, trigger: str | None, what: str = "picture") -> list[str]:
    """Each picture's training caption: `TOK, caption` (the trigger word first unless the caption has it)."""
    out = []
    for pic in pictures.pictures:
        caption = (pic.caption or "").strip()
        if not caption and not trigger:
            fix = "write a caption" + (" or pass --trigger-word" if what == "picture" else "")
            raise UserError(f"{pictures.path}: {pic.where}: the {what} has no caption and there is no trigger word "
                            f"to train it on: {fix}")
        if trigger and trigger not in caption.split():
            caption = f"{trigger}, {caption}" if caption else trigger
        out.append(caption)
    return out


def without_trigger(caption: str, trigger: str | None) -> str | None:
    """The caption with the trigger word taken out (`zkx, a cat` -> `a cat`): the class the concept belongs to;
    None when nothing is left."""
    words = [w for w in caption.split() if w.rstrip(",") != trigger]
    text = " ".join(words).strip(" ,")
    return text or None


def encode_once(pipe, pictures: PictureSet, captions: list[str], cfg: PictureConfig, resolution: int, max_seq: int,
                dev: torch.device, dtype: torch.dtype, plain: list[str | None] | None = None) -> Cache:
    """Captions through CLIP + T5 and pictures through the VAE, once; then those three leave the GPU. `plain`:
    per picture, its caption without the trigger word (class preservation), encoded too."""
    cache = Cache(resolution=resolution, shift=pipe.vae.config.shift_factor or 0.0,
                  scale=pipe.vae.config.scaling_factor)
    buckets = make_buckets(resolution, vae_scale(pipe) * 2, cfg.buckets)
    plain = plain or []
    unique = list(dict.fromkeys(captions + [p for p in plain if p]))
    prompts = cfg.sample_prompt or [cfg.trigger_word or captions[0]]
    for module in (pipe.text_encoder, pipe.text_encoder_2, pipe.vae):
        module.to(dev)
    with torch.no_grad():
        for text in unique + prompts:
            embeds, pooled, text_ids = pipe.encode_prompt(prompt=text, prompt_2=None, device=dev,
                                                          max_sequence_length=max_seq)
            cache.text_ids = text_ids.cpu()
            if len(cache.prompt_embeds) < len(unique):
                cache.prompt_embeds.append(embeds[0].cpu())
                cache.pooled.append(pooled[0].cpu())
            else:
                cache.samples.append((text, embeds.cpu(), pooled.cpu()))
        index = {text: i for i, text in enumerate(unique)}
        for pic, caption in zip(pictures.pictures, captions):
            size = nearest_bucket(pic.width, pic.height, buckets)
            pixels = _to_tensor(load_picture(pic.image, size)).to(dev, dtype)
            dist = pipe.vae.encode(pixels[None]).latent_dist
            cache.latent_mean.append(dist.mean[0].float().cpu())
            cache.latent_std.append(dist.std[0].float().cpu())
            cache.bucket.append(size)
            cache.caption.append(index[caption])
            cache.repeats.append(cfg.repeats)
        cache.plain = [index[p] if p and p != c else None for p, c in zip(plain, captions)] if plain else []
    pipe.text_encoder, pipe.text_encoder_2 = None, None  # not needed again: every caption is encoded
    pipe.vae.to("cpu")  # back on the GPU only to decode samples
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    return cache


def _to_tensor(image) -> torch.Tensor:
    import numpy as np

    arr = torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1.0)
    return arr.permute(2, 0, 1).contiguous()


def add_lora(transformer, cfg: PictureConfig, spec: ImageGenSpec) -> None:
    """LoRA adapters (PEFT, through diffusers' `add_adapter`) on the transformer; the base stays frozen and the
    adapters train in fp32 whatever the base's dtype."""
    from peft import LoraConfig

    transformer.requires_grad_(False)
    targets = cfg.lora_targets or list(spec.lora_targets)
    try:
        transformer.add_adapter(LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                                           init_lora_weights="gaussian", target_modules=targets))
    except ValueError as e:
        raise UserError(f"lora_targets {targets}: {e}") from None
    for p in transformer.parameters():
        if p.requires_grad:
            p.data = p.data.float()


def use_checkpointing(cfg: PictureConfig, spec: ImageGenSpec, transformer, resolution: int) -> bool:
    """--gradient-checkpointing, or (unset) on when the GPU would not hold the run without it."""
    if cfg.gradient_checkpointing is not None:
        return cfg.gradient_checkpointing
    if not torch.cuda.is_available():
        return False
    if sum(p.numel() for p in transformer.parameters()) < 0.5 * spec.params_b * 1e9:
        return False  # a small (test or distilled) transformer: the registry's estimate does not apply
    need = image_memory_gib(spec, resolution, cfg.batch_size, cfg.lora_rank, gradient_checkpointing=False)
    return need["lora_train"] * 1024**3 > 0.9 * torch.cuda.get_device_properties(0).total_memory


def make_optimizer(cfg: PictureConfig, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    if cfg.optimizer == "adamw8bit":
        if not torch.cuda.is_available():
            raise UserError("optimizer adamw8bit needs a CUDA GPU (bitsandbytes): use --optimizer adamw")
        try:
            import bitsandbytes as bnb
        except ImportError:
            raise UserError("optimizer adamw8bit needs bitsandbytes: pip install bitsandbytes") from None
        return bnb.optim.AdamW8bit(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)


def make_schedule(optimizer, cfg: PictureConfig, total: int) -> torch.optim.lr_scheduler.LambdaLR:
    warm = cfg.warmup_steps

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / (warm + 1)
        progress = (step - warm) / max(1, total - warm)
        if cfg.scheduler == "linear":
            return max(0.0, 1 - progress)
        if cfg.scheduler == "cosine":
            return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


# ---------------------------------------------------------------------------- train
def epoch_chunks(cache: Cache, cfg: PictureConfig, epoch: int) -> list[list[int]]:
    """This epoch's batches: every picture its repeats, batches within one bucket, order from (seed, epoch).
    A bucket's last batch may be smaller: no picture is dropped."""
    g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch)
    by_bucket: dict[tuple[int, int], list[int]] = {}
    for i, b in enumerate(cache.bucket):
        by_bucket.setdefault(b, []).extend([i] * cache.repeats[i])
    chunks = []
    for b in sorted(by_bucket):
        items = by_bucket[b]
        order = torch.randperm(len(items), generator=g).tolist()
        items = [items[k] for k in order]
        chunks += [items[k:k + cfg.batch_size] for k in range(0, len(items), cfg.batch_size)]
    order = torch.randperm(len(chunks), generator=g).tolist()
    return [chunks[k] for k in order]


def training_noise_levels(pipe) -> tuple[torch.Tensor, torch.Tensor]:
    """The training sigmas and timesteps of the model's flow-matching scheduler (a fresh copy, as the reference
    script keeps: `set_timesteps` for sampling changes the pipeline's own)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    sched = FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config)
    sigmas, timesteps = sched.sigmas[: len(sched.timesteps)].clone(), sched.timesteps.clone()
    return sigmas, timesteps


def train_step(transformer, cache: Cache, cfg: PictureConfig, step: int, sigmas: torch.Tensor,
               timesteps: torch.Tensor, guidance: float, dev: torch.device, dtype: torch.dtype) -> tuple[float, int]:
    """One optimizer step's forward and backward passes (grad_accum micro-batches); returns (mean loss, pictures)."""
    per_epoch = len(epoch_chunks(cache, cfg, 0))
    total, seen = 0.0, 0
    for k in range(cfg.grad_accum):
        micro = step * cfg.grad_accum + k
        epoch, j = divmod(micro, per_epoch)
        batch = epoch_chunks(cache, cfg, epoch)[j]
        g = torch.Generator().manual_seed(cfg.seed * 7_919 + micro)
        loss = flow_matching_loss(transformer, cache, batch, g, sigmas, timesteps, guidance, cfg, dev, dtype)
        (loss / cfg.grad_accum).backward()
        total += float(loss.detach())
        seen += len(batch)
    return total / cfg.grad_accum, seen


def flow_matching_loss(transformer, cache: Cache, batch: list[int], g: torch.Generator, sigmas: torch.Tensor,
                       timesteps: torch.Tensor, guidance: float, cfg: PictureConfig, dev: torch.device,
                       dtype: torch.dtype) -> torch.Tensor:
    """MSE between the transformer's velocity and noise - x_0 at x_t = (1 - sigma) x_0 + sigma noise; with
    cfg.class_preservation, plus (weighted, per picture that has one) the MSE between the velocity for the
    caption without the trigger word and the base's (adapters off) at the same x_t."""
    mean = torch.stack([cache.latent_mean[i] for i in batch])
    std = torch.stack([cache.latent_std[i] for i in batch])
    x0 = (mean + std * torch.randn(mean.shape, generator=g) - cache.shift) * cache.scale
    noise = torch.randn(x0.shape, generator=g)
    b = len(batch)
    if cfg.timestep_sampling == "logit_normal":
        u = torch.sigmoid(torch.randn(b, generator=g))
    else:
        u = torch.rand(b, generator=g)
    idx = (u * len(timesteps)).long().clamp(max=len(timesteps) - 1)
    sigma = sigmas[idx].view(b, 1, 1, 1).float()
    xt = (1 - sigma) * x0 + sigma * noise
    captions = [cache.caption[i] for i in batch]
    pred = velocity(transformer, cache, xt, timesteps[idx], captions, guidance, dev, dtype)
    loss = torch.nn.functional.mse_loss(pred, (noise - x0).to(dev).float())
    weight = cfg.class_preservation
    keep = [k for k, i in enumerate(batch) if cache.plain and cache.plain[i] is not None] if weight else []
    if keep:
        plain = [cache.plain[batch[k]] for k in keep]
        with torch.no_grad():
            transformer.disable_adapters()
            try:
                ref = velocity(transformer, cache, xt[keep], timesteps[idx[keep]], plain, guidance, dev, dtype)
            finally:
                transformer.enable_adapters()
        kept = velocity(transformer, cache, xt[keep], timesteps[idx[keep]], plain, guidance, dev, dtype)
        loss = loss + weight * torch.nn.functional.mse_loss(kept, ref) * len(keep) / b
    return loss


def velocity(transformer, cache: Cache, xt: torch.Tensor, t: torch.Tensor, captions: list[int], guidance: float,
             dev: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """The transformer's prediction (latent layout, fp32) for the noisy latents `xt` at timesteps `t` (0-1000),
    conditioned on the cached caption encodings `captions`."""
    b, _, h, w = xt.shape
    pred = transformer(
        hidden_states=pack_latents(xt).to(dev, dtype),
        timestep=(t / 1000).to(dev, dtype),
        guidance=torch.full((b,), guidance, device=dev, dtype=dtype) if transformer.config.guidance_embeds else None,
        pooled_projections=torch.stack([cache.pooled[c] for c in captions]).to(dev, dtype),
        encoder_hidden_states=torch.stack([cache.prompt_embeds[c] for c in captions]).to(dev, dtype),
        txt_ids=cache.text_ids.to(dev, dtype),
        img_ids=latent_image_ids(h, w, dev, dtype),
        return_dict=False,
    )[0]
    return unpack_latents(pred, h, w).float()


# ---------------------------------------------------------------------------- save
def lora_state(transformer) -> dict[str, torch.Tensor]:
    from peft.utils import get_peft_model_state_dict

    return {k: v.detach().cpu().contiguous() for k, v in get_peft_model_state_dict(transformer).items()}


def save_adapter(transformer, folder: Path) -> Path:
    """pytorch_lora_weights.safetensors with `transformer.` keys and the LoRA config as metadata: what
    `FluxPipeline.load_lora_weights(folder)` loads."""
    from diffusers import FluxPipeline

    FluxPipeline.save_lora_weights(folder, transformer_lora_layers=lora_state(transformer),
                                   transformer_lora_adapter_metadata=transformer.peft_config["default"].to_dict())
    return folder / ADAPTER_FILE


def save_checkpoint(out: Path, step: int, pipe, cache: Cache, cfg: PictureConfig, optimizer, schedule,
                    history: list[dict[str, Any]], dev: torch.device, dtype: torch.dtype,
                    window: list[float] | None = None) -> Path:
    """checkpoint-N/: adapter, optimizer and schedule state, samples; written aside, then renamed into place."""
    final = out / f"checkpoint-{step}"
    tmp = out / f".checkpoint-{step}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    transformer = pipe.transformer
    save_adapter(transformer, tmp)
    torch.save({"optimizer": optimizer.state_dict(), "schedule": schedule.state_dict()}, tmp / "optimizer.pt")
    transformer.eval()
    write_samples(tmp / SAMPLES, pipe, cache, cfg, dev, dtype)
    transformer.train()
    state = {"step": step, "history": history, "window": list(window or [])}
    (tmp / STATE_FILE).write_text(json.dumps(state) + "\n", encoding="utf-8")
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    kept = sorted(checkpoint_dirs(out), key=lambda p: int(p.name.split("-")[1]))
    for old in kept[: -cfg.save_total_limit] if cfg.save_total_limit else []:
        shutil.rmtree(old)
    return final


def load_checkpoint(folder: Path, transformer, optimizer, schedule) -> tuple[int, list[dict[str, Any]], list[float]]:
    """LoRA weights, optimizer and schedule state; returns (step, metrics so far, losses not yet logged)."""
    from peft.utils import set_peft_model_state_dict
    from safetensors.torch import load_file

    weights = {k.removeprefix("transformer."): v for k, v in load_file(folder / ADAPTER_FILE).items()}
    result = set_peft_model_state_dict(transformer, weights)
    if getattr(result, "unexpected_keys", None):
        raise UserError(f"{folder}: the checkpoint's adapter does not fit this model/LoRA config "
                        f"({result.unexpected_keys[:3]}...): resume with the same settings")
    state = torch.load(folder / "optimizer.pt", weights_only=True)
    optimizer.load_state_dict(state["optimizer"])
    schedule.load_state_dict(state["schedule"])
    meta = json.loads((folder / STATE_FILE).read_text(encoding="utf-8"))
    return int(meta["step"]), list(meta["history"]), [float(x) for x in meta.get("window", [])]


def write_samples(folder: Path, pipe, cache: Cache, cfg: PictureConfig, dev: torch.device,
                  dtype: torch.dtype) -> None:
    """One square picture per sample prompt at the training resolution, seed fixed (cfg.seed), from the cached
    prompt encodings."""
    from mmtune.imagegen.generate import sample_pipeline

    folder.mkdir(parents=True, exist_ok=True)
    multiple = vae_scale(pipe) * 2
    side = max(multiple, cache.resolution // multiple * multiple)
    spec = model_source(cfg.model)[1]
    sampler = sample_pipeline(pipe, dev)
    guidance = spec.default_guidance
    for i, (text, embeds, pooled) in enumerate(cache.samples):
        image = sampler(prompt_embeds=embeds.to(dev, dtype), pooled_prompt_embeds=pooled.to(dev, dtype),
                        num_inference_steps=cfg.sample_steps or spec.default_steps, guidance_scale=guidance,
                        height=side, width=side, generator=torch.Generator().manual_seed(cfg.seed)).images[0]
        image.save(folder / f"sample-{i}.png")
        (folder / f"sample-{i}.txt").write_text(text + "\n", encoding="utf-8")
    pipe.vae.to("cpu")


def write_meta(out: Path, cfg: PictureConfig, source: str, resolution: int, max_sequence_length: int) -> None:
    meta = {
        "mmtune_version": __version__, "kind": IMAGE_KIND, "base_model": cfg.model, "base_model_path": source,
        "method": "lora", "adapter": True, "adapter_file": ADAPTER_FILE, "trigger_word": cfg.trigger_word,
        "resolution": resolution, "max_sequence_length": max_sequence_length, "complete": True,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }
    (out / META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
