"""Tool calls end to end through the official `openai` client: `tools`, `tool_choice`,
`parallel_tool_calls`, answers parsed into `tool_calls`, streamed as OpenAI's tool-call deltas.

The model is a tiny random one whose answer is scripted (`Scripted`: its real forward runs, then
the logits are replaced so that greedy decoding writes the script, continuing from wherever the
prompt already is inside it, as after a forced call opening). So each test knows what the model
"said" and checks what the server makes of it.
"""

from __future__ import annotations

import json

import httpx
import openai
import pytest
import torch
from infer.tiny import tiny_base
from serve.running import serving

from mmtune.chat.tools import CALL_OPEN
from mmtune.infer.batch import Row, predict
from mmtune.infer.engine import Engine, to_sample
from mmtune.infer.tool_calls import ToolPolicy
from mmtune.serve.app import create_app
from mmtune.serve.pool import ModelPool

NAME = "scripted"
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                            "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                           "required": ["city"]}}}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


def call(name: str, args: dict) -> str:
    return f"{CALL_OPEN}\n{json.dumps({'name': name, 'arguments': args})}\n</tool_call>"


class Scripted(torch.nn.Module):
    """Wraps a causal LM so that greedy decoding writes `self.script`, then the end of turn."""

    def __init__(self, inner, tokenizer, eos: int):
        super().__init__()
        self.inner, self.config, self.tokenizer, self.eos = inner, inner.config, tokenizer, eos
        self.script: list[int] = []
        self.prompts: list[list[int]] = []  # every prefill's rows, as the model saw them
        self._history = None

    def say(self, text: str, forced: str = "") -> None:
        """Script `text`; `forced` (a prefix of it) tokenized apart, as the engine appends a forced opening."""
        enc = lambda t: self.tokenizer(t, add_special_tokens=False)["input_ids"] if t else []  # noqa: E731
        self.script = enc(forced) + enc(text[len(forced):]) + [self.eos]

    def forward(self, input_ids, past_key_values=None, **kw):
        out = self.inner(input_ids=input_ids, past_key_values=past_key_values, **kw)
        if past_key_values is None:
            self._history = input_ids
            self.prompts.append(input_ids.tolist())
        else:
            self._history = torch.cat([self._history, input_ids], dim=-1)
        logits = torch.full((input_ids.shape[0], 1, out.logits.shape[-1]), -1e4)
        for b, row in enumerate(self._history.tolist()):
            k = max(k for k in range(len(self.script)) if k == 0 or row[-k:] == self.script[:k])
            logits[b, 0, self.script[k]] = 0.0
        out.logits = logits
        return out


@pytest.fixture(scope="module")
def engine():
    e = Engine(str(tiny_base("qwen2")), name=NAME)
    assert e.context_length > 0  # read from the real config before the wrapper stands in
    tok = e.tokenizer()
    e.model = Scripted(e.model, tok, next(iter(e._eos_ids(None) - {None})))
    return e


@pytest.fixture(scope="module")
def url(engine):
    with serving(create_app(ModelPool([engine]), max_concurrency=1)) as base:
        yield base


@pytest.fixture(scope="module")
def client(url):
    return openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0)


def ask(client, stream=False, **kw):
    kw = {"model": NAME, "messages": ASK, "tools": [WEATHER, TIME], "temperature": 0, "max_tokens": 60, **kw}
    if not stream:
        return client.chat.completions.create(**kw).choices[0]
    content, calls, finish = "", {}, None
    for chunk in client.chat.completions.create(stream=True, **kw):
        delta = chunk.choices[0].delta
        content += delta.content or ""
        for d in delta.tool_calls or []:
            got = calls.setdefault(d.index, {"id": d.id, "name": "", "arguments": ""})
            got["name"] += d.function.name or ""
            got["arguments"] += d.function.arguments or ""
        finish = chunk.choices[0].finish_reason or finish
    return content, [calls[i] for i in sorted(calls)], finish


def test_auto_a_call_is_a_tool_calls_message(client, engine):
    engine.model.say(call("get_weather", {"city": "Paris"}))
    c = ask(client)
    assert c.finish_reason == "tool_calls" and c.message.content is None
    (t,) = c.message.tool_calls
    assert t.type == "function" and t.function.name == "get_weather" and t.id.startswith("call_")
    assert json.loads(t.function.arguments) == {"city": "Paris"}
    content, calls, finish = ask(client, stream=True)
    assert content == "" and finish == "tool_calls"
    assert [(x["name"], json.loads(x["arguments"])) for x in calls] == [("get_weather", {"city": "Paris"})]
    assert calls[0]["id"].startswith("call_")


def test_text_before_calls_parallel_calls_and_parallel_off(client, engine):
    engine.model.say("Let me look.\n" + call("get_weather", {"city": "Paris"}) + "\n" + call("get_time", {}))
    c = ask(client)
    assert c.message.content == "Let me look." and c.finish_reason == "tool_calls"
    assert [t.function.name for t in c.message.tool_calls] == ["get_weather", "get_time"]
    assert len({t.id for t in c.message.tool_calls}) == 2
    content, calls, _ = ask(client, stream=True)
    assert content == "Let me look." and [x["name"] for x in calls] == ["get_weather", "get_time"]
    one = ask(client, parallel_tool_calls=False)
    assert [t.function.name for t in one.message.tool_calls] == ["get_weather"]


