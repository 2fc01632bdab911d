"""The OpenAI-compatible server, driven by the official `openai` client over real HTTP."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import openai
import pytest
from infer.tiny import messages, tiny_adapter
from serve.running import serving

from mmtune.export.merge import merge_adapter
from mmtune.serve.app import create_app
from mmtune.serve.pool import build_pool

KEY = "test-key"
A, B, BASE = "adapter-qwen2-1", "b", "tiny-qwen2"
GREEDY = {"temperature": 0, "max_tokens": 8}


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    merged = merge_adapter(tiny_adapter("qwen2", 1), tmp_path_factory.mktemp("srv") / "merged")
    a, b = tiny_adapter("qwen2", 1), tiny_adapter("qwen2", 2)
    return build_pool([str(a), f"b={b}", f"merged={merged}"])


@pytest.fixture(scope="module")
def url(pool):
    app = create_app(pool, api_key=KEY, max_concurrency=3, max_body_bytes=20_000)
    with serving(app) as base:
        yield base


@pytest.fixture(scope="module")
def client(url):
    return openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0)


def expected(pool, model, msgs=None, **gen):
    return pool.engine_for(model).chat(
        msgs or messages(), model=model, **{"temperature": 0, "max_new_tokens": 8, **gen}
    )


def test_models_lists_every_name(client):
    cards = client.models.list().data
    assert sorted(m.id for m in cards) == sorted([BASE, A, B, "merged"])
    # OpenAI's fields as OpenAI has them, and mmtune's kind beside them (the studio offers chat by it)
    assert {(m.object, m.owned_by, m.mmtune["kind"]) for m in cards} == {("model", "mmtune", "text")}
    assert client.models.retrieve(A).mmtune == {"kind": "text"}


def test_non_streaming_answer_and_usage(client, pool):
    r = client.chat.completions.create(model=A, messages=messages(), **GREEDY)
    assert r.choices[0].message.content == expected(pool, A)
    assert r.choices[0].finish_reason == "length" and r.object == "chat.completion"
    prompt = len(pool.engine_for(A).prompt_ids(messages(), A))
    assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == (prompt, 8, prompt + 8)


def test_streaming_chunks_join_to_the_answer(client, pool):
    stream = client.chat.completions.create(
        model=A, messages=messages(), stream=True, stream_options={"include_usage": True}, **GREEDY
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == expected(pool, A)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage.completion_tokens == 8 and not chunks[-1].choices


def test_raw_stream_ends_with_done(url):
    body = {"model": A, "messages": messages(), "stream": True, **GREEDY}
    with httpx.stream(
        "POST", f"{url}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {KEY}"}
    ) as r:
        lines = [ln for ln in r.iter_lines() if ln]
    assert r.headers["content-type"].startswith("text/event-stream")
    assert lines[-1] == "data: [DONE]" and all(ln.startswith("data: ") for ln in lines)
    assert json.loads(lines[0][6:])["object"] == "chat.completion.chunk"


def test_model_picks_the_adapter_and_merged_equals_adapter(client, pool):
    answers = {
        m: client.chat.completions.create(model=m, messages=messages(), **GREEDY).choices[0].message.content
        for m in (A, B, BASE, "merged")
    }
    assert answers[A] != answers[B] != answers[BASE]
    assert answers[B] == expected(pool, B) and answers[BASE] == expected(pool, BASE)
    assert answers["merged"] == answers[A]


def test_stop_seed_and_n(client, pool):
    full = expected(pool, A)
    r = client.chat.completions.create(model=A, messages=messages(), stop=[full[4:8]], **GREEDY)
    assert (
        r.choices[0].message.content == full[: full.find(full[4:8])] and r.choices[0].finish_reason == "stop"
    )
    sampled = {"temperature": 1.0, "top_p": 0.95, "max_tokens": 6, "seed": 11, "n": 2}
    r1 = client.chat.completions.create(model=A, messages=messages(), **sampled)
    r2 = client.chat.completions.create(model=A, messages=messages(), **sampled)
    assert [c.message.content for c in r1.choices] == [c.message.content for c in r2.choices]
    assert len(r1.choices) == 2 and r1.usage.completion_tokens == 12


def test_errors_are_openai_errors(client, url):
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.chat.completions.create(model="nope", messages=messages())
    with pytest.raises(openai.BadRequestError, match="temperature"):
        client.chat.completions.create(model=A, messages=messages(), temperature=5)
    with pytest.raises(openai.BadRequestError, match="n must be"):
        client.chat.completions.create(model=A, messages=messages(), n=0)
    with pytest.raises(openai.BadRequestError, match="role"):
        client.chat.completions.create(model=A, messages=[{"role": "wizard", "content": "hi"}])
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{url}/v1", api_key="wrong", max_retries=0).models.list()
    r = httpx.get(f"{url}/v1/models")
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    with pytest.raises(openai.APIStatusError) as e:
        client.chat.completions.create(model=A, messages=messages("x" * 30_000))
    assert e.value.status_code == 413 and "--max-request-mb" in str(e.value)
    chunked = httpx.post(
        f"{url}/v1/chat/completions",
        content=iter([b"{" + b" " * 30_000 + b"}"]),
        headers={"Authorization": f"Bearer {KEY}"},
    )
    assert chunked.status_code == 413 and "error" in chunked.json()
    assert httpx.get(f"{url}/health").json()["status"] == "ok"


def test_twenty_concurrent_streams_all_complete(url, pool):
    models = [A, B, BASE, "merged"]
    prompts = [messages(f"Question number {i}?") for i in range(20)]
    want = [expected(pool, models[i % 4], prompts[i], max_new_tokens=6) for i in range(20)]
    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0, timeout=300)

    async def one(i):
        stream = await client.chat.completions.create(
            model=models[i % 4], messages=prompts[i], stream=True, temperature=0, max_tokens=6
        )
        return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])

    async def health_while_busy(done: asyncio.Event):
        """/health polled all through the run: what it saw, and its slowest answer."""
        seen, slowest = [], 0.0
        async with httpx.AsyncClient(headers={"Authorization": f"Bearer {KEY}"}) as h:
            while not done.is_set():
                t = time.perf_counter()
                seen.append((await h.get(f"{url}/health")).json())
                slowest = max(slowest, time.perf_counter() - t)
                await asyncio.sleep(0.01)
        return seen, slowest

    async def main():
        done = asyncio.Event()
        watcher = asyncio.create_task(health_while_busy(done))
        results = await asyncio.gather(*(one(i) for i in range(20)))
        done.set()
        return results, await watcher

    got, (seen, latency) = asyncio.run(main())
    assert got == want
    assert max(b["running"] for b in seen) == 3  # never more than --max-concurrency at once...
    assert any(b["running"] == 3 and b["waiting"] > 0 for b in seen)  # ...the queue held the rest, none dropped
    assert latency < 2.0  # the event loop is not blocked by generation


def test_request_size_flag(capsys):
    """--max-request-mb sets the body limit (default 20 MiB: a base64 phone photo fits); a bad value
    fails before any model loads."""
    from mmtune.cli import main
    from mmtune.commands.serve import body_limit
    from mmtune.serve.app import MAX_BODY_BYTES

    assert body_limit(None) == MAX_BODY_BYTES == 20 * 2**20 and body_limit(1.5) == 3 * 2**19
    assert main(["serve", "/nonexistent/model", "--max-request-mb", "0"]) == 2
    assert "--max-request-mb must be > 0" in capsys.readouterr().err

