"""Engine: loads bases and adapters, renders with the training template, decodes correctly."""

from __future__ import annotations

import pytest
from infer.tiny import messages, tiny_adapter, tiny_base

from mmtune.chat.render import render_prompt
from mmtune.data.schema import Message, Sample
from mmtune.errors import UserError
from mmtune.infer.engine import Engine

GREEDY = {"temperature": 0, "max_new_tokens": 8}


@pytest.fixture(scope="module")
def engine():
    """Adapter 1 as the default model, adapter 2 as "b", over one tiny qwen2 base."""
    return Engine(str(tiny_adapter("qwen2", 1)), adapters={"b": str(tiny_adapter("qwen2", 2))})


def reference_greedy(model_dir, msgs, n=8):
    """Greedy tokens from transformers' own generate(), for comparison."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_base("qwen2"), dtype=torch.float32)
    model = PeftModel.from_pretrained(model, str(model_dir)).eval()
    ids = torch.tensor(
        [
            tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True, return_dict=True)[
                "input_ids"
            ]
        ]
    )
    out = model.generate(input_ids=ids, max_new_tokens=n, do_sample=False, eos_token_id=None, pad_token_id=0)
    return tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True)


def test_names_and_default(engine):
    assert engine.names == ["tiny-qwen2", "adapter-qwen2-1", "b"]
    assert engine.default_model == "adapter-qwen2-1"


def test_greedy_matches_transformers_generate(engine):
    assert engine.chat(messages(), **GREEDY) == reference_greedy(tiny_adapter("qwen2", 1), messages())


def test_adapters_differ_and_switch_back(engine):
    a = engine.chat(messages(), model="adapter-qwen2-1", **GREEDY)
    b = engine.chat(messages(), model="b", **GREEDY)
    base = engine.chat(messages(), model="tiny-qwen2", **GREEDY)
    assert len({a, b, base}) == 3
    assert engine.chat(messages(), model="adapter-qwen2-1", **GREEDY) == a


def test_prompt_is_the_training_template(engine):
    sample = Sample([Message.simple("user", "Hi")])
    assert engine.prompt_ids([{"role": "user", "content": "Hi"}]) == render_prompt(sample, engine.tokenizer())
    assert engine.chat(sample, **GREEDY) == engine.chat([{"role": "user", "content": "Hi"}], **GREEDY)


def test_stream_joins_to_chat_and_counts_usage(engine):
    stream = engine.stream(messages(), **GREEDY)
    pieces = list(stream)
    assert len(pieces) > 1 and "".join(pieces) == engine.chat(messages(), **GREEDY)
    c = stream.completion
    assert c.prompt_tokens == len(engine.prompt_ids(messages()))
    assert c.completion_tokens == 8 and c.finish_reason == "length"


def test_stop_string_cuts_and_is_never_streamed(engine):
    full = engine.chat(messages(), **GREEDY)
    stop = full[4:8]
    stream = engine.stream(messages(), stop=[stop], **GREEDY)
    text = "".join(stream)
    assert text == full[: full.find(stop)] and stop not in text
    assert stream.completion.finish_reason == "stop"


def test_batch_equals_one_by_one(engine):
    prompts = [messages(), messages("Hi"), messages("A much longer question about many things at once?")]
    batch = engine.generate_batch(prompts, **GREEDY)
    assert [c.text for c in batch] == [engine.chat(p, **GREEDY) for p in prompts]
    assert [c.prompt_tokens for c in batch] == [len(engine.prompt_ids(p)) for p in prompts]


def test_seed_makes_sampling_repeatable(engine):
    opts = {"temperature": 1.0, "top_p": 0.9, "top_k": 50, "max_new_tokens": 5}
    first = engine.chat(messages(), seed=7, **opts)
    assert engine.chat(messages(), seed=7, **opts) == first
    assert len({engine.chat(messages(), seed=s, **opts) for s in range(2)}) > 1


def test_eos_ends_the_answer(engine):
    import torch

    tok = engine.tokenizer()
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    head = (
        engine.model.base_model.model.lm_head if hasattr(engine.model, "base_model") else engine.model.lm_head
    )
    saved = head.weight.data.clone()
    try:
        with torch.no_grad():
            head.weight.data[eos] = head.weight.data[eos] * 0 + 5.0  # an eos the model always picks
        c = engine.complete(messages(), model="tiny-qwen2", **GREEDY)
    finally:
        head.weight.data.copy_(saved)
    assert c.text == "" and c.completion_tokens == 0 and c.finish_reason == "stop"


@pytest.mark.parametrize(
    ("gen", "word"),
    [
        ({"temperature": -1}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"stop": [""]}, "stop"),
        ({"seed": "x"}, "seed"),
        ({"beam": 2}, "unknown"),
    ],
)
def test_bad_options_are_user_errors(engine, gen, word):
    with pytest.raises(UserError, match=word):
        engine.chat(messages(), **gen)


def test_unknown_model_and_bad_messages(engine):
    with pytest.raises(UserError, match="unknown model"):
        engine.chat(messages(), model="nope")
    with pytest.raises(UserError, match="role"):
        engine.chat([{"role": "wizard", "content": "hi"}])


def test_context_length_and_prompts_that_do_not_fit(engine):
    from mmtune.infer.engine import PromptTooLong

    assert engine.context_length == 1024  # the tiny config's max_position_embeddings
    fits = "hello " * 900
    assert len(engine.prepare(messages(fits)).ids) < 1024
    with pytest.raises(PromptTooLong) as e:
        engine.prepare(messages("hello " * 1100))  # refused only once the whole prompt is tokenized
    assert e.value.context == 1024 and e.value.tokens > 1024 and "are at least" not in str(e.value)
    with pytest.raises(PromptTooLong, match="are at least") as e:
        engine.prepare(messages(" ".join(f"w{i}" for i in range(9000))))  # refused from a prefix
    assert e.value.tokens >= 1024
    with pytest.raises(PromptTooLong, match="are at least"):
        engine.prepare(messages("x" * (5 * 2**20)))  # refused from its size alone
    assert isinstance(e.value, UserError)  # the CLI prints it as one line


def test_cancel_stops_a_generation_after_the_step_under_way(engine):
    import threading

    calls = []
    handle = engine.model.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        generation = engine.stream(messages(), temperature=0, max_new_tokens=200)
        first = next(iter(generation))
        assert first and not generation.cancelled
        stepped = len(calls)
        threading.Thread(target=generation.cancel).start()  # from another thread, as the server does
        rest = list(generation)
        assert generation.cancelled and len(calls) - stepped <= 1, (len(calls), stepped)
        assert len(first + "".join(rest)) < len(engine.chat(messages(), temperature=0, max_new_tokens=200))
        idle = engine.stream(messages(), temperature=0, max_new_tokens=5)
        idle.cancel()
        count = len(calls)
        assert list(idle) == [] and len(calls) == count  # cancelled before it started: no step at all
    finally:
        handle.remove()
    assert engine.chat(messages(), **GREEDY)  # the adapter gate was released
