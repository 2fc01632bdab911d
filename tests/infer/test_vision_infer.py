"""`mmtune infer` on data rows with images, for a vision-language model."""

from __future__ import annotations

import json

import pytest
from infer.tiny import tiny_adapter
from infer.tiny_vision import image_file, image_messages, lively_vlm

from mmtune.cli import main
from mmtune.infer.engine import Engine


@pytest.fixture
def image_data(tmp_path):
    pics = tmp_path / "pics"
    pics.mkdir()
    image_file(0, pics), image_file(1, pics)
    rows = [
        {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "pics/img0.png"}},
                                                   {"type": "text", "text": "What is in this picture?"}]},
                      {"role": "assistant", "content": "A square."}]},
        {"conversations": [{"from": "human", "value": "<image>\nWhat is in this picture?"},
                           {"from": "gpt", "value": "A circle."}], "image": "pics/img1.png"},
        {"messages": [{"role": "user", "content": "No picture here."}]},
    ]
    openai_rows, llava_rows = tmp_path / "eval.jsonl", tmp_path / "llava.jsonl"
    openai_rows.write_text("\n".join(json.dumps(r) for r in (rows[0], rows[2])) + "\n")
    llava_rows.write_text(json.dumps(rows[1]) + "\n")
    return tmp_path, openai_rows, llava_rows


def test_infer_on_image_rows(image_data, capsys):
    folder, openai_rows, llava_rows = image_data
    model = str(lively_vlm("qwen2_vl"))
    gen = ["--temperature", "0", "--max-new-tokens", "6"]
    out, out_llava = folder / "preds.jsonl", folder / "preds-llava.jsonl"
    assert main(["infer", model, "--data", str(openai_rows), "--out", str(out), "--batch-size", "2", *gen]) == 0
    assert main(["infer", model, "--data", str(llava_rows), "--out", str(out_llava), *gen]) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    records += [json.loads(line) for line in out_llava.read_text().splitlines()]
    engine = Engine(model)
    greedy = {"temperature": 0, "max_new_tokens": 6}
    want = [
        engine.chat(image_messages(str(folder / "pics" / "img0.png")), **greedy),
        engine.chat([{"role": "user", "content": "No picture here."}], **greedy),
        engine.chat(image_messages(str(folder / "pics" / "img1.png"), "\nWhat is in this picture?"), **greedy),
    ]
    assert [r["prediction"] for r in records] == want
    assert [r["reference"] for r in records] == ["A square.", None, "A circle."]
    assert records[0]["prompt"][0]["content"][0] == {"type": "image_url", "image_url": {"url": "pics/img0.png"}}
    assert records[0]["prediction"] != records[2]["prediction"]  # different pictures, different answers


def test_infer_image_rows_on_a_text_model(image_data, capsys):
    folder, openai_rows, _ = image_data
    out = folder / "text-preds.jsonl"
    assert main(["infer", str(tiny_adapter("qwen2", 1)), "--data", str(openai_rows), "--out", str(out)]) != 0
    assert "is a text model" in capsys.readouterr().err and not out.exists()
