"""The `data check` speed path never changes a verdict: a row it calls clean has no findings
in the full parse + rules, for any row shape hypothesis can think of."""

from hypothesis import given, settings
from hypothesis import strategies as st

from mmtune.data.findings import Collector
from mmtune.data.formats import openai
from mmtune.data.rules import check_sample

CONTENT = st.one_of(st.text(max_size=6), st.none(), st.integers(), st.just(" padded "), st.just("ok"),
                   st.just("<image>ok"), st.just("a <video>"))
ROLE = st.sampled_from(["system", "user", "assistant", "tool", "bot", None])
MESSAGE = st.one_of(
    st.fixed_dictionaries({"role": ROLE, "content": CONTENT}),
    st.fixed_dictionaries({"role": ROLE, "content": CONTENT, "weight": st.sampled_from([0, 1])}),
    st.fixed_dictionaries({"role": ROLE}),
    st.text(max_size=3),
)
ROW = st.one_of(
    st.fixed_dictionaries({"messages": st.lists(MESSAGE, max_size=6)}),
    st.fixed_dictionaries({"messages": st.lists(MESSAGE, max_size=4), "tools": st.just([])}),
)


@settings(max_examples=3000, deadline=None)
@given(row=ROW)
def test_plain_clean_rows_have_no_findings(row):
    if not openai.is_plain_clean(row):
        return
    out = Collector(1)
    parsed = openai.parse(row, out, None)
    assert parsed is not None
    check_sample(parsed.sample, parsed.fields, out, media=None)
    assert out.findings == []


def test_plain_clean_accepts_the_common_row():
    row = {"messages": [{"role": "system", "content": "sys"}, {"role": "user", "content": "hi"},
                        {"role": "assistant", "content": "hello"}]}
    assert openai.is_plain_clean(row)
