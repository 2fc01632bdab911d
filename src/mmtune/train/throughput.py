"""How fast a run trained: supervised tokens/s and achieved FLOP/s against the machine's measured peak.

FLOPs are counted the usual "model FLOPs" way (PaLM appendix B), so runs with different
implementations compare on the work the model needs, not on the work an implementation does:
every matmul weight (every `nn.Linear`, the output layer included, LoRA's small matrices left
out) costs 2 FLOPs per token forward; the backward pass costs twice that again when the
weights train (full: 6N per token) and once when only activation gradients flow through
frozen weights (LoRA: 4N); a run that trains some weights in full and freezes the rest (a vision
tower and projector on a frozen language model) counts each weight by what it does. Causal
attention adds 4 x heads x head_dim FLOPs per layer for each (query, key) pair a token really
attends to forward, 3x that for training. The peak is measured, not looked up: a large matmul
in the training precision, best of a few.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import lru_cache

import torch


@dataclass(frozen=True)
class Throughput:
    runtime_s: float
    tokens: int
    supervised_tokens: int
    flops: float
    peak_flops_per_s: float

    @classmethod
    def of(cls, runtime: float, tokens: int, supervised: int, flops: float, peak: float) -> Throughput:
        return cls(runtime, tokens, supervised, flops, peak)

    @property
    def supervised_tokens_per_s(self) -> float:
        return self.supervised_tokens / max(self.runtime_s, 1e-9)

    @property
    def flops_per_s(self) -> float:
        return self.flops / max(self.runtime_s, 1e-9)

    @property
    def mfu(self) -> float:
        """Achieved model FLOP/s as a share of the measured peak."""
        return self.flops_per_s / self.peak_flops_per_s if self.peak_flops_per_s > 0 else 0.0


def sequence_lengths(batch) -> list[int]:
    """The real (unpadded) length of every sequence in a collated batch, packed or padded."""
    if "cu_seq_lens_q" in batch:
        return torch.diff(batch["cu_seq_lens_q"]).tolist()
    if "attention_mask" in batch:
        return batch["attention_mask"].sum(-1).tolist()
    return [batch["input_ids"].shape[-1]] * batch["input_ids"].shape[0]


def attention_pairs(batch) -> int:
    """(query, key) pairs causal attention scores in this batch: L(L+1)/2 per sequence of L tokens."""
    return sum(n * (n + 1) // 2 for n in sequence_lengths(batch))


def _linear_weights(model):
    """Every nn.Linear weight of the base model once (LoRA's small matrices left out)."""
    seen: set[int] = set()
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and "lora_" not in name and id(module.weight) not in seen:
            seen.add(id(module.weight))
            yield module.weight


def matmul_params(model) -> int:
    """Weights used in matmuls once per token: every nn.Linear of the base model (LoRA's excluded)."""
    return sum(w.numel() for w in _linear_weights(model))


def model_flops(model, full: bool | None = None) -> tuple[float, float]:
    """(training FLOPs per token, training FLOPs per attended pair) of `model`.

    `full`: True counts every weight as training (6N), False none (4N); None (default) looks at
    which weights require gradients: 4N, plus 2 per weight that trains."""
    if full is None:
        per_token = 4 * matmul_params(model) + 2 * sum(w.numel() for w in _linear_weights(model) if w.requires_grad)
    else:
        per_token = (6 if full else 4) * matmul_params(model)
    cfg = getattr(model, "config", None)
    cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    layers = getattr(cfg, "num_hidden_layers", 0) or 0
    heads = getattr(cfg, "num_attention_heads", 0) or 0
    head_dim = getattr(cfg, "head_dim", None) or ((getattr(cfg, "hidden_size", 0) or 0) // max(heads, 1))
    return float(per_token), float(3 * 4 * layers * heads * head_dim)


@lru_cache(maxsize=4)
def measure_peak_flops(precision: str = "fp32", size: int | None = None, repeats: int = 5) -> float:
    """Best FLOP/s of a large square matmul in the training precision on this machine's device."""
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
    n = size or (8192 if cuda else 2048)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    best = float("inf")
    for _ in range(repeats + 1):  # the first one warms up
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        a @ b
        if cuda:
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best
