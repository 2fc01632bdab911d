"""What the server shows without its key (only a bare /health), who may start it on an open address,
and the checkpoint models the checkpoints API advertises answering chats."""

from __future__ import annotations

import shutil
import struct
import zlib

import httpx
import openai
import pytest
from infer.tiny import messages, tiny_adapter, tiny_base
from serve.running import serving

from mmtune.cli import main
from mmtune.serve.app import create_app
from mmtune.serve.pool import build_pool

KEY = "k3y"


@pytest.fixture(scope="module")
def pool():
    return build_pool([str(tiny_base("qwen2"))])


def test_without_the_key_only_a_bare_health_answers(pool):
    with serving(create_app(pool, api_key=KEY)) as url:
        bare = httpx.get(f"{url}/health")
        assert bare.status_code == 200 and bare.json() == {"status": "ok"}
        assert "tiny" not in bare.text
        full = httpx.get(f"{url}/health", headers={"Authorization": f"Bearer {KEY}"}).json()
        assert full["models"] == pool.names and full["running"] == 0
        for path in ("/docs", "/redoc", "/openapi.json", "/v1/models"):
            r = httpx.get(f"{url}{path}")
            assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key", (path, r.text[:200])
        keyed = {"Authorization": f"Bearer {KEY}"}
        assert "/v1/chat/completions" in httpx.get(f"{url}/openapi.json", headers=keyed).json()["paths"]
        assert "swagger" in httpx.get(f"{url}/docs", headers=keyed).text.lower()
        assert httpx.get(f"{url}/redoc", headers=keyed).status_code == 200


def test_without_a_server_key_everything_answers(pool):
    with serving(create_app(pool)) as url:
        assert httpx.get(f"{url}/health").json()["models"] == pool.names
        assert httpx.get(f"{url}/openapi.json").status_code == 200


@pytest.mark.parametrize("command", [["serve", "/no/such/model", "--no-jobs"], ["jobs", "serve"]])
def test_an_open_address_without_a_key_refuses_to_start(command, capsys, monkeypatch, tmp_path):
    monkeypatch.delenv("MMTUNE_API_KEY", raising=False)
    monkeypatch.setenv("MMTUNE_HOME", str(tmp_path))
    assert main([*command, "--host", "0.0.0.0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--api-key" in err[0] and "--insecure-no-key" in err[0], err


def test_the_exposure_rule():
    from mmtune.commands.serve import check_exposure
    from mmtune.errors import UserError

    for host in ("127.0.0.1", "localhost", "::1", "127.0.0.5"):
        check_exposure(host, None, False)
    check_exposure("0.0.0.0", "key", False)
    check_exposure("0.0.0.0", None, True)
    for host in ("0.0.0.0", "::", "192.168.1.4", "example.org"):
        with pytest.raises(UserError):
            check_exposure(host, None, False)


def test_a_checkpoint_name_the_api_advertises_answers_a_chat(tmp_path):
    from mmtune.jobs.service import JobService, Settings, checkpoint_name
    from mmtune.jobs.store import new_id, now

    service = JobService(tmp_path / "jobs", Settings(concurrency=0))
    job_id = new_id("job")
    service.store.add_file("file-" + "a" * 24, "d.jsonl", "fine-tune", 1, "file-" + "a" * 24 + ".jsonl")
    service.store.add_job({"id": job_id, "model": str(tiny_base("qwen2")), "training_file": "file-" + "a" * 24,
                           "suffix": "ck", "seed": 1, "params": {}})
    output = service.layout.output(job_id)
    shutil.copytree(tiny_adapter("qwen2", 5), output / "checkpoint-2")
    (output / "checkpoint-2" / "mmtune.json").unlink()  # a Trainer checkpoint: PEFT's files only
    service.store.sync_checkpoints(job_id, {2: ("checkpoint-2", {"step": 2})})
    job = service.store.get_job(job_id)
    service.store.update_job(job_id, status="running", started_at=now())
    advertised = service.list_checkpoints(job_id)["data"][0]["fine_tuned_model_checkpoint"]
    assert advertised == checkpoint_name(job, 2)

    from mmtune.commands.serve import jobs_extension

    pool = build_pool([str(tiny_base("qwen2"))])
    app = create_app(pool, **jobs_extension(service, pool))
    with serving(app) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0)
        assert advertised in [m.id for m in client.models.list()]
        r = client.chat.completions.create(model=advertised, messages=messages(), max_tokens=4, temperature=0)
        assert r.choices[0].message.content
        want = pool.engine_for(advertised).chat(messages(), model=advertised, temperature=0, max_new_tokens=4)
        assert r.choices[0].message.content == want


def _png_header(width: int, height: int) -> bytes:
    """A PNG whose header says width x height (its pixels are never there: only the header is read)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    pixels = b"\0" * (height * (1 + 3 * width)) if width * height < 10_000 else b"\0" * 64
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(pixels)) + chunk(b"IEND", b"")


def test_image_limits_are_user_errors_from_the_header():
    import base64
    import time

    from mmtune.data.schema import Message, Part, Sample
    from mmtune.errors import UserError
    from mmtune.infer.media import MediaPolicy, load_media

    def sample(*sizes):
        parts = [Part("image", ref="data:image/png;base64," + base64.b64encode(_png_header(w, h)).decode())
                 for w, h in sizes]
        return Sample([Message("user", [*parts, Part.of_text("what is this?")])])

    policy = MediaPolicy.server(max_images=2, max_image_pixels=40_000_000)
    t = time.perf_counter()
    with pytest.raises(UserError, match=r"--max-image-megapixels.*900000000 pixels"):
        load_media(sample((30000, 30000)), policy)
    with pytest.raises(UserError, match="12000x12000"):
        load_media(sample((12000, 12000)), policy)
    assert time.perf_counter() - t < 1.0  # nothing was decoded
    with pytest.raises(UserError, match="too large to decode safely"):
        load_media(sample((30000, 30000)), MediaPolicy.server(max_image_pixels=None))  # Pillow's own bomb check
    from mmtune.commands.serve import DEFAULT_MAX_IMAGE_MEGAPIXELS, DEFAULT_MAX_IMAGES
    from mmtune.infer.media import SERVER_MAX_IMAGE_PIXELS, SERVER_MAX_IMAGES

    assert (DEFAULT_MAX_IMAGES, DEFAULT_MAX_IMAGE_MEGAPIXELS * 1e6) == (SERVER_MAX_IMAGES, SERVER_MAX_IMAGE_PIXELS)
    assert MediaPolicy.server().max_images == SERVER_MAX_IMAGES  # a library user's server gets them too
    with pytest.raises(UserError, match="3 images.*at most 2.*--max-images"):
        load_media(sample((4, 4), (4, 4), (4, 4)), policy)
