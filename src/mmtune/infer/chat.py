"""Terminal chat over an Engine: tokens print as they are produced, history is kept.

Commands: `/clear` (forget the conversation), `/system TEXT` (set the system prompt and start
over; `/system` alone removes it), `/exit`. Ctrl-C stops the answer being written and keeps
what was written of it; at the prompt it just gives a fresh line. Ctrl-D exits.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TextIO

HELP = (
    "/clear forget the conversation · /system TEXT set the system prompt · /exit quit · Ctrl-C stop an answer"
)
PROMPT = "you> "


@dataclass
class ChatSession:
    """A conversation's history as OpenAI-style messages, with the system prompt kept apart."""

    system: str | None = None
    turns: list[dict[str, str]] = field(default_factory=list)

    def messages(self) -> list[dict[str, str]]:
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + self.turns

    def clear(self) -> None:
        self.turns.clear()

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
        return HELP


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
    print(f"chatting with {engine.default_model} — {HELP}", file=out, flush=True)
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
    session.turns.append({"role": "user", "content": line})
    pieces: list[str] = []
    stream = None
    try:
        stream = engine.stream(session.messages(), **gen)
        for piece in stream:
            pieces.append(piece)
            out.write(piece)
            out.flush()
        print(file=out, flush=True)
    except KeyboardInterrupt:
        if stream is not None:
            stream.close()
        print(" [stopped]", file=out, flush=True)
    session.turns.append({"role": "assistant", "content": "".join(pieces)})
