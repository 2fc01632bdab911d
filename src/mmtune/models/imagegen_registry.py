"""Image-generation models (kind "image-generation"): FLUX.1 pipelines tuned with LoRA on the transformer.

Their own small dataclass, not `ModelSpec`: a diffusion pipeline has no vocabulary, chat
template or decoder-layer numbers, and the text registry's memory arithmetic and tiny-model
tests walk only language models. Plain data, checked at import, no torch.

Memory estimates are arithmetic on the architecture numbers below (bf16 weights, LoRA in fp32
with AdamW, gradient checkpointing as a switch), for "will it fit on my card?": allocator
slack and the CUDA context are not counted.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path

IMAGE_KIND = "image-generation"
# diffusers' reference script (train_dreambooth_lora_flux.py) adapts the attention projections.
FLUX_LORA_TARGETS = ("attn.to_k", "attn.to_q", "attn.to_v", "attn.to_out.0")
GIB = 1024**3


@dataclass(frozen=True)
class ImageGenSpec:
    name: str
    hf_path: str
    description: str
    params_b: float  # the transformer (what LoRA adapts), billions
    text_encoders_params_b: float  # CLIP-L text + T5-XXL encoder
    vae_params_b: float
    hidden_size: int  # heads x head_dim
    num_layers: int  # double-stream blocks
    num_single_layers: int
    latent_channels: int
    vae_scale: int  # pixels per latent cell along a side
    guidance_embeds: bool  # FLUX.1-dev is guidance-distilled; schnell is not
    default_steps: int
    default_guidance: float
    max_sequence_length: int  # T5 tokens
    license: str
    kind: str = IMAGE_KIND
    pipeline_class: str = "FluxPipeline"
    default_resolution: int = 1024
    lora_targets: tuple[str, ...] = FLUX_LORA_TARGETS
    aliases: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict:
        return {f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v for f in fields(self)}

    def lora_params(self, rank: int) -> int:
        """Parameters of a rank-`rank` LoRA on the default targets: q/k/v/out in the double blocks, q/k/v in
        the single blocks (which have no to_out), each a hidden x hidden projection."""
        projections = self.num_layers * 4 + self.num_single_layers * 3
        return projections * rank * 2 * self.hidden_size


_ENTRIES: tuple[ImageGenSpec, ...] = (
    ImageGenSpec(
        name="flux.1-dev",
        hf_path="black-forest-labs/FLUX.1-dev",
        description="FLUX.1-dev: 12B rectified-flow transformer, guidance-distilled (gated, non-commercial licence)",
        params_b=11.9, text_encoders_params_b=4.88, vae_params_b=0.084, hidden_size=3072, num_layers=19,
        num_single_layers=38, latent_channels=16, vae_scale=8, guidance_embeds=True, default_steps=28,
        default_guidance=3.5, max_sequence_length=512, license="flux-1-dev-non-commercial",
        aliases=("flux-dev", "FLUX.1-dev"),
    ),
    ImageGenSpec(
        name="flux.1-schnell",
        hf_path="black-forest-labs/FLUX.1-schnell",
        description="FLUX.1-schnell: the 4-step distilled FLUX.1 (Apache-2.0)",
        params_b=11.9, text_encoders_params_b=4.88, vae_params_b=0.084, hidden_size=3072, num_layers=19,
        num_single_layers=38, latent_channels=16, vae_scale=8, guidance_embeds=False, default_steps=4,
        default_guidance=0.0, max_sequence_length=256, license="apache-2.0",
        aliases=("flux-schnell", "FLUX.1-schnell"),
    ),
)


def _check(spec: ImageGenSpec) -> None:
    numbers = (spec.params_b, spec.hidden_size, spec.num_layers, spec.latent_channels, spec.vae_scale,
               spec.default_steps, spec.max_sequence_length)
    if min(numbers) <= 0 or spec.kind != IMAGE_KIND or not spec.lora_targets:
        raise ValueError(f"image-generation registry entry {spec.name!r}: bad values {numbers}")


def _build(entries: tuple[ImageGenSpec, ...]) -> dict[str, ImageGenSpec]:
    out: dict[str, ImageGenSpec] = {}
    for spec in entries:
        _check(spec)
        taken = set(out) | {a for s in out.values() for a in s.aliases}
        if spec.name in taken or taken & set(spec.aliases):
            raise ValueError(f"image-generation registry: {spec.name!r} or an alias is already taken")
        out[spec.name] = spec
    return out


IMAGE_REGISTRY: dict[str, ImageGenSpec] = _build(_ENTRIES)


def find_image_spec(model: str) -> ImageGenSpec | None:
    """The entry for a registry name, alias or hub id (case-insensitive), or for a local diffusers folder
    of a FLUX pipeline (its model_index.json), or for a picture training run (its base model)."""
    key = model.strip()
    for spec in IMAGE_REGISTRY.values():
        if key.lower() in {spec.name, spec.hf_path.lower(), *(a.lower() for a in spec.aliases)}:
            return spec
    return local_image_spec(Path(key).expanduser())


def local_image_spec(folder: Path) -> ImageGenSpec | None:
    """A local FLUX pipeline folder or picture run matches the entry of its size (dev if it has guidance
    embeddings, else schnell); a tiny or unknown FLUX folder still gets an entry (the family's targets)."""
    run = _read_json(folder / "mmtune.json")
    if run and run.get("kind") == IMAGE_KIND and isinstance(run.get("base_model"), str):
        return find_image_spec(run["base_model"]) if run["base_model"] != str(folder) else None
    index = _read_json(folder / "model_index.json")
    if not index or index.get("_class_name") != "FluxPipeline":
        return None
    cfg = _read_json(folder / "transformer" / "config.json") or {}
    return IMAGE_REGISTRY["flux.1-dev" if cfg.get("guidance_embeds", True) else "flux.1-schnell"]


def is_image_model(model: str | None) -> bool:
    return bool(model) and find_image_spec(str(model)) is not None


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def image_memory_gib(spec: ImageGenSpec, resolution: int = 1024, batch_size: int = 1, rank: int = 16,
                     gradient_checkpointing: bool = True) -> dict[str, float]:
    """GPU memory, in GiB, for LoRA training and for generation at `resolution`².

    Training keeps only the transformer on the GPU (captions and latents are encoded once, then the text
    encoders and the VAE leave it): bf16 weights, the LoRA in fp32 with its gradient and two AdamW moments,
    and activations. With checkpointing each block keeps its input (tokens x hidden in bf16) and one block
    is live at a time (~24x its input); without, every block keeps ~24x its input.
    Generation holds the transformer and the VAE; the text encoders run first and are offloaded
    (`enable_model_cpu_offload`), or stay resident ("generate_all_resident").
    """
    tokens = (resolution // (spec.vae_scale * 2)) ** 2 + spec.max_sequence_length
    block_input = batch_size * tokens * spec.hidden_size * 2
    blocks = spec.num_layers + spec.num_single_layers
    live = 24 * block_input
    activations = blocks * block_input + live if gradient_checkpointing else blocks * live
    weights = spec.params_b * 1e9 * 2
    lora = spec.lora_params(rank) * (4 + 4 + 8)
    vae_decode = 3 * resolution * resolution * 128 * 2 * batch_size  # widest decoder block at full size, bf16
    generate = weights + spec.vae_params_b * 1e9 * 2 + vae_decode + tokens * spec.hidden_size * 2 * 24
    return {
        "lora_train": round((weights + lora + activations) / GIB, 1),
        "generate": round(generate / GIB, 1),
        "generate_all_resident": round((generate + spec.text_encoders_params_b * 1e9 * 2) / GIB, 1),
    }
