"""Engine: one loaded model (plus any LoRA adapters over it) that answers conversations.

The terminal chat, batch inference, the OpenAI-compatible server and the web UI all talk to
an Engine, so they build prompts the same way (`render_prompt`: the chat template training
used) and decode the same way (infer/decode.py).

What it loads (`Engine(model)`):
- a base model: registry name, hub id, local HF folder or .gguf file (models/loader.py);
- a merged or fully fine-tuned output folder (it has config.json: an ordinary model);
- an adapter folder (adapter_config.json): its base is read from mmtune.json or from
  adapter_config.json, loaded once, and the adapter put over it. More adapters over the same
  base come with `adapters=` or `add_adapter()`; a request picks one by name.

Vision-language models (registry kind "vision") load with their processor, and
prompts may then carry images and videos (Sample media parts, or OpenAI content parts
such as `image_url`): see infer/vision.py. Which media references a caller may use
(local files, URLs) is its `MediaPolicy` (infer/media.py); the Engine's own default
allows local files and no URLs. How large media get (`MediaSizes`: --max-pixels/--min-pixels on
area-resizing processors, --video-fps/--video-frames) applies to the base's processor and to
each adapter's own. An adapter trained on a vision model loads like any other.

Adapters over one base share its weights, and which adapter is active is module state in
PEFT, so `_AdapterGate` lets any number of generations run at once on the same adapter and
switches adapters only between them, first come first served.

Single text answers (what the server and chat ask for) decode in one running batch
(infer/scheduler.py, continuous batching); batches of prompts (`generate_batch`), vision prompts
and prompt scoring run the one-call loop of infer/decode.py.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mmtune.data.schema import Message, Sample, ToolCall
from mmtune.errors import UserError
from mmtune.infer.artifacts import ADAPTER_CONFIG, adapter_base, is_adapter_dir, model_name
from mmtune.infer.decode import Completion, TextTracker, decode_loop
from mmtune.infer.media import LOCAL, NO_LIMITS, MediaPolicy, MediaSizes
from mmtune.infer.options import GenOptions, make_options
from mmtune.infer.scheduler import Batcher

if TYPE_CHECKING:
    from mmtune.infer.tool_calls import ToolPolicy

BASE = None  # adapter key of the bare base model
MIXED = "<mixed>"  # the gate's key while rows for any adapters decode in one batch (infer/scheduler.py)
PREFIX_WINDOW = 6  # characters per context token tried before a long prompt is tokenized whole


class PromptTooLong(UserError):
    """A prompt that leaves no room in the model's context: `tokens` (a lower bound when it was
    refused without tokenizing) against `context`."""

    def __init__(self, tokens: int, context: int, *, at_least: bool = False):
        self.tokens, self.context = tokens, context
        size = f"at least {tokens}" if at_least else str(tokens)
        super().__init__(f"this model's context is {context} tokens and the messages are {size} tokens: send a "
                         f"shorter conversation (the prompt must leave room for at least one new token)")


def to_sample(messages: Sample | Sequence[Mapping[str, Any]], tools: list[dict] | None = None) -> Sample:
    """OpenAI-style message dicts (or a Sample) as a Sample; bad messages raise UserError."""
    if isinstance(messages, Sample):
        return messages
    from mmtune.data.findings import Collector
    from mmtune.data.formats import openai

    out = Collector(0)
    row: dict[str, Any] = {"messages": list(messages)}
    if tools:
        row["tools"] = tools
    parsed = openai.parse(row, out, None)
    errors = [f for f in out.findings if f.is_error]
    if errors or parsed is None:
        raise UserError(
            "; ".join(f"{f.field}: {f.message}" for f in errors) or "messages: not a message list"
        )
    return parsed.sample


class _AdapterGate:
    """Many generations on the active adapter at once; switching waits until they finish.

    Waiters are served in arrival order, so a stream of requests for one adapter cannot
    starve a request for another.
    """

    def __init__(self, switch):
        self._switch = switch  # called with the adapter key to activate, under the lock
        self._cond = threading.Condition()
        self._active: Any = BASE
        self._running = 0
        self._queue: list[object] = []

    def acquire(self, key: Any) -> None:
        ticket = _Ticket(key)
        with self._cond:
            self._queue.append(ticket)
            self._cond.wait_for(lambda: self._may_run(ticket))
            if key != self._active:  # only reached with nothing running
                self._switch(key)
                self._active = key
            self._running += 1
            self._queue.remove(ticket)
            self._cond.notify_all()

    def _may_run(self, ticket: _Ticket) -> bool:
        ahead = self._queue[: self._queue.index(ticket)]
        if any(t.key != ticket.key for t in ahead):
            return False  # someone who came first wants another adapter
        return self._running == 0 or self._active == ticket.key

    def release(self) -> None:
        with self._cond:
            self._running -= 1
            self._cond.notify_all()

    @contextlib.contextmanager
    def exclusive(self):
        """Nothing generates inside this block (for changing the model, e.g. adding an adapter)."""
        ticket = _Ticket(object())  # a key nobody else holds: waits for every running generation
        with self._cond:
            self._queue.append(ticket)
            self._cond.wait_for(lambda: self._may_run(ticket) and self._running == 0)
            self._queue.remove(ticket)
            self._running += 1
        try:
            yield
        finally:
            self.release()


class _Ticket:
    __slots__ = ("key",)

    def __init__(self, key: Any):
        self.key = key


class Engine:
    """A loaded model that answers conversations: `chat()` (text), `stream()` (text pieces)."""

    def __init__(
        self,
        model: str | None = None,
        *,
        adapters: Mapping[str, str] | Sequence[str] = (),
        name: str | None = None,
        dtype: Any = None,
        device: str | None = None,
        defaults: GenOptions | None = None,
        media: MediaPolicy = LOCAL,
        sizes: MediaSizes = NO_LIMITS,
        strict_sizes: bool = True,
    ):
        from mmtune.config import DEFAULT_MODEL
        from mmtune.models.loader import model_spec

        model = model or DEFAULT_MODEL
        self.defaults = defaults or GenOptions()
        self.media = media  # which media references prompts may use, unless a call says otherwise
        self.sizes = sizes  # image area bounds and video sampling for every prompt's media
        self._strict_sizes = strict_sizes  # False (a server's many models): area bounds only where they apply
        self._adapters: dict[str, Any] = {}  # name -> adapter key in the PEFT model
        self._tokenizers: dict[Any, Any] = {}
        self._processors: dict[Any, Any] = {}  # vision models: adapter key -> processor
        self._longest_token: dict[Any, int] = {}  # adapter key -> bytes of its tokenizer's longest token
        self._context: int | None = None
        first_adapter = None
        if is_adapter_dir(model):
            first_adapter, model = (name or model_name(model), model), adapter_base(model)
            name = None
        self.base = model
        self.spec = spec = model_spec(model)  # None: a model the registry does not know (loaded as text)
        self._tool_format = spec.tool_format if spec else "auto"  # as training wrote tools (train/dataset.py)
        self.name = name or model_name(model)
        self.model, self._tokenizers[BASE], self._processors[BASE] = _load(model, spec, dtype, device)
        if not self.is_vision and sizes.is_set and strict_sizes:
            raise UserError(f"--max-pixels, --min-pixels, --video-fps and --video-frames apply to vision-language "
                            f"models; {model} is a text model: drop them")
        self._sized(BASE)
        self.default_model = self.name
        self._gate = _AdapterGate(self._switch)
        self._batcher = Batcher(self)  # continuous batching of single text answers (infer/scheduler.py)
        self._batchable: bool | None = None  # whether the model's cache can be stacked
        self.batches  # noqa: B018  (found now, by a one-token forward, not inside someone's first request)
        extra = dict(adapters) if isinstance(adapters, Mapping) else {model_name(p): p for p in adapters}
        if first_adapter:
            extra = {first_adapter[0]: first_adapter[1], **extra}
            self.default_model = first_adapter[0]
        for adapter_name, path in extra.items():
            self.add_adapter(adapter_name, path)

    # ------------------------------------------------------------------ models

    @property
    def is_vision(self) -> bool:
        """Whether prompts may carry images (and, see `takes_video`, videos): the registry's `kind`."""
        return self.spec is not None and self.spec.kind == "vision"

    @property
    def takes_video(self) -> bool:
        from mmtune.infer.vision import takes_video

        return self.is_vision and takes_video(self._processors[BASE])

    @property
    def names(self) -> list[str]:
        """Every model name this engine answers to: the base, then its adapters."""
        return [self.name, *self._adapters]

    def add_adapter(self, name: str, path: str) -> None:
        """Load the LoRA adapter in `path` over this engine's base, reachable as `name`."""
        if name in self.names:
            raise UserError(f"model name {name!r} is used twice: give each adapter its own name (NAME=PATH)")
        if not is_adapter_dir(path):
            raise UserError(f"{path} has no {ADAPTER_CONFIG}: give the output folder of a LoRA training run")
        from peft import PeftModel

        key = f"a{len(self._adapters)}"
        with self._gate.exclusive():  # a server may add adapters while it answers requests
            if isinstance(self.model, PeftModel):
                self.model.load_adapter(path, adapter_name=key)
                self._switch(self._gate._active)  # loading must not change what is active
            else:
                self.model = PeftModel.from_pretrained(self.model, path, adapter_name=key)
                self.model.base_model.disable_adapter_layers()  # the base stays the base
            self.model.eval()
        self._adapters[name] = key
        if self.is_vision:
            from mmtune.infer.vision import adapter_processor

            self._processors[key] = adapter_processor(path) or self._processors[BASE]
            self._tokenizers[key] = self._processors[key].tokenizer
            self._sized(key)
        else:
            self._processors[key] = None
            self._tokenizers[key] = _adapter_tokenizer(path) or self._tokenizers[BASE]

    def _sized(self, key: Any) -> None:
        """This engine's pixel bounds on a vision processor (an adapter's own one included)."""
        if self._processors[key] is not None:
            self.sizes.apply(self._processors[key], strict=self._strict_sizes)

    @property
    def mixes_adapters(self) -> bool:
        """Whether rows for different adapters (and the base) decode in one batch: PEFT's mixed-adapter
        forward (`adapter_names=`), on an engine that has adapters."""
        from peft import PeftModel

        return isinstance(self.model, PeftModel)

    def _key(self, model: str | None) -> Any:
        name = model or self.default_model
        if name == self.name:
            return BASE
        if name not in self._adapters:
            raise UserError(f"unknown model {name!r}: this engine serves {', '.join(self.names)}")
        return self._adapters[name]

    def _switch(self, key: Any) -> None:
        if key is MIXED:  # a batch of rows for several adapters: each forward names each row's (adapter_names)
            self.model.base_model.enable_adapter_layers()
            return
        if key is BASE:
            self.model.base_model.disable_adapter_layers()
        else:
            self.model.base_model.enable_adapter_layers()
            self.model.set_adapter(key)

    def _call_syntax(self, key: Any) -> str:
        """How answers of adapter `key` write tool calls (chat/tools.py call_syntax, from its template)."""
        from mmtune.chat.tools import call_syntax

        owner = self._processors[key] if self._processors[key] is not None else self._tokenizers[key]
        return call_syntax(owner, self._tool_format)

    def tokenizer(self, model: str | None = None):
        """The tokenizer (with chat template) used for `model` (an adapter may carry its own)."""
        return self._tokenizers[self._key(model)]

    # ------------------------------------------------------------------ generation

    def options(self, **gen: Any) -> GenOptions:
        return make_options(self.defaults, **gen)

    def prompt_ids(
        self,
        messages,
        model: str | None = None,
        tools: list[dict] | None = None,
        *,
        media: MediaPolicy | None = None,
    ) -> list[int]:
        """The prompt's token ids: the training chat template with the generation header (and,
        on a vision model, each image's or video's media tokens)."""
        return self.prepare(messages, model=model, tools=tools, media=media).ids

    def prompt_length(self, messages, model: str | None = None) -> int:
        """The prompt's length in tokens, cheaply (for ordering a batch): a vision model's media
        are counted as their placeholders, without decoding them (or downloading them twice)."""
        key = self._key(model)
        processor = self._processors[key]
        if processor is None:
            return len(self.prompt_ids(messages, model))
        from mmtune.chat.render import prompt_text

        text = prompt_text(to_sample(messages), processor, tool_format=self._tool_format)
        return len(processor.tokenizer(text, add_special_tokens=False)["input_ids"])

    def prepare(
        self,
        messages,
        *,
        model: str | None = None,
        tools: list[dict] | None = None,
        media: MediaPolicy | None = None,
    ) -> Prompt:
        """The prompt rendered, tokenized and (vision models) its media decoded, ready for
        `stream`/`complete` any number of times: the server prepares once (errors are a 400
        before any answer begins) and answers n choices from it."""
        if isinstance(messages, Prompt):
            return messages
        key = self._key(model)
        sample = to_sample(messages, tools)
        self._refuse_unfitting_text(sample, key)
        rows, prefill = self._prepare([sample], key, media)
        if len(rows[0]) >= self.context_length:
            raise PromptTooLong(len(rows[0]), self.context_length)
        return Prompt(key, rows[0], prefill, tuple(sample.tools or ()))

    @property
    def context_length(self) -> int:
        """The most tokens (prompt + answer) the model takes: its configured positions."""
        if self._context is None:
            self._context = _context_length(self.model, self._tokenizers[BASE])
        return self._context

    def _refuse_unfitting_text(self, sample: Sample, key: Any) -> None:
        """PromptTooLong, before rendering and tokenizing the whole prompt, for text that cannot fit.

        1. By size alone: no token covers more bytes than the vocabulary's longest one, so N bytes
           are at least N / longest tokens (a 19 MiB message is refused in microseconds instead of
           being tokenized into millions of tokens).
        2. By a prefix: the tokens of a text part's opening (cut where a word ends, which is where
           the tokenizers' pre-tokenization splits) are part of the prompt's tokens, so a prefix of
           a few context-lengths' worth of bytes that alone overflows the context proves the prompt
           does (a 9,000-word message is refused in milliseconds)."""
        texts = [p.text for m in sample.messages for p in m.parts if p.type == "text"]
        context = self.context_length
        size = sum(len(t.encode("utf-8", "surrogatepass")) for t in texts)
        if key not in self._longest_token:
            self._longest_token[key] = _longest_token_bytes(self._tokenizers[key])
        at_least = size // self._longest_token[key]
        if at_least >= context:
            raise PromptTooLong(at_least, context, at_least=True)
        window = PREFIX_WINDOW * context  # characters; a prompt this short is cheap to tokenize whole anyway
        if size <= window:
            return
        tokenizer = self._tokenizers[key]
        for text in sorted(texts, key=len, reverse=True)[:2]:
            if len(text) <= window:
                break
            cut = text.rfind(" ", 0, window)
            prefix = text[: cut if cut > 0 else window]
            count = len(tokenizer(prefix, add_special_tokens=False)["input_ids"]) - 2  # the first word may merge
            if count >= context:
                raise PromptTooLong(count, context, at_least=True)
    def _prepare(self, samples: list[Sample], key: Any, media: MediaPolicy | None):
        """Token rows for `samples`, and for a vision model the media inputs of the prefill."""
        from mmtune.infer.vision import check_media_fits

        processor = self._processors[key]
        name = self.name if key is BASE else next(n for n, k in self._adapters.items() if k == key)
        for sample in samples:
            check_media_fits(sample, name, processor)
        if processor is None:
            from mmtune.chat.render import render_prompt

            tokenizer, fmt = self._tokenizers[key], self._tool_format
            return [render_prompt(s, tokenizer, add_generation_prompt=True, tool_format=fmt) for s in samples], None
        from mmtune.infer.vision import Prefill, encode

        batch = encode(samples, processor, media or self.media, self.sizes, self._tool_format)
        mask = batch["attention_mask"].bool()
        rows = [ids[m].tolist() for ids, m in zip(batch["input_ids"], mask)]
        return rows, Prefill(self.model, batch)

    def encode(self, text: str, model: str | None = None) -> list[int]:
        """`text` as token ids, as the tokenizer writes a plain text (no chat template): the legacy
        completions' prompt."""
        return list(self._tokenizers[self._key(model)](text)["input_ids"])

    def prepare_ids(self, ids: Sequence[int], model: str | None = None) -> Prompt:
        """A Prompt of raw token ids (no chat template): each must be in the vocabulary, and they must
        leave room in the context for at least one more token."""
        key = self._key(model)
        size = _vocab_size(self.model, self._tokenizers[key])
        if not ids:
            raise UserError("prompt: the prompt is empty: send at least one token")
        bad = next((t for t in ids if not isinstance(t, int) or isinstance(t, bool) or not 0 <= t < size), None)
        if bad is not None:
            raise UserError(f"prompt: token id {bad!r} is not in this model's vocabulary (0 to {size - 1})")
        if len(ids) >= self.context_length:
            raise PromptTooLong(len(ids), self.context_length)
        return Prompt(key, list(ids))

    def score(self, prompt: Prompt, top: int = 0) -> list:
        """Each prompt token's log-probability given the ones before it (the first: None), with the
        `top` most likely tokens at each position: one forward pass, nothing generated."""
        from mmtune.infer.decode import score

        self._gate.acquire(prompt.key)
        try:
            return score(self.model, prompt.ids, top)
        finally:
            self._gate.release()

    def chat(self, messages, *, model: str | None = None, **gen: Any) -> Answer:
        """The answer to `messages` (OpenAI-style dicts or a Sample): its content, a str, with the
        parsed message (`.tool_calls`, `.message`) when the model called tools."""
        done = self.complete(messages, model=model, **gen)
        return Answer(done.text, done.tool_calls)

    def complete(self, messages, *, model: str | None = None, **gen: Any) -> Completion:
        """The answer with its token counts and finish reason."""
        stream = self.stream(messages, model=model, **gen)
        for _ in stream:
            pass
        return stream.completion

    def stream(
        self,
        messages,
        *,
        model: str | None = None,
        tools: list[dict] | None = None,
        media: MediaPolicy | None = None,
        score_prompt: bool = False,
        tool_choice: Any = None,
        parallel_tool_calls: bool | None = None,
        **gen: Any,
    ) -> Generation:
        """Text pieces as they are produced; `.completion` holds the usage once it is exhausted.

        `messages`: OpenAI-style dicts, a Sample, or a `prepare`d Prompt. `media`: which media
        references the prompt may use (default: the engine's policy). `logprobs=N` records each
        token's log-probability with N alternatives; `score_prompt` the prompt tokens' too.
        `tool_choice` / `parallel_tool_calls` as OpenAI's (infer/tool_calls.py): the answer's tool
        calls are parsed into `.completion.tool_calls`."""
        from mmtune.infer.tool_calls import tool_policy

        opts = self.options(**gen)
        prompt = self.prepare(messages, model=model, tools=tools, media=media)
        tools = tools or list(prompt.tools)
        policy = tool_policy(tools, tool_choice, parallel_tool_calls, self._call_syntax(prompt.key) if tools else "hermes")
        return Generation(self, prompt.key, [prompt.ids], opts, prompt.prefill, score_prompt=score_prompt,
                          tools=policy)

    def generate_batch(
        self, prompts: Sequence, *, model: str | None = None, media: MediaPolicy | None = None, **gen: Any
    ) -> list[Completion]:
        """Answers for many conversations at once (one left-padded batch)."""
        opts = self.options(**gen)
        key = self._key(model)
        from mmtune.infer.tool_calls import tool_policy

        samples = [to_sample(p) for p in prompts]
        rows, prefill = self._prepare(samples, key, media)
        batch = Generation(self, key, rows, opts, prefill)
        for _ in batch:
            pass
        out = []
        for sample, done in zip(samples, batch.completions):  # a row with tools: its calls parsed out
            content, calls = tool_policy(sample.tools, syntax=self._call_syntax(key) if sample.tools else "hermes"
                                         ).split(done.text)
            out.append(replace(done, text=content, tool_calls=tuple(calls), finish_reason="tool_calls")
                       if calls else done)
        return out

    @property
    def batches(self) -> bool:
        """Whether single text answers decode together (continuous batching): the model's KV cache is a
        plain per-layer one (checked once, with a one-token forward)."""
        if self._batchable is None and self.is_vision:
            self._batchable = False  # media inputs of the prefill: the one-answer loop
        if self._batchable is None:
            import torch

            from mmtune.infer.scheduler import batchable

            device = next(self.model.parameters()).device
            with torch.inference_mode():
                out = self.model(input_ids=torch.zeros(1, 1, dtype=torch.long, device=device), use_cache=True)
            self._batchable = batchable(out.past_key_values)
        return self._batchable

    def _eos_ids(self, key: Any) -> set[int]:
        tokenizer, processor = self._tokenizers[key], self._processors[key]
        ids = set()
        gen_eos = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        ids.update(gen_eos if isinstance(gen_eos, list) else [gen_eos])
        ids.add(tokenizer.eos_token_id)
        from mmtune.chat.render import end_of_turn_id

        ids.add(end_of_turn_id(processor if processor is not None else tokenizer))  # the processor's template, if any
        ids.discard(None)
        return ids


