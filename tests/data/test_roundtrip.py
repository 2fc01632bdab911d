"""Every format round-trips through the canonical Sample: read(write(sample)) == sample."""

import json

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from mmtune.data.formats import FORMATS
from mmtune.data.formats.common import normalize
from mmtune.data.rawio import write_rows
from mmtune.data.reader import FileReader, ReadOptions
from mmtune.data.schema import Message, Part, Sample, ToolCall
from tests.conftest import EXAMPLES

TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=40)
REF = st.sampled_from(["a.png", "sub/b.jpg", "/abs/c.png", "data:image/png;base64,iVBORw0KGgo="])
VREF = st.sampled_from(["v.mp4", "clips/w.mp4"])


def parts(media: bool, video: bool = True):
    items = [TEXT.map(Part.of_text)]
    if media:
        items.append(REF.map(Part.image))
        if video:
            items.append(VREF.map(Part.video))
    return st.lists(st.one_of(*items), min_size=1, max_size=4).map(normalize).filter(bool)


def no_literal_tags(sample: Sample) -> bool:
    return all("<image>" not in p.text and "<video>" not in p.text for m in sample.messages for p in m.parts)


@st.composite
def pair_samples(draw):
    """[system] + user/assistant pairs with media: what swift and alpaca hold."""
    msgs = []
    if draw(st.booleans()):
        msgs.append(Message("system", [Part.of_text(draw(TEXT))]))
    for _ in range(draw(st.integers(1, 3))):
        msgs.append(Message("user", draw(parts(True))))
        msgs.append(Message("assistant", draw(parts(True))))
    return Sample(msgs)


CALL = st.builds(ToolCall, name=st.from_regex(r"[a-z_]{1,10}", fullmatch=True),
                 arguments=st.dictionaries(st.from_regex(r"[a-z]{1,5}", fullmatch=True), st.integers(), max_size=2)
                 .map(json.dumps))
TOOLS = st.one_of(st.none(), st.just([{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]))


@st.composite
def llava_samples(draw):
    msgs = []
    if draw(st.booleans()):
        msgs.append(Message("system", [Part.of_text(draw(TEXT))]))
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["user", "assistant", "call", "tool"]))
        if kind == "call":
            msgs.append(Message("assistant", tool_calls=draw(st.lists(CALL, min_size=1, max_size=2))))
        elif kind == "tool":
            msgs.append(Message("tool", [Part.of_text(draw(TEXT))]))
        else:
            msgs.append(Message(kind, draw(parts(True))))
    return Sample(msgs, draw(TOOLS))


@st.composite
def openai_samples(draw):
    msgs = []
    for _ in range(draw(st.integers(1, 5))):
        role = draw(st.sampled_from(["system", "user", "assistant", "tool"]))
        m = Message(role, draw(parts(True)))
        if role == "assistant":
            m.weight = draw(st.sampled_from([None, 0.0, 1.0]))
            if draw(st.booleans()):
                m.tool_calls = draw(st.lists(CALL.map(lambda c: ToolCall(c.name, c.arguments, "call_1")), max_size=2))
                if m.tool_calls and draw(st.booleans()):
                    m.parts = []
        if role == "tool":
            m.tool_call_id = draw(st.sampled_from([None, "call_1"]))
            m.name = draw(st.sampled_from([None, "f"]))
        msgs.append(m)
    return Sample(msgs, draw(TOOLS))


def roundtrip(sample: Sample, fmt: str, tmp_path, ext=".jsonl") -> Sample:
    lost: list[str] = []
    row = FORMATS[fmt].dump(sample, lost)
    assert lost == [], f"{fmt} reported a loss for a sample it can hold: {lost}"
    path = tmp_path / f"rt{ext}"
    write_rows(str(path), [row])
    results = list(FileReader(str(path), ReadOptions(fmt=fmt, check_media=False)))
    assert len(results) == 1
    assert results[0].sample is not None, results[0].findings
    return results[0].sample


SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.mark.parametrize("fmt", ["swift", "alpaca", "llava", "openai"])
@SETTINGS
@given(sample=pair_samples())
def test_pair_samples_roundtrip_in_every_format(fmt, sample, tmp_path):
    assume(no_literal_tags(sample))
    assert roundtrip(sample, fmt, tmp_path) == sample


@SETTINGS
@given(sample=llava_samples())
def test_llava_roundtrip_with_tools(sample, tmp_path):
    assume(no_literal_tags(sample))
    assert roundtrip(sample, "llava", tmp_path, ".json") == sample


def lone_assistant(sample: Sample) -> bool:
    """One assistant message and nothing else is ms-swift's pre-training shape: openai reads it as text
    (as an SFT row it has no user turn, an error, so no valid SFT sample is written that way)."""
    return len(sample.messages) == 1 and sample.messages[0].role == "assistant"


@SETTINGS
@given(sample=openai_samples())
def test_openai_holds_everything(sample, tmp_path):
    assume(not lone_assistant(sample))
    assert roundtrip(sample, "openai", tmp_path) == sample
    assert roundtrip(sample, "openai", tmp_path, ".json") == sample


