"""Tiny random causal LMs, one per registry family, saved as ordinary HF folders (no hub access).

`tiny_model_dir(family, tmp_path)` builds a 2-layer, hidden-64 model of the family's real
architecture class, with a tokenizer that carries the family's real chat template (see
tests/helpers/tokenizers.py), and returns the folder, which `load_model(str(dir))` and
`from_pretrained(dir)` load. Folders are built once per test session and shared: treat them
as read-only (copy one before changing it).

transformers has no native `minicpm` (MiniCPM-1/2B runs remote code from the hub), so the
"minicpm" family is built as a Llama model — the closest native architecture, with the
same module names; MiniCPM-2B additionally scales embeddings and residuals, which a tiny
test model does not need. "minicpm3" is native (transformers 5).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from .tokenizers import make_tokenizer

HIDDEN, LAYERS, HEADS, KV_HEADS, INTERMEDIATE = 64, 2, 4, 2, 128

# family → (config model_type, tokenizer family in tests/helpers/tokenizers.py, extra config fields)
_FAMILIES: dict[str, tuple[str, str, dict]] = {
    "llama": ("llama", "llama3", {}),
    "qwen2": ("qwen2", "qwen2.5", {}),
    "qwen3": ("qwen3", "qwen3", {"head_dim": 16}),
    "mistral": ("mistral", "mistral", {"sliding_window": None}),
    "gemma2": ("gemma2", "gemma", {"head_dim": 16, "query_pre_attn_scalar": 16, "sliding_window": 32}),
    "gemma3": ("gemma3_text", "gemma3", {"head_dim": 16, "query_pre_attn_scalar": 16, "sliding_window": 32}),
    "phi3": ("phi3", "phi3", {}),
    "minicpm": ("llama", "chatml", {}),  # stand-in: no native MiniCPM in transformers
    "lfm2.5": ("llama", "lfm2.5", {}),  # LFM2.5's template on a llama body (its Python-style tool calls)
    "minicpm3": (
        "minicpm3",
        "chatml",
        {
            "num_key_value_heads": HEADS,
            "q_lora_rank": 32,
            "kv_lora_rank": 16,
            "qk_nope_head_dim": 8,
            "qk_rope_head_dim": 8,
            "v_head_dim": 16,
            # no-op embedding/residual scaling: the checkpoint's values blow up a random tiny model
            "scale_emb": 1,
            "scale_depth": None,
            "dim_model_base": None,
        },
    ),
}
ALIASES = {"gemma": "gemma2", "gemma3_text": "gemma3", "smollm2": "llama"}
TINY_FAMILIES: tuple[str, ...] = tuple(_FAMILIES)

_built: dict[str, Path] = {}


def tiny_config(
    family: str, vocab_size: int, bos: int | None = None, eos: int | None = None, pad: int | None = None
):
    """The tiny config of `family` (2 layers, hidden 64), vocabulary `vocab_size`."""
    from transformers import CONFIG_MAPPING

    model_type, _, extra = _FAMILIES[ALIASES.get(family, family)]
    fields = {
        "vocab_size": vocab_size,
        "hidden_size": HIDDEN,
        "intermediate_size": INTERMEDIATE,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS,
        "max_position_embeddings": 1024,
        "tie_word_embeddings": True,
        "bos_token_id": bos,
        "eos_token_id": eos,
        "pad_token_id": pad,
        **extra,
    }
    return CONFIG_MAPPING[model_type](**fields)


def tiny_model_dir(family: str, tmp_path: Path | None = None) -> Path:
    """Folder with a tiny random `family` model + tokenizer (built once per session, read-only)."""
    family = ALIASES.get(family, family)
    if family not in _FAMILIES:
        raise KeyError(f"no tiny model for family {family!r}; known: {', '.join(TINY_FAMILIES)}")
    if family in _built and (_built[family] / "config.json").exists():
        return _built[family]
    root = Path(tmp_path) if tmp_path is not None else Path(tempfile.mkdtemp(prefix="mmtune-tiny-"))
    out = root / f"tiny-{family}"
    _build(family, out, root)
    _built[family] = out
    return out


def _build(family: str, out: Path, work: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    tokenizer = make_tokenizer(_FAMILIES[family][1], work)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    vocab = -(-len(tokenizer) // 64) * 64  # cover every token, added ones included
    ids = {
        k: tokenizer.convert_tokens_to_ids(getattr(tokenizer, f"{k}_token")) for k in ("bos", "eos", "pad")
    }
    ids = {k: v if getattr(tokenizer, f"{k}_token") is not None else None for k, v in ids.items()}
    config = tiny_config(family, vocab, **ids)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
