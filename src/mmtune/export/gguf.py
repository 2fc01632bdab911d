"""Export a text model to GGUF, the file llama.cpp (and Ollama, LM Studio...) runs.

Written with gguf-py's GGUFWriter, following llama.cpp's convert_hf_to_gguf.py, for the
families the registry has and llama.cpp runs: Llama (SmolLM2, Llama 3.x), Mistral, Qwen2 /
Qwen2.5, Qwen3, Gemma 2, Gemma 3 (text) and Phi-3 / Phi-3.5 / Phi-4-mini.
- tensor names from gguf's TensorNameMap (`model.layers.0.self_attn.q_proj.weight` →
  `blk.0.attn_q.weight`); the output matrix is left out when the embeddings are tied;
- for llama.cpp's `llama` architecture, Q and K rows are permuted from Hugging Face's
  rotate-half layout to the interleaved pairs its rope expects (the others use NEOX rope);
  Gemma's norms store `w` where the model computes `1 + w`: written as `1 + w`;
- hyper-parameters under `{arch}.*`, rope scaling (linear, yarn, Llama 3's per-frequency
  factors, Phi-3's long-rope factors), sliding-window layers and logit soft-capping;
- the tokenizer as `gpt2` byte-level BPE: every token by id (holes filled with `[PADn]`, type
  UNUSED), token types (CONTROL for special added tokens, USER_DEFINED for other added ones,
  such as Qwen's `<tool_call>`), merges, the pre-tokenizer name llama.cpp identifies it by
  (export/pretokenizers.py), BOS/EOS/PAD and end-of-turn ids, whether a BOS is added, and the
  chat template;
- types: f32, f16, bf16, q8_0, q4_0, q5_0 written by gguf-py (1-D tensors and norms stay f32;
  a matrix whose rows do not split into the type's blocks falls back to f16, as llama.cpp's
  converter does), and the K-quants q4_k_m, q5_k_m, q6_k made by llama.cpp's own quantiser
  from an f16 (bf16 for a bf16 model) file (export/llamacpp.py; needs llama-cpp-python).

An adapter folder is merged into its base first (in a temporary folder).
"""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmtune.chat.render import end_of_turn
from mmtune.errors import UserError
from mmtune.infer.artifacts import is_adapter_dir

GGUF_PY_DTYPES = ("f32", "f16", "bf16", "q8_0", "q4_0", "q5_0")
K_QUANTS = ("q4_k_m", "q5_k_m", "q6_k")
DTYPES = GGUF_PY_DTYPES + K_QUANTS


@dataclass(frozen=True)
class GGUFArch:
    """How one Hugging Face model_type is written: llama.cpp's architecture name and quirks."""

    arch: str
    permute_qk: bool = False  # llama.cpp's `llama` rope is interleaved; the others are NEOX
    norm_shift: float = 0.0  # Gemma: the model computes (1 + w) * x
    write_vocab_size: bool = False
    write_rope_dims: bool = False
    extra: Callable[[Any, Any], None] | None = None  # (writer, config): the family's own keys


def _layer_pattern(w, config) -> None:
    """Which layers use sliding-window attention, from the config's layer_types."""
    types = getattr(config, "layer_types", None)
    window = getattr(config, "sliding_window", None)
    if not window or not types or "sliding_attention" not in types:
        return
    w.add_sliding_window(int(window))
    w.add_sliding_window_pattern([t == "sliding_attention" for t in types])


def _gemma_scale(config) -> None:
    head_dim = config.head_dim
    scalar = getattr(config, "query_pre_attn_scalar", head_dim)
    if scalar != head_dim:
        raise UserError(
            f"this Gemma model scales attention by query_pre_attn_scalar={scalar}, not its head_dim "
            f"{head_dim}; llama.cpp does so only for the 27B models: use llama.cpp's convert_hf_to_gguf.py"
        )


