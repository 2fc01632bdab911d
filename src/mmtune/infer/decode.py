"""The token loop: batched, left-padded decoding with a KV cache, and text tracking per row.

Why a loop of our own instead of `model.generate`: each request needs its own random
generator (a per-request `seed` must not touch global RNG state that concurrent requests
share), text must stream as it is produced, and stop strings must cut the text exactly
without ever emitting a partial stop string. The loop is short; the logits processing
(repetition penalty, temperature, top-k, top-p) is Hugging Face's own.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mmtune.infer.options import GenOptions

if TYPE_CHECKING:
    from mmtune.data.schema import ToolCall
    from mmtune.infer.vision import Prefill

_REPLACEMENT = "\ufffd"  # what a byte-level tokenizer decodes half a UTF-8 character to


@dataclass(frozen=True)
class TokenLogprob:
    """One token's log-probability under the model's own distribution (raw logits, before
    temperature, top-k/top-p or repetition penalty), and the `top` most likely tokens there."""

    token: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()


@dataclass
class Completion:
    """One finished answer and what it cost."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" (end of turn or a stop string) | "length" (max_new_tokens) | "tool_calls"
    tokens: tuple[int, ...] = ()  # the generated ids (the end-of-turn token not included)
    logprobs: tuple[TokenLogprob, ...] | None = None  # per generated token, when asked for
    prompt_logprobs: tuple[TokenLogprob | None, ...] | None = None  # per prompt token (first: None)
    tool_calls: tuple[ToolCall, ...] = ()  # parsed out of the answer (then finish_reason "tool_calls")

    @property
    def usage(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        }


class TextTracker:
    """Turns one row's generated tokens into text: what is safe to emit now, and when to stop.

    The whole answer is decoded each step (decoding a prefix of byte-level BPE can end in
    half a character, and some tokenizers decode a token differently at the start), and only
    text that can no longer change or turn into a stop string is released.
    """

    def __init__(self, tokenizer, opts: GenOptions, eos_ids: set[int], prompt_tokens: int):
        self.tokenizer = tokenizer
        self.stops = opts.stop
        self.max_new = opts.max_new_tokens
        self.eos_ids = eos_ids
        self.prompt_tokens = prompt_tokens
        self.tokens: list[int] = []
        self.text = ""  # decoded so far (cut at a stop string once one appears)
        self.emitted = 0  # characters of `text` already released
        self.finish_reason: str | None = None
        self.logprobs: list[TokenLogprob] | None = [] if opts.logprobs is not None else None
        self.prompt_logprobs: list[TokenLogprob | None] | None = None

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    def push(self, token: int, logprob: TokenLogprob | None = None) -> None:
        """Take the next token (with its log-probability when they are recorded); sets
        finish_reason when this row is finished."""
        if token in self.eos_ids:
            self.finish_reason = "stop"
            return
        self.tokens.append(token)
        if self.logprobs is not None and logprob is not None:
            self.logprobs.append(logprob)
        self.text = self.tokenizer.decode(self.tokens, skip_special_tokens=True)
        if self._cut_at_stop():
            self.finish_reason = "stop"
        elif len(self.tokens) >= self.max_new:
            self.finish_reason = "length"

    def _cut_at_stop(self) -> bool:
        if not self.stops:
            return False
        start = max(0, self.emitted - max(len(s) for s in self.stops))
        hits = [p for p in (self.text.find(s, start) for s in self.stops) if p >= 0]
        if hits:
            self.text = self.text[: min(hits)]
            return True
        return False

    def take(self) -> str:
        """New text that is safe to show (all of it once the row is done)."""
        end = len(self.text) if self.done else self._safe_end()
        piece = self.text[self.emitted : end]
        self.emitted = max(self.emitted, end)
        return piece

    def _safe_end(self) -> int:
        end = len(self.text.rstrip(_REPLACEMENT))
        for s in self.stops:  # hold back a tail that may still grow into a stop string
            for k in range(min(len(s) - 1, end), 0, -1):
                if self.text.endswith(s[:k], 0, end):
                    end -= k
                    break
        return max(end, self.emitted)

    def completion(self) -> Completion:
        return Completion(
            self.text, self.prompt_tokens, len(self.tokens), self.finish_reason or "length", tuple(self.tokens),
            tuple(self.logprobs) if self.logprobs is not None else None,
            tuple(self.prompt_logprobs) if self.prompt_logprobs is not None else None,
        )

    def taken_logprobs(self, start: int) -> list[TokenLogprob]:
        """The recorded log-probabilities from token `start` on (for streaming them as they come)."""
        return list(self.logprobs[start:]) if self.logprobs else []