@pytest.mark.parametrize("name", ["chat.jsonl", "persona.jsonl", "swift.jsonl", "llava.json", "alpaca.json"])
def test_example_files_roundtrip_in_their_own_format(name, tmp_path):
    reader = FileReader(str(EXAMPLES / name))
    samples = [r.sample for r in reader]
    assert samples and all(samples)
    for s in samples:
        assert roundtrip(s, reader.format, tmp_path) == s


def test_tags_place_media_where_the_text_says():
    from mmtune.data.findings import Collector

    row = {"query": "Look: <image> then <image>.", "response": "ok", "images": ["a.png", "b.png"]}
    s = FORMATS["swift"].parse(row, Collector(1), None).sample
    assert [p.type for p in s.messages[0].parts] == ["text", "image", "text", "image", "text"]
    assert [p.ref for p in s.images] == ["a.png", "b.png"]


def test_untagged_media_go_to_the_first_user_turn():
    from mmtune.data.findings import Collector

    row = {"conversations": [{"from": "human", "value": "Q1"}, {"from": "gpt", "value": "A1"}], "images": ["a.png"]}
    s = FORMATS["llava"].parse(row, Collector(1), None).sample
    assert s.messages[0].parts == [Part.image("a.png"), Part.of_text("Q1")]


def test_alpaca_joins_instruction_and_input():
    from mmtune.data.findings import Collector

    s = FORMATS["alpaca"].parse({"instruction": "Translate", "input": "你好", "output": "Hello"}, Collector(1), None).sample
    assert s.messages[0].text == "Translate\n你好"


# ----------------------------------------------------------------------------- preference, KTO, text
ANSWER = st.builds(lambda t: [Message("assistant", [Part.of_text(t)])], TEXT)


@st.composite
def preference_samples(draw):
    prompt = []
    if draw(st.booleans()):
        prompt.append(Message("system", [Part.of_text(draw(TEXT))]))
    for _ in range(draw(st.integers(0, 2))):
        prompt += [Message("user", draw(parts(False))), Message("assistant", draw(parts(False)))]
    prompt.append(Message("user", draw(parts(False))))
    return Sample(prompt, chosen=draw(ANSWER), rejected=draw(ANSWER))


@st.composite
def kto_samples(draw):
    s = draw(preference_samples())
    return Sample(s.messages, completion=s.chosen, label=draw(st.booleans()))


@pytest.mark.parametrize("fmt", ["openai", "llava", "swift", "alpaca", "trl"])
@SETTINGS
@given(sample=preference_samples())
def test_preference_pairs_roundtrip(fmt, sample, tmp_path):
    assume(no_literal_tags(sample))
    back = roundtrip(sample, fmt, tmp_path)
    assert back == sample and back.kind == "preference"


@pytest.mark.parametrize("fmt", ["openai", "llava", "swift", "alpaca", "trl"])
@SETTINGS
@given(sample=kto_samples())
def test_kto_rows_roundtrip(fmt, sample, tmp_path):
    assume(no_literal_tags(sample))
    back = roundtrip(sample, fmt, tmp_path)
    assert back == sample and back.kind == "unpaired-preference"


@pytest.mark.parametrize("fmt", ["text", "openai"])
@SETTINGS
@given(text=TEXT)
def test_text_roundtrips(fmt, text, tmp_path):
    sample = Sample([], document=[Part.of_text(text)])
    assert roundtrip(sample, fmt, tmp_path) == sample


@SETTINGS
@given(sample=openai_samples(), reasoning=st.one_of(st.none(), TEXT), parallel=st.sampled_from([None, True]))
def test_openai_holds_reasoning_and_the_parallel_flag(sample, reasoning, parallel, tmp_path):
    assume(not lone_assistant(sample))
    for m in sample.messages:
        if m.role == "assistant":
            m.reasoning = reasoning
    sample.parallel_tool_calls = parallel
    assert roundtrip(sample, "openai", tmp_path) == sample


@SETTINGS
@given(sample=pair_samples())
def test_messages_with_media_tags_read_like_parts(sample, tmp_path):
    """ms-swift / LLaMA-Factory's shape (tags + images/videos lists) reads to the same sample as parts."""
    from mmtune.data.formats.common import join_tags

    assume(no_literal_tags(sample))
    media: dict[str, list[str]] = {}
    msgs = [{"role": m.role, "content": join_tags(m.parts, media, [])} for m in sample.messages]
    row = {"messages": msgs, **{f"{k}s": v for k, v in media.items()}}
    path = tmp_path / "tags.jsonl"
    write_rows(str(path), [row])
    [r] = list(FileReader(str(path), ReadOptions(check_media=False)))
    assert r.sample == sample, r.findings


def test_format_names_of_the_cli_are_the_registry():
    from mmtune.commands.data import FORMAT_NAMES

    assert set(FORMAT_NAMES) == set(FORMATS)


