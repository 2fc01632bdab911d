"""Continuous batching (infer/scheduler.py): answers that arrive while others decode join the batch,
and each is exactly what it would be alone."""

from __future__ import annotations

import threading
import time

import pytest
import torch
from infer.tiny import tiny_adapter, tiny_base

from mmtune.infer.cpu_linear import OneDnnLinear
from mmtune.infer.engine import Engine

QUESTIONS = ["Hi", "Tell me about the sea and the sky, please.", "What is two plus two?", "Name a colour.",
             "Write one long sentence about a cat that sleeps all day in the sun."]


def ask(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


@pytest.fixture(scope="module")
def engine():
    e = Engine(str(tiny_base("qwen2")))
    assert e.batches
    return e


def concurrently(engine, jobs: list[dict], stagger: float = 0.02) -> list:
    """Each job's Completion, the jobs started one after another while the earlier ones decode."""
    out: list = [None] * len(jobs)

    def run(i):
        out[i] = engine.complete(**jobs[i])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
        time.sleep(stagger)
    for t in threads:
        t.join(120)
    return out


def test_greedy_and_seeded_answers_equal_one_at_a_time(engine):
    jobs = [dict(messages=ask(q), temperature=0, max_new_tokens=10 + 3 * i) for i, q in enumerate(QUESTIONS)]
    jobs += [dict(messages=ask(q), temperature=1.0, top_k=20, seed=100 + i, max_new_tokens=12)
             for i, q in enumerate(QUESTIONS[:3])]
    jobs.append(dict(messages=ask(QUESTIONS[1]), temperature=0, max_new_tokens=30, stop=["e"]))
    alone = [engine.complete(**j) for j in jobs]
    assert engine._batcher.peak == 1
    if torch.backends.mkldnn.is_available():  # on the CPU fast path (infer/cpu_linear.py) both ways
        assert any(type(m) is OneDnnLinear for m in engine.model.modules())
    together = concurrently(engine, jobs)
    assert engine._batcher.peak >= 3  # they really decoded in one batch
    assert [(c.text, c.finish_reason, c.completion_tokens) for c in together] == [
        (c.text, c.finish_reason, c.completion_tokens) for c in alone]
    assert engine._batcher.running == 0


@pytest.mark.parametrize("budget", [512, 16])
def test_prompts_prefilled_together_or_in_chunks_answer_as_alone(engine, monkeypatch, budget):
    """Prompts that arrive together are prefilled in one left-padded forward; a prompt longer than the
    prefill budget in chunks between decode steps; every greedy answer is still the one-at-a-time one."""
    from mmtune.infer import scheduler

    jobs = [dict(messages=ask(q), temperature=0, max_new_tokens=12) for q in QUESTIONS * 2]
    alone = [engine.complete(**j).text for j in jobs]
    monkeypatch.setattr(scheduler, "PREFILL_TOKENS", budget)
    shapes: list[tuple[int, int, int]] = []  # (rows, tokens, first position) of each multi-token forward

    def hook(module, args, kwargs):
        ids, positions = kwargs["input_ids"], kwargs.get("position_ids")
        if ids.shape[-1] > 1:
            shapes.append((ids.shape[0], ids.shape[-1], int(positions[0, 0]) if positions is not None else 0))

    handle = engine.model.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        together = [c.text for c in concurrently(engine, jobs, stagger=0)]
    finally:
        handle.remove()
    assert together == alone
    if budget == 512:
        assert max(rows for rows, _, _ in shapes) >= 3, shapes  # several prompts in one prefill
    else:
        assert all(rows == 1 and tokens <= 16 for rows, tokens, _ in shapes), shapes
        assert any(start > 0 for _, _, start in shapes), shapes  # a prompt continued in a later chunk


def test_closed_streams_leave_the_batch_and_the_others_finish(engine):
    full = engine.complete(ask(QUESTIONS[4]), temperature=0, max_new_tokens=40).text
    streams = [engine.stream(ask(QUESTIONS[4]), temperature=0, max_new_tokens=40) for _ in range(6)]
    results: dict[int, str] = {}

    def consume(i, s):
        pieces = []
        for piece in s:
            pieces.append(piece)
            if i % 2 and len(pieces) == 2:  # every other client leaves after two pieces
                s.close()
                break
        results[i] = "".join(pieces)

    threads = [threading.Thread(target=consume, args=(i, s)) for i, s in enumerate(streams)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert all(results[i] == full for i in range(0, 6, 2))
    assert all(full.startswith(results[i]) and results[i] != full for i in range(1, 6, 2))
    deadline = time.time() + 10
    while engine._batcher.running and time.time() < deadline:
        time.sleep(0.05)
    assert engine._batcher.running == 0 and not engine._batcher._waiting


def test_a_stream_cancelled_during_its_prefill_runs_no_decode_step(engine):
    """A client that leaves while its prompt is prefilled (the serving test's race) costs no decode step."""
    generation = engine.stream(ask(QUESTIONS[4]), temperature=0, max_new_tokens=40)
    forwards: list[int] = []

    def hook(module, args, kwargs):
        forwards.append(kwargs["input_ids"].shape[-1])
        generation.cancel()  # the client leaves during this forward (the prefill)

    handle = engine.model.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        pieces = list(generation)
    finally:
        handle.remove()
    assert generation.cancelled and len(pieces) <= 1  # (the prefill picks the first token)
    assert len(forwards) == 1 and forwards[0] > 1, forwards  # the prefill only: no one-token decode step
    assert engine._batcher.running == 0


def test_twenty_streams_with_clients_leaving_free_every_slot(engine):
    import asyncio

    import httpx
    from serve.running import serving

    from mmtune.serve.app import create_app
    from mmtune.serve.pool import ModelPool

    body = {"model": engine.name, "messages": ask(QUESTIONS[4]), "temperature": 0, "max_tokens": 40, "stream": True}

    async def client(http, url, leave: bool) -> int:
        chunks = 0
        async with http.stream("POST", f"{url}/v1/chat/completions", json=body) as r:
            async for line in r.aiter_lines():
                chunks += line.startswith("data: ")
                if leave and chunks == 3:
                    break  # the connection closes mid-answer
        return chunks

    async def main(url):
        async with httpx.AsyncClient(timeout=120) as http:
            return await asyncio.gather(*(client(http, url, i % 3 == 0) for i in range(20)))

    engine._batcher.peak = 0
    with serving(create_app(ModelPool([engine]), max_concurrency=20)) as url:
        asyncio.run(main(url))  # once first: what a first run creates for good (thread pools, caches) is made
        deadline = time.time() + 20
        while time.time() < deadline and engine._batcher.running:
            time.sleep(0.1)
        before = live_tensor_bytes()
        chunks = asyncio.run(main(url))
        assert engine._batcher.peak >= 8
        deadline = time.time() + 20
        while time.time() < deadline and (httpx.get(f"{url}/health").json()["running"] or engine._batcher.running):
            time.sleep(0.1)
        assert httpx.get(f"{url}/health").json()["running"] == 0 and engine._batcher.running == 0
        after = live_tensor_bytes()
    assert all(c > 3 for i, c in enumerate(chunks) if i % 3)
    # memory returns to where it was: no KV cache, logits or history of the 20 answers is still held
    # (the tolerance is less than one answer's prompt cache)
    import torch

    with torch.inference_mode():
        ids = torch.tensor([engine.prompt_ids(ask(QUESTIONS[4]))])
        cache = engine.model(input_ids=ids, use_cache=True).past_key_values
    one = sum(layer.keys.nbytes + layer.values.nbytes for layer in cache.layers)
    del cache
    assert after - before < one, (before, after, one)


def live_tensor_bytes() -> int:
    """Bytes of every tensor still referenced from Python (after a full collection)."""
    import gc

    import torch

    gc.collect()
    seen, total = set(), 0
    for obj in gc.get_objects():
        try:
            if isinstance(obj, torch.Tensor) and not isinstance(obj, torch.nn.Parameter):
                storage = obj.untyped_storage()
                if storage.data_ptr() not in seen:
                    seen.add(storage.data_ptr())
                    total += storage.nbytes()
        except Exception:  # noqa: S112  (objects that cannot be inspected are not tensors we hold)
            continue
    return total


def test_two_adapters_and_the_base_decode_in_one_batch_each_with_its_own_weights():
    e = Engine(str(tiny_base("qwen2")), adapters={"a": str(tiny_adapter("qwen2", 1)), "b": str(tiny_adapter("qwen2", 2))})
    names = [e.name, "a", "b"] * 2
    jobs = [dict(messages=ask(QUESTIONS[i % 5]), model=m, temperature=0, max_new_tokens=12) for i, m in enumerate(names)]
    # the reference: the one-answer loop, which switches the active adapter (PeftModel.set_adapter)
    alone = [e.generate_batch([j["messages"]], model=j["model"], temperature=0, max_new_tokens=12)[0] for j in jobs]
    assert len({(c.text) for c in alone[:3]}) == 3  # the adapters do change the answer
    together = concurrently(e, jobs)
    assert e._batcher.peak >= 3
    assert [c.text for c in together] == [c.text for c in alone]
