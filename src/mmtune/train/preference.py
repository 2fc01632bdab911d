"""Preference training: `run_preference(cfg)` for --stage dpo|simpo|orpo|kto, setup -> train -> save.

The same pipeline as SFT (train/sft.py), for text and vision-language models: the data layer reads
and checks every row, SFT's renderer renders prompt + completion through the model's chat template
(its processor's, with the prompt's media), SFT's model set-up trains the parts the flags (or the
family's defaults) name, and the Hugging Face Trainer runs the loop (checkpoints, --resume, gradient
accumulation, accelerate). What differs:

- rows (train/preference_data.py): a pair renders twice, prompt + chosen and prompt + rejected, with
  the prompt's own assistant turns at weight 0, so each side's labels are exactly the tokens SFT
  would train on in its completion (answer, tool calls, end-of-turn token) and nothing of the
  prompt; both sides carry the prompt's images and videos;
- one forward pass per step: chosen and rejected rows go through the model together (laid end to
  end when packing is exact for the model, else padded, media laid out by the family's
  media_layout), and the output layer runs only where a completion token is predicted
  (`logits_to_keep`);
- the reference is always the starting model. Where the run has LoRA adapters (on the language
  model or the vision tower), it is the same model with them switched off: parts trained in full
  beside LoRA (a vision tower, a projector) are PEFT `modules_to_save` copies, which switch off
  with the adapters to the frozen originals PEFT keeps, so there is no second copy of the model.
  Without adapters (--method full, or --method frozen with the tower or projector trained in
  full), the reference log-probabilities of every row are computed once before training: no
  frozen copy in memory and one forward pass per row in all, where a copy costs one per step.
  SimPO and ORPO have none;
- metrics.jsonl carries the implicit rewards (reward_chosen, reward_rejected, reward_margin,
  reward_accuracy, and for KTO kl), rewards.png plots the reward accuracy beside loss.png.

The losses are in train/losses.py, held to TRL's on the same batch by tests/train/test_preference_losses.py.
"""

from __future__ import annotations

import math
import warnings
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from transformers import TrainerCallback, set_seed
from transformers.trainer_callback import PrinterCallback, ProgressCallback

from mmtune.chat.render import IGNORE_INDEX
from mmtune.config import TrainConfig
from mmtune.models.loader import check_quantization_available
from mmtune.models.registry import find_spec
from mmtune.train import losses
from mmtune.train.callbacks import FinishLine, RichProgress, RunRecorder, save_figure
from mmtune.train.dataset import Datasets
from mmtune.train.output import check_output, discard_failed
from mmtune.train.preference_data import (  # noqa: F401  (the rows' public names are this module's too)
    PAIRED,
    PreferenceCollator,
    PreferenceRows,
    build_preference_datasets,
    completion_sample,
    encode_pairs,
    encode_unpaired,
    render_completion,
)
from mmtune.train.setup import (
    is_vision,
    saved_in_full,
)
from mmtune.train.sft import (
    MMTuneTrainer,
    SaveMeta,
    finish_output,
    make_summary,
    packs,
    prepare_output,
    print_summary,
    resolve_precision,
    save_model,
    set_up,
    training_arguments,
)

STAGES = (*PAIRED, "kto")
REWARD_PLOT = "rewards.png"
_NOT_MODEL = ("labels", "seq_ids", "n_pairs", "desirable", "ref_logps", "kl_batch")

Warn = Callable[[str], None]


def uses_reference(stage: str) -> bool:
    return stage in ("dpo", "kto")


def model_inputs(batch: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in batch.items() if k not in _NOT_MODEL}


