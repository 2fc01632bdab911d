"""Tool fidelity in rendering (issue 13, item 4): a tool call is trained as the model will emit it.

Templates with their own tool format (Qwen2.5/Qwen3, Llama 3.1, Mistral, LFM2.5) render tools
themselves; templates without one (SmolLM2's ChatML, Gemma, Phi-3) get the Hermes-style
fallback of mmtune.chat.tools. Either way each call's name and arguments are inside the
supervised tokens of its turn, and the tool definitions are in the prompt.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers.tokenizers import FAMILIES
from hypothesis import given, settings
from hypothesis import strategies as st
from test_render import ANSWER_RE, WEATHER_TOOL, _char_overlap_mask

from mmtune.chat import tools as toolfmt
from mmtune.chat.conversation import conversation
from mmtune.chat.render import IGNORE_INDEX, Row, render_prompt, render_sample
from mmtune.data.schema import Message, Part, Sample, Source, ToolCall
from mmtune.errors import UserError

M = Message.simple



def tool_row(content: str = "", *, calls=None, tools=(WEATHER_TOOL,), system: bool = False) -> Sample:
    calls = calls or [ToolCall("get_weather", '{"city": "Paris"}', id="call00001")]
    return Sample(
        ([M("system", "You are a terse assistant.")] if system else [])
        + [
            M("user", "Weather in Paris?"),
            Message("assistant", [Part.of_text(content)] if content else [], tool_calls=calls),
            Message("tool", [Part.of_text('{"temp_c": 18}')], tool_call_id="call00001", name="get_weather"),
            M("assistant", "It is 18°C in Paris."),
        ],
        tools=list(tools) or None,
        source=Source("tools.jsonl", 3),
    )


def trained_text(r, t) -> str:
    return t.decode([x for x in r.labels if x != IGNORE_INDEX])


def prompt_text(r, t) -> str:
    return t.decode([i for i, lab in zip(r.input_ids, r.labels) if lab == IGNORE_INDEX])


@pytest.mark.parametrize("family", list(FAMILIES))
def test_call_name_and_arguments_are_supervised(tok, family):
    t = tok(family)
    r = render_sample(tool_row(), t)
    trained = trained_text(r, t)
    assert "get_weather" in trained and "Paris" in trained, trained
    assert "It is 18°C in Paris." in trained
    assert "temp_c" not in trained  # the tool's result is input, never trained
    assert "get_weather" in prompt_text(r, t)  # the definitions are in the prompt


@pytest.mark.parametrize("family", ["chatml", "gemma", "gemma3", "phi3"])
def test_fallback_mask_matches_an_independent_reference(tok, family):
    """The fallback's messages through the template: ids are the template's own tokenization, and the
    trained tokens are exactly each answer region found by test_render's per-family expression."""
    import re

    t = tok(family)
    for row in (tool_row(), tool_row("Let me check.", system=family != "gemma")):
        conv = conversation(row, t)
        assert conv.tool_format == "hermes"
        r = render_sample(row, t)
        expected = t.apply_chat_template(conv.messages, tokenize=True, return_dict=True)["input_ids"]
        assert r.input_ids == list(expected)
        text = t.apply_chat_template(conv.messages, tokenize=False)
        spans = [m.span(1) for m in re.finditer(ANSWER_RE[family], text, flags=re.S)]
        assert len(spans) == 2
        assert [int(x != IGNORE_INDEX) for x in r.labels] == _char_overlap_mask(t, text, spans)


def test_smollm2_empty_turn_is_gone(tok):
    """The defect: ChatML has no tool support, and the call turn rendered as `<|im_start|>assistant\\n<|im_end|>`."""
    t = tok("chatml")
    r = render_sample(tool_row(), t)
    text = t.decode(r.input_ids)
    assert "<|im_start|>assistant\n<|im_end|>" not in text
    call = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>'
    assert call in trained_text(r, t)
    assert '"name": "get_weather", "description": "Current weather in a city"' in prompt_text(r, t)
    assert "<|im_start|>tool\n<tool_response>\n{\"temp_c\": 18}\n</tool_response><|im_end|>" in text


# ----------------------------------------------------------------------------- probing the template


