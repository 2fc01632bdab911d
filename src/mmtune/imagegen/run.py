"""What marks a folder as a picture run (or a merged picture model): its mmtune.json. Light (no torch), so
commands can tell a picture run from a language-model run before anything heavy is imported."""

from __future__ import annotations

import json
from pathlib import Path

from mmtune.models.imagegen_registry import IMAGE_KIND

META_FILE = "mmtune.json"


def read_run(folder: str | Path) -> dict | None:
    """mmtune.json of a picture run (or merged picture model), else None."""
    path = Path(folder) / META_FILE
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) and meta.get("kind") == IMAGE_KIND else None
