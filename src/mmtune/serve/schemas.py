"""OpenAI API shapes: the request we accept and the error object we answer with."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class _Generation(BaseModel):
    """What chat and text completion requests share: the model, sampling and streaming fields.
    Fields we do not implement are accepted and ignored (clients send defaults such as
    `frequency_penalty: 0`); the ones declared are honoured."""

    model_config = ConfigDict(extra="allow")

    model: str
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    repetition_penalty: float | None = None
    seed: int | None = None
    n: int = 1
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: dict[str, Any] | None = None

    def sampling(self) -> dict[str, Any]:
        return {"temperature": self.temperature, "top_p": self.top_p, "top_k": self.top_k,
                "repetition_penalty": self.repetition_penalty, "stop": self.stop or None, "seed": self.seed}

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.get("include_usage"))


class ChatCompletionRequest(_Generation):
    """`/v1/chat/completions` body."""

    messages: list[dict[str, Any]] = Field(min_length=1)
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: Any = None  # "auto" | "none" | "required" | {"type": "function", "function": {"name": ...}}
    parallel_tool_calls: bool | None = None
    logprobs: bool = False
    top_logprobs: int | None = None

    def gen_options(self) -> dict[str, Any]:
        """Keyword options for Engine (None = the engine's default)."""
        return {
            **self.sampling(),
            "max_new_tokens": self.max_completion_tokens or self.max_tokens,
            "logprobs": (self.top_logprobs or 0) if self.logprobs else None,
        }


class CompletionRequest(_Generation):
    """`/v1/completions` body (the legacy text completions that evaluation harnesses score with).
    `prompt`: a string, a list of strings, a list of token ids or a list of such lists; each is
    answered with `n` choices (choice index = prompt index * n + choice). `echo` puts the prompt
    before the answer (and, with `logprobs`, its tokens' log-probabilities first); `max_tokens` 0
    generates nothing (scoring only); its default is 16, as OpenAI's."""

    prompt: Any = None
    max_tokens: int | None = 16
    best_of: int | None = None
    echo: bool = False
    logprobs: int | None = None
    suffix: str | None = None

    @property
    def max_completion_tokens(self) -> None:  # the chat request's other name for max_tokens; none here
        return None

    def gen_options(self) -> dict[str, Any]:
        return {**self.sampling(), "max_new_tokens": self.max_tokens, "logprobs": self.logprobs}


def error_body(
    message: str, type_: str = "invalid_request_error", param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    """OpenAI's error object, which its clients turn into typed exceptions."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}
