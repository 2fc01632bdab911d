"""mmtune's preference losses equal TRL 1.16's reference implementations on the same batch, values
and gradients (within 1e-5).

DPO and KTO: a real TRL `DPOTrainer` / `KTOTrainer` is built on a tiny LoRA Llama, one of its own
batches is drawn from its own data loader, and its `_compute_loss` (forward, reference with the
adapter switched off, loss) is compared with mmtune's `preference_loss` on the same tensors, same
model: the loss and every LoRA gradient. SimPO and ORPO (TRL's experimental CPO/ORPO trainers):
their `get_batch_logps`, `cpo_loss` and `odds_ratio_loss` are called on the model's own logits and
compared, again with gradients through the model.
"""

from __future__ import annotations

import types

import pytest
import torch

pytest.importorskip("trl")

from mmtune.config import TrainConfig  # noqa: E402
from mmtune.train import losses  # noqa: E402
from mmtune.train.preference import completion_logps, preference_loss  # noqa: E402

TOL = 1e-5
PAIRS = [
    ("What colour is the sky?", "Blue, on a clear day.", "Green, always."),
    ("Name a prime number.", "Seven.", "Nine is prime."),
    ("How many legs has a spider?", "Eight legs.", "Six, like an ant."),
    ("What is the capital of France?", "Paris.", "Lyon is the capital city of France."),
]


def lora_config():
    from peft import LoraConfig

    return LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")


def base_model(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)


