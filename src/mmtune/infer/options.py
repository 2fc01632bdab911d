"""Generation options: one typed, validated set shared by the Engine, the CLI and the server.

Validation raises UserError with the fix, so the CLI prints it and the server answers 400
with the same words. No torch here: the server validates before it queues a request.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, fields, replace
from typing import Any

from mmtune.errors import UserError

MAX_STOPS = 16
MAX_TOP_LOGPROBS = 20  # alternatives per token a caller may ask for (OpenAI's chat limit)


@dataclass(frozen=True)
class GenOptions:
    """How to generate. temperature 0 means greedy decoding (deterministic)."""

    max_new_tokens: int = 256
    temperature: float = 0.7
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    repetition_penalty: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    logprobs: int | None = None  # record each token's log-probability and this many alternatives (None: off)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def with_(self, **changes: Any) -> GenOptions:
        """A copy with `changes` applied (None values ignored) and validated."""
        return make_options(self, **changes)


_NAMES = {f.name for f in fields(GenOptions)}


def make_options(base: GenOptions | None = None, **gen: Any) -> GenOptions:
    """GenOptions from keyword options (None = keep the default), validated."""
    unknown = sorted(set(gen) - _NAMES)
    if unknown:
        raise UserError(f"unknown generation option(s) {', '.join(unknown)}: use {', '.join(sorted(_NAMES))}")
    changes = {k: v for k, v in gen.items() if v is not None}
    if "stop" in changes:
        changes["stop"] = _stops(changes["stop"])
    opts = replace(base or GenOptions(), **changes)
    _validate(opts)
    return opts


def _stops(stop: str | Iterable[str]) -> tuple[str, ...]:
    items = (stop,) if isinstance(stop, str) else tuple(stop)
    if not all(isinstance(s, str) and s for s in items):
        raise UserError("stop must be a non-empty string or a list of non-empty strings")
    if len(items) > MAX_STOPS:
        raise UserError(f"at most {MAX_STOPS} stop strings are allowed, got {len(items)}")
    return items


def _validate(o: GenOptions) -> None:
    checks = [
        (
            _is_int(o.max_new_tokens) and o.max_new_tokens >= 1,
            "max_new_tokens (max_tokens) must be an integer >= 1",
        ),
        (
            _is_num(o.temperature) and 0 <= o.temperature <= 2,
            "temperature must be between 0 and 2 (0 = greedy)",
        ),
        (_is_num(o.top_p) and 0 < o.top_p <= 1, "top_p must be in (0, 1]"),
        (_is_int(o.top_k) and o.top_k >= 0, "top_k must be an integer >= 0 (0 = off)"),
        (
            _is_num(o.repetition_penalty) and o.repetition_penalty > 0,
            "repetition_penalty must be > 0 (1 = off)",
        ),
        (o.seed is None or _is_int(o.seed), "seed must be an integer"),
        (o.logprobs is None or (_is_int(o.logprobs) and 0 <= o.logprobs <= MAX_TOP_LOGPROBS),
         f"logprobs (top_logprobs) must be an integer from 0 to {MAX_TOP_LOGPROBS}"),
    ]
    for ok, message in checks:
        if not ok:
            raise UserError(message)


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_num(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and x == x
