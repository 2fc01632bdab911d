"""Picture jobs without training: the zip of pictures (each bad zip its own error, on upload and on validation),
the picture settings a job takes and refuses, and the runner's config and resume for them."""

from __future__ import annotations

import io
import stat
import warnings
import zipfile
from pathlib import Path

import openai
import pytest
from PIL import Image

from mmtune.imagegen.config import PictureConfig
from mmtune.jobs.params import Limits, ModelRules, parse_create
from mmtune.jobs.pictures import check_picture_zip, unpack, zip_problems
from mmtune.jobs.worker import PICTURE_STATE_FILE, estimate_total_steps, picture_config, scan_checkpoints
from mmtune.models.registry import DEFAULT_MODEL
from tests.jobs.conftest import EXAMPLES


def png(size=(64, 64), colour=(200, 40, 40)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    return buf.getvalue()


def make_zip(path: Path, entries: dict[str, bytes], **kw) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return path


def good_entries(n=2, folder="") -> dict[str, bytes]:
    out = {}
    for i in range(n):
        out[f"{folder}p{i}.png"] = png(colour=(40 * i, 100, 200))
        out[f"{folder}p{i}.txt"] = f"a flat colour {i}".encode()
    return out


def patch_entry(path: Path, name: str, local: int, central: int, value: int, width: int) -> None:
    """Overwrite a field of `name`'s local header and central directory record (a forged zip)."""
    raw = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as zf:
        at = zf.getinfo(name).header_offset
    raw[at + local:at + local + width] = value.to_bytes(width, "little")
    key = name.encode()
    record = next(i for i in range(len(raw) - 46) if raw[i:i + 4] == b"PK\x01\x02"
                  and raw[i + 46:i + 46 + len(key)] == key)
    raw[record + central:record + central + width] = value.to_bytes(width, "little")
    path.write_bytes(bytes(raw))


def rules_of(path: Path) -> list[str]:
    return [f["rule"] for f in zip_problems(path)]


# ------------------------------------------------------------------ the zip's directory


def test_a_good_zip_in_one_folder_unpacks_and_checks(tmp_path):
    z = make_zip(tmp_path / "pics.zip", {**good_entries(3, "pictures/"), "__MACOSX/pictures/._p0.png": b"fork"})
    assert zip_problems(z) == []
    check = check_picture_zip(z, tmp_path / "out")
    assert (check["errors"], check["rows"], check["skipped"], check["kind"]) == (0, 3, 1, "pictures")
    assert check["folder"] == str(tmp_path / "out" / "pictures")
    # small pictures (64 px) are a warning of the data layer, named by their entry in the zip
    assert {f["field"] for f in check["findings"] if f["rule"] == "small-image"} == {
        "pictures/p0.png", "pictures/p1.png", "pictures/p2.png"}
    assert sorted(p.name for p in (tmp_path / "out" / "pictures").iterdir()) == [
        "p0.png", "p0.txt", "p1.png", "p1.txt", "p2.png", "p2.txt"]
    assert not (tmp_path / "out" / "__MACOSX").exists()
    assert unpack(z, tmp_path / "out") == (tmp_path / "out" / "pictures", 1)  # kept: unpacked once


def test_not_a_zip(tmp_path):
    bad = tmp_path / "x.zip"
    bad.write_bytes(b"this is text, not a zip")
    problems = zip_problems(bad)
    assert [p["rule"] for p in problems] == ["invalid-zip"] and "zip -r" in problems[0]["message"]


@pytest.mark.parametrize(("name", "why"), [
    ("/etc/cron.d/evil.png", "absolute path"),
    ("../../outside.png", "'..'"),
    ("pics/../../outside.png", "'..'"),
    ("C:/Windows/evil.png", "absolute path"),
    ("pics\\..\\evil.png", "backslash"),
    ("bad\x01name.png", "control characters"),
])
def test_zip_slip_names_are_refused(tmp_path, name, why):
    z = make_zip(tmp_path / "slip.zip", {**good_entries(1), name: png()})
    problems = zip_problems(z)
    assert [p["rule"] for p in problems] == ["unsafe-path"] and why in problems[0]["message"], problems
    check = check_picture_zip(z, tmp_path / "out")
    assert check["errors"] == 1 and not (tmp_path / "out").exists()  # nothing unpacked
    assert not (tmp_path / "outside.png").exists()


def test_a_symbolic_link_is_refused(tmp_path):
    z = tmp_path / "link.zip"
    with zipfile.ZipFile(z, "w") as zf:
        for name, data in good_entries(1).items():
            zf.writestr(name, data)
        link = zipfile.ZipInfo("p9.png")
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(link, "/etc/passwd")
    problems = zip_problems(z)
    assert [p["rule"] for p in problems] == ["unsafe-path"] and "symbolic link" in problems[0]["message"]


def test_encrypted_and_duplicate_entries(tmp_path):
    z = tmp_path / "enc.zip"
    with zipfile.ZipFile(z, "w") as zf, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about the duplicate name
        zf.writestr("p0.png", png())
        zf.writestr("p1.png", png())
        zf.writestr("p1.png", png())
    patch_entry(z, "p0.png", local=6, central=8, value=1, width=2)  # the "encrypted" flag bit
    assert sorted(rules_of(z)) == ["duplicate-entry", "encrypted-entry"]


def test_more_than_100_pictures_is_the_hosted_limit(tmp_path):
    z = make_zip(tmp_path / "many.zip", {f"p{i}.png": b"x" for i in range(101)})
    problems = zip_problems(z)
    assert [p["rule"] for p in problems] == ["too-many-pictures"]
    assert "101 pictures" in problems[0]["message"] and "at most 100" in problems[0]["message"]
    z = make_zip(tmp_path / "files.zip", {f"n{i}.md": b"x" for i in range(1001)})
    assert rules_of(z) == ["too-many-files"]


def test_more_than_300_mb_unpacked_is_refused_from_the_directory(tmp_path):
    """A zip that declares 301 MB unpacked (a zip bomb's directory: zeros deflate ~1000:1) is refused from its
    declared sizes, before a byte is unpacked."""
    z = make_zip(tmp_path / "bomb.zip", {"p0.txt": b"caption", "p0.png": bytes(1 << 16)})
    patch_entry(z, "p0.png", local=22, central=24, value=301_000_000, width=4)
    assert z.stat().st_size < 10_000
    problems = zip_problems(z)
    assert [p["rule"] for p in problems] == ["too-large"]
    assert "301.0 MB" in problems[0]["message"] and "at most 300 MB" in problems[0]["message"]
    check = check_picture_zip(z, tmp_path / "out")
    assert check["errors"] == 1 and not (tmp_path / "out").exists()


def test_a_forged_size_stops_unpacking_at_the_declared_size(tmp_path):
    """A header that declares 10 bytes for 1 MB: unpacking stops there and the entry is an error."""
    z = make_zip(tmp_path / "forged.zip", {"p0.txt": b"caption", "p0.png": bytes(1 << 20)})
    patch_entry(z, "p0.png", local=22, central=24, value=10, width=4)  # the uncompressed size
    assert zip_problems(z) == []  # the directory looks fine
    check = check_picture_zip(z, tmp_path / "out")
    assert check["errors"] == 1 and check["findings"][0]["rule"] in ("corrupt-entry", "size-mismatch")
    assert check["findings"][0]["field"] == "p0.png" and check["folder"] is None
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.tmp").exists()  # nothing left behind


def test_the_data_layer_checks_the_pictures_inside(tmp_path):
    z = make_zip(tmp_path / "bad.zip", {"a.png": png((32, 32)), "a.txt": b"tiny", "b.png": b"not a png",
                                        "b.txt": b"broken", "c.png": png(), "c.bmp": png()})
    check = check_picture_zip(z, tmp_path / "out")
    errors = {(f["field"], f["rule"]) for f in check["findings"] if f["severity"] == "error"}
    assert ("a.png", "too-small") in errors and ("b.png", "undecodable-image") in errors
    assert ("c.bmp", "unsupported-format") in errors  # the hosted (strict) rules: png, jpg, webp
    assert ("c.png", "ambiguous-caption") in errors
    assert check["folder"] is None


# ------------------------------------------------------------------ through the official client


def test_a_bad_zip_upload_is_a_400_and_nothing_is_kept(serve, tmp_path):
    s = serve(concurrency=0)
    z = make_zip(tmp_path / "slip.zip", {**good_entries(1), "../evil.png": png()})
    with pytest.raises(openai.BadRequestError) as e:
        s.upload(z)
    assert e.value.body["code"] == "invalid_file" and "unsafe-path" in e.value.body["message"]
    assert "../evil.png" in e.value.body["message"]
    assert s.client.files.list().data == []
    assert [p.name for p in (s.service.layout.files).iterdir()] == []


def test_picture_job_settings_are_echoed_and_validated(serve, tmp_path):
    s = serve(concurrency=0)
    good = s.upload(make_zip(tmp_path / "pics.zip", good_entries(3)))
    job = s.client.fine_tuning.jobs.create(
        model="flux.1-dev", training_file=good, suffix="tok",
        hyperparameters={"n_epochs": 2, "learning_rate_multiplier": 2.0, "repeats": 4},
        extra_body={"trigger_word": "TOK", "resolution": 512, "sample_prompt": "TOK, a cat", "preset": "fast"})
    own = job.model_extra["mmtune"]
    assert (own["kind"], own["trigger_word"], own["repeats"], own["resolution"]) == ("image-generation", "TOK", 4, 512)
    assert own["learning_rate"] == pytest.approx(8e-4) and own["sample_prompt"] == ["TOK, a cat"]
    assert own["lora_rank"] == 8 and job.method.type == "supervised" and job.hyperparameters.n_epochs == 2
    queued = s.service.wait_job(job.id, 30, ("queued", "failed"))
    assert queued["status"] == "queued", queued["error"]
    assert queued["mmtune"]["total_steps"] == 3 * 4 * 2  # pictures x repeats x epochs / batch 1
    events = [e.message for e in s.client.fine_tuning.jobs.list_events(job.id)]
    assert "3 pictures unpacked and checked" in events
    assert any("small-image" in m for m in events)  # the data layer's warnings, as a warn event
    bad = s.upload(make_zip(tmp_path / "bad.zip", {"a.png": png((32, 32)), "a.txt": b"tiny"}))
    failed = s.service.wait_job(s.client.fine_tuning.jobs.create(model="flux.1-dev", training_file=bad).id, 30)
    assert failed["status"] == "failed" and failed["error"]["code"] == "invalid_training_file"
    assert "a.png" in failed["error"]["message"] and "too-small" in failed["error"]["message"]
    assert "mmtune data check --rules strict" in failed["error"]["message"]


@pytest.mark.parametrize(("model", "file", "body", "param", "words"), [
    ("flux.1-dev", "chat", {}, "training_file", "is not a .zip"),
    (DEFAULT_MODEL, "zip", {}, "training_file", "is a zip of pictures"),
    ("flux.1-dev", "zip", {"extra_body": {"max_length": 512}}, "max_length", "setting of text models"),
    ("flux.1-dev", "zip", {"hyperparameters": {"beta": 0.1}}, "hyperparameters.beta", "setting of text models"),
    (DEFAULT_MODEL, "chat", {"extra_body": {"trigger_word": "TOK"}}, "trigger_word", "image-generation"),
    ("flux.1-dev", "zip", {"method": {"type": "dpo"}}, "method.type", "a picture job is supervised"),
    ("flux.1-dev", "zip", {"extra_body": {"trigger_word": "two words"}}, "trigger_word", "one word"),
    ("flux.1-dev", "zip", {"extra_body": {"repeats": 0}}, "repeats", "from 1 to 1000"),
    ("flux.1-dev", "zip", {"extra_body": {"resolution": 8}}, "resolution", "from 16 to 2048"),
    ("flux.1-dev", "zip", {"extra_body": {"trigger": "TOK"}}, "trigger", "did you mean 'trigger_word'"),
    ("flux.1-dev", "zip", {"validation_file": "zip"}, "validation_file", "no validation_file"),
    ("black-forest-labs/FLUX.1-dev", "zip", {}, "model", "registry name 'flux.1-dev'"),
])
def test_picture_job_refusals(shared, tmp_path, model, file, body, param, words):
    if not hasattr(shared, "zip_id"):
        shared.zip_id = shared.upload(make_zip(tmp_path / "pics.zip", good_entries(1)))
    ids = {"zip": shared.zip_id, "chat": shared.file_id}
    body = dict(body)
    extra = body.pop("extra_body", {})
    if "validation_file" in body:
        body["validation_file"] = ids[body["validation_file"]]
    with pytest.raises(openai.BadRequestError) as e:
        shared.client.fine_tuning.jobs.create(model=model, training_file=ids[file], extra_body=extra, **body)
    assert e.value.body["param"] == param and words in e.value.body["message"], e.value.body


def test_a_local_flux_folder_inside_a_model_root_is_a_picture_model(tmp_path):
    folder = tmp_path / "models" / "flux-tiny"
    (folder / "transformer").mkdir(parents=True)
    (folder / "model_index.json").write_text('{"_class_name": "FluxPipeline"}')
    (folder / "transformer" / "config.json").write_text('{"guidance_embeds": true, "num_layers": 1}')
    rules = ModelRules(roots=(str(tmp_path / "models"),))
    job = parse_create({"model": str(folder), "training_file": "file-abcdefgh1234", "trigger_word": "zkx"},
                       Limits(), lambda fid: {"purpose": "fine-tune"}, rules)
    assert job["model"] == str(folder.resolve()) and job["params"]["mmtune"]["kind"] == "image-generation"
    outside = parse_create.__globals__["picture_model"](str(folder), ModelRules())
    assert outside is None  # outside every root: not a picture model (check_model then refuses the path)


# ------------------------------------------------------------------ the runner's pieces


def test_picture_config_and_resume_from_a_picture_checkpoint(tmp_path):
    job = parse_create({"model": "flux.1-schnell", "training_file": "file-abcdefgh1234", "trigger_word": "TOK",
                        "repeats": 3, "max_steps": 6, "save_steps": 2, "sample_steps": 1, "seed": 9,
                        "hyperparameters": {"batch_size": 2}}, Limits(), lambda fid: {"purpose": "fine-tune"})
    cfg = picture_config(job, tmp_path / "pictures", tmp_path / "out")
    assert isinstance(cfg, PictureConfig)
    assert (cfg.model, cfg.trigger_word, cfg.repeats, cfg.max_steps, cfg.save_steps, cfg.batch_size, cfg.seed) == (
        "flux.1-schnell", "TOK", 3, 6, 2, 2, 9)
    assert cfg.rules == "strict" and cfg.learning_rate == pytest.approx(1e-4) and cfg.data == [str(tmp_path / "pictures")]
    assert estimate_total_steps(job, 5) == 6
    for step, done in ((2, True), (4, False)):
        folder = tmp_path / "out" / f"checkpoint-{step}"
        folder.mkdir(parents=True)
        if done:
            (folder / PICTURE_STATE_FILE).write_text("{}")
    assert scan_checkpoints(tmp_path / "out") == {2: "checkpoint-2"}  # a picture checkpoint, complete


def test_jobs_create_cli_uploads_a_zip_for_a_picture_job(shared, tmp_path, capsys):
    import json

    from mmtune.cli import main

    z = make_zip(tmp_path / "pics.zip", good_entries(2))
    assert main(["jobs", "create", str(z), "--model", "flux.1-schnell", "--trigger-word", "TOK", "--repeats", "3",
                 "--resolution", "256", "--max-steps", "5", "--base-url", shared.base_url, "--json"]) == 0
    job = json.loads(capsys.readouterr().out)
    own = job["mmtune"]
    assert (job["model"], own["trigger_word"], own["repeats"], own["resolution"], own["max_steps"]) == (
        "flux.1-schnell", "TOK", 3, 256, 5)


def test_upload_names(shared):
    with pytest.raises(openai.BadRequestError, match="a .zip of pictures"):
        shared.client.files.create(file=("pics.tar", b"x"), purpose="fine-tune")
    assert EXAMPLES.is_dir()
