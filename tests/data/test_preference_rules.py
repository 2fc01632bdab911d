"""The rules of preference pairs, KTO rows, plain text, file kinds, unknown keys and broken
Unicode: each bad row is reported at its line, field and rule."""

import json

import pytest

from mmtune.data.check import check_file
from mmtune.data.reader import ReadOptions, load_samples, require_kind
from mmtune.errors import UserError


def u(text):
    return {"role": "user", "content": text}


def a(text):
    return {"role": "assistant", "content": text}


GOOD_PAIR = {"messages": [u("Q?"), a("Right answer.")], "rejected_response": "Wrong answer."}


def write(tmp_path, rows, first=GOOD_PAIR, name="d.jsonl"):
    p = tmp_path / name
    lines = ([json.dumps(first)] if first is not None else []) + [
        r if isinstance(r, str) else json.dumps(r, ensure_ascii=False) for r in rows]
    p.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return p


def found(path, **opts):
    rep = check_file(str(path), ReadOptions(**opts))
    return {(f.line, f.rule, f.field, f.severity) for f in rep.findings}, rep


CASES = [
    ("identical sides", [{"messages": [u("Q?"), a("Same.")], "rejected_response": "Same."}],
     (2, "identical-sides", "rejected_response", "error")),
    ("empty rejected", [{"messages": [u("Q?"), a("Fine.")], "rejected_response": ""}],
     (2, "empty-side", "rejected_response", "error")),
    ("empty chosen", [{"messages": [u("Q?")], "rejected_response": "Other."}], (2, "empty-side", "chosen", "error")),
    ("prompts differ", [{"messages": [u("Q?"), a("Yes.")], "rejected_messages": [u("Other Q?"), a("No.")]}],
     (2, "prompt-mismatch", "rejected_messages", "error")),
    ("rejected media differ", [{"messages": [u("<image>Q?"), a("Yes.")], "rejected_response": "No.",
                                "images": ["a.png"], "rejected_images": ["b.png"]}],
     (2, "prompt-mismatch", "rejected_images", "error")),
    ("rejected media, prompt none", [{"messages": [u("Q?"), a("Yes.")], "rejected_response": "No.",
                                      "rejected_images": ["b.png"]}],
     (2, "media-one-side", "rejected_images", "error")),
    ("answer is a user turn", [{"input": {"messages": [u("Q?")]}, "preferred_output": [a("Yes.")],
                                "non_preferred_output": [u("No.")]}],
     (2, "bad-completion", "non_preferred_output[0]", "error")),
    ("kind mismatch", [{"messages": [u("Q?"), a("A plain SFT row.")]}], (2, "kind-mismatch", "", "error")),
    ("tag count", [{"messages": [u("<image><image>Q?"), a("Yes.")], "rejected_response": "No.", "images": ["a.png"]}],
     (2, "media-count-mismatch", "images", "error")),
]


@pytest.mark.parametrize("name,rows,expected", CASES, ids=[c[0] for c in CASES])
def test_preference_rule(tmp_path, name, rows, expected):
    findings, rep = found(write(tmp_path, rows), check_media=False)
    assert expected in findings, findings
    assert not any(f[0] == 1 for f in findings), "the good first row must stay clean"
    assert rep.kind == "preference"


def test_openai_preference_format_rules(tmp_path):
    good = {"input": {"messages": [u("Q?")]}, "preferred_output": [a("Good.")], "non_preferred_output": [a("Bad.")]}
    same = {"input": {"messages": [u("Q?")]}, "preferred_output": [a("Same.")], "non_preferred_output": [a("Same.")]}
    none = {"input": {"messages": [u("Q?")]}, "preferred_output": [a("Good.")]}
    findings, rep = found(write(tmp_path, [same, none], first=good))
    assert (2, "identical-sides", "non_preferred_output[0]", "error") in findings
    assert (3, "missing-field", "non_preferred_output", "error") in findings
    assert rep.kind == "preference" and not any(f[0] == 1 for f in findings)


def test_kto_rules(tmp_path):
    good = {"messages": [u("Q?"), a("Good answer.")], "label": True}
    rows = [{"messages": [u("Q?"), a("Answer.")], "label": 1}, {"messages": [u("Q?")], "label": False}]
    findings, rep = found(write(tmp_path, rows, first=good))
    assert (2, "bad-label", "label", "error") in findings
    assert (3, "empty-side", "completion", "error") in findings
    assert rep.kind == "unpaired-preference" and not any(f[0] == 1 for f in findings)


def test_text_rules(tmp_path):
    findings, rep = found(write(tmp_path, [{"text": "  "}, {"text": 3}], first={"text": "A document."}))
    assert (2, "empty-field", "text", "error") in findings and (3, "wrong-type", "text", "error") in findings
    assert rep.kind == "text"