# ----------------------------------------------------------------------------- the peers' read-only shapes
# mmtune writes these through openai; here a test-side writer puts canonical samples into each peer's
# own shape, and reading it must give the same sample back.
ARGS = st.dictionaries(st.from_regex(r"[a-z]{1,5}", fullmatch=True), st.integers(), max_size=2)


@st.composite
def agent_samples(draw):
    """user → assistant [text] + parallel calls → one result per call → assistant, repeated."""
    msgs = []
    for _ in range(draw(st.integers(1, 2))):
        msgs.append(Message("user", [Part.of_text(draw(TEXT))]))
        text = draw(st.one_of(st.none(), TEXT))
        calls = [ToolCall(draw(st.from_regex(r"[a-z_]{1,8}", fullmatch=True)), json.dumps(draw(ARGS)))
                 for _ in range(draw(st.integers(1, 3)))]
        msgs.append(Message("assistant", [Part.of_text(text)] if text else [], tool_calls=calls))
        msgs += [Message("tool", [Part.of_text(draw(TEXT))]) for _ in calls]
        msgs.append(Message("assistant", [Part.of_text(draw(TEXT))]))
    return Sample(msgs, [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}])


def swift_agent_row(s: Sample) -> dict:
    msgs = []
    for m in s.messages:
        if m.role == "assistant" and m.tool_calls:
            if m.parts:
                msgs.append({"role": "assistant", "content": m.text})
            msgs += [{"role": "tool_call", "content": json.dumps({"name": c.name, "arguments": json.loads(c.arguments)})}
                     for c in m.tool_calls]
        else:
            msgs.append({"role": "tool_response" if m.role == "tool" else m.role, "content": m.text})
    return {"tools": json.dumps(s.tools), "messages": msgs}


def read_one(row: dict, tmp_path, name="r.jsonl") -> Sample:
    path = tmp_path / name
    write_rows(str(path), [row])
    [r] = list(FileReader(str(path), ReadOptions(check_media=False)))
    assert r.sample is not None, r.findings
    assert not [f for f in r.findings if f.rule in ("unknown-key", "wrong-type", "bad-tool-call",
                                                    "media-count-mismatch", "bad-weight")], r.findings
    return r.sample


@SETTINGS
@given(sample=agent_samples())
def test_ms_swift_agent_rows_roundtrip(sample, tmp_path):
    assume(no_literal_tags(sample))
    assert read_one(swift_agent_row(sample), tmp_path) == sample


def v1_row(s: Sample) -> dict:
    """LLaMA-Factory v1: content parts with `value`, reasoning / tool_call parts, loss_weight."""
    msgs = []
    for m in s.messages:
        parts = [{"type": "reasoning", "value": m.reasoning}] if m.reasoning else []
        for p in m.parts:
            kind = {"text": "text", "image": "image_url", "video": "video_url"}[p.type]
            parts.append({"type": kind, "value": p.text if p.type == "text" else p.ref})
        parts += [{"type": "tool_call", "value": json.dumps({"name": c.name, "arguments": json.loads(c.arguments)})}
                  for c in m.tool_calls]
        d = {"role": m.role, "content": parts}
        if m.weight is not None:
            d["loss_weight"] = m.weight
        msgs.append(d)
    return {"messages": msgs, **({"tools": json.dumps(s.tools)} if s.tools else {})}


@st.composite
def v1_samples(draw):
    s = draw(st.one_of(pair_samples(), agent_samples()))
    for m in s.messages:
        if m.role == "assistant":
            m.weight = draw(st.sampled_from([None, 0.0, 1.0]))
            m.reasoning = draw(st.one_of(st.none(), TEXT))
    if not any(m.trainable for m in s.messages):
        s.messages[-1].weight = None
    return s


@SETTINGS
@given(sample=v1_samples())
def test_llamafactory_v1_rows_roundtrip(sample, tmp_path):
    assume(no_literal_tags(sample))
    assert read_one(v1_row(sample), tmp_path) == sample


@st.composite
def image_samples(draw):
    msgs = [Message("system", [Part.of_text(draw(TEXT))])] if draw(st.booleans()) else []
    for _ in range(draw(st.integers(1, 3))):
        msgs += [Message("user", draw(parts(True, video=False))), Message("assistant", draw(parts(False)))]
    return Sample(msgs)


@SETTINGS
@given(sample=image_samples())
def test_minicpmv_placeholder_rows_roundtrip(sample, tmp_path):
    """MiniCPM-V: `image` as {"<image_00>": path, ...}, each key written where its image goes."""
    assume(no_literal_tags(sample))
    assume(all("<image_" not in p.text for m in sample.messages for p in m.parts))
    images, conv = {}, []
    for m in sample.messages:
        if m.role == "system":
            continue
        text = ""
        for p in m.parts:
            if p.type == "image":
                key = f"<image_{len(images):02d}>"
                images[key] = p.ref
                text += key
            else:
                text += p.text
        conv.append({"role": m.role, "content": text})
    row = {"conversations": conv, "image": images}
    if sample.system is not None:
        row["system"] = sample.system
    if not images:
        row.pop("image")
    assert read_one(row, tmp_path, "m.json") == sample
