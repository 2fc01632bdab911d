"""Merge a LoRA adapter into its base: a standalone Hugging Face folder anything can load.

The merged folder holds safetensors weights, the tokenizer with the chat template the
adapter was trained with (for a vision-language model: its processor, which includes the
tokenizer and the image/video settings), the generation config, and mmtune.json recording
the base and the adapter it came from. Weights are merged in float32 (adding a low-rank product to bf16
weights would round it away) and saved in the base's own dtype unless told otherwise.
The folder appears atomically: a half-written merge never looks like a finished one.
"""

from __future__ import annotations

import datetime as _dt
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from mmtune import __version__
from mmtune.errors import UserError
from mmtune.infer.artifacts import META_FILE, adapter_base, is_adapter_dir, read_json


def default_merged_dir(adapter_dir: str | Path) -> Path:
    """`runs/demo` → `runs/demo-merged`."""
    folder = Path(adapter_dir).expanduser().resolve()
    return folder.with_name(folder.name + "-merged")


def merge_adapter(
    adapter_dir: str | Path,
    out_dir: str | Path | None = None,
    *,
    dtype: Any = "auto",
    overwrite: bool = False,
) -> Path:
    """Merge the adapter in `adapter_dir` into its base and save the result in `out_dir`."""
    adapter_dir = Path(adapter_dir).expanduser().resolve()
    if not is_adapter_dir(adapter_dir):
        raise UserError(
            f"{adapter_dir} holds no LoRA adapter (adapter_config.json): give the output folder of a "
            "LoRA training run; a fully fine-tuned run is already a standalone model"
        )
    out = Path(out_dir).expanduser().resolve() if out_dir else default_merged_dir(adapter_dir)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise UserError(f"{out} already exists and is not empty: remove it, or choose another --out")
    base = adapter_base(adapter_dir)
    model, tokenizer = _merged_model(base, adapter_dir, dtype)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        _write_record(tmp, base, adapter_dir)
        if out.exists():
            shutil.rmtree(out)
        tmp.chmod(0o755)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _merged_model(base: str, adapter_dir: Path, dtype: Any):
    """(merged model, what to save beside it: the tokenizer, or a vision model's processor)."""
    import torch
    from peft import PeftModel

    from mmtune.infer.vision import adapter_processor
    from mmtune.models.loader import load_model, load_tokenizer, model_spec, resolve_dtype
    from mmtune.models.vision import load_processor

    spec = model_spec(base)
    model = load_model(base, dtype=torch.float32)
    companion = None
    if spec is not None and spec.kind == "vision":
        companion = adapter_processor(str(adapter_dir)) or load_processor(base)
    target = _base_dtype(model) if dtype in (None, "auto") else resolve_dtype(dtype)
    model = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    model = model.to(target)
    model.config.dtype = target
    if companion is None:
        companion = _tokenizer_of(adapter_dir) or load_tokenizer(base)
    return model, companion


def _base_dtype(model):
    """The dtype the base checkpoint was stored in (float32 when it does not say)."""
    import torch

    stored = getattr(model.config, "dtype", None)
    if isinstance(stored, str):
        stored = getattr(torch, stored, None)
    return stored if isinstance(stored, torch.dtype) and stored.is_floating_point else torch.float32


def _tokenizer_of(folder: Path):
    if not (folder / "tokenizer_config.json").is_file():
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder)


def _write_record(folder: Path, base: str, adapter_dir: Path) -> None:
    meta = {
        "mmtune_version": __version__,
        "base_model": base,
        "method": "merged",
        "adapter": False,
        "merged_from": {"adapter_dir": str(adapter_dir), "adapter_meta": read_json(adapter_dir / META_FILE)},
        "complete": True,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }
    (folder / META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    peft_config = adapter_dir / "adapter_config.json"
    shutil.copyfile(peft_config, folder / "merged_adapter_config.json")
