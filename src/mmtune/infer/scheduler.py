"""Continuous batching: one thread decodes every running text answer of an Engine in one batch.

A new answer is prefilled on its own (its prompt's KV cache), then joins the running batch at the
next decode step: the caches are left-padded to one length and stacked, and the attention mask
and per-row positions keep every row exactly what it would be alone (up to float rounding). A
finished or cancelled row leaves the batch at once (its cache rows are dropped, and columns no
row needs any more are trimmed). Each row keeps its own options: sampling processors, random
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


@dataclass(eq=False)
class Slot:
    """One answer in (or waiting for) the batch; its text pieces arrive on `out`."""

    key: Any
    ids: list[int]
    opts: GenOptions
    tracker: TextTracker
    cancel: threading.Event
    out: queue.SimpleQueue = field(default_factory=queue.SimpleQueue)
    history: Any = None  # prompt + generated ids ([1, n] tensor), for the repetition penalty
    procs: Any = None
    generator: Any = None
    last: int = 0  # the newest token, fed at the next step
    position: int = 0  # its position


class Batcher:
    """Runs the decode loop of `engine` in a thread of its own while there is work."""

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

        engine, key, rows, state = self._engine, None, [], None
        while True:
            new_key, joining = self._take(key, bool(rows))
            if not rows and not joining:
                return
            if not rows:
                key = new_key
                engine._gate.acquire(key)
            try:
                with torch.inference_mode():
                    for slot in joining:
                        if slot.cancel.is_set():
                            slot.out.put(END)
                            continue
                        cache = self._prefill(slot)
                        if slot.tracker.done or slot.cancel.is_set():  # (its client may leave during the prefill)
                            slot.out.put(END)
                            continue
                        state = _join(state, cache, len(slot.ids))
                        rows.append(slot)
                    rows, state = self._drop_ended(rows, state)  # cancelled while others were prefilled
                    if rows:
                        self.running, self.peak = len(rows), max(self.peak, len(rows))
                        state = self._step(rows, state)
                    rows, state = self._drop_ended(rows, state)
            except BaseException as e:  # a failure ends every answer in the batch with it, not the thread silently
                for slot in rows + joining:
                    slot.out.put(e)
                rows, state = [], None
            self.running = len(rows)
            if not rows:
                engine._gate.release()

    def _drop_ended(self, rows: list[Slot], state):
        """The rows still generating (and their cache); finished or cancelled ones get END now."""
        keep = [i for i, s in enumerate(rows) if not (s.tracker.done or s.cancel.is_set())]
        if len(keep) == len(rows):
            return rows, state
        for i, slot in enumerate(rows):
            if i not in keep:
                slot.out.put(END)
        rows = [rows[i] for i in keep]
        self.running = len(rows)
        return rows, (_select(state, keep) if rows else None)

    def _prefill(self, slot: Slot):
        import torch

        device = next(self._engine.model.parameters()).device
        ids = torch.tensor([slot.ids], device=device)
        out = self._engine.model(input_ids=ids, use_cache=True, logits_to_keep=1, **self._adapters([slot]))
        slot.history, slot.procs, slot.generator = ids, logits_processors(slot.opts), generator_for(slot.opts, device)
        slot.position = len(slot.ids) - 1
        self._pick(slot, out.logits[:, -1, :])
        return out.past_key_values

    def _step(self, rows: list[Slot], state):
        import torch

        cache, mask = state
        device = mask.device
        step_ids = torch.tensor([[s.last] for s in rows], device=device)
        mask = torch.cat([mask, mask.new_ones(len(rows), 1)], dim=-1)
        positions = torch.tensor([[s.position + 1] for s in rows], device=device)
        out = self._engine.model(input_ids=step_ids, attention_mask=mask, position_ids=positions,
                                 past_key_values=cache, use_cache=True, **self._adapters(rows))
        for r, slot in enumerate(rows):
            slot.position += 1
            if not (slot.tracker.done or slot.cancel.is_set()):
                self._pick(slot, out.logits[r : r + 1, -1, :])
        return out.past_key_values, mask

    def _adapters(self, rows: list[Slot]) -> dict[str, Any]:
        """Each row's adapter for PEFT's mixed-adapter forward (the base: "__base__")."""
        if not self._engine.mixes_adapters:
            return {}
        return {"adapter_names": ["__base__" if s.key is None else s.key for s in rows]}

    def _pick(self, slot: Slot, logits) -> None:
        """Choose the slot's next token from `logits` ([1, vocab]) with its own options, push it, and
        send the text it releases."""
        import torch

        scores = slot.procs(slot.history, logits.float())
        token = pick(scores, slot.opts, slot.generator)
        top = slot.opts.logprobs
        logprob = token_logprobs(logits, token.tolist(), top)[0] if top is not None else None
        slot.last = int(token.item())
        slot.history = torch.cat([slot.history, token[:, None]], dim=-1)
        slot.tracker.push(slot.last, logprob)
        piece = slot.tracker.take()
        if piece:
            slot.out.put(piece)


def batchable(cache) -> bool:
    """Whether a model's prefill cache can be stacked with others: plain per-layer key/value tensors."""
    from transformers.cache_utils import DynamicCache, DynamicLayer

    return type(cache) is DynamicCache and all(type(layer) is DynamicLayer for layer in cache.layers)


def _join(state, cache, length: int):
    """The batch state (cache, mask) with a new row's prefill cache (`length` tokens) stacked under it."""
    import torch

    if state is None:
        mask = torch.ones(1, length, dtype=torch.long, device=cache.layers[0].keys.device)
        return cache, mask
    batch, mask = state
    width = mask.shape[1]
    new_mask = torch.ones(1, length, dtype=mask.dtype, device=mask.device)
    if length < width:
        new_mask = torch.cat([new_mask.new_zeros(1, width - length), new_mask], dim=-1)
    elif length > width:
        mask = torch.cat([mask.new_zeros(mask.shape[0], length - width), mask], dim=-1)
    for old, add in zip(batch.layers, cache.layers):
        for name in ("keys", "values"):
            a, b = getattr(old, name), getattr(add, name)
            a, b = _left_pad(a, b.shape[-2]), _left_pad(b, a.shape[-2])
            setattr(old, name, torch.cat([a, b], dim=0))
    return batch, torch.cat([mask, new_mask], dim=0)


def _left_pad(t, width: int):
    import torch

    if t.shape[-2] >= width:
        return t
    pad = t.new_zeros(*t.shape[:-2], width - t.shape[-2], t.shape[-1])
    return torch.cat([pad, t], dim=-2)


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
