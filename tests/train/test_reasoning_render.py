"""Reasoning in rendering (issue 13): an assistant turn's reasoning trains with its answer, or is
dropped on request, never silently.

Templates that render reasoning themselves (Qwen3's `reasoning_content`, LFM2.5's `thinking`,
found by a probe render) get it under their own key; templates without a place for it (SmolLM2's
ChatML, Llama 3.1, ...) get the fallback `<think>\\n...\\n</think>\\n\\n` before the answer.
References: the template's own rendering (ids) and a regular expression per family that finds
each answer in the template's own text (labels), as tests/train/test_render.py does.
"""

from __future__ import annotations

import json
import re

import pytest
from helpers.tokenizers import FAMILIES
from test_render import ANSWER_RE, _char_overlap_mask

from mmtune.chat import reasoning as reasoningfmt
from mmtune.chat.conversation import conversation
from mmtune.chat.render import IGNORE_INDEX, assistant_mask_reference, render_prompt, render_sample
from mmtune.config import REASONING, TrainConfig
from mmtune.data.schema import Message, Sample, Source
from mmtune.errors import UserError

M = Message.simple
THOUGHT = "The user wants a sum.\nTwo and two make four."
THOUGHT2 = "Three and three make six."



def one_turn(reasoning: str | None = THOUGHT) -> Sample:
    return Sample([M("user", "What is 2+2?"), M("assistant", "4", reasoning=reasoning)], source=Source("r.jsonl", 1))


def two_turns() -> Sample:
    return Sample([M("user", "What is 2+2?"), M("assistant", "4", reasoning=THOUGHT),
                   M("user", "And 3+3?"), M("assistant", "6", reasoning=THOUGHT2)], source=Source("r.jsonl", 2))


def template_messages(sample: Sample, key: str | None) -> list[dict]:
    """The conversation as the template's own user would pass it: reasoning under `key`, or
    (no key) written into the content as the documented fallback text."""
    out = []
    for m in sample.messages:
        d = {"role": m.role, "content": m.text}
        if m.reasoning and key:
            d[key] = m.reasoning
        elif m.reasoning:
            d["content"] = f"<think>\n{m.reasoning}\n</think>\n\n{m.text}"
        out.append(d)
    return out


