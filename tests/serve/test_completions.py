"""`/v1/completions` and chat log-probabilities, through the official `openai` client over real HTTP.

The reference for every log-probability is a plain transformers forward pass over the prompt and
the answer's tokens (no cache, no padding): what an evaluation harness's `hf` backend computes.
"""

from __future__ import annotations

import json

import httpx
import openai
import pytest
import torch
from infer.tiny import messages, tiny_adapter, tiny_base
from serve.running import serving

from mmtune.serve.app import create_app
from mmtune.serve.pool import build_pool

TOL = 2e-4  # float32 rounding between a cached, step-by-step decode and one full forward


@pytest.fixture(scope="module")
def pool():
    return build_pool([str(tiny_base("qwen2")), f"ad={tiny_adapter('qwen2', 1)}"])


@pytest.fixture(scope="module")
def url(pool):
    with serving(create_app(pool, max_concurrency=2)) as base:
        yield base


@pytest.fixture(scope="module")
def client(url):
    return openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0)


@pytest.fixture(scope="module")
def reference():
    """(model, tokenizer) loaded by transformers alone from the same folder."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = tiny_base("qwen2")
    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval(), AutoTokenizer.from_pretrained(folder)


def forward_logprobs(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].float(), -1)


BASE = "tiny-qwen2"
PROMPT = "The quick brown fox jumps over"


def test_echo_logprobs_equal_a_plain_forward_pass(client, reference):
    model, tok = reference
    r = client.completions.create(model=BASE, prompt=PROMPT, echo=True, logprobs=3, max_tokens=5, temperature=0)
    choice = r.choices[0]
    prompt_ids = tok(PROMPT)["input_ids"]
    lp = choice.logprobs
    n_prompt = len(prompt_ids)
    assert len(lp.tokens) == n_prompt + 5 and r.usage.prompt_tokens == n_prompt and r.usage.completion_tokens == 5
    assert choice.text.startswith(PROMPT) and choice.finish_reason == "length"
    generated = [tok.convert_tokens_to_ids(tok.tokenize(t))[0] for t in lp.tokens[n_prompt:]]
    ids = prompt_ids + generated
    assert tok.decode(ids) == choice.text
    ref = forward_logprobs(model, ids)
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    for i in range(1, len(ids)):
        assert lp.token_logprobs[i] == pytest.approx(ref[i - 1, ids[i]].item(), abs=TOL)
        values, top_ids = ref[i - 1].topk(3)
        assert list(lp.top_logprobs[i]) == [tok.decode([t]) for t in top_ids.tolist()]
        assert list(lp.top_logprobs[i].values()) == pytest.approx(values.tolist(), abs=TOL)
    for i in range(n_prompt, len(ids)):  # greedy: each generated token is the top one
        assert ids[i] == ref[i - 1].argmax().item()
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(len(lp.tokens))]


def test_token_id_prompts_max_tokens_zero_scores_without_generating(client, reference):
    model, tok = reference
    rows = [tok("one two three")["input_ids"], tok("a b")["input_ids"]]
    r = client.completions.create(model=BASE, prompt=rows, echo=True, logprobs=0, max_tokens=0)
    assert [c.index for c in r.choices] == [0, 1]
    for row, choice in zip(rows, r.choices):
        assert choice.text == tok.decode(row) and choice.finish_reason == "length"
        ref = forward_logprobs(model, row)
        assert choice.logprobs.token_logprobs[1:] == pytest.approx([ref[i - 1, row[i]].item()
                                                                    for i in range(1, len(row))], abs=TOL)
        assert all(t == {} for t in choice.logprobs.top_logprobs[1:])
    assert r.usage.completion_tokens == 0 and r.usage.prompt_tokens == sum(map(len, rows))


def test_lists_of_prompts_n_seed_stop_and_echo_without_logprobs(client, pool):
    engine = pool.engine_for(BASE)
    opts = {"temperature": 0, "max_new_tokens": 6}
    r = client.completions.create(model=BASE, prompt=["Hello", PROMPT], max_tokens=6, temperature=0, n=2)
    assert [c.index for c in r.choices] == [0, 1, 2, 3]
    for i, text in enumerate(["Hello", PROMPT]):
        want = engine.complete(engine.prepare_ids(engine.encode(text, BASE), BASE), model=BASE, **opts).text
        assert r.choices[2 * i].text == r.choices[2 * i + 1].text == want
        assert r.choices[2 * i].logprobs is None
    sampled = dict(model=BASE, prompt=PROMPT, max_tokens=8, temperature=1.0, seed=7, n=2)
    a, b = client.completions.create(**sampled), client.completions.create(**sampled)
    assert [c.text for c in a.choices] == [c.text for c in b.choices]
    full = r.choices[2].text
    stop = full[2:4]
    cut = client.completions.create(model=BASE, prompt=PROMPT, max_tokens=6, temperature=0, stop=[stop], echo=True)
    assert cut.choices[0].text == PROMPT + full[: full.index(stop)] and cut.choices[0].finish_reason == "stop"


def test_adapter_prompts_score_with_the_adapter(client, pool):
    engine = pool.engine_for("ad")
    ids = engine.encode(PROMPT, "ad")
    base = client.completions.create(model=BASE, prompt=ids, echo=True, logprobs=0, max_tokens=0)
    tuned = client.completions.create(model="ad", prompt=ids, echo=True, logprobs=0, max_tokens=0)
    want = [None, *[e.logprob for e in engine.score(engine.prepare_ids(ids, "ad"))[1:]]]
    assert tuned.choices[0].logprobs.token_logprobs == want
    assert base.choices[0].logprobs.token_logprobs != want


def test_streaming_matches_the_whole_answer(client):
    kwargs = dict(model=BASE, prompt=PROMPT, max_tokens=7, temperature=0, echo=True, logprobs=2)
    whole = client.completions.create(**kwargs).choices[0]
    chunks = list(client.completions.create(stream=True, stream_options={"include_usage": True}, **kwargs))
    pieces = [c.choices[0] for c in chunks if c.choices]
    assert "".join(p.text for p in pieces) == whole.text
    assert pieces[-1].finish_reason == whole.finish_reason
    streamed = [t for p in pieces if p.logprobs for t in p.logprobs.tokens]
    offsets = [o for p in pieces if p.logprobs for o in p.logprobs.text_offset]
    assert streamed == whole.logprobs.tokens and offsets == whole.logprobs.text_offset
    values = [v for p in pieces if p.logprobs for v in p.logprobs.token_logprobs]
    assert values[0] is None and values[1:] == pytest.approx(whole.logprobs.token_logprobs[1:], abs=1e-6)
    assert chunks[-1].usage.completion_tokens == 7


def test_chat_logprobs_equal_a_plain_forward_pass(client, pool, reference):
    model, tok = reference
    engine = pool.engine_for(BASE)
    r = client.chat.completions.create(model=BASE, messages=messages(), max_tokens=6, temperature=0,
                                       logprobs=True, top_logprobs=2)
    content = r.choices[0].logprobs.content
    assert len(content) == 6 and "".join(c.token for c in content) == r.choices[0].message.content
    prompt = engine.prompt_ids(messages(), BASE)
    generated = engine.complete(messages(), model=BASE, temperature=0, max_new_tokens=6).tokens
    assert tok.decode(generated) == r.choices[0].message.content
    ids = prompt + list(generated)
    ref = forward_logprobs(model, ids)
    for k, c in enumerate(content):
        pos = len(prompt) + k
        assert c.logprob == pytest.approx(ref[pos - 1, ids[pos]].item(), abs=TOL)
        assert c.bytes == list(c.token.encode()) and len(c.top_logprobs) == 2
        assert c.top_logprobs[0].logprob == pytest.approx(ref[pos - 1].max().item(), abs=TOL)
    stream = client.chat.completions.create(model=BASE, messages=messages(), max_tokens=6, temperature=0,
                                            logprobs=True, top_logprobs=2, stream=True)
    streamed = [t for ch in stream for t in ((ch.choices[0].logprobs.content or []) if ch.choices[0].logprobs else [])]
    assert [(t.token, t.logprob) for t in streamed] == [(t.token, t.logprob) for t in content]
    plain = client.chat.completions.create(model=BASE, messages=messages(), max_tokens=3, temperature=0)
    assert plain.choices[0].logprobs is None


@pytest.mark.parametrize(("body", "param", "words"), [
    ({"prompt": {"a": 1}}, "prompt", "must be a string"),
    ({"prompt": []}, "prompt", "must be a string"),
    ({"prompt": [[1, 2], []]}, "prompt", "must be a string"),
    ({"prompt": [10**9]}, "prompt", "not in this model's vocabulary"),
    ({"prompt": "hi " * 3000}, "prompt", "context"),
    ({"prompt": "hi", "suffix": "x"}, "suffix", "not supported"),
    ({"prompt": "hi", "logprobs": 21}, None, "logprobs"),
    ({"prompt": "hi", "max_tokens": -1}, "max_tokens", ">= 0"),
    ({"prompt": "hi", "max_tokens": 0, "stream": True}, "stream", "nothing to stream"),
    ({}, "prompt", "required"),
])
def test_bad_completion_requests_are_400s_naming_the_field(url, body, param, words):
    r = httpx.post(f"{url}/v1/completions", json={"model": BASE, **body})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert words in error["message"] and error["param"] == param


def test_chat_top_logprobs_needs_logprobs(url):
    r = httpx.post(f"{url}/v1/chat/completions", json={"model": BASE, "messages": messages(), "top_logprobs": 2})
    assert r.status_code == 400 and r.json()["error"]["param"] == "top_logprobs"
    r = httpx.post(f"{url}/v1/chat/completions", content=json.dumps(
        {"model": BASE, "messages": messages(), "logprobs": True, "top_logprobs": 30}))
    assert r.status_code == 400 and "top_logprobs" in r.json()["error"]["message"]
