"""Tool calls in each family's own call syntax (chat/tools.py `call_syntax`, `parse`): Llama 3.1/3.2's
JSON object (after <|python_tag|> or bare), Mistral's `[TOOL_CALLS] [...]` and LFM2.5's Python-style
`<|tool_call_start|>[f(k=v)]<|tool_call_end|>`, read back into
`tool_calls` through the official `openai` client, streaming and not; what does not parse is content."""

from __future__ import annotations

import json

import openai
import pytest
from infer.tiny import tiny_base
from serve.running import serving
from serve.test_tool_calls import TIME, WEATHER, Scripted

from mmtune.chat.tools import call_syntax, parse
from mmtune.infer.engine import Engine
from mmtune.infer.tool_calls import ToolPolicy
from mmtune.serve.app import create_app
from mmtune.serve.pool import ModelPool

ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
PARIS = {"city": "Paris"}


@pytest.mark.parametrize(("text", "syntax", "content", "calls"), [
    ('{"name": "get_weather", "parameters": {"city": "Paris"}}', "json", "", [("get_weather", PARIS)]),
    ('<|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris"}}', "json", "", [("get_weather", PARIS)]),
    ('  {"name": "get_weather", "arguments": "{\\"city\\": \\"Paris\\"}"}; {"name": "get_time", "parameters": {}}',
     "json", "", [("get_weather", PARIS), ("get_time", {})]),
    ('[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Paris"}, "id": "abc123def"}, '
     '{"name": "get_time", "arguments": {}}]', "mistral", "", [("get_weather", PARIS), ("get_time", {})]),
    (' [{"name": "get_weather", "arguments": {"city": "Paris"}}]', "mistral", "", [("get_weather", PARIS)]),
    ('Let me check. [TOOL_CALLS] [{"name": "get_time", "arguments": {}}]', "mistral", "Let me check.",
     [("get_time", {})]),
    ("<|tool_call_start|>[get_weather(city='Paris'), get_time()]<|tool_call_end|>", "pythonic", "",
     [("get_weather", PARIS), ("get_time", {})]),
    ("[get_weather(city='Paris')]", "pythonic", "", [("get_weather", PARIS)]),  # the control tokens dropped
    ("Let me look.<|tool_call_start|>[get-weather(city=\"Pa'ris (FR)\", days=3, units=None)]<|tool_call_end|>",
     "pythonic", "Let me look.", [("get-weather", {"city": "Pa'ris (FR)", "days": 3, "units": None})]),
    # the template writes object arguments as JSON: true/false/null read as JSON's
    ('[search(filters={"open": true, "tags": ["a", null]}, limit=-2.5, exact=False)]', "pythonic", "",
     [("search", {"filters": {"open": True, "tags": ["a", None]}, "limit": -2.5, "exact": False})]),
])
def test_each_syntax_parses_its_calls(text, syntax, content, calls):
    reply = parse(text, syntax)
    assert reply.content == content
    assert [(c.name, json.loads(c.arguments)) for c in reply.tool_calls] == calls


@pytest.mark.parametrize(("text", "syntax"), [
    ('{"name": "get_weather", "parameters": {"city": ', "json"),  # cut off
    ('{"name": "get_weather", "parameters": {"city": "Paris"}} and then some words', "json"),  # text after it
    ('{"city": "Paris"}', "json"),  # no name
    ('The answer is {"name": "x", "parameters": {}}', "json"),  # not the answer's start
    ('[TOOL_CALLS] [{"name": "get_weather", "arguments": [1, 2]}]', "mistral"),  # arguments not an object
    ("[1, 2, 3] are the numbers", "mistral"),
    ('<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>', "json"),  # another syntax's block
    ("[get_weather(city='Paris')", "pythonic"),  # cut off
    ("[get_weather('Paris')]", "pythonic"),  # a positional argument: no name to give it
    ("[get_weather(city=open('x'))]", "pythonic"),  # not a literal
    ("[get_weather(city='Paris')] and then some words", "pythonic"),
    ("<|tool_call_start|>[get_time()]<|tool_call_end|> and more", "pythonic"),
    ("[1, 2, 3] are the numbers", "pythonic"),
    ("[get_time(), 'x']", "pythonic"),  # something other than a call in the list
    ("[f(**kw)]", "pythonic"),
    ("[f(a={1, 2})]", "pythonic"),  # a set is no JSON value
    ('{"name": "get_time", "parameters": {}}', "pythonic"),
])
def test_what_does_not_parse_is_content(text, syntax):
    reply = parse(text, syntax)
    assert reply.content == text and reply.tool_calls == []


@pytest.mark.parametrize(("family", "syntax"), [("qwen2", "hermes"), ("llama", "json"), ("mistral", "mistral"),
                                                ("minicpm", "hermes"), ("lfm2.5", "pythonic")])  # minicpm: ChatML
