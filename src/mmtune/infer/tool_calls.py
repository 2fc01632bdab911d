"""Tool calls in answers: `tool_choice`, the opening a forced call starts with, and the answer
parsed into content + calls (chat/tools.py `parse`, the inverse of the family's tool format).

- `auto`: the model decides; the calls in its answer, in the template's call syntax
  (chat/tools.py `call_syntax`: `<tool_call>` blocks, Llama's JSON, Mistral's `[TOOL_CALLS]`, LFM2.5's
  Python-style list), become calls.
- `none`: no call: nothing is parsed (and with `<tool_call>` blocks the answer stops where one would open).
- without tools, nothing is parsed either (and nothing stops).
- `required`: the answer starts with the call opening, so the model writes a call.
- a named function (`{"type": "function", "function": {"name": N}}`): the answer starts with the
  call opening and `{"name": N, "arguments":`, so the model writes that function's arguments.
- `parallel_tool_calls: false`: only the first call is kept.

An answer whose call does not parse (bad JSON, an unclosed block) keeps its text as content:
a model's mistake is never an error of the server. Imports nothing heavy.
"""

from __future__ import annotations

import json
import secrets
import string
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from mmtune.chat.tools import CALL_OPEN, MISTRAL_CALLS, PYTHON_TAG, PYTHONIC_OPEN, parse
from mmtune.data.schema import ToolCall
from mmtune.errors import UserError

MODES = ("auto", "none", "required")


@dataclass(frozen=True)
class ToolPolicy:
    """What to do with tools for one answer (`tool_policy` builds and checks it)."""

    mode: str = "off"  # off (no tools) | auto | none | required | function
    name: str | None = None  # mode "function": the function to call
    parallel: bool = True
    syntax: str = "hermes"  # how the model writes calls (chat/tools.py CALL_SYNTAXES)

    @property
    def prefix(self) -> str:
        """The text the answer is made to start with (the model continues from it)."""
        if self.syntax == "pythonic":  # `[name(key=value, ...)]`: a named call opens with its name
            return {"required": PYTHONIC_OPEN + "[", "function": f"{PYTHONIC_OPEN}[{self.name}("}.get(self.mode, "")
        opening, key = {"hermes": (CALL_OPEN + "\n", "arguments"), "json": ("", "parameters"),
                        "mistral": (MISTRAL_CALLS + " [", "arguments")}[self.syntax]
        if self.mode == "required":
            return opening + ('{"name": "' if self.syntax != "hermes" else "")
        if self.mode == "function":
            return f"{opening}{{\"name\": {json.dumps(self.name, ensure_ascii=False)}, \"{key}\":"
        return ""

    @property
    def opener(self) -> str:
        """The text that opens a call anywhere in the answer."""
        return {"hermes": CALL_OPEN, "json": PYTHON_TAG, "mistral": MISTRAL_CALLS, "pythonic": PYTHONIC_OPEN}[self.syntax]

    @property
    def leading(self) -> str:
        """A character that opens a call when the answer starts with it (its control token dropped)."""
        return {"hermes": "", "json": "{", "mistral": "[", "pythonic": "["}[self.syntax]

    @property
    def parses(self) -> bool:
        return self.mode not in ("off", "none")

    @property
    def stops(self) -> tuple[str, ...]:
        return (CALL_OPEN,) if self.mode == "none" and self.syntax == "hermes" else ()

    def split(self, text: str) -> tuple[str, list[ToolCall]]:
        """The answer's content and its calls (each with a fresh id: `call_id`)."""
        if not self.parses:
            return text, []
        reply = parse(text, self.syntax)
        if not reply.tool_calls:
            return text, []
        calls = reply.tool_calls[: None if self.parallel else 1]
        return reply.content, [ToolCall(c.name, c.arguments, call_id(self.syntax)) for c in calls]


_ALNUM = string.ascii_letters + string.digits


