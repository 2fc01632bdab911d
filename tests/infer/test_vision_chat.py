"""`mmtune chat` with a vision-language model: /image attaches a picture to the next message."""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

import pytest
from infer.test_chat_terminal import Terminal
from infer.tiny import tiny_base
from infer.tiny_vision import image_file, image_messages, lively_vlm

from mmtune.infer.chat import HELP, PROMPT, ChatSession
from mmtune.infer.engine import Engine

GREEDY = {"temperature": 0, "max_new_tokens": 6}


def _chat(model: str, *flags: str) -> Terminal:
    argv = [sys.executable, "-m", "mmtune.cli", "chat", model, "--temperature", "0", "--max-new-tokens", "6", *flags]
    term = Terminal(argv)
    term.read_until(PROMPT)
    return term


@pytest.fixture
def short_dir():
    """A folder with a short path: readline scrolls lines wider than the terminal, mangling the echo."""
    folder = Path(tempfile.mkdtemp(prefix="v", dir="/tmp"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def _words(text: str) -> str:
    return " ".join(text.split())


def test_image_attaches_to_the_next_message(short_dir):
    model = str(lively_vlm("llava"))
    img = image_file(0, short_dir)
    term = _chat(model)
    assert "/image PATH" in term.transcript and "/video" not in term.transcript  # LLaVA takes no video
    assert term.ask(f"/image {img}") == f"(image attached to your next message: {img})"
    with_image = term.ask("What is it?")
    want = Engine(model).chat(image_messages(str(img), "What is it?"), **GREEDY)
    assert _words(with_image) == _words(want)  # the image went into the prompt
    assert term.ask("/clear") == "(conversation cleared)"
    assert _words(term.ask("What is it?")) != _words(with_image)  # no image: another answer
    assert term.ask(f"/image {short_dir / 'nope.png'}").startswith("error: image file")
    assert "--allow-remote-media" in term.ask("/image https://example.com/cat.png")
    assert "not video" in term.ask(f"/video {img}")
    term.send("/exit\r")
    assert term.wait() == 0


def test_image_on_a_text_model_is_refused(short_dir):
    session = ChatSession(vision=False)
    assert session.help == HELP
    said = session.command(f"/image {image_file(0, short_dir)}")
    assert said.startswith("error:") and "text model" in said and not session.pending
    term = _chat(str(tiny_base("qwen2")))
    assert "text model" in term.ask(f"/image {image_file(0, short_dir)}")
    term.send("/exit\r")
    assert term.wait() == 0


def test_session_keeps_media_in_history(tmp_path):
    session = ChatSession(vision=True, video=True)
    assert "/video PATH" in session.help
    session.command(f"/image {image_file(1, tmp_path)}")
    turn = session.user_turn("Describe it")
    assert turn["content"][0] == {"type": "image_url", "image_url": {"url": str(image_file(1, tmp_path))}}
    assert turn["content"][1] == {"type": "text", "text": "Describe it"} and not session.pending
    assert session.user_turn("and now?") == {"role": "user", "content": "and now?"}
    video = Path(__file__).resolve().parents[2] / "examples" / "data" / "media" / "moving_circle.mp4"
    assert session.command(f"/video {video}").startswith("(video attached")
    assert session.user_turn("What moves?")["content"][0] == {"type": "video", "video": str(video)}
    assert session.command("/image").startswith("error: /image needs a file path")
