"""The peers' own shapes, as their docs show them (tests/fixtures/peers, written from the public
docs of LLaMA-Factory, ms-swift, MiniCPM-V, TRL and OpenAI): each reads with no error, as its
authors meant (kind, rows, media, tool calls), and converts to openai losing nothing."""

import json
import os
from pathlib import Path

import pytest

from mmtune.data.check import check_file
from mmtune.data.convert import convert_file
from mmtune.data.media import local_path
from mmtune.data.reader import FileReader, ReadOptions
from tests.conftest import EXAMPLES

PEERS = Path(__file__).resolve().parents[1] / "fixtures" / "peers"
MEDIA = EXAMPLES / "media"

# file: (format, kind, rows, images, videos, tool calls, rows with reasoning)
EXPECT = {
    "llamafactory_mllm_demo.json": ("openai", "sft", 3, 5, 0, 0, 0),
    "llamafactory_mllm_video_demo.json": ("openai", "sft", 2, 0, 2, 0, 0),
    "llamafactory_mllm_mixed.json": ("openai", "sft", 2, 1, 1, 0, 0),
    "llamafactory_glaive_toolcall.json": ("llava", "sft", 2, 0, 0, 1, 0),
    "llamafactory_dpo_sharegpt.json": ("llava", "preference", 2, 0, 0, 0, 0),
    "llamafactory_dpo_alpaca.json": ("alpaca", "preference", 2, 0, 0, 0, 0),
    "llamafactory_kto_demo.json": ("openai", "unpaired-preference", 2, 0, 0, 0, 0),
    "llamafactory_kto_sharegpt.json": ("llava", "unpaired-preference", 2, 0, 0, 0, 0),
    "llamafactory_c4_demo.jsonl": ("text", "text", 2, 0, 0, 0, 0),
    "llamafactory_wiki_demo.txt": ("text", "text", 2, 0, 0, 0, 0),
    "llamafactory_v1_messages.jsonl": ("openai", "sft", 3, 1, 1, 1, 1),
    "llamafactory_v1_dpo.jsonl": ("openai", "preference", 2, 0, 0, 0, 0),
    "swift_multimodal.jsonl": ("openai", "sft", 3, 3, 1, 0, 0),
    "swift_agent.jsonl": ("openai", "sft", 2, 2, 0, 3, 0),
    "swift_sharegpt.jsonl": ("swift", "sft", 2, 0, 0, 0, 0),
    "swift_loss.jsonl": ("openai", "sft", 1, 0, 0, 0, 0),
    "swift_dpo.jsonl": ("openai", "preference", 3, 1, 0, 0, 0),
    "swift_kto.jsonl": ("openai", "unpaired-preference", 2, 0, 0, 0, 0),
    "swift_query_response.jsonl": ("swift", "sft", 2, 1, 0, 0, 0),
    "minicpmv_finetune.json": ("llava", "sft", 3, 4, 0, 0, 0),
    "trl_prompt_completion.jsonl": ("trl", "sft", 2, 0, 0, 0, 0),
    "trl_preference.jsonl": ("trl", "preference", 1, 0, 0, 0, 0),
    "trl_preference_conversational.jsonl": ("trl", "preference", 1, 0, 0, 0, 0),
    "trl_implicit_prompt.jsonl": ("trl", "preference", 1, 0, 0, 0, 0),
    "trl_unpaired_preference.jsonl": ("trl", "unpaired-preference", 2, 0, 0, 0, 0),
    "trl_text.jsonl": ("text", "text", 2, 0, 0, 0, 0),
    "openai_preference.jsonl": ("openai", "preference", 1, 0, 0, 0, 0),
    "openai_legacy_functions.jsonl": ("openai", "sft", 1, 0, 0, 1, 0),
    "openai_parallel_tools.jsonl": ("openai", "sft", 1, 0, 0, 2, 0),
    "reasoning_content.jsonl": ("openai", "sft", 1, 0, 0, 0, 1),
}


def test_every_fixture_is_listed():
    assert sorted(p.name for p in PEERS.iterdir()) == sorted(EXPECT)


def samples(path, root):
    out = [r.sample for r in FileReader(str(path), ReadOptions(media_root=str(root), check_media=False))]
    for s in out:  # media refs → the files they point at, to compare across folders
        for parts in [m.parts for m in s.all_messages()] + [s.document or []]:
            for p in parts:
                if p.type != "text":
                    p.ref = os.path.realpath(local_path(p.ref, str(root)))
    return out


def counts(ss):
    return (sum(len(s.images) for s in ss), sum(len(s.videos) for s in ss),
            sum(len(m.tool_calls) for s in ss for m in s.all_messages()),
            sum(1 for s in ss if any(m.reasoning for m in s.all_messages())))


@pytest.mark.parametrize("name", sorted(EXPECT))
def test_peer_file_reads_as_its_authors_meant(name):
    fmt, kind, rows, *rest = EXPECT[name]
    rep = check_file(str(PEERS / name), ReadOptions(media_root=str(MEDIA)))
    errors = [f for f in rep.findings if f.is_error]
    assert errors == [], errors
    assert (rep.format, rep.kind, rep.rows) == (fmt, kind, rows)
    ss = samples(PEERS / name, MEDIA)
    assert len(ss) == rows and all(s is not None and s.kind == kind for s in ss)
    assert counts(ss) == tuple(rest)


