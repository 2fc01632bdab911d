"""Every rule id the data layer can report is documented in docs/data.md."""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RULE_ARG = {"error": 1, "warn": 1, "warn_once": 2, "Finding": 3}  # where each call takes its rule id


def rule_ids() -> set[str]:
    ids: set[str] = set()
    for path in (ROOT / "src" / "mmtune" / "data").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            i = RULE_ARG.get(name)
            if i is not None and len(node.args) > i and isinstance(node.args[i], ast.Constant):
                ids.add(node.args[i].value)
    media = (ROOT / "src" / "mmtune" / "data" / "media.py").read_text()
    return ids | set(re.findall(r'return \("([a-z-]+)",', media))


def test_every_rule_id_is_documented():
    ids = rule_ids()
    assert {"unknown-key", "identical-sides", "prompt-mismatch", "utf8", "media-count-mismatch"} <= ids, ids
    docs = (ROOT / "docs" / "data.md").read_text()
    assert sorted(i for i in ids if f"`{i}`" not in docs) == []