def _gemma2(w, config) -> None:
    _gemma_scale(config)
    w.add_attn_logit_softcapping(float(config.attn_logit_softcapping or 0.0))
    w.add_final_logit_softcapping(float(config.final_logit_softcapping or 0.0))
    _layer_pattern(w, config)


def _gemma3(w, config) -> None:
    _gemma_scale(config)
    if getattr(config, "attn_logit_softcapping", None):
        raise UserError("Gemma 3 with attention soft-capping is not something llama.cpp runs")
    if getattr(config, "final_logit_softcapping", None):
        w.add_final_logit_softcapping(float(config.final_logit_softcapping))
    _layer_pattern(w, config)
    local = (getattr(config, "rope_parameters", None) or {}).get("sliding_attention") or {}
    if local.get("rope_theta") is not None:
        w.add_rope_freq_base_swa(float(local["rope_theta"]))


def _phi3(w, config) -> None:
    full = _rope_params(config)
    w.add_rope_scaling_orig_ctx_len(
        int(full.get("original_max_position_embeddings") or config.original_max_position_embeddings)
    )
    w.add_sliding_window(int(getattr(config, "sliding_window", None) or 0))


ARCHS: dict[str, GGUFArch] = {
    "llama": GGUFArch("llama", permute_qk=True, write_vocab_size=True, write_rope_dims=True),
    "mistral": GGUFArch("llama", permute_qk=True, write_vocab_size=True, write_rope_dims=True),
    "qwen2": GGUFArch("qwen2"),
    "qwen3": GGUFArch("qwen3"),
    "gemma2": GGUFArch("gemma2", norm_shift=1.0, extra=_gemma2),
    "gemma3_text": GGUFArch("gemma3", norm_shift=1.0, extra=_gemma3),
    "phi3": GGUFArch("phi3", write_rope_dims=True, extra=_phi3),
}


def normalize_dtype(dtype: str) -> str:
    """`Q4_K_M` → `q4_k_m`; an unknown type is a UserError listing the known ones."""
    name = str(dtype).strip().lower()
    if name not in DTYPES:
        raise UserError(f"--dtype must be one of {', '.join(DTYPES)} (any case), not {dtype!r}")
    return name


def export_gguf(model: str, out: str | Path, *, dtype: str = "f16", pre_tokenizer: str | None = None) -> Path:
    """Write `model` (registry name, folder, .gguf, adapter folder) as a GGUF file at `out`.

    `pre_tokenizer` names llama.cpp's pre-tokenizer for a tokenizer llama.cpp's table does not
    know (see export/pretokenizers.py); by default it is identified, never guessed.
    """
    dtype = normalize_dtype(dtype)
    out = Path(out).expanduser().resolve()
    if out.suffix.lower() != ".gguf":
        raise UserError(f"{out} should end in .gguf: name the output file like model-f16.gguf")
    if dtype in K_QUANTS:
        from mmtune.export.llamacpp import require_llama_cpp

        require_llama_cpp(f"--dtype {dtype}")
    if is_adapter_dir(model):
        from mmtune.export.merge import merge_adapter

        with tempfile.TemporaryDirectory(prefix="mmtune-merge-") as tmp:
            merged = merge_adapter(model, Path(tmp) / "merged", dtype="fp32")
            return _export_folder(merged, out, dtype, pre_tokenizer)
    from mmtune.models.loader import resolve_model_path

    return _export_folder(Path(resolve_model_path(model)), out, dtype, pre_tokenizer)