@pytest.mark.parametrize("name", sorted(EXPECT))
def test_peer_file_converts_to_openai_losing_nothing(name, tmp_path):
    dst = tmp_path / "out.jsonl"
    rep = convert_file(str(PEERS / name), str(dst), "openai", media_root=str(MEDIA))
    assert rep.lossy_rows == 0 and rep.rows == EXPECT[name][2]
    before, after = samples(PEERS / name, MEDIA), samples(dst, tmp_path)
    assert after == before
    assert counts(after) == tuple(EXPECT[name][3:])
    if EXPECT[name][1] == "preference":  # OpenAI's preference format, exactly
        for line in dst.read_text().splitlines():
            row = json.loads(line)
            assert set(row) == {"input", "preferred_output", "non_preferred_output"}
            assert row["input"]["messages"] and row["preferred_output"] and row["non_preferred_output"]


def test_media_of_messages_rows_are_read_not_dropped():
    """The silent loss of issue 13: LLaMA-Factory's mllm_demo shape read as plain openai rows."""
    s = samples(PEERS / "llamafactory_mllm_demo.json", MEDIA)[0]
    user = s.messages[0]
    assert [p.type for p in user.parts] == ["image", "text"]
    assert [p.type for p in s.messages[2].parts] == ["text", "image"]
    assert [os.path.basename(p.ref) for p in s.images] == ["red_circle.png", "blue_square.png"]


def test_swift_consecutive_tool_calls_are_one_parallel_turn():
    s = samples(PEERS / "swift_agent.jsonl", MEDIA)[0]
    assert [m.role for m in s.messages] == ["user", "assistant", "tool", "tool", "assistant"]
    assert [c.name for c in s.messages[1].tool_calls] == ["realtime_aqi", "realtime_aqi"]
    assert json.loads(s.messages[1].tool_calls[1].arguments) == {"city": "Shanghai"}
    # the thinking text and the call that follows it are one assistant turn, as ms-swift joins them
    t = samples(PEERS / "swift_agent.jsonl", MEDIA)[1]
    assert t.messages[1].text.startswith("<think>") and t.messages[1].tool_calls[0].name == "realtime_aqi"
    assert t.messages[2].role == "tool" and t.messages[2].media  # the <image> in the tool result


def test_minicpmv_placeholders_place_each_image():
    s = samples(PEERS / "minicpmv_finetune.json", MEDIA)[1]
    parts = s.messages[0].parts
    assert [p.type for p in parts] == ["text", "image", "text", "image", "text"]
    assert [os.path.basename(p.ref) for p in s.images] == ["red_circle.png", "blue_square.png"]


def test_loss_weights_and_reasoning_are_kept():
    s = samples(PEERS / "swift_loss.jsonl", MEDIA)[0]
    assert [m.weight for m in s.messages if m.role == "assistant"] == [0.0, 1.0]
    v1 = samples(PEERS / "llamafactory_v1_messages.jsonl", MEDIA)
    assert v1[0].messages[1].reasoning.startswith("The picture") and v1[0].messages[1].text == "A red circle."
    assert v1[2].messages[1].weight == 0.0
    assert v1[1].tools and v1[1].messages[2].tool_calls[0].name == "get_weather"


def test_trl_prompt_assistant_turns_are_not_trained(tmp_path):
    p = tmp_path / "t.jsonl"
    p.write_text(json.dumps({"prompt": [{"role": "user", "content": "a?"}, {"role": "assistant", "content": "b."},
                                        {"role": "user", "content": "c?"}],
                             "completion": [{"role": "assistant", "content": "d."}]}) + "\n")
    s = samples(p, tmp_path)[0]
    assert [m.weight for m in s.messages if m.role == "assistant"] == [0.0, None]


@pytest.mark.parametrize("to", ["llava", "swift", "alpaca", "trl"])
def test_preference_pairs_convert_to_every_format_that_holds_them(to, tmp_path):
    src = PEERS / "llamafactory_dpo_sharegpt.json"
    dst = tmp_path / "out.jsonl"
    convert_file(str(src), str(dst), to)
    assert samples(dst, tmp_path) == samples(src, PEERS)


def test_a_conversion_that_would_lose_a_side_is_refused(tmp_path):
    from mmtune.errors import UserError

    src = PEERS / "swift_agent.jsonl"  # tool calls: alpaca cannot hold them
    with pytest.raises(UserError, match="would lose"):
        convert_file(str(src), str(tmp_path / "o.jsonl"), "alpaca", media_root=str(MEDIA))
    pref = PEERS / "openai_preference.jsonl"
    with pytest.raises(UserError, match="preference conversation"):
        convert_file(str(pref), str(tmp_path / "o.jsonl"), "text")
    assert not (tmp_path / "o.jsonl").exists()
    rep = convert_file(str(pref), str(tmp_path / "o.jsonl"), "text", lossy=True)
    assert rep.lossy_rows == 1


def test_text_converts_to_txt_and_back(tmp_path):
    dst = tmp_path / "docs.txt"
    convert_file(str(PEERS / "llamafactory_c4_demo.jsonl"), str(dst), "text")
    assert dst.read_text(encoding="utf-8").splitlines() == [
        "The first document of a pre-training corpus.", "A second document, with 中文 text as well."]
    assert samples(dst, tmp_path) == samples(PEERS / "llamafactory_c4_demo.jsonl", PEERS)