@pytest.mark.parametrize(
    "family,native,tool_role,system_role",
    [
        ("chatml", False, True, True),  # SmolLM2: any role renders, tools never do
        ("qwen2.5", True, True, True),
        ("qwen3", True, True, True),
        ("llama3", True, True, True),
        ("mistral", True, False, True),  # a tool message needs a 9-character call id
        ("lfm2.5", True, True, True),
        ("gemma", False, False, False),  # refuses system and tool roles
        ("gemma3", False, False, True),  # folds the system prompt into the first user turn
        ("phi3", False, False, True),  # silently drops tool messages
    ],
)
def test_template_support_is_probed(tok, family, native, tool_role, system_role):
    s = toolfmt.template_support(tok(family))
    assert (s.native, s.tool_role, s.system_role) == (native, tool_role, system_role)
    assert toolfmt.resolve_format(tok(family)) == ("template" if native else "hermes")


def test_forced_formats(tok):
    qwen = render_sample(tool_row(), tok("qwen2.5"), tool_format="hermes")
    assert '{"name": "get_weather", "arguments": {"city": "Paris"}}' in trained_text(qwen, tok("qwen2.5"))
    with pytest.raises(UserError, match="template drops tool definitions and tool calls;"):
        render_sample(tool_row(), tok("chatml"), tool_format="template")
    with pytest.raises(UserError, match="tool_format must be one of"):
        render_sample(tool_row(), tok("chatml"), tool_format="json")


# ----------------------------------------------------------------------------- the fallback's shapes


def test_parallel_calls_and_results(tok):
    calls = [ToolCall("get_weather", '{"city": "Paris"}'), ToolCall("get_weather", '{"city": "Oslo"}')]
    row = Sample(
        [
            M("user", "Paris and Oslo?"),
            Message("assistant", tool_calls=calls),
            Message("tool", [Part.of_text("18")]),
            Message("tool", [Part.of_text("4")]),
            M("assistant", "18 and 4."),
        ],
        tools=[WEATHER_TOOL],
    )
    for family, results in (("chatml", 2), ("phi3", 1)):  # a tool role, or one user turn for both
        t = tok(family)
        r = render_sample(row, t)
        trained = trained_text(r, t)
        assert trained.count("<tool_call>") == 2 and "Oslo" in trained and "Paris" in trained
        text = t.decode(r.input_ids)
        assert text.count("<tool_response>") == 2
        opener = "<|im_start|>tool\n<tool_response>" if family == "chatml" else "<|user|>\n<tool_response>"
        assert text.count(opener) == results


def test_fallback_labels_are_what_inference_sees(tok):
    """The prompt rendered for generation is a prefix of the training ids, and the first token
    after it is trained: the call starts right where the model will start writing."""
    t = tok("chatml")
    row = tool_row("Let me check.")
    r = render_sample(row, t)
    prompt = Sample(row.messages[:1], tools=row.tools)
    ids = render_prompt(prompt, t)
    assert r.input_ids[: len(ids)] == ids and r.labels[len(ids)] == r.input_ids[len(ids)]
    assert r.labels[len(ids) - 1] == IGNORE_INDEX
    # and before the second answer: call, result and header are the prompt
    ids2 = render_prompt(Sample(row.messages[:3], tools=row.tools), t)
    assert r.input_ids[: len(ids2)] == ids2 and r.labels[len(ids2)] != IGNORE_INDEX


def test_train_on_last_and_all_and_weight0(tok):
    t = tok("chatml")
    row = tool_row()
    alls = render_sample(row, t, train_on="all")
    assert "<tool_call>" in t.decode(alls.input_ids)
    last = render_sample(row, t, train_on="last")
    assert "<tool_call>" not in trained_text(last, t) and "18°C" in trained_text(last, t)
    row.messages[1].weight = 0  # an untrained call turn is context, not a lost call
    r = render_sample(row, t)
    assert "<tool_call>" not in trained_text(r, t) and "<tool_call>" in prompt_text(r, t)


def test_no_tools_given_still_renders_calls(tok):
    t = tok("chatml")
    r = render_sample(tool_row(tools=()), t)
    assert "get_weather" in trained_text(r, t) and "# Tools" not in t.decode(r.input_ids)


# ----------------------------------------------------------------------------- what no format carries


def test_template_that_drops_text_beside_a_call_stops_naming_the_row(tok):
    """Llama 3.1's template writes only the JSON of a call turn: its text would be lost."""
    with pytest.raises(UserError, match=r"tools.jsonl:3: assistant turn 1: the chat template drops this turn's text"):
        render_sample(tool_row("Let me look that up."), tok("llama3"))


