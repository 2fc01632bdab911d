"""Pictures from a base model, a picture run (base + its LoRA) or a merged picture model; grids; merging.

`load_for_generation` is the one way in: `mmtune generate`, `mmtune merge` and (later) the
server's `/v1/images/generations` all start from it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from mmtune import __version__
from mmtune.errors import UserError
from mmtune.imagegen.pipeline import (
    ADAPTER_FILE,
    DTYPES,
    device,
    load_pipeline,
    resolve_precision,
    vae_scale,
)
from mmtune.imagegen.run import META_FILE, read_run
from mmtune.models.imagegen_registry import IMAGE_KIND, ImageGenSpec, find_image_spec


@dataclass
class Loaded:
    pipe: object  # FluxPipeline, on its device
    spec: ImageGenSpec
    base: str  # the base model as the user named it
    adapter: Path | None  # the run folder whose LoRA is loaded (None: a base or merged model)
    trigger_word: str | None = None
    meta: dict | None = None  # the run's (or merged model's) mmtune.json: its resolution and T5 length

    @property
    def resolution(self) -> int:
        """The default picture side: the run's training resolution, else the model's."""
        return int((self.meta or {}).get("resolution") or self.spec.default_resolution)

    @property
    def max_sequence_length(self) -> int:
        return int((self.meta or {}).get("max_sequence_length") or self.spec.max_sequence_length)


def load_for_generation(run_or_model: str, precision: str = "auto") -> Loaded:
    """A FLUX pipeline on this machine's device: a picture run loads its base and then its LoRA through
    diffusers' `load_lora_weights` (the same file any diffusers user loads)."""
    dtype = DTYPES[resolve_precision(precision)]
    meta = read_run(run_or_model)
    if meta is not None and meta.get("adapter"):
        folder = Path(run_or_model)
        if not (folder / ADAPTER_FILE).is_file():
            raise UserError(f"{folder} has no {ADAPTER_FILE}: the run did not finish (use a checkpoint-N/ folder, or "
                            "`mmtune train ... --resume`)")
        base = meta.get("base_model_path") or meta["base_model"]
        pipe = load_pipeline(base, dtype)
        load_lora(pipe, folder)
        spec = find_image_spec(base)
        return Loaded(on_device(pipe, spec), spec, meta["base_model"], folder, meta.get("trigger_word"), meta)
    if (Path(run_or_model) / ADAPTER_FILE).is_file() and (Path(run_or_model).parent / META_FILE).is_file():
        return _checkpoint(Path(run_or_model), dtype)
    spec = find_image_spec(run_or_model)
    if spec is None:
        raise UserError(f"{run_or_model!r} is neither a picture run (mmtune.json of kind image-generation) nor an "
                        "image-generation model (`mmtune models`)")
    return Loaded(on_device(load_pipeline(run_or_model, dtype), spec), spec, run_or_model, None,
                  (meta or {}).get("trigger_word"), meta)


def on_device(pipe, spec: ImageGenSpec):
    """The whole pipeline on the GPU when it fits there (the registry's all-resident estimate), else with
    diffusers' model CPU offload (each part on the GPU only while it runs); on a CPU machine, the CPU."""
    dev = device()
    if dev.type != "cuda":
        return pipe
    from mmtune.models.imagegen_registry import image_memory_gib

    big = sum(p.numel() for p in pipe.transformer.parameters()) > 0.5 * spec.params_b * 1e9
    need = image_memory_gib(spec, spec.default_resolution)["generate_all_resident"] * 1024**3
    if big and need > 0.9 * torch.cuda.get_device_properties(0).total_memory:
        pipe.enable_model_cpu_offload()
        return pipe
    return pipe.to(dev)


def load_lora(pipe, folder: Path) -> None:
    """diffusers' own `load_lora_weights` on the run's file (quietly: it notes that the text encoders have none)."""
    from diffusers.utils import logging

    level = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        pipe.load_lora_weights(str(folder), weight_name=ADAPTER_FILE, adapter_name="default")
    finally:
        logging.set_verbosity(level)


def _checkpoint(folder: Path, dtype: torch.dtype) -> Loaded:
    """A run's checkpoint-N/ folder: the run's base with this checkpoint's LoRA."""
    meta = read_run(folder.parent)
    if meta is None:
        raise UserError(f"{folder.parent} is not a picture run")
    pipe = load_pipeline(meta.get("base_model_path") or meta["base_model"], dtype)
    load_lora(pipe, folder)
    spec = find_image_spec(meta["base_model"])
    return Loaded(on_device(pipe, spec), spec, meta["base_model"], folder, meta.get("trigger_word"), meta)


