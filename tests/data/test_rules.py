"""Each rule of FORMATS.md: a bad file is reported at the right line, field and rule."""

import json

import pytest

from mmtune.data.check import check_file
from mmtune.data.reader import ReadOptions

GOOD = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there."}]}


def jsonl(tmp_path, rows, name="d.jsonl"):
    """A file whose line 1 is a good row and whose later lines are `rows` (str rows written raw)."""
    p = tmp_path / name
    lines = [json.dumps(GOOD)] + [r if isinstance(r, str) else json.dumps(r, ensure_ascii=False) for r in rows]
    p.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return p


def found(path, **opts):
    rep = check_file(str(path), ReadOptions(**opts))
    return {(f.line, f.rule, f.field, f.severity) for f in rep.findings}, rep


def msgs(*pairs):
    return {"messages": [{"role": r, "content": c} for r, c in pairs]}


DEFAULT_CASES = [
    ("invalid-json", ['{"messages": [}'], (2, "invalid-json", "", "error")),
    ("not-object", ['["a list"]'], (2, "not-object", "", "error")),
    ("missing messages", [{"prompt": "x", "completion": "y", "messages": None}], (2, "missing-field", "messages", "error")),
    ("empty messages", [{"messages": []}], (2, "empty-field", "messages", "error")),
    ("missing role", [{"messages": [{"content": "x"}]}], (2, "missing-field", "messages[0].role", "error")),
    ("missing content", [{"messages": [{"role": "user"}, {"role": "assistant", "content": "a"}]}],
     (2, "missing-field", "messages[0].content", "error")),
    ("unknown role", [msgs(("user", "q"), ("bot", "a"))], (2, "unknown-role", "messages[1].role", "error")),
    ("system not first", [msgs(("user", "q"), ("assistant", "a"), ("system", "s"))],
     (2, "system-not-first", "messages[2].role", "error")),
    ("first not user", [msgs(("assistant", "a"), ("user", "q"), ("assistant", "b"))],
     (2, "first-not-user", "messages[0].role", "error")),
    ("not alternating", [msgs(("user", "q"), ("user", "q2"), ("assistant", "a"))],
     (2, "not-alternating", "messages[1].role", "error")),
    ("no assistant", [msgs(("user", "q"))], (2, "no-assistant", "", "error")),
    ("all weights zero", [{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a!", "weight": 0}]}],
     (2, "no-assistant", "", "error")),
    ("bad weight", [{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "ab", "weight": 0.5}]}],
     (2, "bad-weight", "messages[1].weight", "error")),
    ("empty answer", [msgs(("user", "q"), ("assistant", "  "))], (2, "empty-field", "messages[1]", "error")),
    ("bad tool arguments", [{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": None,
      "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": "{not json"}}]},
      {"role": "tool", "content": "1"}, {"role": "assistant", "content": "ok"}]}],
     (2, "bad-tool-call", "messages[1].tool_calls[0].function.arguments", "error")),
    ("tool without call", [msgs(("user", "q"), ("assistant", "a"), ("tool", "r"))],
     (2, "not-alternating", "messages[2].role", "error")),
    ("wrong type", [{"messages": "hello"}], (2, "wrong-type", "messages", "error")),
    ("format mismatch", [{"query": "q", "response": "r"}], (2, "format-mismatch", "", "error")),
    ("duplicate", [GOOD], (2, "duplicate-row", "", "warning")),
    ("empty system", [msgs(("system", ""), ("user", "q"), ("assistant", "ab"))], (2, "empty-system", "messages[0]", "warning")),
    ("whitespace", [msgs(("user", "q "), ("assistant", "ab"))], (2, "whitespace", "messages[0]", "warning")),
    ("short answer", [msgs(("user", "q"), ("assistant", "7"))], (2, "short-answer", "messages[1]", "warning")),
    ("trailing user", [msgs(("user", "q"), ("assistant", "ab"), ("user", "more?"))], (2, "trailing-user", "messages[2]", "warning")),
]


@pytest.mark.parametrize("name,rows,expected", DEFAULT_CASES, ids=[c[0] for c in DEFAULT_CASES])
def test_default_rule(tmp_path, name, rows, expected):
    findings, rep = found(jsonl(tmp_path, rows))
    assert expected in findings
    assert not any(f[0] == 1 for f in findings), "the good first row must stay clean"
    assert rep.rows == 2


