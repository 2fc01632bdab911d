"""Continuous batching: one thread decodes every running text answer of an Engine in one batch.

New answers are prefilled (their prompts' KV caches: those that arrived together in one left-padded
forward, a long prompt in chunks between decode steps), then join the running batch at the next
decode step: the caches are left-padded to one length and stacked, and the attention mask
and per-row positions keep every row exactly what it would be alone (up to float rounding). A
finished or cancelled row leaves the batch at once (its cache rows are dropped, and columns no
row needs any more are trimmed). The batch cache keeps spare columns (RoomyLayer), so a decode step
writes its new key/value column in place rather than copying the whole cache. Each row keeps its own options: sampling processors, random
generator (a per-request seed), stop strings, max tokens.

Rows for different LoRA adapters over one base (and for the base itself) decode in the same batch:
PEFT's mixed-adapter forward (`adapter_names=`, one name per row) applies each row's adapter. The
batch holds the engine's adapter gate in its "mixed" state, so the one-answer loop (which switches
the active adapter) waits for it, first come first served. Models whose cache is not a plain per-layer key/value cache
(sliding-window or static layers) and vision prompts keep the one-answer loop (infer/decode.py).
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass, field
from typing import Any

from mmtune.infer.decode import TextTracker, generator_for, logits_processors, pick, token_logprobs
from mmtune.infer.options import GenOptions

END = object()  # what `Slot.out` holds after the answer's last piece


PREFILL_TOKENS = 512  # prompt tokens (padding included) one prefill forward takes: a longer prompt is prefilled in
# chunks this size, between decode steps of the running rows, so a joining prompt never stalls them for long


@dataclass(eq=False)
class Slot:
    """One answer in (or waiting for) the batch; its text pieces arrive on `out`."""

    key: Any
    ids: list[int]
    opts: GenOptions
    tracker: TextTracker
    cancel: threading.Event
    out: queue.SimpleQueue = field(default_factory=queue.SimpleQueue)
    history: list[int] = field(default_factory=list)  # prompt + generated ids, for the repetition penalty
    procs: Any = None
    generator: Any = None
    last: int = 0  # the newest token, fed at the next step
    position: int = 0  # its position
    cache: Any = None  # a long prompt's cache while it is prefilled in chunks
    prefilled: int = 0  # how many of its prompt tokens are in `cache`

    @property
    def ended(self) -> bool:
        return self.tracker.done or self.cancel.is_set()


class Batcher:
    """Runs the decode loop of `engine` in a thread of its own while there is work.

    Each turn of the loop: the answers that arrived join the prefill queue; one prefill forward runs
    (the queue's first prompts together, left-padded, up to PREFILL_TOKENS, or the next chunk of a
    longer one); the rows it completes join the batch; then one decode step for every row."""

    def __init__(self, engine):
        self._engine = engine
        self._cond = threading.Condition()
        self._waiting: list[Slot] = []
        self._thread: threading.Thread | None = None
        self.running = 0  # rows in the batch now
        self.peak = 0  # the most rows that have decoded together

    def submit(self, slot: Slot) -> None:
        with self._cond:
            self._waiting.append(slot)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="mmtune-batch", daemon=True)
                self._thread.start()
            self._cond.notify_all()

    def _take(self, key: Any, running: bool) -> tuple[Any, list[Slot]]:
        """The waiting answers that may join now: all of them where adapters mix in one batch, else in
        arrival order up to the first for another adapter (all of one adapter when nothing runs). The
        gate key for the batch; (key, []) and the thread ends when nothing is left."""
        from mmtune.infer.engine import MIXED

        with self._cond:
            if not running:
                if not self._waiting:
                    self._thread = None
                    return key, []
                key = MIXED if self._engine.mixes_adapters else self._waiting[0].key
            taken = []
            for slot in list(self._waiting):
                if key is not MIXED and slot.key != key:
                    break
                taken.append(slot)
                self._waiting.remove(slot)
            return key, taken

    def _run(self) -> None:
        import torch

        engine, key, rows, queued, state = self._engine, None, [], [], None
        while True:
            new_key, joining = self._take(key, bool(rows or queued))
            if not rows and not queued and not joining:
                return
            if not rows and not queued:
                key = new_key
                engine._gate.acquire(key)
            queued += joining
            try:
                with torch.inference_mode():
                    queued = self._drop_queued(queued)
                    if queued:
                        ready, queued = self._prefill(queued)
                        ready = self._drop_queued(ready)  # (a client may leave during its prefill)
                        if ready:
                            state = _stack([state, *(self._own_state(s) for s in ready)])
                            rows += ready
                    rows, state = self._drop_ended(rows, state)  # cancelled while others were prefilled
                    if rows:
                        self.running, self.peak = len(rows), max(self.peak, len(rows))
                        state = self._step(rows, state)
                    rows, state = self._drop_ended(rows, state)
            except BaseException as e:  # a failure ends every answer in the batch with it, not the thread silently
                for slot in rows + queued:
                    slot.out.put(e)
                rows, queued, state = [], [], None
            self.running = len(rows)
            if not rows and not queued:
                engine._gate.release()

    @staticmethod
    def _drop_queued(slots: list[Slot]) -> list[Slot]:
        """The slots still wanted; the others (cancelled, or done at their first token) get END now."""
        for slot in slots:
            if slot.ended:
                slot.cache = None
                slot.out.put(END)
        return [s for s in slots if not s.ended]

    def _drop_ended(self, rows: list[Slot], state):
        """The rows still generating (and their cache); finished or cancelled ones get END now."""
        keep = [i for i, s in enumerate(rows) if not s.ended]
        if len(keep) == len(rows):
            return rows, state
        for i, slot in enumerate(rows):
            if i not in keep:
                slot.out.put(END)
        rows = [rows[i] for i in keep]
        self.running = len(rows)
        return rows, (_select(state, keep) if rows else None)

    def _prefill(self, queued: list[Slot]) -> tuple[list[Slot], list[Slot]]:
        """One prefill forward over the queue's head: (the slots now prefilled, each with its first token
        picked and its cache in `slot.cache`; the slots still queued)."""
        first = queued[0]
        if first.prefilled or len(first.ids) > PREFILL_TOKENS:
            done = self._prefill_chunk(first)
            return ([first], queued[1:]) if done else ([], queued)
        group = [first]
        for slot in queued[1:]:
            width = max(len(slot.ids), *(len(s.ids) for s in group))
            if slot.prefilled or width * (len(group) + 1) > PREFILL_TOKENS:
                break
            group.append(slot)
        self._prefill_group(group)
        return group, queued[len(group):]

    def _prefill_group(self, group: list[Slot]) -> None:
        """Prompts prefilled together in one left-padded forward (each row as it would be alone)."""
        import torch

        device = self._device
        width = max(len(s.ids) for s in group)
        ids = torch.tensor([[0] * (width - len(s.ids)) + s.ids for s in group], device=device)
        extra = {}
        if any(len(s.ids) < width for s in group):
            mask = torch.tensor([[0] * (width - len(s.ids)) + [1] * len(s.ids) for s in group], device=device)
            extra = {"attention_mask": mask, "position_ids": (mask.cumsum(-1) - 1).clamp(min=0)}
        out = self._engine.model(input_ids=ids, use_cache=True, logits_to_keep=1, **extra, **self._adapters(group))
        cache = out.past_key_values
        for r, slot in enumerate(group):
            slot.cache, slot.prefilled = _rows(cache, r, width - len(slot.ids)), len(slot.ids)
        self._first_tokens(group, out.logits[:, -1, :])

    def _prefill_chunk(self, slot: Slot) -> bool:
        """The next PREFILL_TOKENS of a long prompt; True once the whole prompt is in."""
        import torch

        start, end = slot.prefilled, min(len(slot.ids), slot.prefilled + PREFILL_TOKENS)
        ids = torch.tensor([slot.ids[start:end]], device=self._device)
        positions = torch.arange(start, end, device=self._device)[None]
        out = self._engine.model(input_ids=ids, position_ids=positions, past_key_values=slot.cache, use_cache=True,
                                 logits_to_keep=1, **self._adapters([slot]))
        slot.cache, slot.prefilled = out.past_key_values, end
        if end < len(slot.ids):
            return False
        self._first_tokens([slot], out.logits[:, -1, :])
        return True

    def _first_tokens(self, slots: list[Slot], logits) -> None:
        for slot in slots:
            slot.history = list(slot.ids)
            slot.procs, slot.generator = logits_processors(slot.opts), generator_for(slot.opts, self._device)
            slot.position = len(slot.ids) - 1
        self._pick(slots, logits)

    def _own_state(self, slot: Slot):
        """(cache, mask) of a freshly prefilled slot; the slot lets go of its cache."""
        import torch

        cache, slot.cache = slot.cache, None
        return cache, torch.ones(1, len(slot.ids), dtype=torch.long, device=self._device)

    @property
    def _device(self):
        return next(self._engine.model.parameters()).device

    def _step(self, rows: list[Slot], state):
        import torch

        cache, mask = state
        device = mask.device
        _make_room(cache)
        step_ids = torch.tensor([[s.last] for s in rows], device=device)
        mask = torch.cat([mask, mask.new_ones(len(rows), 1)], dim=-1)
        positions = torch.tensor([[s.position + 1] for s in rows], device=device)
        out = self._engine.model(input_ids=step_ids, attention_mask=mask, position_ids=positions,
                                 past_key_values=cache, use_cache=True, **self._adapters(rows))
        for slot in rows:
            slot.position += 1
        self._pick(rows, out.logits[:, -1, :])
        return out.past_key_values, mask

    def _adapters(self, rows: list[Slot]) -> dict[str, Any]:
        """Each row's adapter for PEFT's mixed-adapter forward (the base: "__base__")."""
        if not self._engine.mixes_adapters:
            return {}
        return {"adapter_names": ["__base__" if s.key is None else s.key for s in rows]}

    def _pick(self, slots: list[Slot], logits) -> None:
        """Choose each slot's next token from its row of `logits` ([n, vocab]) with its own options, push
        it, and send the text it releases. Greedy rows without logits processors take one batched argmax."""
        import torch

        argmax = logits.argmax(dim=-1).tolist()
        for r, slot in enumerate(slots):
            if slot.ended:
                continue
            if slot.opts.greedy and not slot.procs:
                token = argmax[r]
            else:
                history = torch.tensor([slot.history], device=logits.device)
                scores = slot.procs(history, logits[r : r + 1].float())
                token = int(pick(scores, slot.opts, slot.generator).item())
            top = slot.opts.logprobs
            logprob = token_logprobs(logits[r : r + 1], [token], top)[0] if top is not None else None
            slot.last = token
            slot.history.append(token)
            slot.tracker.push(token, logprob)
            piece = slot.tracker.take()
            if piece:
                slot.out.put(piece)


def batchable(cache) -> bool:
    """Whether a model's prefill cache can be stacked with others: plain per-layer key/value tensors."""
    from transformers.cache_utils import DynamicCache, DynamicLayer

    return type(cache) is DynamicCache and all(type(layer) is DynamicLayer for layer in cache.layers)


