"""A picture run's LoRA with the key names of kohya's sd-scripts (what ComfyUI, Forge and most FLUX LoRA sites
load): `lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight` / `.lora_up.weight` / `.alpha`.

Those names are Black Forest Labs' module names, where q, k and v are one fused projection (`img_attn.qkv`,
and in the single blocks `linear1` = q, k, v and the MLP input together). diffusers' LoRA has one adapter
per projection; the fused one is their exact concatenation: `lora_down` stacks the pieces' A matrices and
`lora_up` puts their B matrices on the block diagonal (the pieces not adapted get zero blocks), so
up @ down == each piece's B @ A and nothing is approximated. `alpha` keeps each piece's scale:
alpha_kohya / rank_fused == alpha / rank. diffusers' own converter
(`lora_conversion_utils._convert_kohya_flux_lora_to_diffusers`, which `FluxPipeline.lora_state_dict` calls
for such a file) splits exactly this block-diagonal form back into the pieces: a test checks the round trip.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from mmtune.errors import UserError

MLP_RATIO = 4  # FLUX.1's single blocks: linear1 = q, k, v (hidden each) and the MLP input (4 x hidden)

# diffusers module (inside transformer_blocks.N / single_transformer_blocks.N) -> (kohya module, piece, pieces)
_DOUBLE = {
    "attn.to_q": ("img_attn_qkv", 0, 3), "attn.to_k": ("img_attn_qkv", 1, 3), "attn.to_v": ("img_attn_qkv", 2, 3),
    "attn.to_out.0": ("img_attn_proj", 0, 1),
    "attn.add_q_proj": ("txt_attn_qkv", 0, 3), "attn.add_k_proj": ("txt_attn_qkv", 1, 3),
    "attn.add_v_proj": ("txt_attn_qkv", 2, 3), "attn.to_add_out": ("txt_attn_proj", 0, 1),
    "ff.net.0.proj": ("img_mlp_0", 0, 1), "ff.net.2": ("img_mlp_2", 0, 1),
    "ff_context.net.0.proj": ("txt_mlp_0", 0, 1), "ff_context.net.2": ("txt_mlp_2", 0, 1),
    "norm1.linear": ("img_mod_lin", 0, 1), "norm1_context.linear": ("txt_mod_lin", 0, 1),
}
_SINGLE = {
    "attn.to_q": ("linear1", 0, 4), "attn.to_k": ("linear1", 1, 4), "attn.to_v": ("linear1", 2, 4),
    "proj_mlp": ("linear1", 3, 4), "proj_out": ("linear2", 0, 1), "norm.linear": ("modulation_lin", 0, 1),
}
_KEY = re.compile(r"^(?:transformer\.)?(transformer_blocks|single_transformer_blocks)\.(\d+)\.(.+)\.lora_([AB])\.weight$")


def kohya_state_dict(lora: dict[str, torch.Tensor], alpha: float) -> dict[str, torch.Tensor]:
    """diffusers/PEFT FLUX LoRA weights (`transformer.transformer_blocks.0.attn.to_q.lora_A.weight` ...,
    one `alpha` for all) -> kohya sd-scripts keys. A module kohya's FLUX layout has no name for is an error."""
    groups: dict[str, dict[int, dict[str, torch.Tensor]]] = {}
    sizes: dict[str, int] = {}
    for key, value in lora.items():
        m = _KEY.match(key)
        table = _DOUBLE if m and m.group(1) == "transformer_blocks" else _SINGLE
        if not m or m.group(3) not in table:
            raise UserError(f"LoRA weight {key!r}: kohya's FLUX layout has no module for it (it covers the "
                            "attention, MLP and modulation projections of the double and single blocks): "
                            "use the diffusers file, which every diffusers and ComfyUI user loads as is")
        kind = "double_blocks" if m.group(1) == "transformer_blocks" else "single_blocks"
        name, piece, pieces = table[m.group(3)]
        fused = f"lora_unet_{kind}_{m.group(2)}_{name}"
        groups.setdefault(fused, {}).setdefault(piece, {})[m.group(4)] = value
        sizes[fused] = pieces
    out: dict[str, torch.Tensor] = {}
    for fused, parts in groups.items():
        pieces = sizes[fused]
        any_part = next(iter(parts.values()))
        rank, features = any_part["A"].shape
        if pieces == 1:
            out_dims = [any_part["B"].shape[0]]
        else:  # each piece's output size: q, k, v = hidden; linear1's MLP piece = MLP_RATIO x hidden
            qkv = [p["B"].shape[0] for i, p in parts.items() if i < 3]
            hidden = qkv[0] if qkv else parts[3]["B"].shape[0] // MLP_RATIO
            out_dims = [hidden] * 3 + ([hidden * MLP_RATIO] if pieces == 4 else [])
        down = torch.zeros(rank * pieces, features, dtype=any_part["A"].dtype)
        up = torch.zeros(sum(out_dims), rank * pieces, dtype=any_part["B"].dtype)
        row = 0
        for i in range(pieces):
            if i in parts:
                if set(parts[i]) != {"A", "B"} or parts[i]["A"].shape != (rank, features):
                    raise UserError(f"{fused}: piece {i} has LoRA weights of another shape or only half of them")
                down[i * rank:(i + 1) * rank] = parts[i]["A"]
                up[row:row + out_dims[i], i * rank:(i + 1) * rank] = parts[i]["B"]
            row += out_dims[i]
        out[f"{fused}.lora_down.weight"] = down.contiguous()
        out[f"{fused}.lora_up.weight"] = up.contiguous()
        out[f"{fused}.alpha"] = torch.tensor(alpha * pieces, dtype=torch.float32)
    return out


def export_kohya(run: str | Path, out: str | Path) -> Path:
    """Write a picture run's (or checkpoint's) LoRA as a kohya/ComfyUI .safetensors file."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from mmtune.imagegen.pipeline import ADAPTER_FILE

    source = Path(run) / ADAPTER_FILE
    if not source.is_file():
        raise UserError(f"{run} has no {ADAPTER_FILE}: give a finished picture run or one of its checkpoint-N/")
    with safe_open(str(source), "pt") as f:
        lora = {k: f.get_tensor(k) for k in f.keys()}
        meta = f.metadata() or {}
    config = json.loads(meta.get("lora_adapter_metadata", "{}"))
    rank = config.get("transformer.r") or config.get("r")
    alpha = config.get("transformer.lora_alpha") or config.get("lora_alpha")
    if not (rank and alpha):
        raise UserError(f"{source}: no LoRA config in its metadata (rank, alpha): it was not written by mmtune "
                        "or diffusers' save_lora_weights")
    if config.get("transformer.rank_pattern") or config.get("transformer.alpha_pattern"):
        raise UserError(f"{source}: per-module ranks or alphas are not supported by this export")
    weights = kohya_state_dict(lora, float(alpha))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    save_file(weights, str(tmp), metadata={"format": "pt", "ss_network_module": "networks.lora_flux",
                                           "ss_network_dim": str(rank), "ss_network_alpha": str(alpha),
                                           "ss_base_model_version": "flux1"})
    tmp.replace(out)
    return out