def test_not_utf8(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_bytes(json.dumps(GOOD).encode() + b'\n{"messages": "\xff\xfe"}\n')
    findings, _ = found(p)
    assert (2, "utf8", "", "error") in findings


STRICT_CASES = [
    ("rule 1 invalid json", ['{"messages": [}'], (2, "invalid-json", "")),
    ("rule 1 not an object", ["[1, 2]"], (2, "not-object", "")),
    ("rule 2 no messages", [{"query": "q", "response": "r"}], (2, "messages-missing", "messages")),
    ("rule 2 not an array", [{"messages": {"role": "user"}}], (2, "messages-not-array", "messages")),
    ("rule 2 empty", [{"messages": []}], (2, "messages-empty", "messages")),
    ("rule 3 no role", [{"messages": [{"content": "q"}, {"role": "assistant", "content": "a"}]}],
     (2, "message-missing-role", "messages[0].role")),
    ("rule 3 no content", [{"messages": [{"role": "user"}, {"role": "assistant", "content": "a"}]}],
     (2, "message-missing-content", "messages[0].content")),
    ("rule 4 tool role", [msgs(("user", "q"), ("tool", "t"), ("assistant", "a"))], (2, "role-not-allowed", "messages[1].role")),
    ("rule 5 system later", [msgs(("user", "q"), ("system", "s"), ("assistant", "a"))],
     (2, "system-not-first", "messages[1].role")),
    ("rule 6 assistant first", [msgs(("system", "s"), ("assistant", "a"), ("user", "q"))],
     (2, "first-not-user", "messages[1].role")),
    ("rule 7 not alternating", [msgs(("user", "q"), ("assistant", "a"), ("assistant", "b"), ("user", "c"))],
     (2, "not-alternating", "messages[2].role")),
    ("rule 7 unpaired", [msgs(("user", "q"), ("assistant", "a"), ("user", "c"))], (2, "unpaired", "messages[2]")),
    ("rule 7 no pair", [msgs(("system", "s"))], (2, "no-pair", "messages")),
]


@pytest.mark.parametrize("name,rows,expected", STRICT_CASES, ids=[c[0] for c in STRICT_CASES])
def test_strict_rule(tmp_path, name, rows, expected):
    findings, _ = found(jsonl(tmp_path, rows), rules="strict")
    assert (*expected, "error") in findings
    assert not any(f[0] == 1 for f in findings)


def test_strict_rule_1_needs_jsonl(tmp_path):
    p = tmp_path / "d.json"
    p.write_text(json.dumps([GOOD]))
    findings, _ = found(p, rules="strict")
    assert (0, "jsonl-file", "", "error") in findings


def test_strict_accepts_a_clean_file_and_nothing_else_matters(tmp_path):
    """Strict is exactly the hosted rule set: duplicates and whitespace are not its business."""
    findings, rep = found(jsonl(tmp_path, [GOOD, msgs(("system", "s"), ("user", "q "), ("assistant", "x"))]), rules="strict")
    assert findings == set() and rep.rows == 3


MEDIA_ROW = {"conversations": [{"from": "human", "value": "<image>What?"}, {"from": "gpt", "value": "A shape."}]}


def llava_file(tmp_path, rows):
    p = tmp_path / "l.json"
    p.write_text(json.dumps(rows, indent=2, ensure_ascii=False))
    return p


def test_media_rules(tmp_path, example_media):
    import shutil

    shutil.copy(example_media / "red_circle.png", tmp_path / "ok.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    (tmp_path / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 nope")
    shutil.copy(example_media / "moving_circle.mp4", tmp_path / "ok.mp4")
    rows = [
        {**MEDIA_ROW, "image": "ok.png"},
        {**MEDIA_ROW, "image": "missing.png"},
        {**MEDIA_ROW, "image": "broken.png"},
        {**MEDIA_ROW, "images": ["ok.png", "ok.png"]},
        {"conversations": [{"from": "human", "value": "<video>Describe"}, {"from": "gpt", "value": "It moves."}], "video": "broken.mp4"},
        {"conversations": [{"from": "human", "value": "<video>Describe"}, {"from": "gpt", "value": "It moves."}], "video": "ok.mp4"},
        {**MEDIA_ROW, "image": "../outside.png"},
        {**MEDIA_ROW, "image": "https://example.com/x.png"},
    ]
    path = llava_file(tmp_path, rows)
    findings, rep = found(path, media_root=str(tmp_path), enforce_root=True)
    text = path.read_text().splitlines()
    starts = [i + 1 for i, line in enumerate(text) if line == "  {"]
    rules = {(line, rule) for line, rule, _, _ in findings}
    assert (starts[1], "media-missing") in rules
    assert (starts[2], "media-undecodable") in rules
    assert (starts[3], "media-count-mismatch") in rules
    assert (starts[4], "media-undecodable") in rules
    assert (starts[6], "media-outside-root") in rules
    assert (starts[7], "media-remote") in rules
    assert not any(line in (starts[0], starts[5]) for line, _ in rules)
    assert rep.errors == 5 and rep.warnings == 1


def test_swift_tag_count_mismatch(tmp_path):
    p = tmp_path / "s.jsonl"
    p.write_text(json.dumps({"query": "<image><image>Q", "response": "A!", "images": ["a.png"]}) + "\n")
    findings, _ = found(p, check_media=False)
    assert (1, "media-count-mismatch", "images", "error") in findings


def test_unknown_format(tmp_path):
    p = tmp_path / "u.jsonl"
    p.write_text('{"question": "a", "answer": "b"}\n')
    findings, rep = found(p)
    assert (1, "unknown-format", "", "error") in findings and rep.format == "unknown"


def test_empty_file(tmp_path):
    p = tmp_path / "e.jsonl"
    p.write_text("\n\n")
    findings, _ = found(p)
    assert (0, "empty-file", "", "error") in findings


def test_a_file_with_many_faults_lists_them_all(tmp_path):
    rows = [case[1][0] for case in DEFAULT_CASES]
    findings, rep = found(jsonl(tmp_path, rows))
    for i, case in enumerate(DEFAULT_CASES):
        _, rule, field, sev = case[2]
        assert (i + 2, rule, field, sev) in findings, case[0]
    assert rep.rows == len(rows) + 1


def test_json_array_lines_point_at_each_element(tmp_path):
    rows = [MEDIA_ROW | {"image": "x.png"}, {"conversations": [{"from": "bot", "value": "x"}]}]
    p = tmp_path / "a.json"
    p.write_text("[\n  " + json.dumps(rows[0]) + ",\n\n  " + json.dumps(rows[1], indent=2) + "\n]\n")
    findings, rep = found(p, check_media=False)
    assert (4, "unknown-role", "conversations[0].from", "error") in findings
    assert rep.rows == 2


def test_broken_json_array_is_reported(tmp_path):
    p = tmp_path / "a.json"
    p.write_text('[\n {"conversations": []},\n {"conversations": [}\n]')
    findings, _ = found(p)
    assert (3, "invalid-json", "", "error") in findings
    assert (2, "empty-field", "conversations", "error") in findings
