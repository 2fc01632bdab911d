"""LoRA dropout that draws one random number per dropped element instead of one per element.

PEFT applies `nn.Dropout(p)` to the input of every LoRA pair: `B(A(dropout(x)))`. On a CPU the
Bernoulli mask is the expensive part: one random draw per element of a [tokens x in_features]
input, for each of the 7 adapted projections of every layer. With LoRA's usual p = 0.05 that
was a quarter of a SmolLM2-135M training step here (`python bench/lora_dropout.py`).

`SparseDropout` keeps the same distribution (every element dropped independently with
probability p, survivors scaled by 1/(1-p)) but draws the *gaps* between dropped elements:
in a sequence of independent Bernoulli(p) trials, the distance from one success to the next is
Geometric(p), so the cumulative sums of Geometric(p) draws are exactly the dropped positions of
a Bernoulli(p) mask. That is ~p x n draws instead of n (20x fewer at p = 0.05). The output is
`x / (1-p)` with zeros written at those positions, and the backward pass does the same to the
gradient. Only the random numbers differ from nn.Dropout's (a different stream from the same
seeded generator); in eval mode it is the identity, and it holds no weights, so adapters save,
load and merge exactly as before.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def dropped_positions(n: int, p: float, device: torch.device | str = "cpu",
                      generator: torch.Generator | None = None) -> torch.Tensor:
    """The flat indices in [0, n) that a Bernoulli(p) mask drops: sorted, each index in with
    probability p independently of the others (cumulative sums of Geometric(p) gaps)."""
    if n <= 0 or p <= 0:
        return torch.empty(0, dtype=torch.int64, device=device)
    block = int(n * p + 6 * math.sqrt(n * p * (1 - p)) + 16)  # runs out with probability ~1e-9
    parts, last = [], -1
    while last < n - 1:
        gaps = torch.empty(block, device=device).geometric_(p, generator=generator).to(torch.int64)
        pos = gaps.cumsum_(0).add_(last)
        parts.append(pos)
        last = int(pos[-1])
    pos = parts[0] if len(parts) == 1 else torch.cat(parts)
    return pos[pos < n]


class _SparseDropoutFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, p: float):
        pos = dropped_positions(x.numel(), p, x.device)
        scale = 1.0 / (1.0 - p)
        out = (x * scale).contiguous()
        out.view(-1)[pos] = 0
        ctx.save_for_backward(pos)
        ctx.scale = scale
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (pos,) = ctx.saved_tensors
        g = (grad * ctx.scale).contiguous()
        g.view(-1)[pos] = 0
        return g, None


class SparseDropout(nn.Dropout):
    """nn.Dropout with the same distribution, drawing ~p x n random numbers instead of n."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        if self.p >= 1:
            return x * 0.0
        return _SparseDropoutFn.apply(x, self.p)


def use_sparse_lora_dropout(model: nn.Module) -> int:
    """Swap every LoRA dropout (PEFT's `lora_dropout` modules) for SparseDropout; returns how many."""
    swapped = 0
    for module in model.modules():
        drops = getattr(module, "lora_dropout", None)
        if not isinstance(drops, nn.ModuleDict):
            continue
        for name, drop in list(drops.items()):
            if type(drop) is nn.Dropout and drop.p > 0:
                drops[name] = SparseDropout(drop.p).train(drop.training)
                swapped += 1
    return swapped