def test_unknown_keys_are_findings(tmp_path):
    good = {"messages": [u("Q?"), a("Answer.")]}
    rows = [{"messages": [u("Q?"), a("Other answer.")], "note": "x"},
            {"messages": [u("Q?"), a("Third answer.")], "note": "y"},
            {"messages": [u("<audio>Q?"), a("Heard.")], "audios": ["x.wav"]},
            {"messages": [u("Q?"), a("Fourth answer.")], "conversations": []},
            {"messages": [u("Q?"), {"role": "assistant", "content": "Fifth.", "score": 3}]}]
    findings, _ = found(write(tmp_path, rows, first=good))
    assert (2, "unknown-key", "note", "warning") in findings
    assert not any(f[0] == 3 for f in findings), "an ignored key is reported once per file"
    assert (4, "unsupported-field", "audios", "error") in findings
    assert (5, "unknown-key", "conversations", "error") in findings
    assert (6, "unknown-key", "messages[1].score", "warning") in findings


def test_weights_that_are_not_0_or_1_are_errors(tmp_path):
    rows = [{"messages": [u("Q?"), {"role": "assistant", "content": "Half.", "loss_weight": 0.5}]},
            {"messages": [u("Q?"), {"role": "assistant", "content": "Str.", "loss": "no"}]}]
    findings, _ = found(write(tmp_path, rows, first={"messages": [u("Q?"), a("Fine.")]}))
    assert (2, "bad-weight", "messages[1].loss_weight", "error") in findings
    assert (3, "bad-weight", "messages[1].loss", "error") in findings


def test_parallel_tool_calls_false_with_two_calls_is_an_error(tmp_path):
    call = {"type": "function", "function": {"name": "f", "arguments": "{}"}}
    row = {"messages": [u("Q?"), {"role": "assistant", "content": None, "tool_calls": [call, call]},
                        {"role": "tool", "content": "1"}, {"role": "tool", "content": "2"}, a("Done.")],
           "parallel_tool_calls": False}
    findings, _ = found(write(tmp_path, [row], first={"messages": [u("Q?"), a("Fine.")]}))
    assert (2, "bad-tool-call", "messages[1].tool_calls", "error") in findings


def test_tools_as_a_bad_json_string(tmp_path):
    rows = [{"messages": [u("Q?"), a("Answer.")], "tools": "[{not json"}]
    findings, _ = found(write(tmp_path, rows, first={"messages": [u("Q?"), a("Fine.")], "tools": "[]"}))
    assert (2, "wrong-type", "tools", "error") in findings


def test_minicpmv_placeholder_rules(tmp_path):
    good = {"image": {"<image_00>": "a.png"}, "conversations": [u("See <image_00>"), a("Seen.")]}
    rows = [{"image": {"<image_00>": "a.png", "<image_01>": "b.png"}, "conversations": [u("See <image_00>"), a("Ok.")]},
            {"image": {"<image_00>": "a.png"}, "conversations": [u("<image_00> and <image_01>"), a("Ok.")]}]
    p = tmp_path / "m.json"
    p.write_text(json.dumps([good] + rows, indent=2))
    rep = check_file(str(p), ReadOptions(check_media=False))
    got = {(f.line, f.rule, f.field) for f in rep.findings}
    assert {(1, "media-count-mismatch", "image")} <= {(g[0] > 1, g[1], g[2]) for g in got}
    assert any(f.rule == "media-count-mismatch" and f.field == "conversations[0]" for f in rep.findings)
    assert not [f for f in rep.findings if f.line == 2]  # the good element starts on line 2


@pytest.mark.parametrize("escape", ["\\ud800", "\\udfff", "ok \\ud83d alone"])
def test_a_lone_surrogate_is_an_error_at_its_line(tmp_path, escape):
    good = json.dumps({"messages": [u("Q?"), a("Fine.")]})
    bad = '{"messages": [{"role": "user", "content": "x' + escape + '"}, {"role": "assistant", "content": "A."}]}'
    p = tmp_path / "s.jsonl"
    p.write_text(good + "\n" + bad + "\n")
    findings, rep = found(p)
    assert (2, "utf8", "messages[0].content", "error") in findings and rep.rows == 2
    q = tmp_path / "s.json"
    q.write_text("[\n" + good + ",\n" + bad + "\n]\n")
    findings, _ = found(q)
    assert (3, "utf8", "messages[0].content", "error") in findings
    with pytest.raises(UserError, match="utf8"):
        load_samples(str(p), ReadOptions(check_media=False))


