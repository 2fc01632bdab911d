"""Attention over packed rows that never crosses a sequence boundary, at the cost of the real sequences.

A packed row holds several sequences one after another, with position_ids restarting at 0 for
each. transformers detects that from position_ids and builds a block-diagonal causal mask, so
SDPA with that mask is exact — but it computes (and then masks away) every pair of tokens in
the whole row: for 8 sequences of ~150 tokens that is 8x the attention work. `varlen_sdpa`
instead runs causal SDPA once per sequence, using the boundaries the packing collator passes
as `cu_seq_lens_q` (the same keyword flash-attention's varlen kernel reads on a GPU). Whenever
that shortcut is not exact (no boundaries, i.e. a padded batch; logit soft-capping) it hands
over to transformers' own SDPA with the mask transformers built. Sliding-window layers get
the window as a band mask inside each sequence longer than the window.

Why not rely on transformers' position_ids-based packed masks alone: in transformers 5.23 they
are wrong for some models (packed rows of Mistral and Gemma3 under SDPA, Gemma2 under eager
see each other; tests/train/test_packing.py shows the varlen path is exact for them).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

VARLEN = "mmtune_varlen"
# implementations that keep packed rows apart (varlen: checked by tests/train/test_packing.py)
PACKING_SAFE = (VARLEN, "flash_attention_2", "flash_attention_3", "flash_attention_4")
_registered = False


def varlen_sdpa(module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                cu_seq_lens_q: torch.Tensor | None = None, **kwargs):
    """Causal SDPA per packed sequence ([1, heads, T, dim] in, [1, T, heads, dim] out, like transformers')."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    exact = (cu_seq_lens_q is not None and query.shape[0] == 1 and query.shape[2] == key.shape[2]
             and kwargs.get("softcap") is None and getattr(module, "is_causal", True))
    if not exact:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    window = kwargs.get("sliding_window")
    gqa = getattr(module, "num_key_value_groups", 1) > 1
    bounds = cu_seq_lens_q.tolist()
    outs = []
    for s, e in zip(bounds[:-1], bounds[1:], strict=False):
        mask = _band(e - s, window, query.device) if window and e - s > window else None
        outs.append(F.scaled_dot_product_attention(query[:, :, s:e], key[:, :, s:e], value[:, :, s:e],
                                                   attn_mask=mask, dropout_p=dropout, scale=scaling,
                                                   is_causal=mask is None, enable_gqa=gqa))
    out = outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)
    return out.transpose(1, 2).contiguous(), None


def _band(n: int, window: int, device) -> torch.Tensor:
    """Causal sliding-window mask as transformers defines it: query q sees key k iff 0 <= q - k < window."""
    d = torch.arange(n, device=device)[:, None] - torch.arange(n, device=device)[None, :]
    return (d >= 0) & (d < window)


def register() -> str:
    """Make `VARLEN` a valid `attn_implementation` (its masks are SDPA's); returns the name."""
    global _registered
    if not _registered:
        from transformers import AttentionInterface
        from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

        AttentionInterface.register(VARLEN, varlen_sdpa)
        ALL_MASK_ATTENTION_FUNCTIONS.register(VARLEN, sdpa_mask)
        _registered = True
    return VARLEN


def use_varlen_attention(model) -> bool:
    """Switch a loaded model to `varlen_sdpa` where it runs SDPA now; False (unchanged) otherwise."""
    if getattr(model.config, "_attn_implementation", None) != "sdpa":
        return False
    register()
    try:
        model.set_attn_implementation(VARLEN)
    except (ValueError, KeyError, AttributeError):
        return False
    return model.config._attn_implementation == VARLEN


def packing_safe(model) -> bool:
    """Whether `model`'s attention keeps the rows of a packed batch apart."""
    return getattr(model.config, "_attn_implementation", None) in PACKING_SAFE
