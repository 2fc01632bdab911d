import json

import pytest

from mmtune.data.convert import convert_file
from mmtune.data.reader import FileReader, ReadOptions
from mmtune.data.split import split_file
from mmtune.data.stats import collect_stats
from mmtune.errors import UserError
from tests.conftest import EXAMPLES


def samples(path, **kw):
    """Samples with media refs resolved to absolute paths (conversion may re-anchor them)."""
    from mmtune.data.media import local_path
    from mmtune.data.schema import Part

    reader = FileReader(str(path), ReadOptions(check_media=False, **kw))
    out = []
    for r in reader:
        for m in r.sample.messages:
            m.parts = [p if p.type == "text" else Part(p.type, ref=local_path(p.ref, reader.media_root)) for p in m.parts]
        out.append(r.sample)
    return out


@pytest.mark.parametrize("src", ["swift.jsonl", "llava.json", "alpaca.json", "persona.jsonl"])
@pytest.mark.parametrize("to", ["openai", "swift", "llava", "alpaca"])
def test_convert_between_formats_keeps_the_samples(tmp_path, src, to):
    out = tmp_path / f"out.{'json' if to == 'llava' else 'jsonl'}"
    rep = convert_file(str(EXAMPLES / src), str(out), to)
    assert rep.rows == len(samples(EXAMPLES / src))
    assert samples(out, fmt=to) == samples(EXAMPLES / src)


def test_converted_media_paths_still_point_at_the_files(tmp_path):
    out = tmp_path / "deep" / "out.jsonl"
    out.parent.mkdir()
    convert_file(str(EXAMPLES / "llava.json"), str(out), "openai")
    rep = FileReader(str(out))
    results = list(rep)
    assert rep.errors == 0, [f for r in results for f in r.findings]
    assert sum(len(r.sample.images) for r in results) == 3


def test_lossy_conversion_is_refused_and_nothing_is_written(tmp_path):
    out = tmp_path / "a.json"
    with pytest.raises(UserError) as e:
        convert_file(str(EXAMPLES / "chat.jsonl"), str(out), "alpaca")
    msg = str(e.value)
    assert "would lose" in msg and "tool" in msg and "--lossy" in msg and "chat.jsonl:4" in msg
    assert not out.exists()
    rep = convert_file(str(EXAMPLES / "chat.jsonl"), str(out), "alpaca", lossy=True)
    assert out.exists() and rep.lossy_rows == 2 and rep.rows == 6


def test_convert_refuses_input_with_errors(tmp_path):
    with pytest.raises(UserError, match="errors"):
        convert_file(str(EXAMPLES / "bad.jsonl"), str(tmp_path / "o.jsonl"), "openai")


def test_weights_are_a_loss_for_pair_formats(tmp_path):
    p = tmp_path / "in.jsonl"
    p.write_text(json.dumps({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "bb", "weight": 0},
                                          {"role": "user", "content": "c"}, {"role": "assistant", "content": "dd"}]}) + "\n")
    with pytest.raises(UserError, match="per-turn train weights"):
        convert_file(str(p), str(tmp_path / "o.jsonl"), "swift")


def test_split_is_deterministic_and_copies_rows_unchanged(tmp_path):
    src = EXAMPLES / "persona.jsonl"
    tr, va, ntr, nva = split_file(str(src), 0.2, 7, str(tmp_path / "a"))
    tr2, va2, _, _ = split_file(str(src), 0.2, 7, str(tmp_path / "b"))
    assert (ntr, nva) == (18, 4)
    assert open(tr).read() == open(tr2).read() and open(va).read() == open(va2).read()
    assert sorted(open(tr).readlines() + open(va).readlines()) == sorted(src.read_text().splitlines(keepends=True))
    _, va3, _, _ = split_file(str(src), 0.2, 8, str(tmp_path / "c"))
    assert open(va3).read() != open(va).read()
    with pytest.raises(UserError, match="--force"):
        split_file(str(src), 0.2, 7, str(tmp_path / "a"))


def test_split_json_array(tmp_path):
    tr, va, ntr, nva = split_file(str(EXAMPLES / "llava.json"), 0.25, 1, str(tmp_path))
    assert (ntr, nva) == (3, 1)
    assert len(json.load(open(tr))) == 3


def test_stats_counts(tmp_path):
    st = collect_stats(str(EXAMPLES / "llava.json"))
    assert st["rows"] == 4 and st["images"] == 3 and st["videos"] == 1
    assert st["messages_by_role"] == {"system": 1, "user": 5, "assistant": 5}
    assert st["assistant_turns"]["total"] == 5

    class CharTokenizer:  # one token per character: easy to reason about
        chat_template = None

        def encode(self, text, add_special_tokens=False):
            return list(text)

    from mmtune.data.stats import token_counter

    st = collect_stats(str(EXAMPLES / "persona.jsonl"), count_tokens=token_counter(CharTokenizer()), max_length=60)
    assert st["tokens"]["total"] == st["characters"]["total"]
    assert st["rows_over_max_length"] >= 1
    assert sum(h["count"] for h in st["tokens"]["histogram"]) == st["rows"]