def test_template_rejecting_parallel_calls_names_the_row(tok):
    calls = [ToolCall("get_weather", '{"city": "Paris"}'), ToolCall("get_weather", '{"city": "Oslo"}')]
    with pytest.raises(UserError, match=r"tools.jsonl:3: .*single tool-calls"):
        render_sample(tool_row(calls=calls), tok("llama3"))


def test_template_that_drops_an_argument_stops(tok):
    """A template of its own that writes only the first argument: the per-row check catches it."""
    t = tok("qwen2.5")
    saved = t.chat_template
    t.chat_template = saved.replace(
        "{{- tool_call.arguments | tojson }}",
        "{{- '{\"' ~ (tool_call.arguments | list | first) ~ '\": ' ~ "
        "(tool_call.arguments[tool_call.arguments | list | first] | tojson) ~ '}' }}",
    )
    try:
        assert toolfmt.template_support(t).native  # the probe call has one argument
        calls = [ToolCall("get_weather", '{"city": "Paris", "unit": "celsius"}', id="call00001")]
        with pytest.raises(UserError, match=r"tools.jsonl:3: assistant turn 1: the argument 'unit', the value "):
            render_sample(tool_row(calls=calls), t)
    finally:
        t.chat_template = saved


# ----------------------------------------------------------------------------- parse


def test_parse_reads_the_fallback_back():
    text = toolfmt.assistant_text(
        "Checking.", [{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]
    )
    assert text == 'Checking.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    reply = toolfmt.parse(text)
    assert reply.content == "Checking."
    assert [(c.name, json.loads(c.arguments)) for c in reply.tool_calls] == [("get_weather", {"city": "Paris"})]


@pytest.mark.parametrize(
    "text,content,names",
    [
        ("no calls here", "no calls here", []),
        ("<tool_call>\nnot json\n</tool_call>", "<tool_call>\nnot json\n</tool_call>", []),
        ('<tool_call>{"arguments": {}}</tool_call>', '<tool_call>{"arguments": {}}</tool_call>', []),
        ('<tool_call>{"name": "f"', '<tool_call>{"name": "f"', []),  # cut off mid-call
        ('<tool_call>{"name": "f", "arguments": "{\\"a\\": 1}"}</tool_call>', "", ["f"]),  # string args
        ('<tool_call>{"name": "f", "parameters": {"a": 1}}</tool_call> after', " after", ["f"]),
    ],
)
def test_parse_keeps_what_is_not_a_call(text, content, names):
    reply = toolfmt.parse(text)
    assert reply.content == content and [c.name for c in reply.tool_calls] == names


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)
_calls = st.lists(
    st.tuples(st.text(min_size=1, max_size=10), st.dictionaries(st.text(max_size=6), _json, max_size=3)),
    max_size=3,
)


@settings(max_examples=200, deadline=None)
@given(content=st.text(max_size=30).filter(lambda s: "<tool_call>" not in s), calls=_calls)
def test_parse_inverts_assistant_text(content, calls):
    dicts = [{"function": {"name": n, "arguments": a}} for n, a in calls]
    reply = toolfmt.parse(toolfmt.assistant_text(content, dicts))
    assert reply.content == content
    assert [(c.name, json.loads(c.arguments)) for c in reply.tool_calls] == calls


# ----------------------------------------------------------------------------- mmtune train, Engine


def with_template(tiny_llama, folder, template: str):
    """A copy of the tiny Llama whose tokenizer carries `template` (tests/fixtures/templates)."""
    import shutil

    from helpers.tokenizers import TEMPLATES

    shutil.copytree(tiny_llama, folder)
    shutil.copy(TEMPLATES / f"{template}.jinja", folder / "chat_template.jinja")
    return folder


def test_engine_prompts_with_the_same_fallback(tiny_llama, tmp_path):
    from mmtune.infer.engine import Engine

    engine = Engine(str(with_template(tiny_llama, tmp_path / "model", "chatml")), device="cpu")
    row = tool_row()
    wire = [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "call00001", "type": "function", "function": {
            "name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call00001", "content": '{"temp_c": 18}'},
    ]
    ids = engine.prompt_ids(wire, tools=[WEATHER_TOOL])
    t = engine.tokenizer()
    assert ids == render_prompt(Sample(row.messages[:3], tools=row.tools), t)
    text = t.decode(ids)
    assert "<tool_call>\n{\"name\": \"get_weather\"" in text and "<tools>" in text
    assert text.endswith("</tool_response><|im_end|>\n<|im_start|>assistant\n")
    # and the training row's ids start with it: the model answers where training taught it to
    r = render_sample(row, t)
    assert r.input_ids[: len(ids)] == ids and r.labels[len(ids)] != IGNORE_INDEX