def own_ids(t, messages) -> list[int]:
    return list(t.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"])


def reference_mask(family: str, t, messages) -> list[int]:
    if FAMILIES[family].markers:
        return assistant_mask_reference(messages, t)
    text = t.apply_chat_template(messages, tokenize=False)
    spans = [m.span(1) for m in re.finditer(ANSWER_RE[family], text, flags=re.S)]
    return _char_overlap_mask(t, text, spans)


def mask_of(r) -> list[int]:
    return [int(x != IGNORE_INDEX) for x in r.labels]


def trained_text(r, t) -> str:
    return t.decode([x for x in r.labels if x != IGNORE_INDEX])


# every other family renders no reasoning; LFM2.5 reads `thinking`, which transformers fills from reasoning_content
KEYS = {"qwen3": "reasoning_content", "lfm2.5": "reasoning_content"}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_the_probe_finds_the_templates_key(tok, family):
    assert reasoningfmt.template_key(tok(family)) == KEYS.get(family)
    conv = conversation(one_turn(), tok(family))
    assert conv.reasoning == ("template" if family in KEYS else "fallback")
    assert conversation(one_turn(None), tok(family)).reasoning is None  # no reasoning: nothing probed or changed


@pytest.mark.parametrize("family", list(FAMILIES))
def test_keep_trains_the_reasoning_with_ids_and_labels_of_the_template(tok, family):
    """keep: ids are the template's own rendering (its key, or the fallback text), each label is
    the reference's (token by token), and the reasoning is inside the trained tokens."""
    t, sample = tok(family), one_turn()
    r = render_sample(sample, t)
    messages = template_messages(sample, KEYS.get(family))
    assert r.input_ids == own_ids(t, messages)
    assert mask_of(r) == reference_mask(family, t, messages)
    assert all(lab in (IGNORE_INDEX, i) for lab, i in zip(r.labels, r.input_ids))
    said = trained_text(r, t)
    assert THOUGHT in said and said.index(THOUGHT) < said.index("4")
    assert r.reasoning_turns == 1 and r.reasoning_dropped == 0
    assert r.reasoning_tokens == len(t(THOUGHT, add_special_tokens=False)["input_ids"])


@pytest.mark.parametrize("family", list(FAMILIES))
def test_drop_trains_the_answer_only(tok, family):
    t = tok(family)
    r = render_sample(one_turn(), t, reasoning="drop")
    assert "make four" not in t.decode(r.input_ids)  # not in the text at all, so not in the labels
    assert r.input_ids == render_sample(one_turn(None), t).input_ids  # as the row without reasoning
    assert r.labels == render_sample(one_turn(None), t).labels
    assert (r.reasoning_turns, r.reasoning_tokens, r.reasoning_dropped) == (0, 0, 1)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_rows_without_reasoning_render_the_same_in_both_modes(tok, family):
    t, plain = tok(family), one_turn(None)
    for train_on in ("assistant", "last", "all"):
        keep = render_sample(plain, t, train_on=train_on)
        drop = render_sample(plain, t, train_on=train_on, reasoning="drop")
        assert (keep.input_ids, keep.labels) == (drop.input_ids, drop.labels)
        assert (keep.reasoning_turns, keep.reasoning_dropped) == (0, 0)


def test_qwen3_trains_reasoning_only_where_the_template_keeps_it(tok):
    """Qwen3 shows reasoning only after the last user message: the first answer trains without
    its reasoning (as the model sees it in history at inference), the last with it."""
    t, sample = tok("qwen3"), two_turns()
    r = render_sample(sample, t)
    messages = template_messages(sample, "reasoning_content")
    assert r.input_ids == own_ids(t, messages)
    assert mask_of(r) == reference_mask("qwen3", t, messages)
    text = t.decode(r.input_ids)
    assert THOUGHT not in text and THOUGHT2 in text
    assert trained_text(r, t) == f"4<|im_end|><think>\n{THOUGHT2}\n</think>\n\n6<|im_end|>"
    assert (r.reasoning_turns, r.reasoning_dropped) == (1, 1)


def test_qwen3_labels_start_where_inference_generates(tok):
    """The prompt the Engine renders is a prefix of the training ids, and the first token after it
    (`<think>`) is trained: the model learns to open its reasoning where it will start writing."""
    t, sample = tok("qwen3"), two_turns()
    r = render_sample(sample, t)
    ids = render_prompt(Sample(sample.messages[:3]), t)
    assert r.input_ids[: len(ids)] == ids
    assert r.labels[len(ids) - 1] == IGNORE_INDEX and r.labels[len(ids)] == r.input_ids[len(ids)]
    assert t.decode(r.input_ids[len(ids)]) == "<think>"


def test_chatml_fallback_text_and_inference_prefix(tok):
    t = tok("chatml")
    r = render_sample(two_turns(), t)
    assert trained_text(r, t) == (f"<think>\n{THOUGHT}\n</think>\n\n4<|im_end|>"
                                  f"<think>\n{THOUGHT2}\n</think>\n\n6<|im_end|>")
    ids = render_prompt(Sample(two_turns().messages[:3]), t)  # the history keeps its reasoning, as trained
    assert r.input_ids[: len(ids)] == ids and r.labels[len(ids)] != IGNORE_INDEX
    assert (r.reasoning_turns, r.reasoning_dropped) == (2, 0)


def test_train_on_last_and_all_and_weight0(tok):
    t = tok("chatml")
    last = render_sample(two_turns(), t, train_on="last")
    assert THOUGHT2 in trained_text(last, t) and THOUGHT not in trained_text(last, t)
    assert (last.reasoning_turns, last.reasoning_dropped) == (1, 0)
    every = render_sample(two_turns(), t, train_on="all")
    assert THOUGHT in trained_text(every, t) and every.reasoning_turns == 2
    context = two_turns()
    context.messages[1].weight = 0  # a context turn: neither its answer nor its reasoning trains
    r = render_sample(context, t)
    assert THOUGHT in t.decode(r.input_ids) and THOUGHT not in trained_text(r, t)
    assert (r.reasoning_turns, r.reasoning_dropped) == (1, 0)


def test_fallback_keeps_tool_calls_after_the_reasoning(tok):
    from mmtune.data.schema import ToolCall

    t = tok("chatml")
    call = ToolCall("get_weather", '{"city": "Paris"}', id="c1")
    sample = Sample([M("user", "Weather?"), Message("assistant", [], tool_calls=[call], reasoning="I should look it up."),
                     Message("tool", [Message.simple("tool", "18").parts[0]], tool_call_id="c1"),
                     M("assistant", "18°C.")])
    said = trained_text(render_sample(sample, t), t)
    assert '<think>\nI should look it up.\n</think>\n\n<tool_call>\n{"name": "get_weather"' in said


def test_modes_are_one_list_and_bad_ones_are_refused(tok):
    assert REASONING == reasoningfmt.REASONING_MODES
    with pytest.raises(UserError, match="reasoning must be one of keep, drop"):
        render_sample(one_turn(), tok("chatml"), reasoning="hide")
    with pytest.raises(UserError):
        TrainConfig.from_dict({"data": ["x.jsonl"], "reasoning": "hide"})


# ----------------------------------------------------------------------------- mmtune train


def reasoning_row() -> dict:
    return {"messages": [{"role": "user", "content": "What is 2+2?"},
                         {"role": "assistant", "content": "4", "reasoning_content": THOUGHT}]}


@pytest.mark.parametrize("mode", ["keep", "drop"])
def test_mmtune_train_trains_the_reasoning_tokens(tiny_llama, tmp_path, capsys, mode):
    """The tiny Llama (Llama 3.1's template: the fallback) on a reasoning row: keep trains the
    reasoning tokens (counted in summary.json) with no "not trained" warning; drop says so once."""
    from transformers import AutoTokenizer

    from mmtune.cli import main

    data = tmp_path / "reason.jsonl"
    data.write_text(json.dumps(reasoning_row()) + "\n" + json.dumps(reasoning_row()) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    argv = ["train", "--model", str(tiny_llama), "--data", str(data), "--output", str(out), "--max-steps", "1",
            "--batch-size", "2", "--max-length", "256", "--save-strategy", "no", "--no-data-cache",
            "--reasoning", mode]
    assert main(argv) == 0
    said = capsys.readouterr()
    said = said.out + said.err
    stats = json.loads((out / "summary.json").read_text())["data"]
    t = AutoTokenizer.from_pretrained(tiny_llama)
    sample = Sample([M("user", "What is 2+2?"), M("assistant", "4", reasoning=THOUGHT)])
    thought_tokens = len(t(THOUGHT, add_special_tokens=False)["input_ids"])
    assert "does not render" not in said and "is not trained" not in said
    if mode == "keep":
        assert stats["reasoning_rows"] == 2 and stats["reasoning_tokens"] == 2 * thought_tokens
        assert stats["train_supervised_tokens"] == 2 * render_sample(sample, t).n_supervised
        assert "reasoning" not in said
    else:
        assert stats["reasoning_rows"] == 0 and stats["reasoning_tokens"] == 0 and stats["reasoning_dropped_rows"] == 2
        lines = [line for line in said.splitlines() if "reasoning" in line]
        assert lines == ["note: --reasoning drop: 2 of 2 rows carry reasoning; their answers are trained, the "
                         "reasoning is not (--reasoning keep trains it)"]
        assert stats["train_supervised_tokens"] == 2 * render_sample(sample, t, reasoning="drop").n_supervised


def test_the_template_leaving_reasoning_out_is_said_once(tok, tmp_path):
    """Qwen3 on a two-question row: the first answer trains without its reasoning, and the data
    step says so in one line (the reader's "not rendered" warning is gone: it is rendered)."""
    from mmtune.train.dataset import render_datasets

    row = {"messages": [{"role": "user", "content": "What is 2+2?"},
                        {"role": "assistant", "content": "4", "reasoning_content": THOUGHT},
                        {"role": "user", "content": "And 3+3?"},
                        {"role": "assistant", "content": "6", "reasoning_content": THOUGHT2}]}
    data = tmp_path / "two.jsonl"
    data.write_text(json.dumps(row) + "\n", encoding="utf-8")
    said: list[str] = []
    cfg = TrainConfig.from_dict({"data": [str(data)], "output": str(tmp_path / "out")})
    stats = render_datasets(cfg, tok("qwen3"), said.append).stats
    assert said == ["note: the chat template leaves the reasoning out of 1 assistant turn(s) in 1 of 1 rows, so those "
                    "answers train without it, as the model sees them at inference (Qwen3's template shows reasoning "
                    "only after the last user message); 1 rows train theirs"]
    assert (stats.reasoning_rows, stats.reasoning_dropped_rows, stats.reasoning_dropped_turns) == (1, 1, 1)
    assert stats.reasoning_tokens == render_sample(two_turns(), tok("qwen3")).reasoning_tokens > 0
    said.clear()
    render_datasets(TrainConfig.from_dict({"data": [str(data)], "reasoning": "drop"}), tok("chatml"), said.append)
    assert said == ["note: --reasoning drop: 1 of 1 rows carry reasoning; their answers are trained, the reasoning "
                    "is not (--reasoning keep trains it)"]


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen3_vl"])
def test_vision_rows_train_their_reasoning(family):
    """Vision-language templates go through the same step (neither Qwen2-VL's nor Qwen3-VL-Instruct's
    template renders reasoning: the fallback), and drop is honoured there too."""
    from pathlib import Path

    from helpers.tiny_vlms import tiny_vlm_dir

    from mmtune.chat.render import Row, template_view
    from mmtune.data.schema import Part
    from mmtune.models.vision import load_processor

    processor = load_processor(tiny_vlm_dir(family))
    assert reasoningfmt.template_key(template_view(processor)) is None
    media = Path(__file__).resolve().parents[2] / "examples" / "data" / "media" / "red_circle.png"
    row = one_turn()
    row.messages[0] = Message("user", [Part.image(str(media)), Part.of_text("What is 2+2?")])
    t = processor.tokenizer
    keep = render_sample(row, processor).features()
    said = trained_text(Row(keep["input_ids"], keep["labels"]), t)
    assert f"<think>\n{THOUGHT}\n</think>\n\n4" in said
    drop = render_sample(row, processor, reasoning="drop").features()
    assert "make four" not in t.decode(drop["input_ids"])


def test_engine_renders_history_reasoning_as_training_did(tiny_llama, tmp_path):
    from test_tool_render import with_template

    from mmtune.infer.engine import Engine

    engine = Engine(str(with_template(tiny_llama, tmp_path / "model", "chatml")), device="cpu")
    wire = [{"role": "user", "content": "What is 2+2?"},
            {"role": "assistant", "content": "4", "reasoning_content": THOUGHT},
            {"role": "user", "content": "And 3+3?"}]
    ids = engine.prompt_ids(wire)
    t = engine.tokenizer()
    assert ids == render_prompt(Sample(two_turns().messages[:3]), t)
    assert f"<think>\n{THOUGHT}\n</think>\n\n4<|im_end|>" in t.decode(ids)
    r = render_sample(two_turns(), t)  # the training row starts with the prompt: the model answers where it learnt
    assert r.input_ids[: len(ids)] == ids and r.labels[len(ids)] != IGNORE_INDEX


def test_the_token_cache_tells_the_modes_apart(tok, tmp_path):
    """A run with --reasoning drop never reuses rows an earlier keep run rendered (and back)."""
    from mmtune.train import token_cache

    data = tmp_path / "r.jsonl"
    data.write_text(json.dumps(reasoning_row()) + "\n", encoding="utf-8")
    keep = TrainConfig.from_dict({"data": [str(data)]})
    drop = TrainConfig.from_dict({"data": [str(data)], "reasoning": "drop"})
    assert token_cache.cache_key(keep, tok("chatml")) != token_cache.cache_key(drop, tok("chatml"))