def call_id(syntax: str) -> str:
    """A fresh tool-call id the family's template takes back on the next turn: Mistral's templates insist on
    exactly 9 letters and digits (they raise on anything else when the assistant's calls and the tool
    results are sent back); the others take OpenAI's `call_…`."""
    if syntax == "mistral":
        return "".join(secrets.choice(_ALNUM) for _ in range(9))
    return f"call_{uuid.uuid4().hex[:24]}"


def tool_policy(tools: Sequence[dict] | None, tool_choice: Any = None, parallel: bool | None = None,
                syntax: str = "hermes") -> ToolPolicy:
    """The policy for OpenAI's `tool_choice` / `parallel_tool_calls` over `tools`, for answers that write
    calls in `syntax`; UserError naming the fix for a choice that cannot be honoured."""
    names = [t.get("function", {}).get("name") for t in tools or () if isinstance(t, dict)]
    parallel = True if parallel is None else bool(parallel)
    if tool_choice is None:
        return ToolPolicy("auto" if names else "off", parallel=parallel, syntax=syntax)
    if isinstance(tool_choice, str):
        if tool_choice not in MODES:
            raise UserError(f"tool_choice must be one of {', '.join(MODES)} or "
                            '{"type": "function", "function": {"name": ...}} (got ' f"{tool_choice[:40]!r})")
        if tool_choice == "required" and not names:
            raise UserError("tool_choice is 'required' but the request has no tools: send `tools`")
        return ToolPolicy(tool_choice if names else "off", parallel=parallel, syntax=syntax)
    name = tool_choice.get("function", {}).get("name") if isinstance(tool_choice, dict) else None
    if not isinstance(name, str) or (isinstance(tool_choice, dict) and tool_choice.get("type", "function")
                                     != "function"):
        raise UserError('tool_choice must be "auto", "none", "required" or {"type": "function", "function": '
                        '{"name": ...}}')
    if name not in names:
        raise UserError(f"tool_choice names the function {name[:80]!r}, which is not in tools "
                        f"({', '.join(map(str, names)) or 'none given'})")
    return ToolPolicy("function", name, parallel, syntax)


class ContentStream:
    """Splits streamed answer text into content that is safe to show now and a call being written.

    Text is released until a call opens; a tail that may still grow into the call opening (or the
    newline before one, which `parse` drops with the call) is held back, and so is an answer that
    opens with the syntax's leading bracket. Once a call opens the rest is kept for parsing at the
    end (`Completion.text` and `.tool_calls` are then the whole truth)."""

    def __init__(self, policy: ToolPolicy):
        self.policy = policy
        self.text = ""
        self.shown = 0  # characters of `text` released as content
        self.calling = False

    def feed(self, piece: str) -> str:
        self.text += piece
        if not self.policy.parses:
            out, self.shown = self.text[self.shown:], len(self.text)
            return out
        if self.calling:
            return ""
        opener, leading = self.policy.opener, self.policy.leading
        if leading and self.shown == 0:
            head = self.text.lstrip()
            if not head:
                return ""
            if head[0] == leading:
                self.calling = True
                return ""
        at = self.text.find(opener, self.shown)
        if at >= 0:
            self.calling = True
            end = at - 1 if at > 0 and self.text[at - 1] == "\n" else at
        else:
            end = len(self.text)
            for k in range(min(len(opener) - 1, end - self.shown), 0, -1):
                if self.text.endswith(opener[:k]):
                    end -= k
                    break
            if end > self.shown and self.text[end - 1] == "\n":
                end -= 1
        end = max(end, self.shown)
        out, self.shown = self.text[self.shown:end], end
        return out

    def rest(self, content: str) -> str:
        """The content still to show once the answer is complete (`content`: its parsed content)."""
        return content[self.shown:] if content.startswith(self.text[: self.shown]) else ""


__all__ = ["ContentStream", "ToolPolicy", "tool_policy"]
