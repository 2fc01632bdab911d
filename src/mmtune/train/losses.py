"""Preference losses on per-sequence log-probabilities: DPO (sigmoid, IPO, robust, hinge), SimPO,
ORPO and KTO, each as its paper and TRL's reference trainers define it (tests/train/test_preference_losses.py
holds every one to TRL 1.16 on the same batch, values and gradients).

Inputs are log-probabilities of whole completions: the sum over the completion's trained tokens
(`logps`) and the number of those tokens (`lengths`), from `sequence_logps`. Each loss returns
`(loss, chosen_rewards, rejected_rewards)`: the scalar to minimise (mean over the micro-batch) and
the detached implicit rewards that metrics.jsonl reports (margin = chosen - rejected, accuracy =
share of pairs with chosen > rejected).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mmtune.chat.render import IGNORE_INDEX

DPO_LOSSES = ("sigmoid", "ipo", "robust", "hinge")


def sequence_logps(logits: torch.Tensor, targets: torch.Tensor, seq: torch.Tensor,
                   n_seq: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of log p(target) over each sequence's trained targets, number of those targets).

    `logits` [..., V] at the kept positions, `targets` [...] the token each position predicts
    (-100 = not trained), `seq` [...] the sequence each position belongs to. Rows of a padded batch
    and rows laid end to end in a packed one are handled the same way.
    """
    mask = targets != IGNORE_INDEX
    lp = torch.log_softmax(logits[mask].float(), dim=-1)
    picked = lp.gather(-1, targets[mask].unsqueeze(-1)).squeeze(-1)
    index = seq[mask]
    sums = torch.zeros(n_seq, dtype=picked.dtype, device=picked.device).index_add(0, index, picked)
    counts = torch.zeros(n_seq, dtype=picked.dtype, device=picked.device).index_add(0, index, torch.ones_like(picked))
    return sums, counts


def dpo_loss(chosen: torch.Tensor, rejected: torch.Tensor, ref_chosen: torch.Tensor, ref_rejected: torch.Tensor,
             *, beta: float, loss_type: str = "sigmoid", label_smoothing: float = 0.0,
             chosen_lengths: torch.Tensor | None = None, rejected_lengths: torch.Tensor | None = None):
    """DPO on summed log-probs. IPO normalises each side's log-ratio by its completion length, as TRL does
    (the form the IPO authors' results use); robust is the label-smoothed unbiased estimator of
    Chowdhury et al. 2024; hinge is SLiC's."""
    chosen_ratio, rejected_ratio = chosen - ref_chosen, rejected - ref_rejected
    delta = chosen_ratio - rejected_ratio
    if loss_type == "sigmoid":
        losses = -F.logsigmoid(beta * delta)
    elif loss_type == "hinge":
        losses = torch.relu(1 - beta * delta)
    elif loss_type == "ipo":
        if chosen_lengths is None or rejected_lengths is None:
            raise ValueError("ipo needs the completions' lengths")
        ipo = chosen_ratio / chosen_lengths.clamp(min=1) - rejected_ratio / rejected_lengths.clamp(min=1)
        losses = (ipo - 1 / (2 * beta)) ** 2
    elif loss_type == "robust":
        eps = label_smoothing
        losses = (-(1 - eps) * F.logsigmoid(beta * delta) + eps * F.logsigmoid(-beta * delta)) / (1 - 2 * eps)
    else:
        raise ValueError(f"unknown DPO loss {loss_type!r}: one of {', '.join(DPO_LOSSES)}")
    return losses.mean(), beta * chosen_ratio.detach(), beta * rejected_ratio.detach()


def simpo_loss(chosen_avg: torch.Tensor, rejected_avg: torch.Tensor, *, beta: float, gamma: float,
               label_smoothing: float = 0.0):
    """SimPO (Meng et al. 2024) on length-averaged log-probs, with its target margin `gamma`; no reference."""
    logits = (chosen_avg - rejected_avg) - gamma / beta
    losses = (-F.logsigmoid(beta * logits) * (1 - label_smoothing)
              - F.logsigmoid(-beta * logits) * label_smoothing)
    return losses.mean(), beta * chosen_avg.detach(), beta * rejected_avg.detach()


def orpo_loss(chosen_avg: torch.Tensor, rejected_avg: torch.Tensor, chosen_nll: torch.Tensor, *, lam: float):
    """ORPO (Hong et al. 2024): the chosen side's NLL (mean over its tokens) minus lambda x the mean
    log-sigmoid of the log odds ratio, on length-averaged log-probs; no reference."""
    chosen_avg, rejected_avg = chosen_avg.float(), rejected_avg.float()
    log_odds = (chosen_avg - rejected_avg) - (_log1mexp(chosen_avg) - _log1mexp(rejected_avg))
    loss = chosen_nll - (lam * F.logsigmoid(log_odds)).mean()
    return loss, lam * chosen_avg.detach(), lam * rejected_avg.detach()


def kto_loss(logps: torch.Tensor, ref_logps: torch.Tensor, desirable: torch.Tensor, kl: torch.Tensor, *,
             beta: float, desirable_weight: float = 1.0, undesirable_weight: float = 1.0):
    """KTO (Ethayarajh et al. 2024, eq. 7) on summed log-probs of unpaired completions. `kl` is the
    batch's reference-point estimate (detached, clamped at 0: `kto_kl`). The loss is the mean over the
    micro-batch of the weighted per-row losses."""
    ratio = logps - ref_logps
    good, bad = ratio[desirable], ratio[~desirable]
    losses = torch.cat([desirable_weight * (1 - torch.sigmoid(beta * (good - kl))),
                        undesirable_weight * (1 - torch.sigmoid(beta * (kl - bad)))])
    return losses.nanmean(), beta * good.detach(), beta * bad.detach()


def kto_kl(kl_logps: torch.Tensor, ref_kl_logps: torch.Tensor) -> torch.Tensor:
    """KTO's reference point: the mean log-ratio on mismatched (prompt, completion) pairs, >= 0, no gradient."""
    return (kl_logps - ref_kl_logps).mean().detach().clamp(min=0)


def _log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x < 0, stable at both ends (as TRL's ORPO computes it)."""
    return torch.where(x > -0.6931471805599453, torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))