def sample_pipeline(pipe, dev: torch.device):
    """The pipeline's denoising loop and VAE decoder, for prompts already encoded (no text encoders needed):
    a FluxPipeline sharing `pipe`'s transformer and VAE, with a fresh scheduler."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline

    pipe.vae.to(dev)
    sampler = FluxPipeline(scheduler=FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config),
                           vae=pipe.vae, text_encoder=None, tokenizer=pipe.tokenizer, text_encoder_2=None,
                           tokenizer_2=pipe.tokenizer_2, transformer=pipe.transformer)
    sampler.set_progress_bar_config(disable=True)
    return sampler


def generate(loaded: Loaded, prompt: str, *, steps: int | None = None, guidance: float | None = None, seed: int = 0,
             width: int | None = None, height: int | None = None, num: int = 1, max_sequence_length: int | None = None):
    """`num` pictures for `prompt`; picture i uses seed + i (so one of a batch can be redrawn alone)."""
    spec, pipe = loaded.spec, loaded.pipe
    multiple = vae_scale(pipe) * 2
    side = loaded.resolution
    width, height = width or side, height or side
    for name, v in (("width", width), ("height", height)):
        if v < multiple or v % multiple:
            raise UserError(f"--{name} {v}: must be a multiple of {multiple} (this model's VAE scale x 2)")
    if num < 1:
        raise UserError("--num must be at least 1")
    pipe.set_progress_bar_config(disable=True)
    images = []
    for i in range(num):
        images += pipe(prompt, num_inference_steps=steps or spec.default_steps,
                       guidance_scale=spec.default_guidance if guidance is None else guidance,
                       width=width, height=height, generator=torch.Generator().manual_seed(seed + i),
                       max_sequence_length=max_sequence_length or loaded.max_sequence_length).images
    return images


def grid(rows: list[list], labels: list[str]):
    """Rows of equally sized pictures in one picture, each row labelled on its left."""
    from PIL import Image, ImageDraw

    w, h = rows[0][0].size
    label_w = max(60, 7 * max(len(t) for t in labels) + 10)
    out = Image.new("RGB", (label_w + w * max(len(r) for r in rows), h * len(rows)), "white")
    draw = ImageDraw.Draw(out)
    for y, (row, label) in enumerate(zip(rows, labels)):
        draw.text((5, y * h + h // 2 - 5), label, fill="black")
        for x, image in enumerate(row):
            out.paste(image, (label_w + x * w, y * h))
    return out


def merge_picture_run(run: str, out: str | None = None, overwrite: bool = False, dtype: str = "auto") -> Path:
    """Fuse a picture run's LoRA into its base transformer and save a standalone diffusers folder (in `dtype`;
    auto: the base's own) that `FluxPipeline.from_pretrained` loads with no adapter."""
    meta = read_run(run)
    if meta is None or not meta.get("adapter"):
        raise UserError(f"{run} is not a finished picture LoRA run")
    target = Path(out or f"{str(run).rstrip('/')}-merged")
    if target.exists() and any(target.iterdir()) and not overwrite:
        raise UserError(f"{target} already exists: pass --overwrite or another --out")
    base = meta.get("base_model_path") or meta["base_model"]
    if dtype not in ("auto", *DTYPES):
        raise UserError(f"--dtype must be auto, bf16, fp16 or fp32, not {dtype!r}")
    pipe = load_pipeline(base, _saved_dtype(base) if dtype == "auto" else DTYPES[dtype])
    load_lora(pipe, Path(run))
    pipe.fuse_lora(components=["transformer"], lora_scale=1.0)
    pipe.unload_lora_weights()
    pipe.save_pretrained(target)
    info = {"mmtune_version": __version__, "kind": IMAGE_KIND, "base_model": meta["base_model"],
            "base_model_path": str(target.resolve()), "merged_from": str(Path(run).resolve()), "adapter": False,
            "trigger_word": meta.get("trigger_word"), "resolution": meta.get("resolution"),
            "max_sequence_length": meta.get("max_sequence_length"), "complete": True}
    (target / META_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return target


def _saved_dtype(base: str) -> torch.dtype:
    cfg = Path(base) / "transformer" / "config.json"
    if cfg.is_file():
        name = json.loads(cfg.read_text(encoding="utf-8")).get("torch_dtype") or "float32"
        return getattr(torch, str(name), torch.float32)
    return torch.bfloat16