def test_the_syntax_is_read_from_the_chat_template(family, syntax):
    from transformers import AutoTokenizer

    assert call_syntax(AutoTokenizer.from_pretrained(tiny_base(family))) == syntax


CALLS = {  # what each family's model writes for a call, and a broken one
    "llama": ('{"name": "get_weather", "parameters": {"city": "Paris"}}',
              '{"name": "get_weather", "parameters": {"city": '),
    "mistral": ('[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Paris"}}]',
                '[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Paris"}]]'),
    "lfm2.5": ("<|tool_call_start|>[get_weather(city='Paris')]<|tool_call_end|>",
               "<|tool_call_start|>[get_weather(city='Paris')<|tool_call_end|>"),
}


@pytest.fixture(scope="module", params=sorted(CALLS))
def served(request):
    family = request.param
    engine = Engine(str(tiny_base(family)), name=family)
    assert engine.context_length > 0
    engine.model = Scripted(engine.model, engine.tokenizer(), next(iter(engine._eos_ids(None) - {None})))
    with serving(create_app(ModelPool([engine]), max_concurrency=1)) as url:
        yield family, engine, openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0)


def ask(client, family, stream=False, **kw):
    kw = {"model": family, "messages": ASK, "tools": [WEATHER, TIME], "temperature": 0, "max_tokens": 60, **kw}
    if not stream:
        c = client.chat.completions.create(**kw).choices[0]
        calls = [(t.function.name, json.loads(t.function.arguments)) for t in c.message.tool_calls or []]
        ids = [t.id for t in c.message.tool_calls or []]
        assert all(len(i) == 9 and i.isalnum() if family == "mistral" else i.startswith("call_") for i in ids)
        return c.message.content, calls, c.finish_reason
    content, calls, finish = "", {}, None
    for chunk in client.chat.completions.create(stream=True, **kw):
        delta = chunk.choices[0].delta
        content += delta.content or ""
        for d in delta.tool_calls or []:
            got = calls.setdefault(d.index, {"name": "", "arguments": ""})
            got["name"] += d.function.name or ""
            got["arguments"] += d.function.arguments or ""
        finish = chunk.choices[0].finish_reason or finish
    return content, [(calls[i]["name"], json.loads(calls[i]["arguments"])) for i in sorted(calls)], finish


def test_a_call_in_the_family_syntax_is_a_tool_calls_message(served):
    family, engine, client = served
    engine.model.say(CALLS[family][0])
    assert ask(client, family) == (None, [("get_weather", PARIS)], "tool_calls")
    assert ask(client, family, stream=True) == ("", [("get_weather", PARIS)], "tool_calls")


def test_plain_answers_and_broken_calls_are_content(served):
    family, engine, client = served
    for text in ("Paris is sunny today.", CALLS[family][1]):
        engine.model.say(text)
        shown = engine.tokenizer().decode(engine.model.script[:-1], skip_special_tokens=True)  # as decoded
        assert ask(client, family) == (shown, [], "stop")
        assert ask(client, family, stream=True) == (shown, [], "stop")


def test_required_and_named_calls_open_in_the_family_syntax(served):
    family, engine, client = served
    syntax = {"llama": "json", "mistral": "mistral", "lfm2.5": "pythonic"}[family]
    opening = {"llama": "{", "mistral": "[TOOL_CALLS] [{", "lfm2.5": "<|tool_call_start|>["}[family]
    for choice in ("required", {"type": "function", "function": {"name": "get_weather"}}):
        mode = "required" if choice == "required" else "function"
        forced = ToolPolicy(mode, "get_weather", syntax=syntax).prefix
        assert forced.startswith(opening)
        engine.model.say(CALLS[family][0], forced=forced)
        assert ask(client, family, tool_choice=choice) == (None, [("get_weather", PARIS)], "tool_calls")
        assert ask(client, family, stream=True, tool_choice=choice) == ("", [("get_weather", PARIS)], "tool_calls")


def test_the_calls_and_their_results_go_back_to_the_model_on_the_next_turn(served):
    """The ids we give are ones the family's template takes back (Mistral's: 9 letters and digits, else it
    raises): the assistant's calls and the tool's result, sent back through the openai client, are answered."""
    family, engine, client = served
    engine.model.say(CALLS[family][0])
    first = client.chat.completions.create(model=family, messages=ASK, tools=[WEATHER, TIME], temperature=0,
                                           max_tokens=60).choices[0].message
    (call,) = first.tool_calls
    turn = [*ASK, first.model_dump(exclude_none=True),
            {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"sky": "sunny"})}]
    engine.model.say("It is sunny in Paris.")
    answer = client.chat.completions.create(model=family, messages=turn, tools=[WEATHER, TIME], temperature=0,
                                            max_tokens=60).choices[0]
    assert (answer.message.content, answer.finish_reason) == ("It is sunny in Paris.", "stop")
    if family == "mistral":  # (Llama 3.1's template writes no ids)
        assert call.id in engine.tokenizer().decode(engine.model.prompts[-1][0])