def completion_logps(model, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed log-prob, token count) of each sequence's completion. The model computes logits only at
    positions that predict a completion token (`logits_to_keep`), never the whole [tokens x vocabulary]."""
    targets = batch["labels"][:, 1:]
    seq = batch["seq_ids"][:, 1:]
    keep = (targets != IGNORE_INDEX).any(0).nonzero().squeeze(1)
    outputs = model(**model_inputs(batch), logits_to_keep=keep, use_cache=False)
    logits = outputs.logits if outputs.logits.shape[1] == keep.numel() else outputs.logits[:, keep]
    n_seq = int(batch["seq_ids"].max().item()) + 1
    return losses.sequence_logps(logits, targets[:, keep], seq[:, keep], n_seq)


# ---------------------------------------------------------------------------- trainer


class PreferenceTrainer(MMTuneTrainer):
    """MMTuneTrainer (token accounting, resume guards) with a preference loss and reward metrics."""

    def __init__(self, *args, cfg: TrainConfig, **kwargs):
        super().__init__(*args, **kwargs)
        self.cfg = cfg
        self.model_accepts_loss_kwargs = False  # each micro-batch's loss is a mean: the Trainer divides by grad_accum
        self._metrics: dict[str, dict[str, list[float]]] = {"train": defaultdict(list), "eval": defaultdict(list)}

    def supervised_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """The preference loss, in place of SFT's (MMTuneTrainer.compute_loss keeps a batch that reaches
        no trainable weight, text-only rows while only vision parts train, connected to them)."""
        loss, metrics = preference_loss(model, inputs, self.cfg, self._reference(model))
        mode = "train" if model.training else "eval"
        for key, value in metrics.items():
            self._metrics[mode][key].append(float(self.accelerator.gather_for_metrics(value.reshape(1)).mean()))
        return (loss, {}) if return_outputs else loss  # no outputs kept (evaluation reports losses and rewards)

    def _reference(self, model):
        """log-probs of the reference policy for a batch: the adapters switched off, and with them the
        fully trained copies of vision parts (PEFT modules_to_save) back to their frozen originals."""
        unwrapped = self.accelerator.unwrap_model(model)

        def reference(batch):
            with torch.no_grad(), unwrapped.disable_adapter():
                return completion_logps(model, batch)

        return reference if hasattr(unwrapped, "disable_adapter") else None

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        mode, prefix = ("eval", "eval_") if "eval_loss" in logs else ("train", "")
        if "loss" in logs or "eval_loss" in logs:
            for key, values in self._metrics[mode].items():
                if values:
                    logs[prefix + key] = sum(values) / len(values)
            self._metrics[mode].clear()
        super().log(logs, start_time)

    def _get_train_sampler(self, train_dataset=None):
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if self.args.train_sampling_strategy == "group_by_length":
            from transformers.trainer_pt_utils import LengthGroupedSampler

            return LengthGroupedSampler(self.args.train_batch_size * self.args.gradient_accumulation_steps,
                                        lengths=dataset.lengths)  # no row read: a vision row decodes its media
        return super()._get_train_sampler(train_dataset)


def preference_loss(model, batch: dict[str, Any], cfg: TrainConfig, reference=None):
    """(loss, metrics) of one batch for cfg.stage. `reference(batch)` gives the reference log-probs where
    they were not precomputed (`ref_logps` in the batch)."""
    logps, counts = completion_logps(model, batch)
    stage, beta = cfg.stage, cfg.resolved_beta

    def ref_of(b):
        if "ref_logps" in b:
            return b["ref_logps"].to(logps)
        if reference is None:
            raise RuntimeError("no reference log-probs: precompute them (full fine-tuning) or use LoRA")
        return reference(b)[0]

    metrics: dict[str, torch.Tensor] = {}
    if stage in PAIRED:
        n = int(batch["n_pairs"])
        chosen, rejected = logps[:n], logps[n:]
        if stage == "dpo":
            ref = ref_of(batch)
            loss, rc, rr = losses.dpo_loss(chosen, rejected, ref[:n], ref[n:], beta=beta, loss_type=cfg.resolved_dpo_loss,
                                           label_smoothing=cfg.resolved_label_smoothing, chosen_lengths=counts[:n],
                                           rejected_lengths=counts[n:])
            if cfg.resolved_sft_weight:  # RPO: the chosen answers' language-model loss beside it
                nll = -chosen.sum() / counts[:n].sum()
                loss = loss + cfg.resolved_sft_weight * nll
                metrics["nll_loss"] = nll.detach()
        elif stage == "simpo":
            loss, rc, rr = losses.simpo_loss(chosen / counts[:n], rejected / counts[n:], beta=beta,
                                             gamma=cfg.resolved_simpo_gamma, label_smoothing=cfg.resolved_label_smoothing)
        else:
            nll = -chosen.sum() / counts[:n].sum()
            loss, rc, rr = losses.orpo_loss(chosen / counts[:n], rejected / counts[n:], nll,
                                            lam=cfg.resolved_orpo_lambda)
            metrics["nll_loss"] = nll.detach()
        metrics.update(reward_chosen=rc.mean(), reward_rejected=rr.mean(), reward_margin=(rc - rr).mean(),
                       reward_accuracy=(rc > rr).float().mean())
        return loss, metrics
    desirable = batch["desirable"]
    kl_batch = batch["kl_batch"]
    with torch.no_grad():
        kl_logps = completion_logps(model, kl_batch)[0]
    kl = losses.kto_kl(kl_logps, ref_of(kl_batch))
    loss, rg, rb = losses.kto_loss(logps, ref_of(batch), desirable, kl, beta=beta,
                                   desirable_weight=cfg.resolved_desirable_weight,
                                   undesirable_weight=cfg.resolved_undesirable_weight)
    right = torch.cat([rg > 0, rb < 0]).float()
    metrics.update(kl=kl, reward_accuracy=right.mean())
    if rg.numel():
        metrics["reward_chosen"] = rg.mean()
    if rb.numel():
        metrics["reward_rejected"] = rb.mean()
    if rg.numel() and rb.numel():
        metrics["reward_margin"] = rg.mean() - rb.mean()
    return loss, metrics


@torch.no_grad()
def precompute_reference(trainer: PreferenceTrainer, rows: PreferenceRows, stage: str) -> None:
    """Reference log-probs of every row, computed once with the model as loaded (no adapters: the reference
    is the starting model, and no second copy is kept), in eval mode, batch by batch (a vision row's media
    decoded for its batch only). Stored as `rows.ref`: each row's two sequences."""
    model, collator = trainer.model, trainer.data_collator
    was_training = model.training
    model.eval()
    rows.ref = None
    refs: list[list[float]] = []
    step = max(1, trainer.args.per_device_eval_batch_size)
    for start in range(0, len(rows), step):
        chunk = [rows[i] for i in range(start, min(start + step, len(rows)))]
        batch = trainer._prepare_inputs(collator(chunk))
        with trainer.autocast_smart_context_manager():
            lp = completion_logps(model, batch)[0].tolist()
            if stage in PAIRED:
                n = len(chunk)
                refs += [[a, b] for a, b in zip(lp[:n], lp[n:], strict=True)]
            else:
                kl = completion_logps(model, batch["kl_batch"])[0].tolist()
                refs += [[a, b] for a, b in zip(lp, kl, strict=True)]
    rows.ref = refs
    model.train(was_training)