def _stack(states: list):
    """Batch states (cache, mask) as one, rows in order: each left-padded to the widest (one copy per layer)."""
    import torch

    states = [s for s in states if s is not None]
    if len(states) == 1:
        return states[0]
    width = max(mask.shape[1] for _, mask in states)
    caches = [cache for cache, _ in states]
    for i, layer in enumerate(caches[0].layers):
        for name in ("keys", "values"):
            parts = [_left_pad(getattr(c.layers[i], name), width) for c in caches]
            setattr(layer, name, torch.cat(parts, dim=0))
    return caches[0], torch.cat([_left_pad(mask, width, dim=-1) for _, mask in states], dim=0)


def _rows(cache, row: int, start: int):
    """Row `row` of a prefill's cache from column `start` on (its own tokens, without the padding)."""
    from transformers.cache_utils import DynamicCache

    out = DynamicCache()
    for i, layer in enumerate(cache.layers):
        out.update(layer.keys[row : row + 1, :, start:], layer.values[row : row + 1, :, start:], i)
    return out


def _left_pad(t, width: int, dim: int = -2):
    """`t` with zeros before its columns along `dim` up to `width` (keys/values: dim -2; masks: -1)."""
    import torch

    if t.shape[dim] >= width:
        return t
    shape = list(t.shape)
    shape[dim] = width - t.shape[dim]
    return torch.cat([t.new_zeros(shape), t], dim=dim)


