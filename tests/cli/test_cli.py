"""The CLI as a user meets it: fast start, no torch on the light paths, the JSON report shape."""

import json
import subprocess
import sys
import time

import pytest

from mmtune.cli import COMMANDS, build_parser
from tests.conftest import EXAMPLES

NO_TORCH = """
import sys, runpy
sys.argv = {argv!r}
try:
    runpy.run_module("mmtune.cli", run_name="__main__")
except SystemExit:
    pass
heavy = [m for m in ("torch", "transformers", "peft", "matplotlib") if m in sys.modules]
print("HEAVY:" + ",".join(heavy))
"""


def run(*args):
    return subprocess.run([sys.executable, "-m", "mmtune.cli", *args], capture_output=True, text=True)


@pytest.mark.parametrize("argv", [["mmtune", "--help"], ["mmtune", "data", "check", str(EXAMPLES / "chat.jsonl")],
                                  ["mmtune", "train", "--help"]])
def test_light_paths_import_no_torch(argv):
    out = subprocess.run([sys.executable, "-c", NO_TORCH.format(argv=argv)], capture_output=True, text=True)
    assert "HEAVY:\n" in out.stdout, out.stdout + out.stderr


def test_help_and_check_start_in_under_a_second():
    for args in (["--help"], ["data", "check", str(EXAMPLES / "chat.jsonl")]):
        best = min(_timed(args) for _ in range(3))
        assert best < 1.0, f"mmtune {' '.join(args)} took {best:.2f}s"


def _timed(args):
    t = time.perf_counter()
    run(*args)
    return time.perf_counter() - t


def test_every_command_registers():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert set(COMMANDS) <= set(sub.choices)


def test_check_exit_codes_and_json_shape(tmp_path):
    assert run("data", "check", str(EXAMPLES / "chat.jsonl")).returncode == 0
    bad = run("data", "check", str(EXAMPLES / "bad.jsonl"), "--json")
    assert bad.returncode == 2
    report = json.loads(bad.stdout)
    assert set(report) == {"files", "errors", "warnings"}
    (f,) = report["files"]
    assert set(f) == {"path", "format", "kind", "rows", "findings"} and f["format"] == "openai" and f["rows"] == 10
    assert f["kind"] == "sft"
    assert report["errors"] == sum(x["severity"] == "error" for x in f["findings"]) == 7
    assert all(set(x) == {"severity", "line", "field", "rule", "message"} for x in f["findings"])
    warn_only = tmp_path / "w.jsonl"
    warn_only.write_text('{"messages": [{"role": "user", "content": "hi "}, {"role": "assistant", "content": "hello"}]}\n')
    assert run("data", "check", str(warn_only)).returncode == 0
    assert run("data", "check", str(warn_only), "--fail-on-warnings").returncode == 1


def test_check_several_files_in_one_report():
    out = run("data", "check", str(EXAMPLES / "swift.jsonl"), str(EXAMPLES / "llava.json"), "--json")
    report = json.loads(out.stdout)
    assert [f["format"] for f in report["files"]] == ["swift", "llava"] and out.returncode == 0


def test_missing_file_is_a_clear_error():
    out = run("data", "check", "nope.jsonl")
    assert out.returncode == 2 and "nope.jsonl: no such file" in out.stderr and "Traceback" not in out.stderr


def test_convert_split_stats_commands(tmp_path):
    out = run("data", "convert", str(EXAMPLES / "llava.json"), str(tmp_path / "o.jsonl"), "--to", "openai")
    assert out.returncode == 0 and "converted 4 rows" in out.stdout
    lossy = run("data", "convert", str(EXAMPLES / "chat.jsonl"), str(tmp_path / "a.json"), "--to", "alpaca")
    assert lossy.returncode == 2 and "--lossy" in lossy.stderr
    out = run("data", "split", str(EXAMPLES / "persona.jsonl"), "--out-dir", str(tmp_path), "--val-ratio", "0.25")
    assert out.returncode == 0 and "(6 rows)" in out.stdout
    st = json.loads(run("data", "stats", str(EXAMPLES / "swift.jsonl"), "--json").stdout)
    assert st["rows"] == 5 and st["images"] == 5


def test_list_flags_take_several_values():
    """`--data a.jsonl b.jsonl` and `--report-to tensorboard wandb` (list fields that are not Optional) once
    took one value only: argparse refused the second as an unrecognized argument."""
    from mmtune.cli import build_parser
    from mmtune.commands.train import config_from_args

    args = build_parser().parse_args(["train", "--data", "a.jsonl", "b.jsonl", "--val-data", "v.jsonl",
                                      "--report-to", "tensorboard", "wandb", "--output", "o"])
    cfg = config_from_args(args, validate=False)
    assert cfg.data == ["a.jsonl", "b.jsonl"] and cfg.val_data == ["v.jsonl"]
    assert cfg.report_to == ["tensorboard", "wandb"]
