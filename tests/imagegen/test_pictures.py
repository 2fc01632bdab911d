"""Picture data (data/pictures.py): every rule fires on its case, with its place and fix; `data check/stats`."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from PIL import Image

from mmtune.data import pictures as P
from mmtune.errors import UserError


def _pic(path, size=(96, 64), colour=(200, 30, 30), mode="RGB"):
    Image.new(mode, size, colour if mode == "RGB" else colour + (128,)).save(path)
    return path


@pytest.fixture
def folder(tmp_path):
    d = tmp_path / "pics"
    d.mkdir()
    for i, colour in enumerate([(200, 30, 30), (30, 200, 30), (30, 30, 200)]):
        _pic(d / f"p{i}.png", colour=colour)
        (d / f"p{i}.txt").write_text(f"a shape number {i}", encoding="utf-8")
    return d


def _rules(ps):
    return {(f.field, f.rule, f.severity) for f in ps.report.findings}


def test_clean_folder_has_pictures_and_captions(folder):
    ps = P.read_pictures(str(folder))
    assert ps.format == "folder" and ps.report.rows == 3
    assert [p.caption for p in ps.pictures] == [f"a shape number {i}" for i in range(3)]
    assert (ps.pictures[0].width, ps.pictures[0].height) == (96, 64)
    assert {f.rule for f in ps.report.findings} == {"small-image"}  # 64 px < 512: a warning only
    assert P.is_picture_data(folder)


def test_folder_rules(folder):
    (folder / "p1.txt").unlink()  # missing caption
    (folder / "p2.txt").write_text("  \n", encoding="utf-8")  # empty caption
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    _pic(folder / "tiny.png", size=(32, 200))
    (folder / "copy.png").write_bytes((folder / "p0.png").read_bytes())
    (folder / "lonely.txt").write_text("no picture", encoding="utf-8")
    (folder / "notes.md").write_text("x", encoding="utf-8")
    (folder / "sub").mkdir()
    _pic(folder / "alpha.png", mode="RGBA")
    (folder / "bad.txt").write_bytes(b"\xff\xfe\xfa")
    _pic(folder / "bad.png")
    rules = _rules(P.read_pictures(str(folder)))
    assert ("p1.png", "missing-caption", "warning") in rules
    assert ("p2.png", "empty-caption", "warning") in rules
    assert ("broken.png", "undecodable-image", "error") in rules
    assert ("tiny.png", "too-small", "error") in rules
    assert ("copy.png", "duplicate-image", "warning") in rules
    assert ("lonely.txt", "orphan-caption", "warning") in rules
    assert ("notes.md", "unknown-file", "warning") in rules
    assert ("sub/", "subfolder-ignored", "warning") in rules
    assert ("alpha.png", "transparency", "warning") in rules
    assert ("bad.txt", "caption-not-utf8", "error") in rules
    with pytest.raises(UserError, match="undecodable-image"):
        P.load_pictures(str(folder))


def test_same_stem_twice_is_ambiguous(folder):
    _pic(folder / "p0.jpg")
    assert ("p0.jpg", "ambiguous-caption", "error") in _rules(P.read_pictures(str(folder)))


def test_jsonl_rules(tmp_path):
    _pic(tmp_path / "a.png")
    rows = [{"image": "a.png", "caption": "red"}, {"image": "gone.png", "caption": "x"}, {"caption": "no image"},
            {"image": "a.png", "caption": 3}, {"image": "a.png", "caption": "c", "extra": 1}]
    f = tmp_path / "pics.jsonl"
    f.write_text("\n".join(json.dumps(r) for r in rows) + "\n{oops\n[1]\n", encoding="utf-8")
    assert P.is_picture_data(f)
    ps = P.read_pictures(str(f))
    found = {(x.line, x.field, x.rule) for x in ps.report.findings}
    assert {(2, "image", "missing-image"), (3, "image", "missing-field"), (4, "caption", "wrong-type"),
            (5, "extra", "unknown-field"), (6, "", "invalid-json"), (7, "", "not-object")} <= found
    assert (4, "image", "duplicate-image") in found  # the same file as line 1
    assert ps.pictures[0].image == tmp_path / "a.png" and ps.pictures[0].caption == "red"


def test_chat_jsonl_is_not_picture_data(tmp_path):
    f = tmp_path / "chat.jsonl"
    f.write_text(json.dumps({"messages": [], "image": "x"}) + "\n", encoding="utf-8")
    assert not P.is_picture_data(f)


def test_strict_hosted_limits(folder, monkeypatch):
    _pic(folder / "shape.bmp")
    assert "unsupported-format" not in {f.rule for f in P.read_pictures(str(folder)).report.findings}
    monkeypatch.setattr(P, "HOSTED_MAX_PICTURES", 3)
    monkeypatch.setattr(P, "HOSTED_MAX_BYTES", 100)
    rules = {f.rule for f in P.read_pictures(str(folder), rules="strict").report.findings if f.is_error}
    assert rules == {"unsupported-format", "too-many-pictures", "too-large"}


def test_empty_folder_is_an_error(tmp_path):
    assert "no-pictures" in {f.rule for f in P.read_pictures(str(tmp_path)).report.findings}


def test_stats(folder):
    _pic(folder / "wide.png", size=(160, 90))
    st = P.picture_stats(str(folder))
    assert st["pictures"] == 4 and st["aspect_ratios"] == {"3:2": 3, "16:9": 1}
    assert st["width"] == {"min": 96, "median": 96.0, "max": 160}
    assert st["captions"]["missing"] == 1 and st["captions"]["words"]["max"] == 4


def _cli(*argv):
    return subprocess.run([sys.executable, "-m", "mmtune.cli", *argv], capture_output=True, text=True)


def test_data_check_and_stats_commands(folder):
    (folder / "p1.txt").unlink()
    _pic(folder / "tiny.png", size=(20, 20))
    r = _cli("data", "check", str(folder))
    assert r.returncode == 2, r.stderr
    assert f"{folder}:0: tiny.png error [too-small]" in r.stdout
    assert "p1.png warning [missing-caption]" in r.stdout
    r = _cli("data", "check", str(folder), "--json")
    report = json.loads(r.stdout)
    assert report["errors"] == 1 and report["files"][0]["format"] == "folder"
    r = _cli("data", "stats", str(folder), "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["pictures"] == 4


NO_TORCH = """
import sys, runpy
sys.argv = {argv!r}
try:
    runpy.run_module("mmtune.cli", run_name="__main__")
