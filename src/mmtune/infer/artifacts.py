"""What an mmtune output folder says about itself: adapter or full model, and its base.

Shared by the Engine and the exporters; reads small JSON files only (no torch).
"""

from __future__ import annotations

import json
from pathlib import Path

from mmtune.errors import UserError

META_FILE = "mmtune.json"
ADAPTER_CONFIG = "adapter_config.json"


def is_adapter_dir(path: str | Path) -> bool:
    return (Path(path).expanduser() / ADAPTER_CONFIG).is_file()


def adapter_base(adapter_dir: str | Path) -> str:
    """The base model an adapter was trained on: mmtune.json's record, else PEFT's."""
    folder = Path(adapter_dir).expanduser()
    meta = read_json(folder / META_FILE)
    base = meta.get("base_model") or read_json(folder / ADAPTER_CONFIG).get("base_model_name_or_path")
    if not base:
        raise UserError(
            f"{folder} does not say which base model its adapter belongs to: set "
            f"`base_model_name_or_path` in {folder / ADAPTER_CONFIG}"
        )
    return str(base)


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"cannot read {path}: {e}; fix or remove the file") from None


def model_name(model: str) -> str:
    """The public name of a model argument: a folder's or file's name, else the argument."""
    path = Path(model).expanduser()
    if path.exists():
        return path.resolve().stem if path.is_file() else path.resolve().name
    return model
