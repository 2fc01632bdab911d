"""The server with a vision model: OpenAI `image_url` parts, and which references it accepts."""

from __future__ import annotations

import contextlib
import functools
import http.server
import threading

import openai
import pytest
from infer.tiny import tiny_base
from infer.tiny_vision import data_url, image_file, image_messages, lively_vlm
from serve.running import serving

from mmtune.infer.media import MediaPolicy
from mmtune.serve.app import create_app
from mmtune.serve.pool import build_pool

VLM, TEXT = "vlm", "text"
GREEDY = {"temperature": 0, "max_tokens": 6}


@pytest.fixture(scope="module")
def pool():
    return build_pool([f"{VLM}={lively_vlm('llava')}", f"{TEXT}={tiny_base('qwen2')}"])


@contextlib.contextmanager
def _serve(app):
    with serving(app) as base:
        yield openai.OpenAI(base_url=f"{base}/v1", api_key="none", max_retries=0)


@pytest.fixture(scope="module")
def media_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("served-media")
    image_file(0, root)
    return root


@pytest.fixture(scope="module")
def closed(pool):
    """Default server: data: URLs only."""
    with _serve(create_app(pool, max_body_bytes=100_000)) as client:
        yield client


@pytest.fixture(scope="module")
def opened(pool, media_root):
    """--media-root DIR --allow-remote-media."""
    with _serve(create_app(pool, media=MediaPolicy.server(str(media_root), allow_remote=True))) as client:
        yield client


@pytest.fixture(scope="module")
def remote_url(media_root):
    """An http URL of the image, served by a plain local web server."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(media_root))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/img0.png"
    httpd.shutdown()


def _ask(client, msgs, model=VLM, **gen) -> str:
    return client.chat.completions.create(model=model, messages=msgs, **{**GREEDY, **gen}).choices[0].message.content


def _expected(pool, media_root) -> str:
    msgs = image_messages(str(media_root / "img0.png"))
    return pool.engine_for(VLM).chat(msgs, model=VLM, temperature=0, max_new_tokens=6)


def test_data_url_is_always_accepted(closed, pool, media_root):
    want = _expected(pool, media_root)
    msgs = image_messages(data_url(media_root / "img0.png"))
    assert _ask(closed, msgs) == want
    stream = closed.chat.completions.create(model=VLM, messages=msgs, stream=True, **GREEDY)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == want
    other = image_messages(data_url(image_file(1, media_root.parent)))
    assert _ask(closed, other) != want  # the picture matters


def test_local_and_remote_refused_by_default(closed, media_root, remote_url):
    for ref in (str(media_root / "img0.png"), f"file://{media_root / 'img0.png'}", "img0.png"):
        with pytest.raises(openai.BadRequestError, match="--media-root"):
            _ask(closed, image_messages(ref))
    with pytest.raises(openai.BadRequestError, match="--allow-remote-media"):
        _ask(closed, image_messages(remote_url))


def test_media_root_and_remote_when_allowed(opened, pool, media_root, remote_url, tmp_path):
    want = _expected(pool, media_root)
    assert _ask(opened, image_messages("img0.png")) == want  # relative to the media root
    assert _ask(opened, image_messages(f"file://{media_root / 'img0.png'}")) == want
    assert _ask(opened, image_messages(remote_url)) == want  # downloaded
    outside = image_file(2, tmp_path)
    for ref in (str(outside), "../" + outside.name):
        with pytest.raises(openai.BadRequestError, match="outside the media root"):
            _ask(opened, image_messages(ref))
    with pytest.raises(openai.BadRequestError, match="does not exist"):
        _ask(opened, image_messages("missing.png"))


def test_body_limit_and_text_models(closed, media_root):
    big = image_file(9, media_root.parent, size=400)  # a noisy PNG larger than the 100 kB limit
    with pytest.raises(openai.APIStatusError) as e:
        _ask(closed, image_messages(data_url(big)))
    assert e.value.status_code == 413
    with pytest.raises(openai.BadRequestError, match="text model"):
        _ask(closed, image_messages(data_url(media_root / "img0.png")), model=TEXT)
