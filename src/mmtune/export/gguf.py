"""Export a Llama- or Qwen2-family text model to GGUF, the file llama.cpp and its tools run.

Written with gguf-py's GGUFWriter, following llama.cpp's convert_hf_to_gguf.py:
- tensor names from gguf's TensorNameMap (`model.layers.0.self_attn.q_proj.weight` →
  `blk.0.attn_q.weight`); the output matrix is left out when the embeddings are tied;
- for the `llama` architecture, Q and K rows are permuted from Hugging Face's rotate-half
  layout to the interleaved pairs llama.cpp's rope expects (qwen2 uses NEOX rope: no permute);
- hyper-parameters under `{arch}.*`; the tokenizer as `gpt2` BPE: every token by id (holes
  filled with `[PADn]`, type UNUSED), token types (CONTROL for special added tokens,
  USER_DEFINED for other added ones), merges, the pre-tokenizer name, special token ids and
  the chat template;
- dtypes: 1-D tensors (norms, biases) stay f32; 2-D ones become f16, or q8_0 (blocks of 32
  with one f16 scale) where the row length allows, else f16, as llama.cpp does.

An adapter folder is merged into its base first (in a temporary folder).
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmtune.errors import UserError
from mmtune.infer.artifacts import is_adapter_dir

DTYPES = ("f32", "f16", "q8_0")


@dataclass(frozen=True)
class GGUFArch:
    """How one Hugging Face model_type is written: llama.cpp's architecture name and quirks."""

    arch: str
    permute_qk: bool  # llama.cpp's LlamaModel permutes Q/K; Qwen2Model does not
    write_vocab_size: bool = True
    write_rope_dims: bool = True


ARCHS: dict[str, GGUFArch] = {
    "llama": GGUFArch("llama", permute_qk=True),
    "qwen2": GGUFArch("qwen2", permute_qk=False, write_vocab_size=False, write_rope_dims=False),
}

# llama.cpp's names for the pre-tokenizer split rules transformers knows (tokenizer.ggml.pre)
_KNOWN_SPLITS = {"llama-bpe": "llama3", "qwen2": "qwen2"}


def export_gguf(model: str, out: str | Path, *, dtype: str = "f16") -> Path:
    """Write `model` (registry name, folder, .gguf, adapter folder) as a GGUF file at `out`."""
    if dtype not in DTYPES:
        raise UserError(f"--dtype must be one of {', '.join(DTYPES)}, not {dtype!r}")
    out = Path(out).expanduser().resolve()
    if out.suffix.lower() != ".gguf":
        raise UserError(f"{out} should end in .gguf: name the output file like model-f16.gguf")
    if is_adapter_dir(model):
        from mmtune.export.merge import merge_adapter

        with tempfile.TemporaryDirectory(prefix="mmtune-merge-") as tmp:
            merged = merge_adapter(model, Path(tmp) / "merged", dtype="fp32")
            return _export_folder(merged, out, dtype)
    from mmtune.models.loader import resolve_model_path

    return _export_folder(Path(resolve_model_path(model)), out, dtype)