@pytest.mark.parametrize("template", ["chatml", "llama3"])  # SmolLM2's (the fallback), Llama 3.1's own
def test_mmtune_train_trains_the_call_tokens(tiny_llama, tmp_path, template):
    from helpers.tokenizers import TEMPLATES
    from transformers import AutoTokenizer

    from mmtune.cli import main

    model = with_template(tiny_llama, tmp_path / "model", template)
    row = {
        "messages": [
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "tool_calls": [{"id": "call00001", "type": "function", "function": {
                "name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
            {"role": "tool", "tool_call_id": "call00001", "content": '{"temp_c": 18}'},
            {"role": "assistant", "content": "It is 18°C in Paris."},
        ],
        "tools": [WEATHER_TOOL],
    }
    data = tmp_path / "tools.jsonl"
    data.write_text(json.dumps(row, ensure_ascii=False) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    argv = ["train", "--model", str(model), "--data", str(data), "--output", str(out), "--max-steps", "2",
            "--batch-size", "1", "--max-length", "512", "--save-strategy", "no", "--no-data-cache"]
    assert main(argv) == 0
    supervised = json.loads((out / "summary.json").read_text())["data"]["train_supervised_tokens"]

    t = AutoTokenizer.from_pretrained(model)
    assert t.chat_template == (TEMPLATES / f"{template}.jinja").read_text(encoding="utf-8")
    sample = tool_row()
    answer_only = tool_row()
    answer_only.messages[1].weight = 0
    r, without_call = render_sample(sample, t), render_sample(answer_only, t)
    assert supervised == r.n_supervised  # the first token is never a label, and it is the prompt's
    call = '{"name": "get_weather", "' + ("arguments" if template == "chatml" else "parameters") + '": {"city": "Paris"}}'
    call_tokens = len(t(call, add_special_tokens=False)["input_ids"])
    assert supervised - without_call.n_supervised >= call_tokens  # the call itself is trained
    assert call in trained_text(r, t)


# ----------------------------------------------------------------------------- vision-language models


@pytest.mark.parametrize("family,native", [("qwen2_vl", False), ("qwen3_vl", True)])
def test_vision_rows_carry_their_calls(family, native):
    from helpers.tiny_vlms import tiny_vlm_dir

    from mmtune.chat.render import prompt_text, template_view
    from mmtune.models.vision import load_processor

    processor = load_processor(tiny_vlm_dir(family))
    assert toolfmt.template_support(template_view(processor)).native is native
    row = tool_row()
    media = Path(__file__).resolve().parents[2] / "examples" / "data" / "media" / "red_circle.png"
    row.messages[0] = Message("user", [Part.image(str(media)), Part.of_text("Weather in Paris?")])
    out = render_sample(row, processor).features()
    t = processor.tokenizer
    trained = trained_text(Row(out["input_ids"], out["labels"]), t)
    assert "get_weather" in trained and "Paris" in trained and "It is 18°C in Paris." in trained
    assert "temp_c" not in trained
    prompt = prompt_text(Sample(row.messages[:3], tools=row.tools), processor)
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>' in prompt
    # the fallback writes definitions as Qwen's own templates do: Qwen3-VL's text is the fallback's
    assert toolfmt.tools_block(row.tools) in prompt


def test_registry_declares_a_tool_format_per_entry():
    import dataclasses

    from mmtune.models.registry import REGISTRY, TOOL_FORMATS, build_registry

    assert all(spec.tool_format in TOOL_FORMATS for spec in REGISTRY.values())
    assert REGISTRY["smollm2-135m-instruct"].to_dict()["tool_format"] == "auto"
    bad = dataclasses.replace(REGISTRY["smollm2-135m-instruct"], tool_format="json")
    with pytest.raises(ValueError, match="smollm2-135m-instruct.*tool_format must be one of"):
        build_registry((bad,))
