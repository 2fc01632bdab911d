"""No row shape crashes the reader: every key any format reads, with any JSON value, gives
findings or a sample, never an exception (the check must survive the files people bring)."""

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mmtune.data.check import check_file
from mmtune.data.convert import convert_file
from mmtune.data.formats import ALL_KEYS, FORMATS
from mmtune.data.reader import FileReader, ReadOptions
from mmtune.errors import UserError

SCALAR = st.one_of(st.none(), st.booleans(), st.integers(-2, 2), st.sampled_from(["", "x", "<image>", "<image_00>",
                   '{"name": "f", "arguments": {}}', "user", "assistant", "tool_call", "a.png"]))
KEYS = sorted(ALL_KEYS | {"role", "content", "from", "value", "type", "text", "human", "assistant", "name",
                          "tool_calls", "function", "arguments", "loss", "loss_weight", "reasoning_content"})
JSON = st.recursive(SCALAR, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                    st.dictionaries(st.sampled_from(KEYS), inner, max_size=4)),
                    max_leaves=12)
ROW = st.dictionaries(st.sampled_from(sorted(ALL_KEYS)), JSON, min_size=1, max_size=4)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(ROW, min_size=1, max_size=3), fmt=st.sampled_from([None, *FORMATS]))
def test_any_row_gives_findings_not_a_crash(rows, fmt, tmp_path):
    p = tmp_path / "f.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    opts = ReadOptions(fmt=fmt, check_media=False)
    check_file(str(p), opts)
    results = list(FileReader(str(p), opts))
    assert len([r for r in results if r.index >= 0]) == len(rows)
    for to in FORMATS:
        try:
            convert_file(str(p), str(tmp_path / "o.jsonl"), to, fmt=fmt, lossy=True)
        except UserError:
            pass