except SystemExit:
    pass
heavy = [m for m in ("torch", "transformers", "peft", "diffusers", "matplotlib") if m in sys.modules]
print("HEAVY:" + ",".join(heavy))
"""


@pytest.mark.parametrize("argv", [["data", "check", "{folder}"], ["data", "stats", "{folder}"], ["generate", "--help"],
                                  ["models"], ["train", "--help"]])
def test_picture_light_paths_import_no_torch(argv, folder):
    argv = ["mmtune"] + [a.format(folder=folder) for a in argv]
    out = subprocess.run([sys.executable, "-c", NO_TORCH.format(argv=argv)], capture_output=True, text=True)
    assert "HEAVY:\n" in out.stdout, out.stdout + out.stderr


def test_models_lists_image_generation_models():
    r = _cli("models", "--json")
    entries = {e["name"]: e for e in json.loads(r.stdout)["image_generation_models"]}
    assert set(entries) == {"flux.1-dev", "flux.1-schnell"}
    dev = entries["flux.1-dev"]
    assert dev["kind"] == "image-generation" and dev["guidance_embeds"] and not entries["flux.1-schnell"]["guidance_embeds"]
    assert 20 < dev["memory_gib"]["lora_train"] < dev["memory_gib"]["generate_all_resident"] < 40
    r = subprocess.run([sys.executable, "-m", "mmtune.cli", "models"], capture_output=True, text=True,
                       env={**os.environ, "COLUMNS": "250"})
    assert "image-generation models" in r.stdout and "black-forest-labs/FLUX.1-schnell" in r.stdout
    r = _cli("models", "show", "flux-dev", "--json")
    assert json.loads(r.stdout)["hf_path"] == "black-forest-labs/FLUX.1-dev"
