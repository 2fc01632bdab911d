"""`mmtune train --output`: the user's own files are never replaced, listed in the refusal instead;
--overwrite replaces only the files the earlier run recorded in its manifest; `/`, the home folder
and system folders are refused; a failed run leaves no folder it made behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mmtune.config import resolve_config
from mmtune.errors import UserError
from mmtune.train.output import MANIFEST_FILE, check_output, clear_run, read_manifest
from tests.conftest import EXAMPLES, ROOT

MMTUNE = Path(sys.executable).with_name("mmtune")


def settings(model: Path, data: Path, output: Path, **extra) -> dict:
    return {"model": str(model), "data": [str(data)], "output": str(output), "max_steps": 2, "batch_size": 4,
            "logging_steps": 1, "save_strategy": "steps", "save_steps": 1, "max_length": 64, **extra}


def train(**values) -> dict:
    from mmtune.train.sft import run_sft

    return run_sft(resolve_config(values))


def listing(folder: Path) -> set[str]:
    return {p.name + ("/" if p.is_dir() else "") for p in folder.iterdir()}


def test_the_users_files_are_listed_untouched_and_the_run_refused(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    files = {"README.md": b"# my notes\n", "config.yaml": b"mine: true\n", "loss.png": b"\x89PNG my plot"}
    for name, data in files.items():
        (out / name).write_bytes(data)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "HF_HUB_OFFLINE": "1"}
    for extra in ([], ["--overwrite"]):
        run = subprocess.run([str(MMTUNE), "train", "--data", str(EXAMPLES / "persona.jsonl"), "--output",
                              str(out), *extra], env=env, capture_output=True, text=True, timeout=60)
        assert run.returncode == 2, run.stderr
        assert "Traceback" not in run.stderr
        line = run.stderr.strip()
        assert "\n" not in line and "README.md, config.yaml, loss.png" in line, line
        assert "another --output" in line
        assert {name: (out / name).read_bytes() for name in files} == files
        assert listing(out) == set(files)


@pytest.mark.parametrize("folder", ["/", "/etc", "/usr", "/bin", "/var", "/home", "/usr/lib", "/etc/mmtune",
                                    "~", "/proc/self"])
def test_root_home_and_system_folders_are_refused(folder, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(UserError, match="--output"):
        check_output(Path(folder).expanduser(), overwrite=True, resume=False)


def test_the_parent_of_home_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "users" / "me"))
    with pytest.raises(UserError, match="home"):
        check_output(tmp_path / "users", overwrite=False, resume=False)
    check_output(tmp_path / "users" / "me" / "runs" / "x", overwrite=False, resume=False)  # below home: fine


def test_a_file_is_not_a_folder(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(UserError, match="is a file"):
        check_output(tmp_path / "f", overwrite=False, resume=False)


def test_clear_run_removes_only_what_the_manifest_lists(tmp_path):
    for name in ("adapter_config.json", "summary.json", "notes.txt"):
        (tmp_path / name).write_text("x")
    (tmp_path / "checkpoint-2").mkdir()
    (tmp_path / "checkpoint-2" / "trainer_state.json").write_text("{}")
    (tmp_path / MANIFEST_FILE).write_text(json.dumps({"files": ["adapter_config.json", "summary.json",
                                                                "checkpoint-2/"]}))
    clear_run(tmp_path)
    assert listing(tmp_path) == {"notes.txt"}


@pytest.mark.slow
def test_a_run_records_every_file_it_wrote_and_overwrite_replaces_only_those(tiny_llama, small_data,
                                                                             tmp_path):
    out = tmp_path / "run"
    train(**settings(tiny_llama, small_data, out))
    manifest = read_manifest(out)
    assert set(manifest) | {MANIFEST_FILE} == listing(out)  # exactly the folder's entries
    assert {"adapter_model.safetensors", "config.yaml", "metrics.jsonl", "summary.json", "mmtune.json",
            "checkpoint-2/"} <= set(manifest)
    assert not any(n.startswith(".") for n in listing(out))  # no staging left over

    (out / "notes.txt").write_text("the user's")  # a file the user put in the run folder
    with pytest.raises(UserError, match="notes.txt"):
        train(**settings(tiny_llama, small_data, out, overwrite=True))
    with pytest.raises(UserError, match="notes.txt"):
        train(**settings(tiny_llama, small_data, out, resume=True))
    assert (out / "notes.txt").read_text() == "the user's" and (out / "summary.json").is_file()
    (out / "notes.txt").unlink()

    with pytest.raises(UserError, match="--overwrite"):
        train(**settings(tiny_llama, small_data, out))
    first = (out / "summary.json").stat().st_mtime_ns
    summary = train(**settings(tiny_llama, small_data, out, overwrite=True, max_steps=1))
    assert summary["steps"] == 1 and (out / "summary.json").stat().st_mtime_ns != first
    assert set(read_manifest(out)) | {MANIFEST_FILE} == listing(out)
    assert not (out / "checkpoint-2").exists()  # the earlier run's checkpoint went with it


@pytest.mark.slow
def test_resume_keeps_working_with_the_manifest(tiny_llama, small_data, tmp_path):
    out = tmp_path / "run"
    train(**settings(tiny_llama, small_data, out))
    (out / "summary.json").unlink()  # as if killed after its last checkpoint
    summary = train(**settings(tiny_llama, small_data, out, resume=True))
    assert summary["resumed_from"] == "checkpoint-2"
    assert set(read_manifest(out)) | {MANIFEST_FILE} == listing(out)


@pytest.mark.slow
def test_a_run_from_before_the_manifest_resumes_but_is_never_overwritten(tiny_llama, small_data, tmp_path):
    out = tmp_path / "run"
    train(**settings(tiny_llama, small_data, out))
    (out / MANIFEST_FILE).unlink()  # as an older mmtune left it
    (out / "summary.json").unlink()
    with pytest.raises(UserError, match="kept no mmtune-manifest.json"):
        train(**settings(tiny_llama, small_data, out, overwrite=True))
    (out / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="notes.txt"):
        train(**settings(tiny_llama, small_data, out, resume=True))
    (out / "notes.txt").unlink()
    assert train(**settings(tiny_llama, small_data, out, resume=True))["resumed_from"] == "checkpoint-2"
    assert set(read_manifest(out)) | {MANIFEST_FILE} == listing(out)  # adopted, then recorded


def test_a_failed_run_leaves_no_folder_it_made(tiny_llama, small_data, tmp_path, monkeypatch):
    from mmtune.train import sft

    def broken(self, *a, **kw):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(sft.MMTuneTrainer, "train", broken)
    out = tmp_path / "runs" / "new"
    with pytest.raises(RuntimeError):
        train(**settings(tiny_llama, small_data, out))
    assert not out.exists()

    made = tmp_path / "made-by-user"
    made.mkdir()
    with pytest.raises(RuntimeError):
        train(**settings(tiny_llama, small_data, made))
    assert made.is_dir() and not any(made.iterdir())  # the user's (empty) folder stays, emptied of ours


def test_missing_data_fails_before_the_folder_is_made(tiny_llama, tmp_path):
    out = tmp_path / "x"
    with pytest.raises(UserError, match="missing.jsonl"):
        train(**settings(tiny_llama, tmp_path / "missing.jsonl", out))
    assert not out.exists()