def test_a_surrogate_pair_is_a_character_not_an_error(tmp_path):
    p = tmp_path / "s.jsonl"
    p.write_text('{"messages": [{"role": "user", "content": "smile \\ud83d\\ude00"}, {"role": "assistant", '
                 '"content": "Nice."}]}\n')
    findings, _ = found(p)
    assert findings == set()


def test_deep_nesting_is_a_finding_not_a_crash(tmp_path):
    p = tmp_path / "deep.jsonl"
    p.write_text('{"messages": ' + "[" * 5000 + "]" * 5000 + "}\n")
    findings, _ = found(p)
    assert (1, "invalid-json", "", "error") in findings


@pytest.mark.parametrize("row,stage", [
    ({"messages": [u("Q?"), a("Yes.")], "rejected_response": "No."}, "dpo"),
    ({"messages": [u("Q?"), a("Yes.")], "label": False}, "kto"),
    ({"conversations": [{"from": "human", "value": "Q?"}, {"from": "gpt", "value": "Yes."}], "kto_tag": False}, "kto"),
    ({"text": "A document."}, "pt"),
])
def test_training_refuses_a_file_of_another_kind_naming_the_stage(tmp_path, row, stage):
    p = write(tmp_path, [], first=row)
    with pytest.raises(UserError, match=f"--stage {stage}"):
        require_kind([str(p)], "sft")
    with pytest.raises(UserError, match=f"--stage {stage}"):
        load_samples(str(p), ReadOptions(check_media=False), skip_bad_rows=True)
    require_kind([str(write(tmp_path, [], first={"messages": [u("Q?"), a("Yes.")]}))], "sft")  # sft passes


def test_cli_train_stops_before_any_model_loads(tmp_path, monkeypatch, capsys):
    """`mmtune train` on KTO data: the error names the stage, and run_sft (the model) is never reached."""
    import mmtune.train.sft as sft
    from mmtune.cli import main

    called = []
    monkeypatch.setattr(sft, "run_sft", lambda cfg: called.append(cfg))
    p = write(tmp_path, [], first={"messages": [u("Q?"), a("Yes.")], "label": False})
    assert main(["train", "--data", str(p), "--output", str(tmp_path / "run")]) != 0
    assert "--stage kto" in capsys.readouterr().err
    assert called == [] and not (tmp_path / "run").exists()


def test_a_system_column_beside_messages_is_the_system_message(tmp_path):
    from mmtune.data.reader import FileReader

    p = write(tmp_path, [{"system": "Be brief.", "messages": [u("Q?"), a("A.")]},
                         {"system": "Two.", "messages": [{"role": "system", "content": "One."}, u("Q?"), a("B.")]}],
              first=None)
    results = list(FileReader(str(p), ReadOptions(check_media=False)))
    assert results[0].ok and results[0].sample.system == "Be brief."
    assert any(f.rule == "system-not-first" and f.field == "system" for f in results[1].findings)


def test_a_media_tag_without_a_media_list_is_reported(tmp_path):
    findings, _ = found(write(tmp_path, [{"messages": [u("<image>What is it?"), a("A cat.")]}],
                              first={"messages": [u("Q?"), a("A.")]}))
    assert (2, "media-tag-literal", "", "warning") in findings


def test_row_ids_survive_a_conversion(tmp_path):
    from mmtune.data.convert import convert_file
    from mmtune.data.reader import FileReader

    src = tmp_path / "m.json"
    src.write_text(json.dumps([{"id": "7", "conversations": [{"role": "user", "content": "Q?"},
                                                             {"role": "assistant", "content": "A."}]}]))
    for to in ("openai", "swift", "trl"):
        dst = tmp_path / f"o_{to}.jsonl"
        convert_file(str(src), str(dst), to)
        assert json.loads(dst.read_text())["id"] == "7"
        assert [r.sample.id for r in FileReader(str(dst))] == ["7"]


def test_training_says_when_reasoning_is_not_rendered(tmp_path):
    p = write(tmp_path, [], first={"messages": [u("Q?"), {"role": "assistant", "content": "42.",
                                                          "reasoning_content": "6 * 7"}]})
    said = []
    load_samples(str(p), ReadOptions(check_media=False), warn=said.append)
    assert len(said) == 1 and "1 row(s)" in said[0] and "reasoning" in said[0]
    said.clear()
    load_samples(str(p), ReadOptions(check_media=False), warn=said.append, reasoning_rendered=True)
    assert said == []


def test_strict_rules_are_for_sft_files(tmp_path):
    findings, _ = found(write(tmp_path, []), rules="strict")
    assert (0, "strict-sft-only", "", "error") in findings
