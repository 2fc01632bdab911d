"""`mmtune infer` and the metrics: predictions beside references, batched == one by one."""

from __future__ import annotations

import json

import pytest
from infer.tiny import tiny_adapter

from mmtune.cli import main
from mmtune.errors import UserError
from mmtune.infer.batch import read_rows
from mmtune.infer.engine import Engine
from mmtune.infer.metrics import bleu, exact_match, lcs_length, rouge_l, tokenize


def test_exact_match_normalizes_whitespace():
    assert exact_match([" a  b\n", "c"], ["a b", "d"]) == 50.0


def test_bleu_known_values():
    assert bleu(["the cat sat on the mat"], ["the cat sat on the mat"]) == pytest.approx(100.0)
    assert bleu(["completely different words here"], ["the cat sat on the mat"]) == 0.0
    # hand-computed: p1=5/6 p2=3/5 p3=2/4 p4=1/3, hyp 6 < ref 7 tokens → BP=exp(1-7/6)
    got = bleu(["the cat sat on a mat"], ["the cat sat on the red mat"])
    want = 100 * 2.718281828 ** (1 - 7 / 6) * ((5 / 6) * (3 / 5) * (2 / 4) * (1 / 3)) ** 0.25
    assert got == pytest.approx(want, rel=1e-6)


def test_rouge_l_and_cjk_tokens():
    assert lcs_length(list("ABCBDAB"), list("BDCABA")) == 4
    assert rouge_l(["a b c d"], ["a c d e f"]) == pytest.approx(100 * 2 * 3 / 9)
    assert tokenize("你好，world!") == ["你", "好", "，", "world", "!"]
    assert rouge_l(["今天天气好"], ["今天天气很好"]) == pytest.approx(100 * 2 * 5 / 11)


@pytest.fixture
def data(tmp_path):
    rows = [
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]},
        {"query": "What is 2+2?", "response": "4", "history": [["Hello", "Hi there"]]},
        {"messages": [{"role": "user", "content": "A prompt without a reference"}]},
    ]
    path = tmp_path / "eval.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows[:1] + rows[2:]) + "\n")
    swift = tmp_path / "swift.jsonl"
    swift.write_text(json.dumps(rows[1]) + "\n")
    return path, swift


def test_infer_writes_predictions_beside_references(data, tmp_path, capsys):
    path, _ = data
    out = tmp_path / "preds.jsonl"
    adapter = str(tiny_adapter("qwen2", 1))
    argv = [
        "infer",
        adapter,
        "--data",
        str(path),
        "--out",
        str(out),
        "--batch-size",
        "2",
        "--max-new-tokens",
        "6",
    ]
    assert main([*argv, "--metrics"]) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["reference"] for r in records] == ["Hello!", None]
    assert records[0]["prompt"] == [{"role": "user", "content": "Hi"}] and records[0]["line"] == 1
    engine = Engine(adapter)
    for r in records:  # greedy, batched with padding == alone
        assert r["prediction"] == engine.chat(r["prompt"], temperature=0, max_new_tokens=6)
        assert r["completion_tokens"] == 6 and r["prompt_tokens"] == len(engine.prompt_ids(r["prompt"]))
    printed = capsys.readouterr().out
    assert "exact match 0.00" in printed and "over 1 rows" in printed
    assert json.loads((tmp_path / "preds.jsonl.metrics.json").read_text())["n"] == 1


def test_any_format_and_bad_rows(data, tmp_path):
    _, swift = data
    (row,) = read_rows(str(swift))
    assert row.reference == "4" and [m.role for m in row.prompt.messages] == ["user", "assistant", "user"]
    bad = tmp_path / "bad.jsonl"
    good = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]}
    bad.write_text('{"messages": [{"role": "wizard", "content": "x"}]}\n' + json.dumps(good) + "\n")
    with pytest.raises(UserError, match="bad row"):
        read_rows(str(bad))
    warned = []
    assert len(read_rows(str(bad), skip_bad_rows=True, warn=warned.append)) == 1
    assert "skipped 1 bad row" in warned[0] and "lines 1" in warned[0]