ROOM = 64  # columns of spare room a batch cache gets when it runs out: one copy per ROOM steps, not one per step


def _make_room(cache) -> None:
    """Room for at least the next token in every layer of the batch cache, so its step writes the new
    key/value column in place (RoomyLayer) instead of concatenating the whole cache again (DynamicLayer's
    `torch.cat` per layer per step: at 16 rows a tenth of a CPU decode step, and it grows with the cache).
    A layer whose tensors were replaced (rows joined or left) gets a fresh buffer."""
    roomy = _roomy()
    for layer in cache.layers:
        if type(layer) is not roomy:
            layer.__class__ = roomy
            layer.buffers = None
        layer.reserve(1)


def _roomy_layer():
    from transformers.cache_utils import DynamicLayer

    class RoomyLayer(DynamicLayer):
        """A DynamicLayer whose keys/values are the filled front of larger buffers: `update` writes the new
        columns into the room behind them (the same values a concatenation gives)."""

        buffers: tuple | None = None

        def reserve(self, columns: int) -> None:
            keys, values = self.keys, self.values
            filled = keys.shape[-2]
            if self.buffers is not None:
                bk, bv = self.buffers
                if (bk.data_ptr() == keys.data_ptr() and bk.shape[:-2] == keys.shape[:-2]
                        and filled + columns <= bk.shape[-2]):
                    return
            shape = (*keys.shape[:-2], filled + columns + ROOM, keys.shape[-1])
            bk, bv = keys.new_empty(shape), values.new_empty((*shape[:-1], values.shape[-1]))
            bk[..., :filled, :], bv[..., :filled, :] = keys, values
            self.buffers = bk, bv
            self.keys, self.values = bk[..., :filled, :], bv[..., :filled, :]

        def update(self, key_states, value_states, *args, **kwargs):
            if not self.is_initialized:
                return super().update(key_states, value_states, *args, **kwargs)
            self.reserve(key_states.shape[-2])
            filled, new = self.keys.shape[-2], key_states.shape[-2]
            bk, bv = self.buffers
            bk[..., filled : filled + new, :] = key_states
            bv[..., filled : filled + new, :] = value_states
            self.keys, self.values = bk[..., : filled + new, :], bv[..., : filled + new, :]
            return self.keys, self.values

    return RoomyLayer


_ROOMY: list = []


def _roomy():
    """The RoomyLayer class (built once, on first use: this module imports transformers lazily)."""
    if not _ROOMY:
        _ROOMY.append(_roomy_layer())
    return _ROOMY[0]


def _select(state, keep: list[int]):
    """The batch state with only rows `keep`, and the columns none of them attends to cut off."""
    import torch

    cache, mask = state
    index = torch.tensor(keep, device=mask.device)
    mask = mask[index]
    used = mask.any(dim=0).nonzero()
    start = int(used[0]) if len(used) else 0
    mask = mask[:, start:]
    for layer in cache.layers:
        layer.keys = layer.keys[index, :, start:]
        layer.values = layer.values[index, :, start:]
    return cache, mask