def perturb(model, seed: int):
    """Random LoRA B matrices, so that the policy differs from the reference (the adapter switched off)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return model


def lora_model(path, seed: int = 0):
    """The tiny Llama with LoRA adapters whose B matrices are random (so policy != reference)."""
    from peft import get_peft_model

    return perturb(get_peft_model(base_model(path), lora_config()), seed)


def grads(model) -> dict[str, torch.Tensor]:
    out = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad and p.grad is not None}
    model.zero_grad(set_to_none=True)
    return out


def assert_same_grads(ours: dict, theirs: dict) -> None:
    assert ours.keys() == theirs.keys() and ours
    for name in ours:
        torch.testing.assert_close(ours[name], theirs[name], atol=TOL, rtol=1e-4, msg=name)


def seq_batch(input_ids, attention_mask, completion_mask) -> dict:
    """mmtune's batch layout for a padded batch of sequences: labels on the completion tokens,
    seq_ids the row of each token (-1 on padding)."""
    labels = input_ids.masked_fill(completion_mask == 0, -100)
    rows = torch.arange(input_ids.shape[0])[:, None].expand_as(input_ids)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels,
            "seq_ids": torch.where(attention_mask.bool(), rows, -1)}


def adapter_off(model):
    def reference(batch):
        with torch.no_grad(), model.disable_adapter():
            return completion_logps(model, batch)

    return reference


def tokenizer_of(path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


# ---------------------------------------------------------------------------- DPO


@pytest.mark.parametrize("loss_type,smoothing,sft", [("sigmoid", 0.0, 0.0), ("ipo", 0.0, 0.0), ("robust", 0.2, 0.0),
                                                     ("hinge", 0.0, 0.0), ("sigmoid", 0.0, 0.7)])  # sft: RPO's term
def test_dpo_loss_and_gradients_equal_trl_dpotrainer(tiny_llama, tmp_path, loss_type, smoothing, sft):
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    tok = tokenizer_of(tiny_llama)
    rows = [{"prompt": [{"role": "user", "content": q}], "chosen": [{"role": "assistant", "content": c}],
             "rejected": [{"role": "assistant", "content": r}]} for q, c, r in PAIRS]
    args = DPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=4, report_to="none", use_cpu=True,
                     beta=0.3, loss_type=[loss_type, "sft"] if sft else [loss_type],
                     loss_weights=[1.0, sft] if sft else None, label_smoothing=smoothing, max_length=None)
    # TRL adds the adapter itself (a new adapter: its reference is the adapter switched off, as mmtune's)
    trainer = DPOTrainer(model=base_model(tiny_llama), args=args, train_dataset=Dataset.from_list(rows),
                         processing_class=tok, peft_config=lora_config())
    batch = next(iter(trainer.get_train_dataloader()))
    model = perturb(trainer.model, 0)
    model.train()

    theirs_loss = trainer._compute_loss(model, batch, False)
    theirs_loss.backward()
    theirs = grads(model)

    n = batch["input_ids"].shape[0] // 2
    ours_batch = {**seq_batch(batch["input_ids"], batch["attention_mask"], batch["completion_mask"]), "n_pairs": n}
    cfg = TrainConfig(data=["x"], stage="dpo", beta=0.3, dpo_loss=loss_type, label_smoothing=smoothing or None,
                      sft_weight=sft or None)
    ours_loss, metrics = preference_loss(model, ours_batch, cfg, adapter_off(model))
    ours_loss.backward()
    ours = grads(model)

    assert abs(ours_loss.item() - theirs_loss.item()) < TOL, (ours_loss.item(), theirs_loss.item())
    assert abs(metrics["reward_margin"].item()) > 1e-4  # the policy is not the reference: a real comparison
    assert_same_grads(ours, theirs)
    assert ("nll_loss" in metrics) == bool(sft)
    trl_metrics = {k: v[-1] for k, v in trainer._metrics["train"].items()}
    for mine, trl_key in (("reward_chosen", "rewards/chosen"), ("reward_rejected", "rewards/rejected"),
                          ("reward_margin", "rewards/margins"), ("reward_accuracy", "rewards/accuracies")):
        assert abs(metrics[mine].item() - trl_metrics[trl_key]) < TOL, mine


# ---------------------------------------------------------------------------- KTO


def test_kto_loss_and_gradients_equal_trl_ktotrainer(tiny_llama, tmp_path):
    from datasets import Dataset
    from trl import KTOConfig, KTOTrainer

    tok = tokenizer_of(tiny_llama)
    rows = []
    for i, (q, c, r) in enumerate(PAIRS):
        rows.append({"prompt": [{"role": "user", "content": q}],
                     "completion": [{"role": "assistant", "content": c if i % 2 == 0 else r}], "label": i % 2 == 0})
    args = KTOConfig(output_dir=str(tmp_path), per_device_train_batch_size=4, report_to="none", use_cpu=True,
                     beta=0.2, desirable_weight=1.3, undesirable_weight=0.7, max_length=None,
                     train_sampling_strategy="sequential")
    trainer = KTOTrainer(model=base_model(tiny_llama), args=args, train_dataset=Dataset.from_list(rows),
                         processing_class=tok, peft_config=lora_config())
    batch = next(iter(trainer.get_train_dataloader()))
    model = perturb(trainer.model, 1)
    model.train()

    theirs_loss = trainer._compute_loss(model, batch, False)
    theirs_loss.backward()
    theirs = grads(model)

    ours_batch = seq_batch(batch["input_ids"], batch["attention_mask"], batch["completion_mask"])
    ours_batch["desirable"] = torch.as_tensor(batch["label"], dtype=torch.bool)
    ours_batch["kl_batch"] = seq_batch(batch["KL_input_ids"], batch["KL_attention_mask"], batch["KL_completion_mask"])
    cfg = TrainConfig(data=["x"], stage="kto", beta=0.2, desirable_weight=1.3, undesirable_weight=0.7)
    ours_loss, metrics = preference_loss(model, ours_batch, cfg, adapter_off(model))
    ours_loss.backward()
    ours = grads(model)

    assert abs(ours_loss.item() - theirs_loss.item()) < TOL, (ours_loss.item(), theirs_loss.item())
    assert_same_grads(ours, theirs)
    assert abs(metrics["kl"].item() - trainer._metrics["train"]["kl"][-1]) < TOL


# ---------------------------------------------------------------------------- SimPO and ORPO


def model_batch(tiny_llama):
    """A padded [chosen..., rejected...] batch rendered by mmtune, and the tiny LoRA model."""
    from mmtune.data.schema import Message, Sample
    from mmtune.train.preference import PreferenceCollator, render_completion

    tok = tokenizer_of(tiny_llama)
    rows = []
    for q, c, r in PAIRS:
        s = Sample([Message.simple("user", q)], chosen=[Message.simple("assistant", c)],
                   rejected=[Message.simple("assistant", r)])
        rows.append({"chosen": vars_(render_completion(s, s.chosen, tok, 512)),
                     "rejected": vars_(render_completion(s, s.rejected, tok, 512))})
    return PreferenceCollator(tok.pad_token_id, pack=False)(rows), lora_model(tiny_llama, seed=2)


def vars_(r):
    return {"input_ids": r.input_ids, "labels": r.labels}


def trl_self(**kw):
    return types.SimpleNamespace(**{"alpha": 0.0, "label_smoothing": 0.0,
                                    "accelerator": types.SimpleNamespace(device="cpu"), **kw})


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_simpo_equals_trl_cpo_simpo_through_the_model(tiny_llama, smoothing):
    from trl.experimental.cpo import CPOTrainer

    batch, model = model_batch(tiny_llama)
    n = batch["n_pairs"]
    model.train()

    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    avg = CPOTrainer.get_batch_logps(logits, batch["labels"], average_log_prob=True)
    ctx = trl_self(loss_type="simpo", beta=2.0, simpo_gamma=0.7, label_smoothing=smoothing)
    trl_losses, trl_rc, trl_rr = CPOTrainer.cpo_loss(ctx, avg[:n], avg[n:])
    theirs_loss = trl_losses.mean()  # cpo_alpha = 0: SimPO alone
    theirs_loss.backward()
    theirs = grads(model)

    cfg = TrainConfig(data=["x"], stage="simpo", beta=2.0, simpo_gamma=0.7, label_smoothing=smoothing or None)
    ours_loss, metrics = preference_loss(model, batch, cfg)
    ours_loss.backward()
    ours = grads(model)
    assert abs(ours_loss.item() - theirs_loss.item()) < TOL
    assert_same_grads(ours, theirs)
    assert abs(metrics["reward_margin"].item() - (trl_rc - trl_rr).mean().item()) < TOL


def test_orpo_equals_trl_odds_ratio_loss_through_the_model(tiny_llama):
    """TRL's ORPOTrainer adds the NLL of the chosen prompt AND answer; mmtune's NLL is over the chosen
    answer's tokens only (the paper's L_SFT, the same tokens SFT trains): the NLL here is computed on
    those tokens for both, and TRL's odds-ratio term and its combination `nll - losses.mean()` are
    compared on the model's own logits."""
    from trl.experimental.orpo import ORPOTrainer

    batch, model = model_batch(tiny_llama)
    n = batch["n_pairs"]
    model.train()

    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    avg = ORPOTrainer.get_batch_logps(logits, batch["labels"], average_log_prob=True)
    shifted, targets = logits[:n, :-1], batch["labels"][:n, 1:]
    nll = torch.nn.functional.cross_entropy(shifted.reshape(-1, shifted.shape[-1]), targets.reshape(-1))
    trl_losses, *_ = ORPOTrainer.odds_ratio_loss(trl_self(beta=0.25), avg[:n], avg[n:])
    theirs_loss = nll - trl_losses.mean()
    theirs_loss.backward()
    theirs = grads(model)

    cfg = TrainConfig(data=["x"], stage="orpo", orpo_lambda=0.25)
    ours_loss, metrics = preference_loss(model, batch, cfg)
    ours_loss.backward()
    ours = grads(model)
    assert abs(ours_loss.item() - theirs_loss.item()) < TOL
    assert_same_grads(ours, theirs)
    assert abs(metrics["nll_loss"].item() - nll.item()) < TOL


