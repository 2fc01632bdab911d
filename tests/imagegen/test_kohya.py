"""The kohya / ComfyUI key layout of a picture LoRA, read back by diffusers' own converter (the real consumer)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from mmtune.errors import UserError
from mmtune.imagegen.kohya import export_kohya, kohya_state_dict

HIDDEN, RANK, ALPHA = 3072, 4, 8.0  # FLUX.1's real sizes: diffusers' converter hard-codes linear1's split
DOUBLE = ["attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "attn.add_q_proj", "attn.add_k_proj",
          "attn.add_v_proj", "attn.to_add_out", "ff.net.2"]
SINGLE = ["attn.to_q", "attn.to_k", "attn.to_v", "proj_out"]


def _lora() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    sizes = {"ff.net.2": (4 * HIDDEN, HIDDEN), "proj_out": (5 * HIDDEN, HIDDEN)}  # (in, out)
    out = {}
    for prefix, names in (("transformer_blocks.1", DOUBLE), ("single_transformer_blocks.2", SINGLE)):
        for name in names:
            fin, fout = sizes.get(name, (HIDDEN, HIDDEN))
            out[f"transformer.{prefix}.{name}.lora_A.weight"] = torch.randn(RANK, fin, generator=g)
            out[f"transformer.{prefix}.{name}.lora_B.weight"] = torch.randn(fout, RANK, generator=g)
    return out


def _delta(sd: dict[str, torch.Tensor], module: str, scale: float) -> torch.Tensor:
    """The weight change B @ A * scale, applied to fixed random probes (the full matrix is 3072 x 15360)."""
    a = sd[f"{module}.lora_A.weight"]
    probe = torch.randn(a.shape[1], 3, generator=torch.Generator().manual_seed(1))
    return sd[f"{module}.lora_B.weight"] @ (a @ probe) * scale


def test_diffusers_converter_reads_the_kohya_file_back(tmp_path):
    from diffusers import FluxPipeline

    lora = _lora()
    kohya = kohya_state_dict(lora, ALPHA)
    assert set(kohya) == {f"lora_unet_{m}.{s}" for m in (
        "double_blocks_1_img_attn_qkv", "double_blocks_1_img_attn_proj", "double_blocks_1_txt_attn_qkv",
        "double_blocks_1_txt_attn_proj", "double_blocks_1_img_mlp_2", "single_blocks_2_linear1",
        "single_blocks_2_linear2") for s in ("lora_down.weight", "lora_up.weight", "alpha")}
    assert kohya["lora_unet_single_blocks_2_linear1.lora_up.weight"].shape == (3 * HIDDEN + 4 * HIDDEN, 4 * RANK)
    assert float(kohya["lora_unet_double_blocks_1_img_attn_qkv.alpha"]) == 3 * ALPHA
    save_file(kohya, tmp_path / "k.safetensors")
    back = FluxPipeline.lora_state_dict(str(tmp_path / "k.safetensors"))  # diffusers' kohya path
    back = back[0] if isinstance(back, tuple) else back
    modules = {k.rsplit(".lora_", 1)[0] for k in lora}
    # what diffusers loads from the kohya file: the same modules, plus a zero adapter on the MLP input that
    # linear1 fuses with q, k, v; and the same weight change W += B @ A * alpha / rank on every one
    assert {k.rsplit(".lora_", 1)[0] for k in back} == modules | {"transformer.single_transformer_blocks.2.proj_mlp"}
    for m in modules:
        assert torch.allclose(_delta(back, m, 1.0), _delta(lora, m, ALPHA / RANK), rtol=1e-5, atol=1e-4), m
    assert not _delta(back, "transformer.single_transformer_blocks.2.proj_mlp", 1.0).any()


def test_a_run_exports_and_loads_in_diffusers(tmp_path):
    """A real picture run's file (save_lora_weights' metadata), exported and loaded into a FluxPipeline."""
    from diffusers import FluxPipeline

    from tests.helpers.tiny_flux import tiny_flux_pipeline

    pipe = tiny_flux_pipeline(single_layers=0)  # diffusers' converter hard-codes linear1's split at 3072
    from peft import LoraConfig

    pipe.transformer.add_adapter(LoraConfig(r=2, lora_alpha=6, init_lora_weights="gaussian",
                                            target_modules=["attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0"]))
    from peft.utils import get_peft_model_state_dict

    for name, p in pipe.transformer.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p)
    state = get_peft_model_state_dict(pipe.transformer)
    FluxPipeline.save_lora_weights(tmp_path / "run", transformer_lora_layers=state,
                                   transformer_lora_adapter_metadata=pipe.transformer.peft_config["default"].to_dict())
    out = export_kohya(tmp_path / "run", tmp_path / "k" / "tok.safetensors")
    assert sorted(load_file(out)) == sorted(f"lora_unet_double_blocks_0_{m}.{s}" for m in ("img_attn_qkv", "img_attn_proj")
                                            for s in ("lora_down.weight", "lora_up.weight", "alpha"))
    fresh = tiny_flux_pipeline(single_layers=0)
    fresh.load_lora_weights(str(out))  # diffusers' own loader, kohya layout
    fresh.fuse_lora(components=["transformer"])
    fresh.unload_lora_weights()  # the fused weights stay
    ours = {k: v for k, v in pipe.transformer.state_dict().items() if "lora_" not in k}
    theirs = fresh.transformer.state_dict()
    for k in ("transformer_blocks.0.attn.to_q", "transformer_blocks.0.attn.to_v", "transformer_blocks.0.attn.to_out.0"):
        base = ours[f"{k}.base_layer.weight"]
        delta = state[f"{k}.lora_B.weight"] @ state[f"{k}.lora_A.weight"] * 3.0
        assert torch.allclose(theirs[f"{k}.weight"], base + delta, atol=1e-5), k


def test_unknown_module_is_refused():
    with pytest.raises(UserError, match="x_embedder"):
        kohya_state_dict({"transformer.x_embedder.lora_A.weight": torch.zeros(2, 4)}, 2.0)
