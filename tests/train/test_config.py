"""TrainConfig: one source of truth for defaults, presets, YAML, flags, validation and --help."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mmtune.cli import build_parser, main
from mmtune.config import (
    DEFAULT_MODEL,
    PRESETS,
    TrainConfig,
    config_fields,
    resolve_config,
)
from mmtune.errors import UserError


def write(tmp_path, text: str):
    p = tmp_path / "cfg.yaml"
    p.write_text(text, encoding="utf-8")
    return p


def test_defaults_are_the_standard_preset_and_the_registry_default_model():
    from mmtune.models.registry import DEFAULT_MODEL as REGISTRY_DEFAULT

    cfg = TrainConfig(data=["x.jsonl"])
    assert {k: getattr(cfg, k) for k in PRESETS["standard"]} == PRESETS["standard"]
    assert DEFAULT_MODEL == REGISTRY_DEFAULT == cfg.model


def test_presets_set_their_values():
    q = resolve_config({"data": ["a.jsonl"], "preset": "quality"})
    assert (q.learning_rate, q.epochs, q.batch_size, q.lora_rank, q.lora_alpha, q.lora_dropout) == (
        1e-4, 5, 16, 16, 64, 0.1)
    f = resolve_config({"data": ["a.jsonl"], "preset": "fast"})
    assert (f.epochs, f.batch_size, f.lora_rank, f.lora_alpha, f.lora_dropout) == (2, 8, 4, 16, 0.05)


def test_precedence_defaults_preset_yaml_flags(tmp_path):
    path = write(tmp_path, "preset: quality\ndata: a.jsonl\nlora_rank: 32\nepochs: 7\nlearning_rate: 3e-4\n")
    cfg = resolve_config({"epochs": 9}, path)
    assert cfg.batch_size == 16  # preset (named in the YAML) over the default 8
    assert cfg.lora_rank == 32  # YAML over preset
    assert cfg.learning_rate == 3e-4  # YAML "3e-4" (a string to PyYAML) coerced to float
    assert cfg.epochs == 9  # flag over YAML
    assert cfg.data == ["a.jsonl"]  # a single file becomes a list
    assert cfg.grad_accum == 1  # untouched default
    # a preset given as a flag wins over the YAML's preset, and YAML values still beat it
    cfg = resolve_config({"preset": "fast"}, path)
    assert (cfg.preset, cfg.batch_size, cfg.lora_rank) == ("fast", 8, 32)


def test_unknown_yaml_key_names_the_key_and_the_closest(tmp_path):
    path = write(tmp_path, "data: a.jsonl\nlearning_rat: 1e-4\n")
    with pytest.raises(UserError, match=r"unknown config key 'learning_rat'.*did you mean 'learning_rate'"):
        resolve_config({}, path)


@pytest.mark.parametrize(
    "values, message",
    [
        ({"learning_rate": 0}, "learning_rate must be > 0"),
        ({"epochs": 0}, "epochs must be >= 1"),
        ({"batch_size": 0}, "batch_size must be >= 1"),
        ({"val_ratio": 1.5}, "val_ratio must be in"),
        ({"val_ratio": 0.1, "val_data": ["v.jsonl"]}, "val_data or val_ratio, not both"),
        ({"lora_dropout": 1.0}, "lora_dropout must be in"),
        ({"method": "full", "use_dora": True}, "apply to lora/qlora only"),
        ({"warmup_steps": 3, "warmup_ratio": 0.1}, "warmup_steps or warmup_ratio"),
        ({"resume": True, "overwrite": True}, "contradict"),
    ],
)
def test_validation_errors_say_what_is_wrong(values, message):
    with pytest.raises(UserError, match=message):
        resolve_config({"data": ["a.jsonl"], **values})


def test_validation_lists_every_problem_and_missing_data():
    with pytest.raises(UserError) as e:
        resolve_config({"learning_rate": -1, "epochs": 0})
    text = str(e.value)
    assert "no training data" in text and "learning_rate" in text and "epochs" in text


def test_bad_types_and_choices(tmp_path):
    with pytest.raises(UserError, match="epochs must be an integer"):
        resolve_config({"data": ["a"]}, write(tmp_path, "epochs: three\n"))
    with pytest.raises(UserError, match="method must be one of lora, qlora, full"):
        resolve_config({"data": ["a"], "method": "lorax"})
    with pytest.raises(UserError, match="preset must be one of standard, quality, fast"):
        resolve_config({"data": ["a"], "preset": "turbo"})


def test_yaml_round_trip_with_and_without_help(tmp_path):
    cfg = resolve_config({"data": ["a.jsonl", "b.jsonl"], "lora_targets": ["q_proj", "v_proj"], "max_steps": 5,
                          "preset": "fast", "media_root": "media"})
    for text in (cfg.to_yaml(), cfg.to_yaml(with_help=True)):
        assert TrainConfig.from_dict(yaml.safe_load(text)) == cfg
    saved = cfg.save(tmp_path)
    assert saved.name == "config.yaml" and TrainConfig.from_yaml(saved) == cfg
    # every field is documented in the commented YAML, with its default
    commented = cfg.to_yaml(with_help=True)
    for f in config_fields():
        assert f"\n{f.name}: " in "\n" + commented


def test_lora_targets_from_yaml_string(tmp_path):
    cfg = resolve_config({}, write(tmp_path, "data: [a.jsonl]\nlora_targets: all-linear\n"))
    assert cfg.lora_targets == ["all-linear"]


def _train_help() -> str:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        sub.choices["train"].print_help()
    return buf.getvalue()


def test_train_help_lists_every_flag_with_its_default():
    options = _train_help().split("options:", 1)[1]
    entries = {" ".join(e.split()).split(" ")[0].rstrip(","): " ".join(e.split())
               for e in re.split(r"\n  (?=-)", options)}
    for f in config_fields():
        flag = "--" + f.name.replace("_", "-")
        assert flag in entries, flag
        assert "(default: " in entries[flag], f"{flag} shows no default"
    for name in ("--learning-rate", "--max-steps", "--batch-size", "--grad-accum", "--lora-rank", "--eval-steps"):
        assert name in entries
    assert "presets: standard 0.0001, quality 0.0001, fast 0.0001" in entries["--learning-rate"]
    assert "presets: standard 3, quality 5, fast 2" in entries["--epochs"]
    assert "--config" in entries and "--print-config" in entries


def test_flags_override_and_print_config(tmp_path, capsys):
    path = write(tmp_path, "data: a.jsonl\nlearning_rate: 3e-4\nlora_rank: 4\n")
    rc = main(["train", "--config", str(path), "--learning-rate", "5e-5", "--no-use-dora", "--gradient-checkpointing",
               "--lora-targets", "q_proj", "v_proj", "--max-steps", "7", "--print-config"])
    assert rc == 0
    cfg = TrainConfig.from_dict(yaml.safe_load(capsys.readouterr().out))
    assert (cfg.learning_rate, cfg.lora_rank, cfg.max_steps) == (5e-5, 4, 7)
    assert cfg.gradient_checkpointing is True and cfg.lora_targets == ["q_proj", "v_proj"]


def test_cli_reports_config_errors_without_traceback(tmp_path, capsys):
    path = write(tmp_path, "data: a.jsonl\nbatch_sise: 4\n")
    assert main(["train", "--config", str(path)]) == 2
    assert "did you mean 'batch_size'" in capsys.readouterr().err


def test_config_and_train_command_import_no_torch():
    code = ("import sys, mmtune.config, mmtune.commands.train, mmtune.commands.demo; "
            "print(any(m in sys.modules for m in ('torch', 'transformers', 'peft')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_every_field_has_help():
    for f in dataclasses.fields(TrainConfig):
        assert len(f.metadata.get("help", "")) > 10, f.name


EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.mark.parametrize("path", sorted((EXAMPLES / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_example_configs_are_valid(path):
    cfg = resolve_config({}, path)
    assert cfg.data and cfg.output.startswith("runs/")


@pytest.mark.parametrize("path", sorted((EXAMPLES / "accelerate").glob("*.yaml")), ids=lambda p: p.name)
def test_accelerate_configs_leave_precision_and_batching_to_mmtune(path):
    values = yaml.safe_load(path.read_text())
    assert values["distributed_type"] in ("DEEPSPEED", "FSDP") and values["mixed_precision"] == "no"
    assert "gradient_accumulation_steps" not in values.get("deepspeed_config", {})  # "auto": from --grad-accum