# ---------------------------------------------------------------------------- log-probs, packed == padded


def test_sequence_logps_equal_trl_get_batch_logps_with_gradients():
    from trl.experimental.cpo import CPOTrainer

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 7, 11, generator=g, requires_grad=True)
    labels = torch.randint(0, 11, (3, 7), generator=g)
    labels[:, :3] = -100
    labels[1, 5:] = -100
    theirs = CPOTrainer.get_batch_logps(logits, labels)
    (theirs * torch.tensor([1.0, -2.0, 0.5])).sum().backward()
    g_theirs, logits.grad = logits.grad.clone(), None

    rows = torch.arange(3)[:, None].expand(3, 6)
    ours, counts = losses.sequence_logps(logits[:, :-1], labels[:, 1:], rows, 3)
    (ours * torch.tensor([1.0, -2.0, 0.5])).sum().backward()
    torch.testing.assert_close(ours, theirs, atol=TOL, rtol=0)
    torch.testing.assert_close(logits.grad, g_theirs, atol=TOL, rtol=0)
    assert counts.tolist() == [4.0, 2.0, 4.0]


def test_packed_and_padded_batches_give_the_same_log_probs(tiny_llama):
    from mmtune.train.attention import use_varlen_attention
    from mmtune.train.preference import PreferenceCollator

    batch, model = model_batch(tiny_llama)
    use_varlen_attention(model)
    model.eval()
    n = batch["n_pairs"]
    ids, lab, mask = batch["input_ids"], batch["labels"], batch["attention_mask"]
    rows = [{"chosen": {"input_ids": ids[i][mask[i].bool()].tolist(), "labels": lab[i][mask[i].bool()].tolist()},
             "rejected": {"input_ids": ids[n + i][mask[n + i].bool()].tolist(),
                          "labels": lab[n + i][mask[n + i].bool()].tolist()}} for i in range(n)]
    packed = PreferenceCollator(0, pack=True)(rows)
    with torch.no_grad():
        padded_lp, padded_n = completion_logps(model, batch)
        packed_lp, packed_n = completion_logps(model, packed)
    torch.testing.assert_close(packed_lp, padded_lp, atol=1e-4, rtol=0)
    assert packed_n.tolist() == padded_n.tolist()
