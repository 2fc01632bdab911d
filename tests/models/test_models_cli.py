"""`mmtune models` prints the registry with memory estimates, without importing torch."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mmtune.commands import models as models_command
from mmtune.errors import UserError
from mmtune.models.registry import DEFAULT_MODEL, REGISTRY

SRC = str(Path(__file__).resolve().parents[2] / "src")


def _run(argv: list[str], capsys) -> tuple[int, str]:
    parser = argparse.ArgumentParser(prog="mmtune")
    models_command.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    code = args.func(args)
    return code, capsys.readouterr().out


def test_json_lists_every_model_with_estimates(capsys):
    code, out = _run(["models", "--json", "--seq-len", "1024", "--batch-size", "2"], capsys)
    data = json.loads(out)
    assert code == 0 and data["default_model"] == DEFAULT_MODEL and data["seq_len"] == 1024
    assert [m["name"] for m in data["models"]] == list(REGISTRY)
    first = data["models"][0]
    assert set(first["memory_gib"]) == {"full", "lora", "qlora"}
    assert first["lora_targets"] and first["hf_path"]


def test_table_and_show(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "300")  # rich would shorten names to fit 80 columns
    code, out = _run(["models"], capsys)
    assert code == 0 and "qwen2.5-7b-instruct" in out and "QLoRA" in out
    code, out = _run(["models", "show", "phi4-mini-instruct", "--json"], capsys)
    assert code == 0 and json.loads(out)["lora_targets"] == [
        "qkv_proj",
        "o_proj",
        "gate_up_proj",
        "down_proj",
    ]
    with pytest.raises(UserError, match="did you mean"):
        _run(["models", "show", "phi4-mini-instruc"], capsys)


def test_vision_models_listed_apart_with_what_they_accept(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "300")
    code, out = _run(["models"], capsys)
    text_part, vision_part = out.split("vision-language models")
    assert "qwen2-vl-2b-instruct" in vision_part and "qwen2-vl-2b-instruct" not in text_part
    assert "qwen2.5-7b-instruct" in text_part and "qwen2.5-7b-instruct" not in vision_part
    row = next(line for line in vision_part.splitlines() if "llava-1.5-7b" in line)
    assert "any number" in row and " no " in row  # images, no video
    code, out = _run(["models", "--json"], capsys)
    models = {m["name"]: m for m in json.loads(out)["models"]}
    assert models["qwen2-vl-2b-instruct"]["accepts"] == {"images": True, "max_images": None, "video": True}
    assert models["llava-1.5-7b"]["accepts"]["video"] is False
    assert "accepts" not in models["qwen2.5-7b-instruct"]
    code, out = _run(["models", "show", "qwen2-vl-2b-instruct", "--json"], capsys)
    assert 0.6 < json.loads(out)["vision_params_b"] < 0.7


def _python(code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)


def test_models_command_does_not_import_torch():
    code = (
        "import sys, argparse\n"
        "from mmtune.commands import models\n"
        "p = argparse.ArgumentParser(); models.add_parser(p.add_subparsers())\n"
        "a = p.parse_args(['models', '--json']); a.func(a)\n"
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, 'heavy import'\n"
    )
    result = _python(code)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["models"]


def test_mmtune_help_does_not_import_torch():
    code = (
        "import sys\n"
        "from mmtune.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
        "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH')\n"
    )
    result = _python(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("NO-TORCH") and "models" in result.stdout


def test_piped_table_keeps_every_name_whole():
    """Redirected to a file or a pager, rich would cut the table to 80 columns ("llav…")."""
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    env["PYTHONPATH"] = SRC + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run(
        [sys.executable, "-m", "mmtune.cli", "models"], capture_output=True, text=True, env=env, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert "…" not in out.stdout
    for name in REGISTRY:
        assert name in out.stdout