def token_logprobs(logits, tokens, top: int) -> list[TokenLogprob]:
    """TokenLogprob of `tokens[i]` under `logits[i]` (a [n, vocab] tensor of raw scores) with the
    `top` most likely tokens at each position."""
    import torch

    logp = torch.log_softmax(logits.float(), dim=-1)
    tokens_t = torch.as_tensor(tokens, device=logp.device)
    chosen = logp.gather(-1, tokens_t[:, None]).squeeze(-1).tolist()
    if top > 0:
        values, ids = logp.topk(top, dim=-1)
        tops = [tuple(zip(i, v)) for i, v in zip(ids.tolist(), values.tolist())]
    else:
        tops = [()] * len(tokens)
    return [TokenLogprob(t, lp, tp) for t, lp, tp in zip(tokens, chosen, tops)]


def prompt_logprobs(logits, ids: list[int], top: int) -> list[TokenLogprob | None]:
    """Each prompt token's log-probability given the tokens before it (`logits`: [len(ids), vocab],
    the forward pass over `ids`); the first token has none (None)."""
    return [None, *token_logprobs(logits[:-1], ids[1:], top)]


def score(model, ids: list[int], top: int) -> list[TokenLogprob | None]:
    """prompt_logprobs of `ids` from one plain forward pass (no generation)."""
    import torch

    device = next(model.parameters()).device
    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([ids], device=device)).logits[0]
    return prompt_logprobs(logits, ids, top)


def logits_processors(opts: GenOptions):
    """Hugging Face's processors for these options, in the order `generate` applies them."""
    from transformers.generation.logits_process import (
        LogitsProcessorList,
        RepetitionPenaltyLogitsProcessor,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    procs = LogitsProcessorList()
    if opts.repetition_penalty != 1.0:
        procs.append(RepetitionPenaltyLogitsProcessor(opts.repetition_penalty))
    if not opts.greedy:
        if opts.temperature != 1.0:
            procs.append(TemperatureLogitsWarper(opts.temperature))
        if opts.top_k > 0:
            procs.append(TopKLogitsWarper(opts.top_k))
        if opts.top_p < 1.0:
            procs.append(TopPLogitsWarper(opts.top_p))
    return procs


def decode_loop(
    model,
    rows: list[list[int]],
    trackers: list[TextTracker],
    opts: GenOptions,
    pad_id: int,
    prefill: Prefill | None = None,
    *,
    score_prompt: bool = False,
) -> Iterator[None]:
    """Generate for every row until each tracker is done; yields after every step.

    Rows are left-padded into one batch; positions come from the attention mask, so a
    padded row generates exactly what it would alone (up to float rounding).
    `prefill` (vision models) adds media tensors to the first forward only, and the
    model's own positions where it has 3-D ones (infer/vision.py).
    With `opts.logprobs` set, each tracker records its tokens' TokenLogprob (raw model scores);
    `score_prompt` also keeps the prefill's logits of every position and records the prompt's.
    Closing the iterator stops generation (client gone, Ctrl-C).
    """
    import torch

    device = next(model.parameters()).device
    width = max(len(r) for r in rows)
    ids = torch.tensor([[pad_id] * (width - len(r)) + r for r in rows], device=device)
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    generator = generator_for(opts, device)
    procs = logits_processors(opts)
    history, step_ids, cache = ids, ids, None
    extra = prefill.model_inputs(model) if prefill is not None else {}
    step_extra = prefill.step_inputs(extra) if prefill is not None else {}
    place = prefill.positions if prefill is not None else None
    top = opts.logprobs
    with torch.inference_mode():
        while not all(t.done for t in trackers):
            out = model(
                input_ids=step_ids,
                attention_mask=mask,
                position_ids=place(positions, cache is None) if place else positions,
                past_key_values=cache,
                use_cache=True,
                # the prompt's other positions need no vocabulary projection, unless they are scored
                logits_to_keep=0 if score_prompt and cache is None else 1,
                **(extra if cache is None else step_extra),  # media: the prefill's; later steps read the cache
            )
            if score_prompt and cache is None:
                for r, (row, tracker) in enumerate(zip(rows, trackers)):
                    tracker.prompt_logprobs = prompt_logprobs(out.logits[r, width - len(row):], row, top or 0)
            cache = out.past_key_values
            last = out.logits[:, -1, :]
            scores = procs(history, last.float())
            nxt = pick(scores, opts, generator)
            chosen = token_logprobs(last, nxt.tolist(), top) if top is not None else [None] * len(rows)
            for tracker, token, logprob in zip(trackers, nxt.tolist(), chosen):
                if not tracker.done:
                    tracker.push(token, logprob)
            step_ids = nxt[:, None]
            history = torch.cat([history, step_ids], dim=-1)
            mask = torch.cat([mask, mask.new_ones(len(rows), 1)], dim=-1)
            positions = positions[:, -1:] + 1
            yield


def generator_for(opts: GenOptions, device):
    import torch

    if opts.greedy:
        return None
    gen = torch.Generator(device=device)
    if opts.seed is not None:
        gen.manual_seed(opts.seed)
    else:
        gen.seed()
    return gen


def pick(scores, opts: GenOptions, generator):
    import torch

    if opts.greedy:
        return scores.argmax(dim=-1)
    probs = torch.softmax(scores, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
