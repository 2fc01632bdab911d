"""LoRA dropout cost: PEFT's nn.Dropout vs mmtune's SparseDropout (same distribution, ~p x n draws).

Prints the forward + backward time of one dropout on the inputs a SmolLM2-135M layer's LoRA pairs
see (tokens x 576 and tokens x 1536), then the time of whole training steps of SmolLM2-135M with
LoRA r8 on all linear layers, p = 0.05, with each dropout (and with none, the floor).

    python bench/lora_dropout.py [--tokens 1040] [--steps 4]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch


def timed(fn, repeats: int) -> float:
    fn()
    t = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t) / repeats


def op_time(drop: torch.nn.Module, shape: tuple[int, int]) -> float:
    x = torch.randn(*shape, requires_grad=True)

    def run():
        drop(x).sum().backward()
    return timed(run, 30)


def step_times(tokens: int, steps: int) -> dict[str, float]:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from mmtune.models.loader import resolve_model_path
    from mmtune.train.lora_dropout import use_sparse_lora_dropout

    out = {}
    for kind in ("nn.Dropout (PEFT)", "SparseDropout (mmtune)", "no dropout (floor)"):
        torch.manual_seed(0)
        base = AutoModelForCausalLM.from_pretrained(resolve_model_path("smollm2-135m-instruct"), dtype=torch.float32)
        p = 0.0 if kind.startswith("no") else 0.05
        model = get_peft_model(base, LoraConfig(r=8, lora_alpha=32, lora_dropout=p, target_modules="all-linear"))
        if kind.startswith("Sparse"):
            use_sparse_lora_dropout(model)
        model.train()
        ids = torch.randint(0, model.config.vocab_size, (1, tokens))

        def step(model=model, ids=ids):
            model(input_ids=ids, labels=ids).loss.backward()
        out[kind] = timed(step, steps)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, default=1040, help="tokens in a batch (default: 1040, bench/train_throughput's)")
    p.add_argument("--steps", type=int, default=4)
    a = p.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from mmtune.train.lora_dropout import SparseDropout

    print(f"torch threads {torch.get_num_threads()}; one dropout, forward + backward, p = 0.05:")
    for width in (576, 1536):
        plain = op_time(torch.nn.Dropout(0.05).train(), (a.tokens, width))
        sparse = op_time(SparseDropout(0.05).train(), (a.tokens, width))
        print(f"  {a.tokens} x {width}: nn.Dropout {plain * 1e3:6.2f} ms   SparseDropout {sparse * 1e3:6.2f} ms   "
              f"{plain / sparse:.1f}x")
    print(f"SmolLM2-135M, LoRA r8 all-linear, {a.tokens} tokens, forward + backward per step:")
    times = step_times(a.tokens, a.steps)
    ref = times["nn.Dropout (PEFT)"]
    for kind, t in times.items():
        print(f"  {kind:24} {t:6.2f} s   {ref / t:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
