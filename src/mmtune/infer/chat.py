"""Terminal chat over an Engine: tokens print as they are produced, history is kept.

Commands: `/clear` (forget the conversation), `/system TEXT` (set the system prompt and start
over; `/system` alone removes it), `/image PATH` and `/video PATH` (vision models: attach media
to the next message; URLs only when remote media are allowed), `/exit`. Ctrl-C stops the
answer being written and keeps what was written of it; at the prompt it just gives a fresh
line. Ctrl-D exits.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TextIO

from mmtune.errors import UserError
from mmtune.infer.media import LOCAL, MediaPolicy
from mmtune.infer.tool_calls import ContentStream

HELP = (
    "/clear forget the conversation · /system TEXT set the system prompt · /exit quit · Ctrl-C stop an answer"
)
MEDIA_HELP = " · /image PATH attach an image to your next message"
VIDEO_HELP = " · /video PATH attach a video"
PROMPT = "you> "


@dataclass
class ChatSession:
    """A conversation's history as OpenAI-style messages, with the system prompt kept apart.

    `vision`/`video`: what the model takes; media attached with /image or /video go into the
    next user message (and stay in the history, so later turns still see them)."""

    system: str | None = None
    turns: list[dict[str, Any]] = field(default_factory=list)
    vision: bool = False
    video: bool = False
    media: MediaPolicy = LOCAL
    pending: list[dict[str, Any]] = field(default_factory=list)  # content parts for the next message
    tools: list[dict[str, Any]] | None = None  # OpenAI tool definitions the model may call (--tools)

    @property
    def help(self) -> str:
        return HELP + (MEDIA_HELP if self.vision else "") + (VIDEO_HELP if self.video else "")

    def messages(self) -> list[dict[str, Any]]:
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + self.turns

    def clear(self) -> None:
        self.turns.clear()
        self.pending.clear()

    def user_turn(self, text: str) -> dict[str, Any]:
        """The next user message: attached media first, then the text."""
        if not self.pending:
            return {"role": "user", "content": text}
        content, self.pending = [*self.pending, {"type": "text", "text": text}], []
        return {"role": "user", "content": content}

    def command(self, line: str) -> str | None:
        """Run a /command; returns what to print, or None for /exit. Unknown ones show help."""
        name, _, arg = line.strip().partition(" ")
        if name in ("/exit", "/quit"):
            return None
        if name == "/clear":
            self.clear()
            return "(conversation cleared)"
        if name == "/system":
            self.system = arg.strip() or None
            self.clear()
            return f"(system prompt {'set' if self.system else 'removed'}; conversation cleared)"
        if name in ("/image", "/video"):
            try:
                return self.attach(name[1:], arg.strip())
            except UserError as e:
                return f"error: {e}"
        return self.help

    def attach(self, kind: str, ref: str) -> str:
        """Check `ref` now (so a typo is caught before the question) and keep it for the next message."""
        from mmtune.infer.media import check_ref

        if not ref:
            raise UserError(f"/{kind} needs a file path (or a URL): /{kind} PATH")
        if not self.vision:
            raise UserError(f"this model is a text model and cannot see a {kind}: chat with a vision-language model "
                            "(`mmtune models` lists them) to attach media")
        if kind == "video" and not self.video:
            raise UserError("this model takes images but not video: attach frames with /image, or use a model "
                            "that takes video (e.g. the Qwen2-VL family)")
        resolved = check_ref(ref, kind, self.media)
        if kind == "image" and not resolved.startswith(("http://", "https://")):
            from mmtune.data.media_io import load_image

            load_image(resolved)  # decodes now: a broken file is reported at once
        part = {"type": "image_url", "image_url": {"url": resolved}} if kind == "image" else \
            {"type": "video", "video": resolved}
        self.pending.append(part)
        return f"({kind} attached to your next message: {ref})"


def repl(
    engine,
    gen: dict[str, Any],
    session: ChatSession | None = None,
    *,
    read: Callable[[str], str] = input,
    out: TextIO = sys.stdout,
) -> int:
    """Read lines, answer them with streaming, until /exit or end of input."""
    session = session or ChatSession()
    print(f"chatting with {engine.default_model} — {session.help}", file=out, flush=True)
    while True:
        try:
            line = read(PROMPT)
        except EOFError:
            print(file=out)
            return 0
        except KeyboardInterrupt:  # at the prompt: a fresh line, not an exit
            print(file=out, flush=True)
            continue
        if not line.strip():
            continue
        if line.startswith("/"):
            said = session.command(line)
            if said is None:
                return 0
            print(said, file=out, flush=True)
            continue
        _answer(engine, session, line, gen, out)


def _answer(engine, session: ChatSession, line: str, gen: dict[str, Any], out: TextIO) -> None:
    session.turns.append(session.user_turn(line))
    pieces: list[str] = []
    stream = None
    try:
        try:
            stream = engine.stream(session.messages(), media=session.media, tools=session.tools, **gen)
        except UserError as e:  # e.g. an attached file went missing: say so, keep chatting
            session.turns.pop()
            print(f"error: {e}", file=out, flush=True)
            return
        content = ContentStream(stream.tools)  # a tool call being written is shown once parsed
        for piece in stream:
            pieces.append(piece)
            out.write(content.feed(piece))
            out.flush()
        done = stream.completion
        out.write(content.rest(done.text))
        print(file=out, flush=True)
        if done.tool_calls:
            for call in done.tool_calls:
                print(f"[tool call] {call.name}({call.arguments})", file=out, flush=True)
            session.turns.append({"role": "assistant", "content": done.text, "tool_calls": [
                {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                for c in done.tool_calls]})
            return
    except KeyboardInterrupt:
        if stream is not None:
            stream.close()
        print(" [stopped]", file=out, flush=True)
    session.turns.append({"role": "assistant", "content": "".join(pieces)})
