"""Output layer + loss: the whole logits tensor vs mmtune's chunked linear cross-entropy.

For N target positions, hidden size d and vocabulary V, both compute the summed next-token loss
and the gradient with respect to the hidden states (the LoRA case: the output layer is frozen).
Prints time per forward+backward and the peak bytes of live tensors each creates (counted with
a torch dispatch mode: process RSS is too coarse for this), and how far apart the two losses are.

    python bench/chunked_loss.py                         # SmolLM2 (49k) and Qwen2.5 (152k) vocabularies
    python bench/chunked_loss.py --targets 2048 --hidden 896 --vocab 151936
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode


class PeakBytes(TorchDispatchMode):
    """Peak bytes held by tensors created inside the block (outputs of every op, freed when unreferenced)."""

    def __init__(self):
        super().__init__()
        self.live = 0
        self.peak = 0
        self._seen: dict[int, int] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        import weakref

        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in self._seen:
                key = t.untyped_storage().data_ptr()
                size = t.untyped_storage().nbytes()
                self._seen[key] = size
                self.live += size
                self.peak = max(self.peak, self.live)
                weakref.finalize(t.untyped_storage(), self._free, key)
        return out

    def _free(self, key: int) -> None:
        self.live -= self._seen.pop(key, 0)


def full_logits(hidden, weight, targets):
    logits = (hidden @ weight.t()).float()
    return torch.nn.functional.cross_entropy(logits, targets, ignore_index=-100, reduction="sum")


def measure(fn, hidden, weight, targets, repeats: int) -> tuple[float, int]:
    times = []
    for _ in range(repeats):
        h = hidden.detach().requires_grad_(True)
        t = time.perf_counter()
        fn(h, weight, targets).backward()
        times.append(time.perf_counter() - t)
    h = hidden.detach().requires_grad_(True)
    with PeakBytes() as mode:
        fn(h, weight, targets).backward()
    return min(times), mode.peak


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--targets", type=int, default=2048, help="supervised positions in the batch")
    p.add_argument("--hidden", type=int, nargs="*", default=[576, 896])
    p.add_argument("--vocab", type=int, nargs="*", default=[49152, 151936])
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from mmtune.train.chunked_loss import CHUNK, linear_cross_entropy

    def chunked(h, w, t):
        return linear_cross_entropy(h, w, t, CHUNK)

    print(f"{a.targets} target positions, fp32, torch threads {torch.get_num_threads()}, chunk {CHUNK}")
    print(f"{'hidden':>6} {'vocab':>7} {'full ms':>8} {'chunked ms':>10} {'full peak MB':>12} {'chunked peak MB':>15}"
          f" {'loss diff':>10}")
    for d, v in zip(a.hidden, a.vocab, strict=True):
        torch.manual_seed(0)
        hidden = torch.randn(a.targets, d) * 0.5
        weight = torch.randn(v, d) * 0.02
        targets = torch.randint(0, v, (a.targets,))
        tf, pf = measure(full_logits, hidden, weight, targets, a.repeats)
        tc, pc = measure(chunked, hidden, weight, targets, a.repeats)
        diff = abs(full_logits(hidden, weight, targets).item() - chunked(hidden, weight, targets).item())
        print(f"{d:>6} {v:>7} {1000 * tf:>8.0f} {1000 * tc:>10.0f} {pf / 2**20:>12.0f} {pc / 2**20:>15.0f} "
              f"{diff:>10.2e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
