"""Loading a FLUX pipeline (registry name, hub id, local folder or picture run) and FLUX's latent layout.

FLUX's transformer sees latents as a sequence of 2x2 patches ("packed"), with a (0, row, col)
position id per patch; `pack_latents` / `unpack_latents` / `latent_image_ids` are that layout
(the same as `FluxPipeline`'s, which a test pins), written here so training never calls the
pipeline's private helpers.
"""

from __future__ import annotations

from pathlib import Path

import torch

from mmtune.errors import UserError
from mmtune.models.imagegen_registry import ImageGenSpec, find_image_spec

ADAPTER_FILE = "pytorch_lora_weights.safetensors"  # what diffusers' load_lora_weights looks for
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_precision(precision: str) -> str:
    cuda = torch.cuda.is_available()
    if precision == "auto":
        return "bf16" if cuda and torch.cuda.is_bf16_supported() else "fp32"
    if precision in ("bf16", "fp16") and not cuda:
        raise UserError(f"precision {precision} needs a CUDA GPU and this machine has none: use --precision fp32")
    return precision


def model_source(model: str) -> tuple[str, ImageGenSpec]:
    """Where `from_pretrained` finds `model` (a folder or a hub id), and its registry entry."""
    spec = find_image_spec(model)
    if spec is None:
        raise UserError(f"{model!r} is not an image-generation model: use flux.1-dev, flux.1-schnell, their hub ids "
                        "or a local FLUX diffusers folder (`mmtune models` lists them)")
    folder = Path(model).expanduser()
    if (folder / "model_index.json").is_file():
        return str(folder.resolve()), spec
    return spec.hf_path if model.strip().lower() in _registry_keys(spec) else model, spec


def _registry_keys(spec: ImageGenSpec) -> set[str]:
    return {spec.name, *(a.lower() for a in spec.aliases), spec.hf_path.lower()}


def load_pipeline(model: str, dtype: torch.dtype = torch.float32):
    """A `FluxPipeline` on the CPU, in `dtype`; a clear error when the weights cannot be had (gated, offline)."""
    from diffusers import FluxPipeline

    source, _ = model_source(model)
    try:
        return FluxPipeline.from_pretrained(source, dtype=dtype)
    except OSError as e:
        raise UserError(f"cannot load {model!r} from {source}: {e}\nFLUX.1-dev is gated: accept its licence on the "
                        "Hugging Face hub and `hf auth login`, or pass a local diffusers folder") from None


def pack_latents(latents: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, H/2 * W/2, 4C): 2x2 patches as tokens."""
    b, c, h, w = latents.shape
    x = latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // 2) * (w // 2), c * 4)


def unpack_latents(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Inverse of `pack_latents` for a latent of `height` x `width` cells."""
    b, _, d = tokens.shape
    c = d // 4
    x = tokens.view(b, height // 2, width // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, c, height, width)


def latent_image_ids(height: int, width: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """(H/2 * W/2, 3) position ids (0, row, col) of the packed tokens of a `height` x `width` latent."""
    ids = torch.zeros(height // 2, width // 2, 3)
    ids[..., 1] = torch.arange(height // 2)[:, None]
    ids[..., 2] = torch.arange(width // 2)[None, :]
    return ids.reshape(-1, 3).to(device=device, dtype=dtype)


def vae_scale(pipe) -> int:
    """Pixels per latent cell along a side (8 for FLUX.1)."""
    return 2 ** (len(pipe.vae.config.block_out_channels) - 1)
