"""chat.render.ChatTemplate: the one renderer's interface gives what its functions give, names the
end-of-turn token, and `parse` inverts an assistant turn (reasoning block and tool calls)."""

from __future__ import annotations

import json

import pytest

from mmtune.chat.reasoning import think_text
from mmtune.chat.render import IGNORE_INDEX, ChatTemplate, parse, render_prompt, render_sample
from mmtune.chat.tools import assistant_text
from mmtune.data.schema import Message, Sample


def _sample() -> Sample:
    a = Message.simple
    return Sample([a("user", "Hi"), a("assistant", "Hello."), a("user", "Again?"), a("assistant", "Yes.")])


@pytest.mark.parametrize("family, eot", [("chatml", "<|im_end|>"), ("llama3", "<|eot_id|>"),
                                         ("gemma", "<end_of_turn>")])
def test_chat_template_is_the_render_path(tok, family, eot):
    t, sample = tok(family), _sample()
    template = ChatTemplate(t)
    for train_on in ("assistant", "last", "all"):
        got, want = template.render(sample, train_on, 12), render_sample(sample, t, train_on=train_on, max_length=12)
        assert (got.input_ids, got.labels, got.truncated) == (want.input_ids, want.labels, want.truncated)
        assert not got.media and set(got.features()) == {"input_ids", "labels"}
    prompt = template.prompt(Sample(sample.messages[:3]))
    assert prompt.input_ids == render_prompt(Sample(sample.messages[:3]), t)
    assert set(prompt.labels) == {IGNORE_INDEX}
    assert template.end_of_turn() == eot and template.end_of_turn_id() == t.convert_tokens_to_ids(eot)


def test_parse_inverts_an_assistant_turn():
    calls = [{"type": "function", "function": {"name": "weather", "arguments": {"city": "Paris"}}}]
    text = think_text("First the city.\nThen the call.", assistant_text("Let me look.", calls))
    m = parse(text)
    assert m.role == "assistant" and m.text == "Let me look."
    assert m.reasoning == "First the city.\nThen the call."
    assert [(c.name, json.loads(c.arguments)) for c in m.tool_calls] == [("weather", {"city": "Paris"})]
    plain = parse("Just an answer, <think> mentioned in passing.")
    assert plain.text == "Just an answer, <think> mentioned in passing." and plain.reasoning is None
    assert not plain.tool_calls
