"""A vision training file uploaded as a zip (data file + images): unpacked and checked on upload, read
by the rest of the service like any upload; unsafe or incomplete zips refused with the entry and fix."""

from __future__ import annotations

import io
import json
import stat
import zipfile

import pytest
from fastapi.testclient import TestClient

from mmtune.jobs import media_zip
from mmtune.jobs.api import create_jobs_router
from mmtune.jobs.service import JobService, Settings
from mmtune.jobs.studio import create_studio_router
from mmtune.serve.app import create_app
from mmtune.serve.pool import ModelPool

KEY = "zip-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    service = JobService(tmp_path_factory.mktemp("zip-data"), Settings(concurrency=0))
    service.start()
    app = create_app(ModelPool(), api_key=KEY, routers=(create_jobs_router(service), create_studio_router(service)),
                     unlimited_paths=("/v1/files",))
    c = TestClient(app)
    c.service = service
    yield c
    service.close()


def png(colour=(200, 30, 30)) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (16, 12), colour).save(buf, format="PNG")
    return buf.getvalue()


def row(image: str, answer: str) -> dict:
    return {"messages": [{"role": "user", "content": [{"type": "text", "text": "What colour is this?"},
                                                      {"type": "image_url", "image_url": {"url": image}}]},
                         {"role": "assistant", "content": answer}]}


def make_zip(entries: dict[str, bytes], links: tuple[str, ...] = ()) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
        for name in links:
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, "/etc/passwd")
    return buf.getvalue()


def data(*rows: dict) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def post(client, content: bytes, name: str = "colours.zip"):
    return client.post("/v1/files", headers=AUTH, files={"file": (name, content)}, data={"purpose": "fine-tune"})


def leftovers(client) -> set[str]:
    return {p.name for p in client.service.layout.files.iterdir()}


def test_a_zip_of_jsonl_and_images_is_a_training_file_checked_like_any(client):
    before = leftovers(client)
    content = make_zip({"colours/train.jsonl": data(row("images/red.png", "Red."), row("images/blue.png", "Blue.")),
                        "colours/images/red.png": png(), "colours/images/blue.png": png((20, 40, 220)),
                        "__MACOSX/colours/._train.jsonl": b"\x00junk", "colours/.DS_Store": b"junk"})
    r = post(client, content)
    assert r.status_code == 200, r.text
    f = r.json()
    assert f["filename"] == "colours.zip" and f["bytes"] == len(content)
    folder = client.service.layout.files / f["id"]
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()) == [
        "images/blue.png", "images/red.png", "train.jsonl"]  # the top folder and macOS junk left out
    assert leftovers(client) - before == {f["id"]}  # the zip itself is not kept: all of it is unpacked
    check = client.get(f"/v1/files/{f['id']}/check?rules=default", headers=AUTH).json()
    assert (check["rows"], check["errors"], check["format"]) == (2, 0, "openai"), check
    lines = client.get(f"/v1/files/{f['id']}/lines?line=1", headers=AUTH).json()["data"]
    assert json.loads(lines[0]["text"]) == row("images/red.png", "Red.")
    path, _ = client.service.file_content(f["id"])
    assert path == folder / "train.jsonl"
    assert client.delete(f"/v1/files/{f['id']}", headers=AUTH).json()["deleted"] is True
    assert not folder.exists() and leftovers(client) == before


@pytest.mark.parametrize("entries, links, code, words", [
    ({"train.jsonl": data(row("../evil.png", "x")), "../evil.png": png()}, (), "unsafe_zip_entry", "'..'"),
    ({"train.jsonl": data(row("/etc/x.png", "x")), "/abs.png": png()}, (), "unsafe_zip_entry", "absolute"),
    ({"train.jsonl": data(row("img\\a.png", "x")), "img\\a.png": png()}, (), "unsafe_zip_entry", "backslash"),
    ({"train.jsonl": data(row("a.png", "x"))}, ("a.png",), "unsafe_zip_entry", "symbolic link"),
    ({"images/a.png": png()}, (), "zip_without_data", "no .jsonl or .json"),
    ({"a.jsonl": data(), "b.jsonl": data()}, (), "zip_without_data", "2 data files"),
    ({"train.jsonl": data(row("images/red.png", "Red."), row("images/gone.png", "Gone.")), "images/red.png": png()},
     (), "zip_media_missing", "line 2 messages[0]: 'images/gone.png' is not in the zip"),
    ({"train.jsonl": data(row("images/bad.png", "x")), "images/bad.png": b"not a png"}, (), "zip_media_missing",
     "does not decode"),
])
def test_unsafe_or_incomplete_zips_are_refused_naming_the_entry_and_leave_nothing(client, entries, links, code, words):
    before = leftovers(client)
    r = post(client, make_zip(entries, links))
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == "file" and err["code"] == code and words in err["message"], err
    assert leftovers(client) == before
    assert not any(p.name == "evil.png" for p in client.service.layout.root.rglob("*"))


def test_a_zip_too_large_or_not_a_zip_is_refused(client, monkeypatch):
    before = leftovers(client)
    r = post(client, b"PK\x03\x04 but no zip")
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_zip"
    monkeypatch.setattr(media_zip, "MAX_UNPACKED_BYTES", 1000)
    r = post(client, make_zip({"train.jsonl": data(row("a.png", "x")), "a.png": b"\0" * 5000}))
    assert r.status_code == 400 and r.json()["error"]["code"] == "zip_too_large"
    assert "at most" in r.json()["error"]["message"] and leftovers(client) == before


def test_unsafe_names():
    assert media_zip.unsafe_name("images/a.png") is None
    for bad in ("../a", "a/../../b", "/a", "C:/a", "a\\b", "a\x00b"):
        assert media_zip.unsafe_name(bad), bad