@dataclass(frozen=True)
class Prompt:
    """A prepared prompt (Engine.prepare): which adapter, its token ids, its media inputs."""

    key: Any
    ids: list[int]
    prefill: Any = None  # infer.vision.Prefill for a vision model's media, else None
    tools: tuple[dict, ...] = ()  # the tool definitions rendered into it


class Generation:
    """An answer being generated: iterate for text pieces (row 0); afterwards `.completion`.

    Holds the adapter gate while it runs and releases it when exhausted or closed, so a
    stream dropped half-way (client gone) frees the model for other adapters. `cancel()`, from
    any thread, stops it after the decode step under way (a client that left, a server that
    stops): the iteration then ends and `cancelled` is true.
    """

    def __init__(self, engine: Engine, key: Any, rows: list[list[int]], opts: GenOptions, prefill=None,
                 *, score_prompt: bool = False, tools: ToolPolicy | None = None):
        from mmtune.infer.tool_calls import ToolPolicy

        tokenizer = engine._tokenizers[key]
        self._score_prompt = score_prompt
        self.tools = tools or ToolPolicy()
        self.prefix = self.tools.prefix  # the answer starts with it (a forced call)
        if self.prefix:
            if prefill is not None:
                raise UserError("tool_choice 'required' or a named function is not supported on vision models yet: "
                                "use tool_choice 'auto'")
            rows = [r + tokenizer(self.prefix, add_special_tokens=False)["input_ids"] for r in rows]
        if self.tools.stops:
            opts = replace(opts, stop=opts.stop + self.tools.stops)
        eos = engine._eos_ids(key)
        self.trackers = [TextTracker(tokenizer, opts, eos, len(r)) for r in rows]
        self._engine, self._key, self._rows, self._opts = engine, key, rows, opts
        self._prefill = prefill  # vision models: media inputs of the first forward (infer/vision.py)
        self._cancel = threading.Event()
        self._iter = self._run()

    def cancel(self) -> None:
        """Stop after the current decode step (thread-safe; the consumer's iteration then ends)."""
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        return next(self._iter)

    def close(self) -> None:
        self._iter.close()

    def _run(self) -> Iterator[str]:
        engine = self._engine
        if self._cancel.is_set():
            return
        if self.prefix:
            yield self.prefix
        if len(self._rows) == 1 and self._prefill is None and not self._score_prompt and engine.batches:
            yield from self._batched()
            return
        engine._gate.acquire(self._key)
        try:
            pad = engine._tokenizers[self._key].pad_token_id or 0
            for _ in decode_loop(engine.model, self._rows, self.trackers, self._opts, pad, self._prefill,
                                 score_prompt=self._score_prompt):
                if self._cancel.is_set():
                    return
                piece = self.trackers[0].take()
                if piece:
                    yield piece
        finally:
            engine._gate.release()
        piece = self.trackers[0].take()
        if piece:
            yield piece

    def _batched(self) -> Iterator[str]:
        """Text pieces of this answer decoded in the engine's running batch (infer/scheduler.py)."""
        from mmtune.infer.scheduler import END, Slot

        slot = Slot(self._key, self._rows[0], self._opts, self.trackers[0], self._cancel)
        self._engine._batcher.submit(slot)
        finished = False
        try:
            while (item := slot.out.get()) is not END:
                if isinstance(item, BaseException):
                    raise item
                yield item
            finished = True
        finally:
            if not finished:  # closed half-way (the client left): the row leaves the batch at its next step
                slot.cancel.set()

    @property
    def completion(self) -> Completion:
        return self._parsed(self.trackers[0].completion())

    @property
    def completions(self) -> list[Completion]:
        return [self._parsed(t.completion()) for t in self.trackers]

    def _parsed(self, done: Completion) -> Completion:
        """The answer with the forced opening before it, split into content and tool calls."""
        content, calls = self.tools.split(self.prefix + done.text)
        if not calls:
            return replace(done, text=content)
        return replace(done, text=content, tool_calls=tuple(calls), finish_reason="tool_calls")


