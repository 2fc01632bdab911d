"""Every command checks what it was given before any model loads: a missing file, a model that
cannot be had (offline, not cached) and a bad folder each end in ONE line naming the fix and
exit status 2, within 5 s, without a traceback (`mmtune --debug` shows one for unexpected errors).

Run as a user runs it: subprocesses of the installed `mmtune` script with this checkout's source."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from mmtune import cli
from tests.conftest import EXAMPLES, ROOT

MMTUNE = Path(sys.executable).with_name("mmtune")
PERSONA = str(EXAMPLES / "persona.jsonl")
PEERS = ROOT / "tests" / "fixtures" / "peers"
UNCACHED = "Qwen/Qwen2.5-0.5B-Instruct"  # a real hub id, never in the test machine's (empty) cache


@pytest.fixture()
def home(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("home")


@pytest.fixture()
def env(tmp_path, home):
    """Offline, an empty Hugging Face cache and a home folder of our own."""
    return {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
            "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "HOME": str(home)}


def mmtune(env: dict, *args: str, cwd: Path | None = None) -> tuple[subprocess.CompletedProcess, float]:
    t = time.perf_counter()
    out = subprocess.run([str(MMTUNE), *args], env=env, capture_output=True, text=True, timeout=120, cwd=cwd)
    return out, time.perf_counter() - t


def assert_one_line_error(out: subprocess.CompletedProcess, took: float, *words: str) -> str:
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert "Traceback" not in out.stderr + out.stdout, out.stderr
    assert out.returncode == 2, (out.returncode, out.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: "), out.stderr
    assert took < 5.0, f"took {took:.1f} s: {lines[0]}"
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def fake_adapter(folder: Path, base: str) -> Path:
    """An adapter folder as PEFT writes it (weights are never read: the checks refuse first)."""
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": base,
                                                            "peft_type": "LORA"}))
    (folder / "adapter_model.safetensors").write_bytes(b"")
    return folder


def cases(tmp: Path, home: Path) -> dict[str, tuple[list[str], tuple[str, ...]]]:
    """name -> (arguments, words the one error line must hold)."""
    missing = str(tmp / "missing.jsonl")
    users = tmp / "users"  # a folder with the user's own files
    users.mkdir()
    (users / "README.md").write_text("mine")
    empty = tmp / "empty"
    empty.mkdir()
    adapter = fake_adapter(tmp / "run", "smollm2-135m-instruct")
    uncached_adapter = fake_adapter(tmp / "run-uncached", UNCACHED)
    home = str(home)
    o1, preds, gguf = str(tmp / "o1"), str(tmp / "p.jsonl"), str(tmp / "x.gguf")
    unfinished = tmp / "unfinished"  # a run still training: checkpoints, no model yet
    (unfinished / "checkpoint-2").mkdir(parents=True)
    (unfinished / "checkpoint-2" / "trainer_state.json").write_text("{}")
    return {
        # train
        "train missing data": (["train", "--data", missing, "--output", o1], ("missing.jsonl", "--data")),
        "train missing val": (["train", "--data", PERSONA, "--val-data", missing, "--output", o1],
                              ("missing.jsonl", "--val-data")),
        "train missing config": (["train", "--config", str(tmp / "nope.yaml")], ("nope.yaml",)),
        "train uncached model": (["train", "--data", PERSONA, "--model", UNCACHED, "--output", o1],
                                 (UNCACHED, "HF_HUB_OFFLINE")),
        "train registry model": (["train", "--data", PERSONA, "--model", "qwen2.5-0.5b-instruct", "--output",
                                  str(tmp / "o1")], ("qwen2.5-0.5b-instruct", "HF_HUB_OFFLINE")),
        "train no such model": (["train", "--data", PERSONA, "--model", "no-such-model", "--output",
                                 str(tmp / "o1")], ("no-such-model",)),
        "train system folder": (["train", "--data", PERSONA, "--output", "/etc"], ("/etc", "--output")),
        "train home folder": (["train", "--data", PERSONA, "--output", home], ("--output",)),
        "train root": (["train", "--data", PERSONA, "--output", "/"], ("--output",)),
        "train user files": (["train", "--data", PERSONA, "--output", str(users)], ("README.md", "--output")),
        "train user files overwrite": (["train", "--data", PERSONA, "--output", str(users), "--overwrite"],
                                       ("README.md",)),
        "train resume nothing": (["train", "--data", PERSONA, "--output", str(empty), "--resume"],
                                 ("--resume",)),
        # merge
        "merge missing adapter": (["merge", "--adapter", str(tmp / "nope")], ("nope",)),
        "merge not an adapter": (["merge", "--adapter", str(empty)], ("adapter",)),
        "merge uncached base": (["merge", "--adapter", str(uncached_adapter)], (UNCACHED, "HF_HUB_OFFLINE")),
        "merge system folder": (["merge", "--adapter", str(adapter), "--out", "/usr"], ("/usr", "--out")),
        "merge user files": (["merge", "--adapter", str(adapter), "--out", str(users)], ("--out",)),
        # export
        "export missing gguf": (["export", str(tmp / "nope.gguf"), "--out", gguf], ("nope.gguf",)),
        "export uncached model": (["export", UNCACHED, "--out", gguf], (UNCACHED, "HF_HUB_OFFLINE")),
        "export system folder": (["export", str(adapter), "--out", "/etc/x.gguf"], ("/etc", "--out")),
        "export out is a folder": (["export", str(adapter), "--out", str(empty)], ("--out",)),
        # chat
        "chat missing folder": (["chat", str(tmp / "nope")], ("nope",)),
        "chat no such model": (["chat", "no-such-model"], ("no-such-model",)),
        "chat uncached model": (["chat", UNCACHED], (UNCACHED, "HF_HUB_OFFLINE")),
        "chat not a model folder": (["chat", str(empty)], ("config.json",)),
        "chat uncached adapter base": (["chat", str(uncached_adapter)], (UNCACHED,)),
        "chat unfinished run": (["chat", str(unfinished)], ("checkpoint-2", "--resume")),
        # infer
        "infer missing data": (["infer", "--data", missing, "--out", preds], ("missing.jsonl",)),
        "infer uncached model": (["infer", UNCACHED, "--data", PERSONA, "--out", str(tmp / "p.jsonl")],
                                 (UNCACHED, "HF_HUB_OFFLINE")),
        "infer out is a folder": (["infer", "--data", PERSONA, "--out", str(empty)], ("--out",)),
        "infer system folder": (["infer", "--data", PERSONA, "--out", "/etc/preds.jsonl"], ("/etc", "--out")),
        "infer missing media root": (["infer", "--data", PERSONA, "--out", preds, "--media-root",
                                      str(tmp / "nomedia")], ("--media-root", "nomedia")),
        "train missing media root": (["train", "--data", PERSONA, "--output", str(tmp / "o1"), "--media-root",
                                      str(tmp / "nomedia")], ("--media-root", "nomedia")),
        "infer out is the data": (["infer", "--data", PERSONA, "--out", PERSONA], ("--out", "input")),
        # models, demo, data
        "models unknown": (["models", "show", "no-such-model"], ("no-such-model",)),
        "demo missing data": (["demo", "--data", missing, "--output", str(tmp / "d")], ("missing.jsonl",)),
        "demo user files": (["demo", "--data", PERSONA, "--output", str(users)], ("README.md",)),
        "demo home folder": (["demo", "--data", PERSONA, "--output", home], ("--output",)),
        "data check missing": (["data", "check", missing], ("missing.jsonl",)),
        "data convert missing": (["data", "convert", missing, str(tmp / "c.jsonl"), "--to", "openai"],
                                 ("missing.jsonl",)),
        "serve missing folder": (["serve", str(tmp / "no-run"), "--no-jobs"], ("no-run",)),
        "serve uncached model": (["serve", f"tuned={UNCACHED}", "--no-jobs"], (UNCACHED,)),
        "data stats uncached tokenizer": (["data", "stats", PERSONA, "--tokenizer", UNCACHED], (UNCACHED,)),
        "train preference data": (["train", "--data", str(PEERS / "openai_preference.jsonl"), "--output", o1],
                                  ("preference", "--stage dpo")),
    }


with tempfile.TemporaryDirectory() as _scratch:  # the case names, for the ids
    CASES = sorted(cases(Path(_scratch), Path(_scratch)))


@pytest.mark.parametrize("name", CASES)
def test_a_mistake_is_one_line_and_exit_status_2_before_any_model_loads(name, env, tmp_path, home):
    args, words = cases(tmp_path, home)[name]
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    out, took = mmtune(env, *args, cwd=tmp_path)
    assert_one_line_error(out, took, *words)
    after = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")
                   if not p.is_relative_to(tmp_path / "hf"))
    assert after == before, "a refused command left files behind"


def test_chat_with_an_unknown_model_fails_fast_online_too(env, tmp_path):
    """Without HF_HUB_OFFLINE the hub is asked once, with a short timeout (here: no network, or a 404)."""
    online = {k: v for k, v in env.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    out, took = mmtune(online, "chat", "no-such-model", cwd=tmp_path)
    assert_one_line_error(out, took, "no-such-model")


def test_train_with_missing_data_loads_no_model_and_leaves_no_folder(env, tmp_path):
    out, took = mmtune(env, "train", "--data", "missing.jsonl", "--output", "runs/x", cwd=tmp_path)
    assert_one_line_error(out, took, "missing.jsonl")
    assert not (tmp_path / "runs").exists()


def test_an_unreadable_data_file_is_named(env, tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root reads every file")
    data = tmp_path / "secret.jsonl"
    data.write_text("{}\n")
    data.chmod(0)
    out, took = mmtune(env, "train", "--data", str(data), "--output", str(tmp_path / "o"), cwd=tmp_path)
    assert_one_line_error(out, took, "secret.jsonl", "permission")


def test_unexpected_errors_are_one_line_and_a_traceback_only_with_debug(monkeypatch, capsys):
    import mmtune.commands.models as models

    def broken(args):
        raise RuntimeError("something inside broke")

    monkeypatch.setattr(models, "run_list", broken)
    assert cli.main(["models"]) == 1
    err = capsys.readouterr().err
    assert [ln for ln in err.splitlines() if ln.strip()] == [
        "error: RuntimeError: something inside broke (unexpected: run again with `mmtune --debug ...` "
        "to see where, and report it)"]
    with pytest.raises(RuntimeError, match="something inside broke"):
        cli.main(["--debug", "models"])
    with pytest.raises(RuntimeError):
        cli.main(["models", "--debug"])  # after the command too


def test_debug_is_listed_in_help(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    assert "--debug" in capsys.readouterr().out