# ---------------------------------------------------------------------------- records


class PreferenceRecorder(RunRecorder):
    """metrics.jsonl and loss.png as for SFT, plus rewards.png: reward accuracy (train and eval) by step."""

    def plot(self) -> None:
        super().plot()
        plot_rewards(self.history, self.output / REWARD_PLOT)


def plot_rewards(history: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=100)
    for key, style, label in (("reward_accuracy", "-", "train"), ("eval_reward_accuracy", "o-", "eval")):
        points = [(r["step"], r[key]) for r in history if key in r]
        if points:
            ax.plot(*zip(*points), style, label=f"{label} reward accuracy")
    ax.set_xlabel("step")
    ax.set_ylabel("reward accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend()
    save_figure(fig, path)


# ---------------------------------------------------------------------------- the run


def run_preference(cfg: TrainConfig) -> dict[str, Any]:
    """Train `cfg.model` on preference data with cfg.stage; returns the summary (also summary.json)."""
    from accelerate import PartialState

    dist = PartialState()
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    console = Console(stderr=True, quiet=not dist.is_main_process)

    def say(message: str) -> None:
        console.print(message, markup=False, highlight=False, soft_wrap=True)

    # ---- setup
    check_quantization_available(cfg.quantization)
    spec = find_spec(cfg.model)
    out = Path(cfg.output)
    resume_from = check_output(out, overwrite=cfg.overwrite, resume=cfg.resume)  # nothing is written yet
    created = not out.exists()
    set_seed(cfg.seed)
    precision = resolve_precision(cfg.precision)
    cfg, processor, tokenizer, data, model, parts, (trainable, total), table = set_up(
        cfg, spec, precision, build_preference_datasets, say)
    adapters = hasattr(model, "disable_adapter")  # a PEFT model: the reference is the adapters switched off
    in_full = ", parts trained in full as their frozen originals" if is_vision(spec) and saved_in_full(cfg, spec) else ""
    reference = ("none" if not uses_reference(cfg.stage) else f"the starting model (adapters switched off{in_full})"
                 if adapters else "the starting model, log-probs computed once before training")
    say(f"{cfg.stage} ({cfg.method}) on {cfg.model}: {data.stats.train_rows} training "
        f"{'pairs' if cfg.stage in PAIRED else 'rows'}, {data.stats.val_rows} validation; training {trainable:,} of "
        f"{total:,} parameters ({100 * trainable / total:.2f}%), precision {precision}; reference: {reference}")
    if table:
        say(table)
    recorder = PreferenceRecorder(cfg.output)
    try:  # the output folder appears from here on
        trainer = build_preference_trainer(cfg, model, processor or tokenizer, data, precision,
                                           [recorder, RichProgress(console)], spec=spec)
        if uses_reference(cfg.stage) and not adapters:
            precompute_reference(trainer, data.train, cfg.stage)
            if data.val is not None:
                precompute_reference(trainer, data.val, cfg.stage)
        prepare_output(cfg, dist.is_main_process, resume_from, extra=(REWARD_PLOT, REWARD_PLOT + ".tmp"))
        if dist.is_main_process:
            cfg.save(cfg.output)
        # ---- train
        if resume_from:
            say(f"resuming from {resume_from}")
        result = trainer.train(resume_from_checkpoint=resume_from)
        # ---- save
        save_model(trainer, out, dist.is_main_process)
    except BaseException:
        if dist.is_main_process:
            discard_failed(out, created)  # nothing trained yet: no folder (or files) of ours left behind
        raise
    summary = make_summary(cfg, trainer, result.metrics, recorder, data, (trainable, total), resume_from)
    summary["stage"] = cfg.stage
    if parts is not None:
        summary["trainable_by_part"] = {p: {"trainable": t, "total": n} for p, (t, n) in parts.items()}
    for key in ("reward_accuracy", "reward_margin", "reward_chosen", "reward_rejected", "kl"):
        for prefix in ("", "eval_"):
            value = recorder.last(prefix + key)
            if value is not None and math.isfinite(value):
                summary[f"final_{prefix}{key}"] = value
    if dist.is_main_process:
        finish_output(cfg, summary, recorder)
        print_summary(console, summary)
    dist.wait_for_everyone()
    return summary


def build_preference_trainer(cfg: TrainConfig, model, tokenizer, data: Datasets, precision: str,
                             callbacks: list[TrainerCallback], spec=None) -> PreferenceTrainer:
    """`tokenizer` is the processing class saved with the model (a vision model's processor); batches
    join media by the registry's media_layout for `spec`."""
    has_eval = data.val is not None and cfg.eval_strategy != "no"
    packed = packs(cfg, model)
    trainer = PreferenceTrainer(
        model=model,
        args=training_arguments(cfg, precision, has_eval, packed),
        train_dataset=data.train,
        eval_dataset=data.val,
        data_collator=PreferenceCollator(getattr(tokenizer, "tokenizer", tokenizer).pad_token_id, pack=packed,
                                         layout=spec.media_layout if is_vision(spec) else "concat"),
        processing_class=tokenizer,
        callbacks=[*callbacks, FinishLine(has_eval), SaveMeta(cfg)],
        cfg=cfg,
    )
    for default in (ProgressCallback, PrinterCallback):
        trainer.remove_callback(default)
    return trainer