class Answer(str):
    """Engine.chat's answer: the content (a str) and the tool calls the model made."""

    tool_calls: tuple[ToolCall, ...]

    def __new__(cls, content: str, tool_calls: Sequence[ToolCall] = ()):
        self = super().__new__(cls, content)
        self.tool_calls = tuple(tool_calls)
        return self

    @property
    def message(self) -> Message:
        """The assistant message (content and tool calls), as mmtune's data layer writes it."""
        from mmtune.data.schema import Part

        return Message("assistant", [Part("text", text=str(self))] if self else [], list(self.tool_calls))


def _load(model: str, spec, dtype: Any, device: str | None):
    """(model, tokenizer, processor): the processor is None for a text model (its registry `kind`)."""
    import torch

    from mmtune.models.loader import load_model, load_tokenizer
    from mmtune.models.vision import load_processor

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    processor = load_processor(model) if spec is not None and spec.kind == "vision" else None
    tokenizer = processor.tokenizer if processor is not None else load_tokenizer(model)
    net = load_model(model, dtype=dtype)
    net.to(device).eval()
    from mmtune.infer.cpu_linear import use_onednn

    use_onednn(net)  # float32 on a CPU: oneDNN's linear, not MKL's slow sgemm path (infer/cpu_linear.py)
    return net, tokenizer, processor


