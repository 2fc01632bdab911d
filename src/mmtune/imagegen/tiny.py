"""Random FLUX.1-architecture pipelines built from configs (nothing downloaded): for tests, demos and benchmarks.

The same classes as the real checkpoints (`FluxTransformer2DModel`, `AutoencoderKL`,
`CLIPTextModel` + `CLIPTokenizer`, `T5EncoderModel` + `T5Tokenizer`, the flow-matching Euler
scheduler), saved as an ordinary diffusers folder (`model_index.json` + one sub-folder per part)
that `FluxPipeline.from_pretrained` and `mmtune train --model FOLDER` load. The tokenizers are
character-level vocabularies made in memory, so prompts are tokenized for real.
"""

from __future__ import annotations

import string
from pathlib import Path

TEXT_DIM = 32  # CLIP hidden size = pooled projection size; T5 d_model = joint attention size
MAX_T5_TOKENS = 32  # short prompts: pass max_sequence_length=MAX_T5_TOKENS to the pipeline


def clip_tokenizer():
    """A CLIPTokenizer whose BPE has one token per byte-level character (and its end-of-word form)."""
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import CLIPTokenizer

    vocab: dict[str, int] = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for ch in sorted(ByteLevel.alphabet()):
        vocab.setdefault(ch, len(vocab))
        vocab.setdefault(ch + "</w>", len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def t5_tokenizer():
    """A T5Tokenizer (unigram) over lower- and upper-case letters, digits and punctuation."""
    from transformers import T5Tokenizer

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    for ch in string.ascii_letters + string.digits + string.punctuation:
        pieces += [(ch, -3.0), ("▁" + ch, -3.5)]
    pieces += [(f"<extra_id_{i}>", 0.0) for i in range(3, -1, -1)]
    return T5Tokenizer(vocab=pieces, extra_ids=4, model_max_length=512)


def tiny_flux_pipeline(seed: int = 0, guidance_embeds: bool = True, vae_blocks: int = 1, latent_channels: int = 4,
                       layers: int = 1, single_layers: int = 1, heads: int = 2, vae_channels: int = 8):
    """A FluxPipeline with random weights (defaults: about 0.1 M parameters).

    `vae_blocks` sets the VAE's down-sampling (2 ** (vae_blocks - 1)); with the transformer's 2x2
    packing, picture sides must be multiples of 2 ** vae_blocks.
    """
    import torch
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=4 * latent_channels, num_layers=layers, num_single_layers=single_layers,
        attention_head_dim=16, num_attention_heads=heads, joint_attention_dim=TEXT_DIM, pooled_projection_dim=TEXT_DIM,
        guidance_embeds=guidance_embeds, axes_dims_rope=(4, 6, 6),
    )
    clip_tok, t5_tok = clip_tokenizer(), t5_tokenizer()
    clip = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(clip_tok), hidden_size=TEXT_DIM, intermediate_size=37, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=77, projection_dim=TEXT_DIM, hidden_act="gelu",
        bos_token_id=0, eos_token_id=1, pad_token_id=1,
    ))
    t5 = T5EncoderModel(T5Config(
        vocab_size=len(t5_tok), d_model=TEXT_DIM, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1,
    ))
    vae = AutoencoderKL(
        sample_size=32, in_channels=3, out_channels=3, block_out_channels=(vae_channels,) * vae_blocks,
        down_block_types=("DownEncoderBlock2D",) * vae_blocks, up_block_types=("UpDecoderBlock2D",) * vae_blocks,
        layers_per_block=1, latent_channels=latent_channels, norm_num_groups=1, use_quant_conv=False,
        use_post_quant_conv=False, shift_factor=0.0609, scaling_factor=1.5035,
    )
    scheduler = FlowMatchEulerDiscreteScheduler()
    return FluxPipeline(scheduler=scheduler, vae=vae, text_encoder=clip, tokenizer=clip_tok,
                        text_encoder_2=t5, tokenizer_2=t5_tok, transformer=transformer)


def save_tiny_flux(folder: str | Path, **kw) -> Path:
    """The tiny pipeline saved as a diffusers folder; returns the folder."""
    folder = Path(folder)
    tiny_flux_pipeline(**kw).save_pretrained(folder)
    return folder