def _export_folder(folder: Path, out: Path, dtype: str, pre_tokenizer: str | None) -> Path:
    from mmtune.infer.artifacts import read_json

    model_type = read_json(folder / "config.json").get("model_type")
    if model_type not in ARCHS:  # checked before any weight is read
        raise UserError(
            f"GGUF export supports {', '.join(ARCHS)} models; {folder} is {model_type!r}. "
            "Use llama.cpp's convert_hf_to_gguf.py on the (merged) folder for other families"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    if dtype not in K_QUANTS:
        return _write(folder, out, dtype, pre_tokenizer)
    from mmtune.export.llamacpp import quantize

    with tempfile.TemporaryDirectory(prefix="mmtune-gguf-", dir=out.parent) as tmp:
        source_dtype = "bf16" if _stored_dtype(folder) == "bfloat16" else "f16"
        source = _write(folder, Path(tmp) / f"source-{source_dtype}.gguf", source_dtype, pre_tokenizer)
        part = out.with_name(out.name + ".tmp")
        quantize(source, part, dtype)
        part.replace(out)
    return out


def _stored_dtype(folder: Path) -> str:
    from mmtune.infer.artifacts import read_json

    config = read_json(folder / "config.json")
    return str(config.get("dtype") or config.get("torch_dtype") or "float32")


def _write(folder: Path, out: Path, dtype: str, pre_tokenizer: str | None) -> Path:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model_json = _tokenizer_json(folder, tokenizer)
    pre = pre_tokenizer or _pre_tokenizer(tokenizer, folder)  # before the weights: fails fast
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    config = model.config
    spec = ARCHS[config.model_type]
    tmp = out.with_name(out.name + ".tmp")
    writer = _writer(tmp, spec, config, _model_name(folder.name, tokenizer), dtype)
    _add_tokenizer(writer, tokenizer, folder, config.vocab_size, pre, model_json)
    _add_tensors(writer, spec, model, dtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    tmp.replace(out)
    return out


# ----------------------------------------------------------------------------- hyper-parameters


def _model_name(name: str, tokenizer) -> str:
    """general.name. llama.cpp keys Phi-3's token attributes on it: a name with "phi3" / "phi-3"
    makes it look up <s>, </s> and <unk>, and a vocabulary without them (Phi-4-mini's, a
    run named "phi3-...") then fails to load. Such a name loses that part."""
    vocab = tokenizer.get_vocab()
    lowered = name.lower()
    if ("phi3" in lowered or "phi-3" in lowered) and not all(t in vocab for t in ("<s>", "</s>", "<unk>")):
        for part in ("phi-3", "phi3"):
            while part in name.lower():
                i = name.lower().index(part)
                name = name[:i] + "phi" + name[i + len(part) :]
    return name


def _rope_params(config) -> dict:
    """The full-attention rope parameters (Gemma 3 keeps one set per layer type)."""
    params = getattr(config, "rope_parameters", None) or {}
    if "full_attention" in params:
        params = params["full_attention"]
    params = dict(params)
    if params.get("rope_theta") is None and getattr(config, "rope_theta", None) is not None:
        params["rope_theta"] = config.rope_theta
    return params


def _rope(w, spec: GGUFArch, config) -> None:
    import gguf

    params = _rope_params(config)
    w.add_rope_freq_base(float(params.get("rope_theta") or 10000.0))
    kind = params.get("rope_type") or "default"
    if kind == "default":
        return
    if kind == "linear":
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(float(params["factor"]))
    elif kind == "yarn":
        w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        w.add_rope_scaling_factor(float(params["factor"]))
        w.add_rope_scaling_orig_ctx_len(int(params["original_max_position_embeddings"]))
        for key, add in (
            ("extrapolation_factor", w.add_rope_scaling_yarn_ext_factor),
            ("attention_factor", w.add_rope_scaling_yarn_attn_factor),
            ("beta_fast", w.add_rope_scaling_yarn_beta_fast),
            ("beta_slow", w.add_rope_scaling_yarn_beta_slow),
        ):
            if params.get(key) is not None:
                add(float(params[key]))
    elif kind == "llama3" and spec.arch == "llama":
        pass  # per-frequency factors: the rope_freqs tensor (_rope_tensors)
    elif kind == "longrope" and spec.arch == "phi3":
        w.add_rope_scaling_type(gguf.RopeScalingType.LONGROPE)
        scale = config.max_position_embeddings / params["original_max_position_embeddings"]
        orig = params["original_max_position_embeddings"]
        w.add_rope_scaling_attn_factors(math.sqrt(1 + math.log(scale) / math.log(orig)) if scale > 1 else 1.0)
    else:
        raise UserError(
            f"rope scaling {kind!r} of a {config.model_type} model is not written by mmtune's GGUF export: "
            "use llama.cpp's convert_hf_to_gguf.py on the (merged) folder"
        )


def _head_dim(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def _writer(path: Path, spec: GGUFArch, config, name: str, dtype: str):
    import gguf

    w = gguf.GGUFWriter(str(path), spec.arch)
    heads = config.num_attention_heads
    head_dim = _head_dim(config)
    w.add_name(name)
    w.add_context_length(config.max_position_embeddings)
    w.add_embedding_length(config.hidden_size)
    w.add_block_count(config.num_hidden_layers)
    w.add_feed_forward_length(config.intermediate_size)
    w.add_head_count(heads)
    w.add_head_count_kv(config.num_key_value_heads or heads)
    w.add_layer_norm_rms_eps(config.rms_norm_eps)
    _rope(w, spec, config)
    if head_dim != config.hidden_size // heads or spec.arch.startswith("gemma"):
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
    if spec.write_vocab_size:
        w.add_vocab_size(config.vocab_size)
    if spec.write_rope_dims:
        partial = _rope_params(config).get("partial_rotary_factor", 1.0) or 1.0
        w.add_rope_dimension_count(int(partial * head_dim))
    if spec.extra is not None:
        spec.extra(w, config)
    w.add_file_type(getattr(gguf.LlamaFileType, _FILE_TYPES[dtype]))
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    return w


_FILE_TYPES = {
    "f32": "ALL_F32",
    "f16": "MOSTLY_F16",
    "bf16": "MOSTLY_BF16",
    "q8_0": "MOSTLY_Q8_0",
    "q4_0": "MOSTLY_Q4_0",
    "q5_0": "MOSTLY_Q5_0",
}


# ----------------------------------------------------------------------------- tokenizer


def _tokenizer_json(folder: Path, tokenizer) -> dict:
    if not getattr(tokenizer, "is_fast", False) or not (folder / "tokenizer.json").is_file():
        raise UserError(f"GGUF export needs a fast BPE tokenizer (tokenizer.json) in {folder}")
    model_json = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    model = model_json.get("model", {})
    if model.get("type") != "BPE" or model.get("byte_fallback"):
        raise UserError(
            f"{folder}/tokenizer.json is not a byte-level BPE (gpt2-style) tokenizer: mmtune's GGUF "
            "export writes those only (SentencePiece-style tokenizers, as in Mistral 7B, Gemma and Phi-3, "
            "are written by llama.cpp's convert_hf_to_gguf.py from the merged folder)"
        )
    return model_json


def _pre_tokenizer(tokenizer, folder: Path) -> str:
    from mmtune.export.pretokenizers import llama_cpp_pre

    name, digest = llama_cpp_pre(tokenizer)
    if name is None:
        raise UserError(
            f"llama.cpp does not know the tokenizer in {folder} (probe hash {digest}): it would refuse "
            "the file. If you know which llama.cpp pre-tokenizer splits text like this one, pass "
            "--pre-tokenizer NAME (the names are in llama.cpp's convert_hf_to_gguf_update.py); otherwise "
            "convert the merged folder with a newer llama.cpp's convert_hf_to_gguf.py"
        )
    return name


def _adds(tokenizer, which: str) -> bool:
    """Whether encoding text adds the BOS (`which="bos"`) or EOS token, as llama.cpp must too."""
    token_id = getattr(tokenizer, f"{which}_token_id", None)
    if token_id is None:
        return False
    ids = tokenizer("a")["input_ids"]
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    if len(ids) == len(plain):
        return False
    return ids[0] == token_id if which == "bos" else ids[-1] == token_id


def _add_tokenizer(w, tokenizer, folder: Path, vocab_size: int, pre: str, model_json: dict) -> None:
    import gguf

    tokens, types = _token_list(tokenizer, vocab_size)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types(types)
    special = gguf.SpecialVocab(folder, load_merges=True, n_vocab=len(tokens))
    special.chat_template = _chat_template(tokenizer)
    for kind in ("bos", "eos", "unk", "pad"):
        token_id = getattr(tokenizer, f"{kind}_token_id", None)
        if token_id is not None:
            special.special_token_ids[kind] = token_id
    special.add_special_token = {"bos": _adds(tokenizer, "bos"), "eos": _adds(tokenizer, "eos")}
    if not special.merges:
        special.merges = _merges(model_json)
    special.add_to_gguf(w, quiet=True)
    if not special.merges:
        raise UserError(f"{folder}/tokenizer.json has no BPE merges: the GGUF tokenizer would not work")
    eot = end_of_turn(tokenizer)
    if eot is not None:
        eot_id = tokenizer.convert_tokens_to_ids(eot)
        if eot_id != tokenizer.eos_token_id:
            w.add_eot_token_id(eot_id)


def _merges(model_json: dict) -> list[str]:
    merges = model_json.get("model", {}).get("merges") or []
    return [m if isinstance(m, str) else " ".join(m) for m in merges]


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


def _chat_template(tokenizer):
    """The template as gguf-py takes it: one string, or named templates (`default` first)."""
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):
        return [{"name": name, "template": text} for name, text in template.items()]
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


def _rope_tensors(config) -> dict[str, Any]:
    """Rope factor tensors: Llama 3's per-frequency factors, Phi-3's long/short factors."""
    import numpy as np

    params = _rope_params(config)
    kind = params.get("rope_type")
    if kind == "llama3" and config.model_type in ("llama", "mistral"):
        import torch
        from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

        dim = _head_dim(config)
        base = 1.0 / (params["rope_theta"] ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
        scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](config, "cpu")
        return {"rope_freqs.weight": (base / scaled.double()).float().numpy()}
    if kind == "longrope" and config.model_type == "phi3":
        return {
            "rope_factors_long.weight": np.asarray(params["long_factor"], dtype=np.float32),
            "rope_factors_short.weight": np.asarray(params["short_factor"], dtype=np.float32),
        }
    return {}


def _add_tensors(w, spec: GGUFArch, model, dtype: str) -> None:
    import gguf

    config = model.config
    names = gguf.get_tensor_name_map(getattr(gguf.MODEL_ARCH, spec.arch.upper()), config.num_hidden_layers)
    tied = getattr(config, "tie_word_embeddings", False)
    for name, data in _rope_tensors(config).items():
        w.add_tensor(name, data)
    for hf_name, tensor in model.state_dict().items():
        if (tied and hf_name == "lm_head.weight") or hf_name.endswith("rotary_emb.inv_freq"):
            continue
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise UserError(
                f"no GGUF name for tensor {hf_name}: this model has parts llama.cpp's format lacks"
            )
        data = tensor.detach().float().numpy()
        if spec.permute_qk and hf_name.endswith(("q_proj.weight", "q_proj.bias")):
            data = permute_qk(data, config.num_attention_heads, config.num_attention_heads)
        elif spec.permute_qk and hf_name.endswith(("k_proj.weight", "k_proj.bias")):
            data = permute_qk(data, config.num_attention_heads, config.num_key_value_heads)
        if spec.norm_shift and hf_name.endswith("norm.weight"):
            data = data + spec.norm_shift
        _add_one(w, name, data, dtype)


def _add_one(w, name: str, data: Any, dtype: str) -> None:
    import gguf
    import numpy as np

    if data.ndim <= 1 or name.endswith("_norm.weight") or dtype == "f32":
        w.add_tensor(name, data.astype(np.float32))
        return
    qtype = getattr(gguf.GGMLQuantizationType, dtype.upper())
    if dtype == "f16" or data.shape[-1] % gguf.GGML_QUANT_SIZES[qtype][0] != 0:
        w.add_tensor(name, data.astype(np.float16))
        return
    w.add_tensor(name, gguf.quants.quantize(data.astype(np.float32), qtype), raw_dtype=qtype)