def test_unparseable_call_comes_back_as_content(client, engine):
    broken = f'{CALL_OPEN}\n{{"name": "get_weather", "arguments": {{"city": </tool_call> sorry'
    engine.model.say(broken)
    c = ask(client)
    assert c.message.content == broken and not c.message.tool_calls and c.finish_reason == "stop"
    content, calls, finish = ask(client, stream=True)
    assert content == broken and calls == [] and finish == "stop"


def test_tool_choice_none_stops_before_a_call(client, engine):
    engine.model.say("Sure." + call("get_weather", {"city": "Paris"}))
    c = ask(client, tool_choice="none")
    assert c.message.content == "Sure." and not c.message.tool_calls and c.finish_reason == "stop"
    assert ask(client, stream=True, tool_choice="none")[0] == "Sure."


def test_required_and_named_start_the_answer_with_the_call(client, engine):
    text = call("get_weather", {"city": "Paris"})
    engine.model.say(text, forced=ToolPolicy("required").prefix)
    c = ask(client, tool_choice="required")
    assert [t.function.name for t in c.message.tool_calls] == ["get_weather"]
    prompt = engine.prompt_ids(ASK, tools=[WEATHER, TIME])
    forced = engine.tokenizer()(CALL_OPEN + "\n", add_special_tokens=False)["input_ids"]
    assert engine.model.prompts[-1][0] == prompt + forced  # the model continued from the opening
    named = ToolPolicy("function", "get_weather").prefix
    engine.model.say(text.replace('{"name": "get_weather", "arguments":', named[len(CALL_OPEN) + 1:]), forced=named)
    for streamed in (False, True):
        if streamed:
            _, calls, finish = ask(client, stream=True, tool_choice={"type": "function", "function": {"name": "get_weather"}})
            got = [(x["name"], json.loads(x["arguments"])) for x in calls]
        else:
            c = ask(client, tool_choice={"type": "function", "function": {"name": "get_weather"}})
            got, finish = [(t.function.name, json.loads(t.function.arguments)) for t in c.message.tool_calls], c.finish_reason
        assert got == [("get_weather", {"city": "Paris"})] and finish == "tool_calls"


@pytest.mark.parametrize(("extra", "words"), [
    ({"tool_choice": "sometimes"}, "tool_choice must be one of"),
    ({"tool_choice": {"type": "function", "function": {"name": "nope"}}}, "not in tools"),
    ({"tool_choice": "required", "tools": None}, "no tools"),
])
def test_bad_tool_choice_is_a_400(url, extra, words):
    body = {"model": NAME, "messages": ASK, "tools": [WEATHER], **extra}
    r = httpx.post(f"{url}/v1/chat/completions", json={k: v for k, v in body.items() if v is not None})
    assert r.status_code == 400 and words in r.json()["error"]["message"], r.text
    assert r.json()["error"]["param"] == "tool_choice"


def test_engine_chat_and_infer_return_the_parsed_calls(engine):
    engine.model.say("Checking.\n" + call("get_weather", {"city": "Oslo"}))
    answer = engine.chat(ASK, tools=[WEATHER], temperature=0, max_new_tokens=60)
    assert answer == "Checking." and [(t.name, json.loads(t.arguments)) for t in answer.tool_calls] == [
        ("get_weather", {"city": "Oslo"})]
    assert answer.message.tool_calls == list(answer.tool_calls) and answer.message.text == "Checking."
    assert engine.chat(ASK, temperature=0, max_new_tokens=60).tool_calls == ()  # no tools: nothing parsed
    sample = to_sample(ASK, [WEATHER])
    (record,) = predict(engine, [Row(1, sample, None)], progress=False, temperature=0, max_new_tokens=60)
    assert record["prediction"] == "Checking." and record["finish_reason"] == "tool_calls"
    assert record["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": '{"city": "Oslo"}'}


def test_terminal_chat_shows_the_calls(engine, tmp_path):
    import io

    from mmtune.commands.chat import read_tools
    from mmtune.errors import UserError
    from mmtune.infer.chat import ChatSession, repl

    (tmp_path / "tools.json").write_text(json.dumps([WEATHER]))
    session = ChatSession(tools=read_tools(str(tmp_path / "tools.json")))
    engine.model.say("One moment.\n" + call("get_weather", {"city": "Rome"}))
    lines = iter(["Weather in Rome?"])

    def read(_prompt):
        try:
            return next(lines)
        except StopIteration:
            raise EOFError from None

    out = io.StringIO()
    assert repl(engine, {"temperature": 0, "max_new_tokens": 60}, session, read=read, out=out) == 0
    shown = out.getvalue()
    assert 'One moment.\n[tool call] get_weather({"city": "Rome"})' in shown and CALL_OPEN not in shown
    assert session.turns[-1]["tool_calls"][0]["function"]["name"] == "get_weather"
    (tmp_path / "bad.json").write_text('{"name": "x"}')
    with pytest.raises(UserError, match="JSON list"):
        read_tools(str(tmp_path / "bad.json"))