def _export_folder(folder: Path, out: Path, dtype: str) -> Path:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mmtune.infer.artifacts import read_json

    model_type = read_json(folder / "config.json").get("model_type")
    spec = ARCHS.get(model_type)
    if spec is None:  # checked before any weight is read
        raise UserError(
            f"GGUF export supports {', '.join(ARCHS)} models; {folder} is {model_type!r}. "
            "Use llama.cpp's convert_hf_to_gguf.py on the (merged) folder for other families"
        )
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    config = model.config
    tokenizer = AutoTokenizer.from_pretrained(folder)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    writer = _writer(tmp, spec, config, folder.name, dtype)
    _add_tokenizer(writer, tokenizer, folder, config.vocab_size)
    _add_tensors(writer, spec, model, dtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    tmp.replace(out)
    return out


def _rope_theta(config) -> float:
    params = getattr(config, "rope_parameters", None) or {}
    scaling = params.get("rope_type", "default") if isinstance(params, dict) else "default"
    if scaling not in ("default", None):
        raise UserError(
            f"rope scaling {scaling!r} is not written by mmtune's GGUF export yet: use llama.cpp's "
            "convert_hf_to_gguf.py on the (merged) folder"
        )
    theta = getattr(config, "rope_theta", None) or (
        params.get("rope_theta") if isinstance(params, dict) else None
    )
    return float(theta or 10000.0)


def _writer(path: Path, spec: GGUFArch, config, name: str, dtype: str):
    import gguf

    w = gguf.GGUFWriter(str(path), spec.arch)
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    w.add_name(name)
    w.add_context_length(config.max_position_embeddings)
    w.add_embedding_length(config.hidden_size)
    w.add_block_count(config.num_hidden_layers)
    w.add_feed_forward_length(config.intermediate_size)
    w.add_head_count(heads)
    w.add_head_count_kv(config.num_key_value_heads or heads)
    w.add_layer_norm_rms_eps(config.rms_norm_eps)
    w.add_rope_freq_base(_rope_theta(config))
    if head_dim != config.hidden_size // heads:
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
    if spec.write_vocab_size:
        w.add_vocab_size(config.vocab_size)
    if spec.write_rope_dims:
        w.add_rope_dimension_count(head_dim)
    file_types = {"f32": "ALL_F32", "f16": "MOSTLY_F16", "q8_0": "MOSTLY_Q8_0"}
    w.add_file_type(getattr(gguf.LlamaFileType, file_types[dtype]))
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    return w


# ----------------------------------------------------------------------------- tokenizer


def _add_tokenizer(w, tokenizer, folder: Path, vocab_size: int) -> None:
    import gguf

    if not getattr(tokenizer, "is_fast", False) or not (folder / "tokenizer.json").is_file():
        raise UserError(f"GGUF export needs a fast BPE tokenizer (tokenizer.json) in {folder}")
    model_json = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    if model_json.get("model", {}).get("type") != "BPE":
        raise UserError("GGUF export writes byte-level BPE (gpt2) tokenizers only; this one is not BPE")
    tokens, types = _token_list(tokenizer, vocab_size)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(_pre_tokenizer(model_json))
    w.add_token_list(tokens)
    w.add_token_types(types)
    special = gguf.SpecialVocab(folder, load_merges=True, n_vocab=len(tokens))
    special.chat_template = _chat_template(tokenizer)
    for kind in ("bos", "eos", "unk", "pad"):
        token_id = getattr(tokenizer, f"{kind}_token_id", None)
        if token_id is not None:
            special.special_token_ids[kind] = token_id
    special.add_to_gguf(w, quiet=True)
    if not special.merges:
        raise UserError(f"{folder}/tokenizer.json has no BPE merges: the GGUF tokenizer would not work")


def _token_list(tokenizer, vocab_size: int) -> tuple[list[str], list[int]]:
    import gguf

    by_id = {i: t for t, i in tokenizer.get_vocab().items()}
    added = tokenizer.added_tokens_decoder
    size = max(vocab_size, max(by_id) + 1)
    tokens, types = [], []
    for i in range(size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif i in added:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.CONTROL if added[i].special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.NORMAL)
    return tokens, [int(t) for t in types]


def _pre_tokenizer(model_json: dict) -> str:
    """llama.cpp's name for how text is split before BPE (tokenizer.ggml.pre)."""
    from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_PRE_TOKENIZER_SPLITS

    pre = model_json.get("pre_tokenizer") or {}
    parts = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    for part in parts:
        if part.get("type") == "Split":
            regex = (part.get("pattern") or {}).get("Regex")
            for name, key in _KNOWN_SPLITS.items():
                if regex == GGUF_PRE_TOKENIZER_SPLITS[key]:
                    return name
            raise UserError(
                "this tokenizer splits text with a pattern mmtune's GGUF export does not know: use "
                "llama.cpp's convert_hf_to_gguf.py, which identifies it"
            )
        if part.get("type") == "ByteLevel" and part.get("use_regex", True):
            return "gpt2"  # GPT-2's own split (SmolLM2 and friends)
    return "default"


def _chat_template(tokenizer) -> str | None:
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):
        template = template.get("default") or next(iter(template.values()), None)
    return template


# ----------------------------------------------------------------------------- tensors


def permute_qk(weights, n_head: int, n_head_kv: int | None):
    """HF rotate-half rows → llama.cpp interleaved rope rows (convert_hf_to_gguf's LlamaModel.permute)."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (
        weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def _add_tensors(w, spec: GGUFArch, model, dtype: str) -> None:
    import gguf

    config = model.config
    names = gguf.get_tensor_name_map(getattr(gguf.MODEL_ARCH, spec.arch.upper()), config.num_hidden_layers)
    tied = getattr(config, "tie_word_embeddings", False)
    for hf_name, tensor in model.state_dict().items():
        if (tied and hf_name == "lm_head.weight") or hf_name.endswith("rotary_emb.inv_freq"):
            continue
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise UserError(
                f"no GGUF name for tensor {hf_name}: this model has parts llama.cpp's format lacks"
            )
        data = tensor.detach().float().numpy()
        if spec.permute_qk and hf_name.endswith("q_proj.weight"):
            data = permute_qk(data, config.num_attention_heads, config.num_attention_heads)
        elif spec.permute_qk and hf_name.endswith("k_proj.weight"):
            data = permute_qk(data, config.num_attention_heads, config.num_key_value_heads)
        _add_one(w, name, data, dtype)


def _add_one(w, name: str, data: Any, dtype: str) -> None:
    import gguf
    import numpy as np

    if data.ndim <= 1 or dtype == "f32":
        w.add_tensor(name, data.astype(np.float32))
    elif dtype == "q8_0" and data.shape[-1] % gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.Q8_0][0] == 0:
        q8 = gguf.GGMLQuantizationType.Q8_0
        w.add_tensor(name, gguf.quants.quantize(data.astype(np.float32), q8), raw_dtype=q8)
    else:
        w.add_tensor(name, data.astype(np.float16))
