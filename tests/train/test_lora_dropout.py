"""SparseDropout: nn.Dropout's distribution (independent Bernoulli(p) drops, survivors scaled by
1/(1-p)) from ~p x n random draws; gradients masked the same way; swapped into LoRA models only."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from mmtune.train.lora_dropout import SparseDropout, dropped_positions, use_sparse_lora_dropout


@pytest.mark.parametrize(("n", "p"), [(100_000, 0.05), (50_000, 0.3), (7, 0.5), (1, 0.9)])
def test_positions_are_a_bernoulli_mask(n, p):
    """Each index is dropped with probability p (binomial bounds over many draws), in range, without
    repeats, uniformly across the range (first vs last tenth), and counts vary as a binomial's do."""
    g = torch.Generator().manual_seed(0)
    trials = 400 if n < 1000 else 40
    hits = torch.zeros(n)
    counts = []
    for _ in range(trials):
        pos = dropped_positions(n, p, generator=g)
        assert pos.numel() == pos.unique().numel() and (pos.numel() == 0 or (0 <= pos.min() and pos.max() < n))
        assert torch.equal(pos, pos.sort().values)
        hits[pos] += 1
        counts.append(pos.numel())
    total = trials * n
    sd = math.sqrt(total * p * (1 - p))
    assert abs(hits.sum().item() - total * p) < 5 * sd
    if n >= 1000:
        tenth = n // 10
        for part in (hits[:tenth], hits[-tenth:]):
            m = trials * tenth
            assert abs(part.sum().item() - m * p) < 5 * math.sqrt(m * p * (1 - p))
        var = torch.tensor(counts, dtype=torch.float64).var().item()
        assert 0.5 < var / (n * p * (1 - p)) < 1.8  # a binomial count, not a fixed one


def test_forward_and_backward_match_a_dropout_mask():
    torch.manual_seed(0)
    x = torch.randn(64, 48, requires_grad=True)
    drop = SparseDropout(0.2).train()
    torch.manual_seed(1)
    y = drop(x)
    dropped = y == 0
    assert 0.1 < dropped.float().mean().item() < 0.3
    torch.testing.assert_close(y[~dropped], x[~dropped].detach() / 0.8)
    w = torch.randn(64, 48)
    (y * w).sum().backward()
    torch.testing.assert_close(x.grad, torch.where(dropped, 0.0, w / 0.8))
    torch.manual_seed(1)
    assert torch.equal(drop(x), y)  # seeded: the same mask again
    assert drop.eval()(x) is x  # eval: identity


def test_non_contiguous_input():
    x = torch.randn(40, 30).t()
    y = SparseDropout(0.5).train()(x)
    kept = y != 0
    torch.testing.assert_close(y[kept], x[kept] * 2)


def test_lora_models_get_it_and_answer_the_same_in_eval(tiny_llama):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_llama), LoraConfig(r=4, lora_dropout=0.1, target_modules="all-linear",
                                                    init_lora_weights=False))
    ids = torch.randint(0, model.config.vocab_size, (2, 12))
    model.eval()
    with torch.no_grad():
        before = model(input_ids=ids).logits
    n = use_sparse_lora_dropout(model)
    assert n > 0 and all(type(d) is SparseDropout for m in model.modules()
                         if isinstance(getattr(m, "lora_dropout", None), nn.ModuleDict)
                         for d in m.lora_dropout.values())
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, before)
    model.train()
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    assert all(p.grad is not None for n_, p in model.named_parameters() if p.requires_grad and "lora_A" in n_)
    assert use_sparse_lora_dropout(model) == 0  # already swapped
