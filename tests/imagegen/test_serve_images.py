"""`mmtune serve RUN` for a picture run: `/v1/images/generations` and `/v1/models` through the official openai
client, over real HTTP (uvicorn), on the tiny FLUX pipeline."""

from __future__ import annotations

import base64
import io

import numpy as np
import openai
import pytest
from PIL import Image

from mmtune.imagegen import train as T
from mmtune.imagegen.config import PictureConfig
from tests.helpers.tiny_flux import MAX_T5_TOKENS, save_tiny_flux
from tests.serve.running import serving


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A tiny base and a 2-step run on it, both served by `mmtune serve` (its app, on a real port)."""
    import uvicorn

    from mmtune.cli import main

    root = tmp_path_factory.mktemp("img")
    base = save_tiny_flux(root / "tiny-flux")
    pics = root / "pics"
    pics.mkdir()
    for i, colour in enumerate([(220, 40, 40), (40, 40, 220)]):
        Image.new("RGB", (64, 64), colour).save(pics / f"p{i}.png")
        (pics / f"p{i}.txt").write_text(f"flat colour {i}", encoding="utf-8")
    run = root / "tok"
    cfg = PictureConfig(model=str(base), data=[str(pics)], output=str(run), trigger_word="sks", repeats=1,
                        resolution=16, max_steps=2, save_steps=100, logging_steps=1, sample_steps=1,
                        max_sequence_length=MAX_T5_TOKENS, learning_rate=5e-2, lora_rank=4, lora_alpha=4.0)
    T.train_pictures(cfg)
    apps = []
    original = uvicorn.run
    uvicorn.run = lambda app, **kw: apps.append(app)  # `mmtune serve` builds its app; the test serves it
    try:
        assert main(["serve", str(run), f"base={base}", "--no-jobs", "--api-key", "k"]) == 0
    finally:
        uvicorn.run = original
    with serving(apps[0]) as url:
        yield openai.OpenAI(base_url=f"{url}/v1", api_key="k", max_retries=0), run


def _png(item) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(item.b64_json))))


def test_models_lists_the_picture_models(served):
    client, run = served
    cards = client.models.list().data
    assert [m.id for m in cards] == ["tok", "base"]
    assert [m.mmtune for m in cards] == [{"kind": "image-generation"}] * 2  # no chat offered for them
    tok = client.models.retrieve("tok")
    assert (tok.id, tok.object, tok.mmtune) == ("tok", "model", {"kind": "image-generation"})


def test_images_generate_with_the_official_client(served):
    client, _ = served
    kw = dict(prompt="sks, flat colour", response_format="b64_json", extra_body={"steps": 2, "seed": 5})
    res = client.images.generate(model="tok", n=2, size="32x16", **kw)
    a, b = (_png(d) for d in res.data)
    assert a.shape == (16, 32, 3) and not np.array_equal(a, b)  # seeds 5 and 6
    again = client.images.generate(model="tok", n=1, size="32x16", **kw)
    assert np.array_equal(_png(again.data[0]), a)  # the same seed draws the same picture
    plain = client.images.generate(model="base", n=1, size="32x16", **kw)
    assert not np.array_equal(_png(plain.data[0]), a)  # the LoRA changes the picture
    default = client.images.generate(model="tok", prompt="sks", extra_body={"steps": 1})
    assert _png(default.data[0]).shape == (16, 16, 3)  # the run's training resolution


def test_bad_requests_get_openai_errors(served):
    client, _ = served
    with pytest.raises(openai.NotFoundError, match="not an image-generation model"):
        client.images.generate(model="nope", prompt="x")
    with pytest.raises(openai.BadRequestError, match="response_format must be b64_json"):
        client.images.generate(model="tok", prompt="x", response_format="url")
    with pytest.raises(openai.BadRequestError, match="multiples of 2"):
        client.images.generate(model="tok", prompt="x", size="33x16", extra_body={"steps": 1})
    with pytest.raises(openai.BadRequestError, match="quality is not supported"):
        client.images.generate(model="tok", prompt="x", quality="hd")
    with pytest.raises(openai.BadRequestError, match="n must be an integer from 1 to 10"):
        client.images.generate(model="tok", prompt="x", n=11)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=str(client.base_url), api_key="wrong", max_retries=0).images.generate(
            model="tok", prompt="x")