def _context_length(model, tokenizer) -> int:
    """max_position_embeddings of the (text) config, else the tokenizer's model_max_length."""
    config = getattr(model, "config", None)
    for cfg in (config, getattr(config, "text_config", None), getattr(config, "llm_config", None)):
        n = getattr(cfg, "max_position_embeddings", None) if cfg is not None else None
        if isinstance(n, int) and n > 0:
            return n
    n = getattr(tokenizer, "model_max_length", None)
    if isinstance(n, int) and 0 < n < 10**8:
        return n
    raise UserError("cannot tell this model's context length (no max_position_embeddings in its config): "
                    "set it in the model's config.json")


def _vocab_size(model, tokenizer) -> int:
    """How many token ids the model takes: its (text) config's vocab_size, else the tokenizer's."""
    config = getattr(model, "config", None)
    for cfg in (config, getattr(config, "text_config", None)):
        n = getattr(cfg, "vocab_size", None) if cfg is not None else None
        if isinstance(n, int) and n > 0:
            return n
    return len(tokenizer)


def _longest_token_bytes(tokenizer) -> int:
    """UTF-8 bytes of the vocabulary's longest token string (byte-level and SentencePiece token strings
    take at least as many bytes as the text they stand for), added tokens included."""
    vocab = tokenizer.get_vocab()
    return max(1, max((len(t.encode("utf-8", "surrogatepass")) for t in vocab), default=1))


def _adapter_tokenizer(path: str):
    """The tokenizer saved beside an adapter (training saves it with the chat template), if any."""
    folder = Path(path).expanduser()
    if not (folder / "tokenizer_config.json").is_file():
        return None
    from transformers import AutoTokenizer

    from mmtune.models.loader import ensure_pad_token

    return ensure_pad_token(AutoTokenizer.from_pretrained(folder), path)


__all__ = ["Answer", "Engine", "Generation", "Prompt", "PromptTooLong", "Completion", "GenOptions", "MediaPolicy", "Message"]
