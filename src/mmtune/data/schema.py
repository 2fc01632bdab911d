"""The one canonical sample shape every data format is read into and written from.

A Sample is a conversation: an ordered list of Messages. A Message holds ordered Parts
(text, image, video), so media sit exactly where the data put them. Formats are thin
converters at the edges (data/formats/*); nothing else in mmtune looks at raw rows.

A sample has one of four kinds (`Sample.kind`):
- `sft`: `messages` is the conversation to learn from;
- `preference`: `messages` is the prompt both sides share, `chosen` / `rejected` the better and
  the worse completion (assistant messages, with tool calls and results where the data has them);
- `unpaired-preference` (KTO): `messages` is the prompt, `completion` one completion and `label`
  whether it is desirable (True) or undesirable (False);
- `text` (continued pre-training): `document` holds the text, `messages` is empty.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

ROLES = ("system", "user", "assistant", "tool")
KINDS = ("sft", "preference", "unpaired-preference", "text")
PART_TYPES = ("text", "image", "video")

Role = Literal["system", "user", "assistant", "tool"]
PartType = Literal["text", "image", "video"]


@dataclass
class Part:
    """One piece of a message: text, or a reference to an image or a video.

    For media, `ref` is what the data said: a path (relative to the sample's media root,
    or absolute), a `file://` URL, an `http(s)://` URL or a `data:` URL.
    """

    type: PartType
    text: str = ""
    ref: str = ""

    @staticmethod
    def of_text(text: str) -> Part:
        return Part("text", text=text)

    @staticmethod
    def image(ref: str) -> Part:
        return Part("image", ref=ref)

    @staticmethod
    def video(ref: str) -> Part:
        return Part("video", ref=ref)


@dataclass
class ToolCall:
    """A function call made by the assistant. `arguments` is a JSON string, as in OpenAI's API."""

    name: str
    arguments: str = "{}"
    id: str | None = None


@dataclass
class Message:
    role: Role
    parts: list[Part] = field(default_factory=list)
    tool_calls: list[ToolCall] = field(default_factory=list)
    tool_call_id: str | None = None  # on role "tool": which call this answers
    name: str | None = None  # on role "tool": the function's name, where the data gives it
    weight: float | None = None  # assistant turns: 0 = do not train on this turn; None = default (1)
    reasoning: str | None = None  # assistant turns: the reasoning before the answer (`reasoning_content`)

    @property
    def text(self) -> str:
        """All text parts joined (media parts are skipped)."""
        return "".join(p.text for p in self.parts if p.type == "text")

    @property
    def media(self) -> list[Part]:
        return [p for p in self.parts if p.type != "text"]

    @property
    def trainable(self) -> bool:
        return self.role == "assistant" and (self.weight is None or self.weight > 0)

    @staticmethod
    def simple(role: Role, text: str, **kw) -> Message:
        return Message(role, [Part.of_text(text)] if text != "" else [], **kw)


@dataclass
class Source:
    """Where a sample came from: the file, the 1-based line its row starts on, its 0-based index."""

    file: str = ""
    line: int = 0
    index: int = 0

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"


@dataclass
class Sample:
    messages: list[Message]
    tools: list[dict] | None = None  # JSON-schema function definitions (OpenAI `tools` shape)
    media_root: str | None = None  # folder that relative media paths are resolved against
    source: Source = field(default_factory=Source)
    chosen: list[Message] | None = None  # preference: the better completion
    rejected: list[Message] | None = None  # preference: the worse completion
    completion: list[Message] | None = None  # unpaired preference: the one completion
    label: bool | None = None  # unpaired preference: True = desirable, False = undesirable
    document: list[Part] | None = None  # text: the document to continue pre-training on
    parallel_tool_calls: bool | None = None  # OpenAI's row flag: may one turn make several calls?
    id: str | int | None = None  # the row's own `id`, carried through conversions (not compared)

    # Equality ignores where a sample came from: two samples with the same content are equal.
    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Sample):
            return NotImplemented
        return self._content() == other._content()

    def _content(self) -> tuple:
        return (self.messages, self.tools, self.chosen, self.rejected, self.completion, self.label, self.document,
                self.parallel_tool_calls)

    @property
    def kind(self) -> str:
        """`sft`, `preference`, `unpaired-preference` or `text` (see the module docstring)."""
        if self.document is not None:
            return "text"
        if self.label is not None or self.completion is not None:
            return "unpaired-preference"
        if self.chosen is not None or self.rejected is not None:
            return "preference"
        return "sft"

    def all_messages(self) -> list[Message]:
        """Every message of the sample: the conversation or prompt, then each completion."""
        out = list(self.messages)
        for side in (self.chosen, self.rejected, self.completion):
            if side:
                out += side
        return out

    @property
    def system(self) -> str | None:
        if self.messages and self.messages[0].role == "system":
            return self.messages[0].text
        return None

    def media(self, kind: PartType | None = None) -> list[Part]:
        """Media of every message (prompt and completions) and of the document, in order."""
        parts = [p for m in self.all_messages() for p in m.media]
        if self.document:
            parts += [p for p in self.document if p.type != "text"]
        return [p for p in parts if kind is None or p.type == kind]

    @property
    def images(self) -> list[Part]:
        return self.media("image")

    @property
    def videos(self) -> list[Part]:
        return self.media("video")

    def prompt_and_answer(self) -> tuple[Sample, Message | None]:
        """The sample minus its last assistant turn, and that turn (for inference / evaluation)."""
        for i in range(len(self.messages) - 1, -1, -1):
            if self.messages[i].role == "assistant":
                prompt = Sample(self.messages[:i], self.tools, self.media_root, self.source)
                return prompt, self.messages[i]
        return self, None
